"""Recognise files that are not ``.nvol`` so the error can say what they are."""
from __future__ import annotations

import codecs
from typing import Optional

from .format import MAGIC

# (prefix, description, advice). Checked in order; first match wins.
_FOREIGN = (
    (b"\x93NUMPY", "a .npy file", "use `neurvol pack` to compress it"),
    (b"PK\x03\x04", "a zip archive (.npz?)", "extract the array and use `neurvol pack`"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 (.h5/.nc) file", "use `neurvol pack` to compress it"),
    (b"CDF\x01", "a NetCDF classic file", "use `neurvol pack` to compress it"),
    (b"CDF\x02", "a NetCDF classic file", "use `neurvol pack` to compress it"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image", "neurvol reads volumes, not images"),
    (b"\x1f\x8b", "a gzip-compressed file", "decompress it first"),
    (b"\x28\xb5\x2f\xfd", "a zstandard-compressed file", "decompress it first"),
    (b"<?xml", "an XML file (.vti?)", "use `neurvol pack` to compress it"),
    (b"<VTKFile", "a VTK XML file", "use `neurvol pack` to compress it"),
    (b"# vtk", "a legacy VTK file", "convert it to .vti or .npy and use `neurvol pack`"),
)


def describe_foreign(head: bytes) -> Optional[str]:
    """Return a sentence saying what *head* (the first bytes of a file) looks like.

    Returns None when nothing specific is recognised.
    """
    for prefix, what, advice in _FOREIGN:
        if head.startswith(prefix):
            return f"this is {what}, not .nvol; {advice}"
    text_mode = _text_mode_damage(head)
    if text_mode:
        return text_mode
    # NIfTI-1: the header starts with sizeof_hdr == 348 (either byte order).
    if head[:4] in (b"\x5c\x01\x00\x00", b"\x00\x00\x01\x5c"):
        return "this looks like a NIfTI (.nii) file, not .nvol; use `neurvol pack` to compress it"
    if head and _looks_like_text(head):
        return "this is a text file, not .nvol"
    return None


def _text_mode_damage(head: bytes) -> Optional[str]:
    """Detect an .nvol signature mangled by a text-mode (ASCII) transfer."""
    # "NVL" survives such transfers; the bytes around it (\x89, \r\n, \n) do not.
    if head[1:4] == b"NVL" and head[:8] != MAGIC:
        return ("the .nvol signature is damaged, typically by a text-mode transfer "
                "(FTP ASCII mode, a CRLF conversion, a 7-bit channel); copy the file "
                "again in binary mode")
    return None


def _looks_like_text(head: bytes) -> bool:
    try:
        # final=False: *head* may end in the middle of a multi-byte character.
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\r\n\t" for c in text)
