# SPDX-License-Identifier: LGPL-2.1-or-later
"""``pyqcrypt benchmark``: PBKDF2 iterations per second and sector cipher
speed, measured in memory (pyqcrypt.crypto.benchmark), printed as
cryptsetup benchmark prints them or, with ``--output json``, as one JSON
object::

    {"pbkdf2": [{"hash", "iterations_per_second", "key_bits"}],
     "ciphers": [{"cipher", "key_bits", "encrypt_mib_s", "decrypt_mib_s", "backend"}
                 or {"cipher", "key_bits", "error"}]}

The text goes out line by line as each measurement ends; the JSON once,
at the end."""

import sys

from . import common

PBKDF2_KEY_BITS = 256           # what cryptsetup benchmark's PBKDF2 lines measure
JSON_HELP = (
    "--output json prints one object: \"pbkdf2\", a list of {hash, iterations_per_second, "
    "key_bits}, and \"ciphers\", a list of {cipher, key_bits, encrypt_mib_s, decrypt_mib_s, "
    "backend}, or {cipher, key_bits, error} for a cipher no backend runs.")


def _selection(args):
    """(ciphers, hashes) the command line asks for."""
    from ..crypto.benchmark import CIPHERS, PBKDF2_HASHES
    from ..crypto.cipherspec import CipherSpec
    if args.cipher:
        spec = CipherSpec.parse(args.cipher, key_bits=args.key_size)
        return [(spec.cryptsetup_spec, spec.key_bits)], [args.hash] if args.hash else []
    return CIPHERS, [args.hash] if args.hash else list(PBKDF2_HASHES)


def _text(args, ciphers, hashes):
    from ..crypto.benchmark import cipher_results, pbkdf2_results
    out = sys.stdout
    out.write("# Tests are approximate using memory only (no storage IO).\n")
    for name, ips in pbkdf2_results(hashes):
        out.write("PBKDF2-%-9s %10d iterations per second for %d-bit key\n"
                  % (name, ips, PBKDF2_KEY_BITS))
        out.flush()
    suffix = "" if args.threads == 1 else " (%d threads)" % args.threads
    out.write("#%22s | %9s | %15s | %15s | %s%s\n"
              % ("Algorithm", "Key", "Encryption", "Decryption", "Backend", suffix))
    for name, bits, enc, dec, reason, backend in cipher_results(ciphers, args.time, args.threads):
        if enc is None:
            out.write("%23s %9s   N/A (%s)\n" % (name, "%db" % bits, reason))
        else:
            out.write("%23s %9s %12.1f MiB/s %12.1f MiB/s   %s\n"
                      % (name, "%db" % bits, enc / (1 << 20), dec / (1 << 20), backend))
        out.flush()


def _json(args, ciphers, hashes):
    import json
    from ..crypto.benchmark import cipher_results, pbkdf2_results
    pbkdf2 = [{"hash": name, "iterations_per_second": ips, "key_bits": PBKDF2_KEY_BITS}
              for name, ips in pbkdf2_results(hashes)]
    rows = []
    for name, bits, enc, dec, reason, backend in cipher_results(ciphers, args.time, args.threads):
        if enc is None:
            rows.append({"cipher": name, "key_bits": bits, "error": reason})
        else:
            rows.append({"cipher": name, "key_bits": bits, "encrypt_mib_s": enc / (1 << 20),
                         "decrypt_mib_s": dec / (1 << 20), "backend": backend})
    sys.stdout.write(json.dumps({"pbkdf2": pbkdf2, "ciphers": rows}, indent=4) + "\n")


def cmd_benchmark(args):
    ciphers, hashes = _selection(args)
    (_json if args.output == "json" else _text)(args, ciphers, hashes)
    return 0


def register(sub):
    bench = common.add_command(
        sub, "benchmark", "measure PBKDF2 and cipher speed, like cryptsetup benchmark",
        "PBKDF2 iterations per second per hash, and sector encryption/decryption speed "
        "(512-byte sectors, per-sector IVs) per cipher, measured in memory.  " + JSON_HELP,
        ["pyqcrypt benchmark",
         "pyqcrypt benchmark -c aes-xts-plain64 -s 512 --threads 2",
         "pyqcrypt benchmark --output json --hash sha256 -c aes-xts-plain64 --time 0.1"])
    bench.add_argument("-c", "--cipher", help="benchmark only this cipher, e.g. aes-xts-plain64")
    bench.add_argument("-s", "--key-size", type=int, metavar="BITS",
                       help="key size in bits (with --cipher)")
    bench.add_argument("--hash", help="benchmark PBKDF2 with only this hash, e.g. sha256")
    bench.add_argument("--threads", type=int, default=1,
                       help="threads sharing one cipher (default 1)")
    bench.add_argument("--time", type=float, default=0.5, metavar="SECONDS",
                       help="seconds per cipher measurement (default 0.5)")
    bench.add_argument("--output", choices=("human", "json"), default="human",
                       help="human: cryptsetup benchmark's table (default); json: see above")
    bench.set_defaults(func=cmd_benchmark)
