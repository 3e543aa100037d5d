# SPDX-License-Identifier: LGPL-2.1-or-later
"""What a qcow2 check found, and how qemu-img check prints it.

``CheckResult`` holds the counts of ``check.py``'s run and the per-item
messages in the order they were found.  qemu-img 7.2 prints those messages
on stderr and only the summary on stdout: ``human()`` is that summary,
``json()`` the ``--output=json`` document, ``stderr()`` the per-item lines
(plus the final "Check failed" line when the check could not complete).

The JSON keys come out in the order of QEMU's QDict (a 512-bucket hash
table walked bucket by bucket), and strings are escaped as QEMU's JSON
writer does: printable ASCII as is, other characters as uppercase
``\\uXXXX`` (surrogate pairs beyond the BMP), invalid UTF-8 as U+FFFD.
"""


class CheckResult:
    """The result of one check.  ``corruptions``, ``leaks`` and
    ``check_errors`` are lists with one message per counted item (their
    lengths are qemu-img's counts); ``messages`` holds every stderr line in
    order (``preamble``: what QEMU's open printed before them).  ``failed``
    is the errno text of qemu-img's "Check failed: ..." when the check
    stopped half-way (then nothing goes to stdout)."""

    def __init__(self, path):
        self.path = path
        self.corruptions = []
        self.leaks = []
        self.check_errors = []
        self.messages = []
        self.preamble = ""          # what QEMU's open printed, without a final newline
        self.failed = None
        self.leaks_fixed = 0
        self.corruptions_fixed = 0
        self.total_clusters = 0
        self.allocated_clusters = 0
        self.fragmented_clusters = 0
        self.compressed_clusters = 0
        self.image_end_offset = 0

    # ---- recording (check.py) -------------------------------------------------------
    def corrupt(self, *lines):
        """One corruption, printed as *lines* (none: counted silently)."""
        self.messages.extend(lines)
        self.corruptions.append(lines[0] if lines else "")

    def leak(self, line):
        self.messages.append(line)
        self.leaks.append(line)

    def repaired(self, line, kind):
        """One leak or corruption (*kind*) repaired, printed as *line*."""
        self.messages.append(line)
        if kind == "leak":
            self.leaks_fixed += 1
        else:
            self.corruptions_fixed += 1

    def error(self, line):
        """An internal error of the check (qemu-img's check-errors)."""
        self.messages.append(line)
        self.check_errors.append(line)

    # ---- verdict ----------------------------------------------------------------------
    @property
    def exit_code(self):
        if self.failed is not None or self.check_errors:
            return 1
        if self.corruptions:
            return 2
        if self.leaks:
            return 3
        return 0

    def as_dict(self):
        """qemu-img check --output=json's fields, in its order."""
        fields = [("filename", self.path), ("format", "qcow2"),
                  ("check-errors", len(self.check_errors))]
        optional = [("image-end-offset", self.image_end_offset),
                    ("corruptions", len(self.corruptions)), ("leaks", len(self.leaks)),
                    ("leaks-fixed", self.leaks_fixed), ("corruptions-fixed", self.corruptions_fixed),
                    ("total-clusters", self.total_clusters),
                    ("allocated-clusters", self.allocated_clusters),
                    ("fragmented-clusters", self.fragmented_clusters),
                    ("compressed-clusters", self.compressed_clusters)]
        fields += [(k, v) for k, v in optional if v]
        return dict(sorted(fields, key=lambda kv: _qdict_bucket(kv[0])))

    # ---- output -----------------------------------------------------------------------
    def human(self):
        """qemu-img check's stdout (empty when the check failed)."""
        if self.failed is not None:
            return ""
        nc, nl, ne = len(self.corruptions), len(self.leaks), len(self.check_errors)
        out = []
        if not (nc or nl or ne):
            out.append("No errors were found on the image.\n")
        if nc:
            out.append("\n%d errors were found on the image.\nData may be corrupted, or further "
                       "writes to the image may corrupt it.\n" % nc)
        if nl:
            out.append("\n%d leaked clusters were found on the image.\nThis means waste of disk "
                       "space, but no harm to data.\n" % nl)
        if ne:
            out.append("\n%d internal errors have occurred during the check.\n" % ne)
        if self.total_clusters and self.allocated_clusters:
            a = self.allocated_clusters
            out.append("%d/%d = %0.2f%% allocated, %0.2f%% fragmented, %0.2f%% compressed "
                       "clusters\n" % (a, self.total_clusters, a * 100.0 / self.total_clusters,
                                       self.fragmented_clusters * 100.0 / a,
                                       self.compressed_clusters * 100.0 / a))
        if self.image_end_offset:
            out.append("Image end offset: %d\n" % self.image_end_offset)
        return "".join(out)

    def json(self):
        """qemu-img check --output=json's stdout (empty when the check failed)."""
        if self.failed is not None:
            return ""
        items = ["    %s: %s" % (qemu_json_string(k), qemu_json_string(v) if isinstance(v, str)
                                   else str(v)) for k, v in self.as_dict().items()]
        return "{\n" + ",\n".join(items) + "\n}\n"

    def stderr(self):
        """qemu-img check's stderr: the messages, then "Check failed" when
        the check could not complete."""
        lines = list(self.messages)
        if self.failed is not None:
            lines.append("qemu-img: Check failed: %s" % self.failed)
        elif self.check_errors:
            lines.append("qemu-img: Check failed")
        return self.preamble + "".join(line + "\n" for line in lines)


def _qdict_bucket(key):
    """The bucket of QEMU's QDict (512 buckets) that *key* hashes to."""
    raw = key.encode()
    value = (0x238F13AF * len(raw)) & 0xFFFFFFFF
    for i, c in enumerate(raw):
        value = (value + (c << (i * 5 % 24))) & 0xFFFFFFFF
    return ((1103515243 * value + 12345) & 0xFFFFFFFF) % 512


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
            "\t": "\\t"}


def qemu_json_string(text):
    """*text* (a str; undecodable bytes as surrogate escapes) quoted as
    QEMU's JSON writer quotes it."""
    if isinstance(text, str):
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    out = ['"']
    for ch in text:
        cp = ord(ch)
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif 0x20 <= cp < 0x7F:
            out.append(ch)
        elif cp > 0xFFFF:
            cp -= 0x10000
            out.append("\\u%04X\\u%04X" % (0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF)))
        else:
            out.append("\\u%04X" % cp)
    out.append('"')
    return "".join(out)
