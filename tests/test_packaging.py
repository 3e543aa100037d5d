# SPDX-License-Identifier: LGPL-2.1-or-later
"""What packagers rely on: a reproducible man page, a bash completion that
knows every command, py.typed, one version everywhere, an RPM spec with what
Fedora asks, and a build that names the packages to install when a library
is missing."""

import argparse
import os
import re
import shutil
import subprocess
import sys

import pytest

import pyqcrypt
from pyqcrypt.cli import build_parser
from pyqcrypt.completion import render as render_completion
from pyqcrypt.manpage import render as render_manpage


def test_man_page_date_is_source_date_epoch(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")       # 2023-11-14 22:13:20 UTC
    first = render_manpage()
    assert first.startswith('.TH PYQCRYPT 1 "2023-11-14" "pyqcrypt %s"' % pyqcrypt.__version__)
    assert render_manpage() == first
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")              # UTC+14: still the UTC date
    assert render_manpage() == first


def test_completion_knows_every_command_and_option():
    script = render_completion()
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, cmd in sub.choices.items():
        assert "\n        %s)\n" % name in script, name
        for action in cmd._actions:
            for opt in action.option_strings:
                assert opt in script, (name, opt)


def _complete(script_path, *words):
    """COMPREPLY for the command line *words* (the last one being typed)."""
    driver = ('. "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); '
              '_pyqcrypt; printf "%s\\n" "${COMPREPLY[@]}"')
    proc = subprocess.run(["bash", "-c", driver, "bash", script_path, *words],
                          capture_output=True, text=True, check=True)
    return set(proc.stdout.split())


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_completion_completes(tmp_path):
    path = tmp_path / "pyqcrypt"
    path.write_text(render_completion())
    assert _complete(str(path), "pyqcrypt", "conv") == {"convert"}
    assert _complete(str(path), "pyqcrypt", "--debug", "self") == {"selftest"}
    assert _complete(str(path), "pyqcrypt", "convert", "--keep") == {"--keep-ciphertext"}
    assert _complete(str(path), "pyqcrypt", "convert", "-O", "q") == {"qcow2"}
    (tmp_path / "disk.qcow2").write_bytes(b"")
    os.chdir(tmp_path)
    assert _complete(str(path), "pyqcrypt", "info", "dis") == {"disk.qcow2"}


def test_modules_run_as_scripts():
    for module, start in (("pyqcrypt.manpage", ".TH PYQCRYPT 1"), ("pyqcrypt.completion", "# bash")):
        proc = subprocess.run([sys.executable, "-m", module], capture_output=True, text=True)
        assert proc.returncode == 0 and proc.stdout.startswith(start), proc.stderr


def test_typed_and_versioned():
    here = os.path.dirname(pyqcrypt.__file__)
    assert os.path.exists(os.path.join(here, "py.typed"))
    try:
        from importlib.metadata import version
    except ImportError:                                         # pragma: no cover
        pytest.skip("importlib.metadata needs Python 3.8")
    assert version("pyqcrypt") == pyqcrypt.__version__
    proc = subprocess.run([sys.executable, "-m", "pyqcrypt", "--version"], capture_output=True, text=True)
    assert proc.stdout.splitlines()[0] == "pyqcrypt " + pyqcrypt.__version__   # then the backends


# The source tree's root: the tests sit in its tests/.  ci/package unpacks
# packaging/ beside the tests it runs against the installed wheel, and
# debian/rules copies it beside the tests of the Debian build.
SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RPM_SPEC = os.path.join(SOURCE_ROOT, "packaging", "rpm", "pyqcrypt.spec")


def _spec_tags_and_sections(text):
    """({tag: [values]}, [section names in order]) of an RPM spec, the
    preamble tags of every package together."""
    tags, sections = {}, []
    for line in text.splitlines():
        match = re.match(r"^([A-Za-z][A-Za-z0-9()]*):\s*(.*?)\s*$", line)
        if match:
            tags.setdefault(match.group(1), []).append(match.group(2))
        match = re.match(r"^%(prep|generate_buildrequires|build|install|check|files|changelog|package|description)\b",
                         line)
        if match:
            sections.append(match.group(1))
    return tags, sections


def test_rpm_spec_follows_fedora_python_guidelines():
    with open(RPM_SPEC, encoding="utf-8") as fh:
        text = fh.read()
    tags, sections = _spec_tags_and_sections(text)
    assert tags["Name"] == ["pyqcrypt"]
    assert "\n%py_provides python3-pyqcrypt\n" in text
    assert tags["Version"] == [pyqcrypt.__version__]
    assert tags["License"] == ["LGPL-2.1-or-later"]
    for section in ("prep", "generate_buildrequires", "build", "install", "check", "files", "changelog"):
        assert section in sections, section
    # The pyproject macros, each in its own section.
    for section, macro in (("generate_buildrequires", "%pyproject_buildrequires"), ("build", "%pyproject_wheel"),
                           ("install", "%pyproject_install"), ("install", "%pyproject_save_files -l pyqcrypt"),
                           ("check", "%pytest")):
        body = re.search(r"^%" + section + r"\n(.*?)(?=^%(?:prep|generate_buildrequires|build|install|check|files)"
                         r"\b|\Z)", text, re.M | re.S)
        assert body and macro in body.group(1), (section, macro)
    # Every library the modules link, and the peer tools %check runs.
    for need in ("python3-devel", "gcc", "pkgconfig(libcrypto)", "pkgconfig(libcryptsetup)", "pkgconfig(libgcrypt)",
                 "pkgconfig(libzstd)", "pkgconfig(nettle)", "qemu-img", "cryptsetup", "python3dist(pytest)"):
        assert need in tags["BuildRequires"], need
    assert set(tags["Recommends"]) == {"qemu-img", "cryptsetup"}
    for var in ("CRYPTSETUP", "ZSTD", "GCRYPT", "NETTLE"):
        assert "export PYQCRYPT_REQUIRE_%s=1" % var in text, var
    # %check: the interop tests, without the ones that need root.
    assert '-m "interop and not blockdev"' in text
    # What the package installs besides the library.
    for entry in ("%files -f %{pyproject_files}\n%license LICENSE", "%{_bindir}/pyqcrypt",
                  "%{_mandir}/man1/pyqcrypt.1*", "%{bash_completions_dir}/pyqcrypt"):
        assert entry in text, entry
    assert re.search(r"^%doc .*README\.md", text, re.M)
    # The newest changelog entry is this version and release.
    release = tags["Release"][0].replace("%{?dist}", "")
    first = re.search(r"^%changelog\n\* .* - (\S+)$", text, re.M)
    assert first and first.group(1) == "%s-%s" % (pyqcrypt.__version__, release)


DEBIAN_BUILD_DEPS = "libssl-dev libcryptsetup-dev libgcrypt20-dev libzstd-dev nettle-dev"
FEDORA_BUILD_DEPS = "openssl-devel cryptsetup-devel libgcrypt-devel libzstd-devel nettle-devel"


def _build_ffi(monkeypatch):
    """The source tree's build_ffi module (the build scripts stay out of an
    installed package, whose tests then skip this)."""
    if not os.path.exists(os.path.join(SOURCE_ROOT, "build_ffi.py")):
        pytest.skip("pyqcrypt's C sources are not beside the tests (no build_ffi.py in %s)" % SOURCE_ROOT)
    monkeypatch.syspath_prepend(SOURCE_ROOT)
    import build_ffi
    build_ffi.library_found.cache_clear()
    return build_ffi


def test_build_without_openssl_headers_names_the_packages(monkeypatch):
    build_ffi = _build_ffi(monkeypatch)
    assert build_ffi.header_compiles("stdio.h", [])
    assert not build_ffi.header_compiles("pyqcrypt-no-such-dir/evp.h", [])
    build_ffi.require_libcrypto()                       # this machine has them
    # OpenSSL's header made to be missing: the build stops, naming every
    # package for Debian and for Fedora.
    monkeypatch.setitem(build_ffi.LIBRARIES, "libcrypto",
                        ("pyqcrypt-no-such-dir/evp.h",) + build_ffi.LIBRARIES["libcrypto"][1:])
    build_ffi.library_found.cache_clear()
    try:
        with pytest.raises(SystemExit) as stop:
            build_ffi.require_libcrypto()
    finally:
        monkeypatch.undo()
        build_ffi.library_found.cache_clear()
    message = str(stop.value.code)
    assert "libcrypto" in message and "pyqcrypt-no-such-dir/evp.h" in message
    assert "apt install pkg-config " + DEBIAN_BUILD_DEPS in message
    assert "dnf install pkgconf-pkg-config " + FEDORA_BUILD_DEPS in message


def test_build_without_a_required_library_names_the_packages(monkeypatch):
    _build_ffi(monkeypatch)
    # No pkg-config data at all: libcryptsetup, libzstd and nettle are not
    # found, and PYQCRYPT_REQUIRE_CRYPTSETUP=1 makes that an error.
    env = dict(os.environ, PKG_CONFIG_LIBDIR="/nonexistent", PKG_CONFIG_PATH="", PYQCRYPT_REQUIRE_CRYPTSETUP="1")
    proc = subprocess.run([sys.executable, "setup.py", "--version"], cwd=SOURCE_ROOT, env=env,
                          capture_output=True, text=True)
    assert proc.returncode != 0, proc.stdout
    assert ("pyqcrypt build: libcryptsetup module NOT built: no usable libcryptsetup "
            "(Debian: libcryptsetup-dev, Fedora: cryptsetup-devel)") in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("pyqcrypt build: error: PYQCRYPT_REQUIRE_CRYPTSETUP=1"), last
    assert DEBIAN_BUILD_DEPS in last and FEDORA_BUILD_DEPS in last
