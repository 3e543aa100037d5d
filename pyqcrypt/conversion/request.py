# SPDX-License-Identifier: LGPL-2.1-or-later
"""ConvertRequest: everything one conversion is asked to do, as one frozen
object that travels from ``pyqcrypt.convert`` (and the CLI) to the path
that carries it out, instead of twenty keyword arguments handed on by
position.  Secrets are kept out of its repr."""

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Sequence, Union

if TYPE_CHECKING:
    from ..crypto import CipherSpec
    from ..image import Secret, StrPath
    from ..luks.luks2_format import Luks2Request

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ConvertRequest:
    """One conversion of *src* into *dst*; the fields are
    ``pyqcrypt.convert``'s keywords (see its docstring)."""

    src: "StrPath"
    dst: "StrPath"
    dst_format: str = "qcow2"
    keep_ciphertext: bool = False
    src_passphrase: "Union[Secret, Sequence[Secret], None]" = field(default=None, repr=False)
    src_header: "Optional[StrPath]" = None
    src_format: Optional[str] = None
    dst_passphrase: "Optional[Secret]" = field(default=None, repr=False)
    dst_header: "Optional[StrPath]" = None
    data_file: "Optional[StrPath]" = None
    data_file_existing: bool = False
    cluster_size: int = 65536
    spec: "Union[str, CipherSpec, None]" = None
    iter_time_ms: Optional[int] = None
    iterations: Optional[int] = None
    qcow2_options: Optional[Dict[str, Any]] = None
    progress: Optional[Progress] = field(default=None, repr=False)
    key_slot: Optional[int] = None
    allow_insecure: bool = False
    existing_target: bool = False
    verify: bool = False
    hash_name: Optional[str] = None
    force_share: bool = False
    src_backing_passphrase: "Union[Secret, Sequence[Optional[Secret]], None]" = field(
        default=None, repr=False)
    luks2_request: "Optional[Luks2Request]" = None

    @property
    def detached(self) -> bool:
        """The destination is a detached LUKS header (its payload elsewhere)."""
        return self.dst_header is not None

    @property
    def header_target(self) -> "StrPath":
        """The file a keep-ciphertext conversion to LUKS writes: the
        detached header when there is one, else the destination."""
        return self.dst_header if self.dst_header is not None else self.dst

    @property
    def first_src_passphrase(self) -> "Optional[Secret]":
        """The source's own passphrase (the first, when several are carried)."""
        p = self.src_passphrase
        if isinstance(p, (list, tuple)):
            return p[0] if p else None
        return p  # type: ignore[return-value]
