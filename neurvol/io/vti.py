"""VTK XML ImageData (``.vti``) volumes, as ParaView reads and writes them.

Written with numpy and ``xml.etree`` only (no ``vtk`` dependency), following the VTK XML
file format (``docs.vtk.org``, "XML File Formats"):

* Writer: ``<VTKFile type="ImageData" version="1.0" byte_order="LittleEndian"
  header_type="UInt64">``, one ``Piece`` with one point-data array ``volume``, stored raw
  in ``<AppendedData encoding="raw">`` after a ``_`` marker as ``[UInt64 byte count][data]``
  (or inline ``format="binary"`` base64 with ``encoding="base64"``). ``WholeExtent`` is
  ``0 X-1 0 Y-1 0 Z-1``; ``Spacing`` and ``Origin`` are x, y, z.
* Reader: ``format="ascii"``, ``"binary"`` (base64; header encoded separately or together
  with the data) and ``"appended"`` (``raw`` or ``base64`` encoding), uncompressed or
  ``compressor="vtkZLibDataCompressor"`` (blocked zlib: header ``[#blocks][block size]
  [last block size][compressed size]*#blocks``), ``UInt32`` or ``UInt64`` headers, either
  byte order. Uncompressed raw-appended data comes back as a read-only memmap.

Axis order: VTK points run x fastest, then y, then z, which is exactly C order of an array
indexed ``[z, y, x]``; so the data is written as-is and only the extent, spacing and origin
triples are reversed. Every count and offset read from a file is checked against the file
size and the expected byte count before anything is allocated; a malformed file raises
:class:`~neurvol.errors.NeurvolIOError`.
"""
from __future__ import annotations

import base64
import binascii
import logging
import math
import mmap
import re
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .._atomic import atomic_write
from ..errors import NeurvolInputError, NeurvolIOError
from ..volume_checks import MAX_AXIS, MAX_VOXELS
from ._registry import VolumeData, VolumeFormat, register_format

log = logging.getLogger(__name__)

#: VTK type names <-> numpy dtypes (byte order applied from the file).
VTK_TYPES: Dict[str, str] = {
    "Int8": "i1", "UInt8": "u1", "Int16": "i2", "UInt16": "u2", "Int32": "i4", "UInt32": "u4",
    "Int64": "i8", "UInt64": "u8", "Float32": "f4", "Float64": "f8",
    # legacy names some writers use
    "Char": "i1", "UnsignedChar": "u1", "Short": "i2", "UnsignedShort": "u2", "Int": "i4",
    "UnsignedInt": "u4", "Long": "i8", "UnsignedLong": "u8", "Float": "f4", "Double": "f8",
}
_NP_TO_VTK = {"i1": "Int8", "u1": "UInt8", "i2": "Int16", "u2": "UInt16", "i4": "Int32",
              "u4": "UInt32", "i8": "Int64", "u8": "UInt64", "f4": "Float32", "f8": "Float64"}

_ARRAY_NAME = "volume"
# The XML part of a file with appended data must start within this many bytes.
_MAX_XML = 64 << 20
# Write raw data in slabs of about this many bytes.
_CHUNK_BYTES = 64 << 20


def _fail(path: Path, why: str) -> NeurvolIOError:
    return NeurvolIOError(f"cannot read {str(path)!r} as VTK ImageData (.vti): {why}")


# --------------------------------------------------------------------------- writing


def _triple_text(values: Sequence[float]) -> str:
    return " ".join(repr(float(v)) for v in values)


def _header(arr: np.ndarray, spacing: Sequence[float], origin: Sequence[float], fmt: str) -> str:
    nz, ny, nx = arr.shape
    extent = f"0 {nx - 1} 0 {ny - 1} 0 {nz - 1}"
    vtype = _NP_TO_VTK[arr.dtype.newbyteorder("=").str[1:]]
    rng = ""
    if arr.size:
        lo, hi = _minmax(arr)
        rng = f' RangeMin="{lo!r}" RangeMax="{hi!r}"'
    data_attrs = ('format="appended" offset="0"' if fmt == "appended" else 'format="binary"')
    return (
        '<?xml version="1.0"?>\n'
        '<VTKFile type="ImageData" version="1.0" byte_order="LittleEndian" header_type="UInt64">\n'
        f'  <ImageData WholeExtent="{extent}" Origin="{_triple_text(origin[::-1])}" '
        f'Spacing="{_triple_text(spacing[::-1])}">\n'
        f'    <Piece Extent="{extent}">\n'
        f'      <PointData Scalars="{_ARRAY_NAME}">\n'
        f'        <DataArray type="{vtype}" Name="{_ARRAY_NAME}" NumberOfComponents="1" '
        f'{data_attrs}{rng}>'
    )


def _minmax(arr: np.ndarray) -> Tuple[float, float]:
    lo, hi = math.inf, -math.inf
    for chunk in _slabs(arr):
        lo, hi = min(lo, float(chunk.min())), max(hi, float(chunk.max()))
    return lo, hi


def _slabs(arr: np.ndarray) -> Iterator[np.ndarray]:
    """C-order little-endian slabs of ``arr`` along axis 0."""
    out_dt = arr.dtype.newbyteorder("<")
    step = max(1, _CHUNK_BYTES // max(1, arr[0].nbytes))
    for i in range(0, arr.shape[0], step):
        yield np.ascontiguousarray(arr[i:i + step], dtype=out_dt)


def write_vti(path: Path, array: np.ndarray, *, spacing: Sequence[float] = (1.0, 1.0, 1.0),
              origin: Sequence[float] = (0.0, 0.0, 0.0), encoding: str = "raw") -> None:
    """Write ``array`` (indexed ``[z, y, x]``) as a ``.vti`` file ParaView opens; atomically.

    Args:
        path: output file.
        array: 3-D numeric array (bool is written as UInt8, float16 as Float32).
        spacing, origin: voxel size and position of voxel (0, 0, 0), z, y, x order.
        encoding: ``"raw"`` (raw appended data, compact, streamed) or ``"base64"`` (inline
            base64 binary: a pure-text file).
    """
    arr = np.asanyarray(array)
    if arr.ndim != 3 or 0 in arr.shape:
        raise NeurvolInputError(f"can only write a non-empty 3-D volume (z, y, x) to .vti, got "
                                f"shape {arr.shape}")
    if arr.dtype.kind == "b":
        arr = arr.astype(np.uint8)
    elif arr.dtype.kind == "f" and arr.dtype.itemsize == 2:
        arr = arr.astype(np.float32)
    if arr.dtype.newbyteorder("=").str[1:] not in _NP_TO_VTK:
        raise NeurvolInputError(f"cannot write dtype {arr.dtype} to .vti; use an integer or float dtype")
    if encoding not in ("raw", "base64"):
        raise NeurvolInputError(f"encoding must be 'raw' or 'base64', got {encoding!r}")
    nbytes = int(arr.size) * arr.dtype.itemsize
    header = struct_u64(nbytes)

    if encoding == "raw":
        def chunks() -> Iterator[bytes]:
            yield (_header(arr, spacing, origin, "appended") + "</DataArray>\n"
                   "      </PointData>\n      <CellData>\n      </CellData>\n    </Piece>\n"
                   "  </ImageData>\n  <AppendedData encoding=\"raw\">\n   _").encode("ascii")
            yield header
            for slab in _slabs(arr):
                yield slab.tobytes()
            yield b"\n  </AppendedData>\n</VTKFile>\n"
    else:
        def chunks() -> Iterator[bytes]:
            yield (_header(arr, spacing, origin, "binary") + "\n").encode("ascii")
            yield base64.b64encode(header)       # the header is encoded on its own (VTK does)
            rest = b""
            for slab in _slabs(arr):
                data = rest + slab.tobytes()
                cut = len(data) - len(data) % 3
                yield base64.b64encode(data[:cut])
                rest = data[cut:]
            yield base64.b64encode(rest)
            yield (b"\n        </DataArray>\n      </PointData>\n      <CellData>\n      </CellData>\n"
                   b"    </Piece>\n  </ImageData>\n</VTKFile>\n")
    atomic_write(path, chunks())


def struct_u64(n: int) -> bytes:
    """``n`` as a little-endian UInt64 block header."""
    return int(n).to_bytes(8, "little")


# --------------------------------------------------------------------------- reading


def _parse_ints(text: Optional[str], n: int, what: str, path: Path) -> List[int]:
    try:
        vals = [int(t) for t in (text or "").split()]
    except ValueError:
        raise _fail(path, f"{what} {text!r} is not {n} integers") from None
    if len(vals) != n:
        raise _fail(path, f"{what} {text!r} is not {n} integers")
    return vals


def _parse_floats(text: Optional[str], default: float, what: str, path: Path) -> Tuple[float, float, float]:
    if text is None:
        return (default, default, default)
    try:
        vals = [float(t) for t in text.split()]
    except ValueError:
        raise _fail(path, f"{what} {text!r} is not 3 numbers") from None
    if len(vals) != 3 or not all(math.isfinite(v) for v in vals):
        raise _fail(path, f"{what} {text!r} is not 3 finite numbers")
    return (vals[0], vals[1], vals[2])


class _Blob:
    """Bytes of the file after the XML part (appended data), as a bounded view."""

    def __init__(self, buf: Any, start: int, end: int) -> None:
        self.buf, self.start, self.end = buf, start, end

    def take(self, offset: int, n: int, path: Path, what: str) -> bytes:
        a = self.start + offset
        if offset < 0 or n < 0 or a + n > self.end:
            raise _fail(path, f"{what} ({n} bytes at offset {offset}) runs past the end of the file")
        return bytes(self.buf[a:a + n])


def _uints(raw: bytes, dt: np.dtype) -> List[int]:
    return [int(v) for v in np.frombuffer(raw, dtype=dt)]


def _inflate(path: Path, read_header: Any, read_bytes: Any, hdt: np.dtype, expected: int) -> bytes:
    """Decode vtkZLibDataCompressor blocks. ``read_header(nbytes)`` reads header bytes,
    ``read_bytes(nbytes)`` reads compressed payload bytes (both sequential)."""
    hs = hdt.itemsize
    nblocks, usize, psize = _uints(read_header(3 * hs, None), hdt)
    if nblocks == 0:
        if expected:
            raise _fail(path, "compressed array has no blocks")
        return b""
    if usize == 0 or nblocks > expected // usize + 2 or nblocks > (1 << 24):
        raise _fail(path, f"compressed header is inconsistent ({nblocks} blocks of {usize} bytes "
                          f"for {expected} bytes)")
    total = (nblocks - 1) * usize + (psize if psize else usize)
    if total != expected:
        raise _fail(path, f"compressed array holds {total} bytes; the extent and type need {expected}")
    csizes = _uints(read_header(nblocks * hs, 3 * hs), hdt)
    out = bytearray()
    for i, cs in enumerate(csizes):
        want = usize if (i < nblocks - 1 or psize == 0) else psize
        comp = read_bytes(cs)
        d = zlib.decompressobj()
        try:
            block = d.decompress(comp, want)
        except zlib.error as e:
            raise _fail(path, f"zlib block {i} is corrupt ({e})") from None
        if len(block) != want or d.unconsumed_tail:
            raise _fail(path, f"zlib block {i} inflates to the wrong size (expected {want} bytes)")
        out += block
    return bytes(out)


def _b64(text: bytes, path: Path) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise _fail(path, f"invalid base64 data ({e})") from None


def _b64_len(nbytes: int) -> int:
    return 4 * ((nbytes + 2) // 3)


def _decode_base64_array(path: Path, text: bytes, hdt: np.dtype, compressed: bool, expected: int) -> bytes:
    """Inline or appended base64: header base64-encoded alone (VTK) or together with data."""
    text = re.sub(rb"\s+", b"", text)
    hs = hdt.itemsize
    if compressed:
        # The header is encoded on its own: [nblocks][usize][psize][csize...].
        first = _b64(text[:_b64_len(3 * hs)], path)
        if len(first) < 3 * hs:
            raise _fail(path, "base64 compressed header is truncated")
        nblocks = _uints(first[:hs], hdt)[0]
        if nblocks > (1 << 24):
            raise _fail(path, f"compressed header claims {nblocks} blocks")
        hlen = _b64_len((3 + nblocks) * hs)
        header = _b64(text[:hlen], path)
        payload = _b64(text[hlen:], path)
        ppos = [0]

        def read_header(n: int, at: Optional[int]) -> bytes:
            a = 0 if at is None else at
            if a + n > len(header):
                raise _fail(path, "base64 compressed header is truncated")
            return header[a:a + n]

        def read_bytes(n: int) -> bytes:
            a = ppos[0]
            if n < 0 or a + n > len(payload):
                raise _fail(path, "compressed data is shorter than its header says")
            ppos[0] = a + n
            return payload[a:a + n]

        return _inflate(path, read_header, read_bytes, hdt, expected)
    hlen = _b64_len(hs)
    if text[:hlen].endswith(b"="):          # header encoded separately (what VTK writes)
        header = _b64(text[:hlen], path)
        data = _b64(text[hlen:], path)
    else:                                   # header and data encoded together
        both = _b64(text, path)
        header, data = both[:hs], both[hs:]
    if len(header) < hs:
        raise _fail(path, "binary data array is empty")
    n = _uints(header[:hs], hdt)[0]
    if n != expected or len(data) < n:
        raise _fail(path, f"binary data array holds {min(n, len(data))} bytes; the extent and type "
                          f"need {expected}")
    return data[:n]


def _read_xml(path: Path, buf: Any) -> Tuple[ET.Element, int]:
    """Parse the XML part; returns (root, offset of the first byte after ``_`` or -1)."""
    size = len(buf)
    head = bytes(buf[:min(size, _MAX_XML)])
    if b"<!ENTITY" in head or b"<!DOCTYPE" in head:
        raise _fail(path, "DOCTYPE/ENTITY declarations are not allowed")
    m = re.search(rb"<AppendedData\b[^>]*>", head)
    if m:
        under = head.find(b"_", m.end())
        if under < 0 or head[m.end():under].strip():
            raise _fail(path, "<AppendedData> does not start with '_'")
        text = head[:m.start()] + m.group(0) + b"</AppendedData></VTKFile>"
        start = under + 1
    else:
        if size > len(head):
            head = bytes(buf[:size])   # inline data: the whole file is XML
        text = head
        start = -1
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise _fail(path, f"malformed XML ({e})") from None
    return root, start


def read_vti(path: Path, *, shape: Optional[Tuple[int, ...]] = None, dtype: Optional[object] = None,
             byte_order: str = "little") -> VolumeData:
    """Read the first point-data array of a ``.vti`` file as a ``[z, y, x]`` array.

    ``shape``/``dtype``/``byte_order`` are ignored (the file says). Cell data and
    multi-component arrays are refused with a message.

    Raises:
        NeurvolIOError: not a valid/supported ``.vti`` file.
    """
    with open(path, "rb") as fh:
        size = fh.seek(0, 2)
        if size == 0:
            raise _fail(path, "the file is empty")
        buf: Any = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        return _read_vti(path, buf, size)
    except NeurvolIOError:
        raise
    except (ValueError, OverflowError, MemoryError) as e:
        raise _fail(path, str(e)) from None
    finally:
        buf.close()


def _read_vti(path: Path, buf: Any, size: int) -> VolumeData:
    root, start = _read_xml(path, buf)
    if root.tag != "VTKFile" or root.get("type") != "ImageData":
        raise _fail(path, f"root is <{root.tag} type={root.get('type')!r}>; need <VTKFile type=\"ImageData\">")
    bo = root.get("byte_order", "LittleEndian")
    if bo not in ("LittleEndian", "BigEndian"):
        raise _fail(path, f"byte_order {bo!r} is not LittleEndian or BigEndian")
    order = "<" if bo == "LittleEndian" else ">"
    ht = root.get("header_type", "UInt32")
    if ht not in ("UInt32", "UInt64"):
        raise _fail(path, f"header_type {ht!r} is not UInt32 or UInt64")
    hdt = np.dtype(order + ("u4" if ht == "UInt32" else "u8"))
    compressor = root.get("compressor")
    if compressor not in (None, "", "vtkZLibDataCompressor"):
        raise _fail(path, f"compressor {compressor!r} is not supported (only vtkZLibDataCompressor); "
                          "resave without compression or with zlib in ParaView")
    compressed = bool(compressor)

    image = root.find("ImageData")
    if image is None:
        raise _fail(path, "no <ImageData> element")
    ext = _parse_ints(image.get("WholeExtent"), 6, "WholeExtent", path)
    pieces = image.findall("Piece")
    if len(pieces) != 1:
        raise _fail(path, f"{len(pieces)} <Piece> elements; only single-piece files are supported")
    piece = pieces[0]
    pext = _parse_ints(piece.get("Extent", image.get("WholeExtent")), 6, "Piece Extent", path)
    if pext != ext:
        raise _fail(path, f"piece extent {pext} differs from WholeExtent {ext}")
    nx, ny, nz = (ext[1] - ext[0] + 1, ext[3] - ext[2] + 1, ext[5] - ext[4] + 1)
    dims = (nz, ny, nx)
    if min(dims) < 1 or max(dims) > MAX_AXIS or math.prod(dims) > MAX_VOXELS:
        raise _fail(path, f"extent {ext} gives an impossible grid {nx}x{ny}x{nz} (x, y, z)")
    spacing = _parse_floats(image.get("Spacing"), 1.0, "Spacing", path)[::-1]
    origin = _parse_floats(image.get("Origin"), 0.0, "Origin", path)[::-1]
    direction = image.get("Direction")
    if direction is not None:
        try:
            d = [float(t) for t in direction.split()]
        except ValueError:
            d = []
        if d != [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0]:
            log.warning("%s: Direction %r is not the identity; it is ignored", path, direction)

    pd = piece.find("PointData")
    arrays = pd.findall("DataArray") if pd is not None else []
    if not arrays:
        cd = piece.find("CellData")
        if cd is not None and cd.findall("DataArray"):
            raise _fail(path, "it has cell data only; neurvol reads point data (resample cells to "
                              "points, e.g. ParaView's Cell Data to Point Data filter)")
        raise _fail(path, "no point-data array")
    wanted = pd.get("Scalars") if pd is not None else None
    da = next((a for a in arrays if wanted and a.get("Name") == wanted), arrays[0])
    if len(arrays) > 1:
        log.warning("%s has %d point-data arrays; reading %r", path, len(arrays), da.get("Name"))
    ncomp = da.get("NumberOfComponents", "1")
    if ncomp != "1":
        raise _fail(path, f"array {da.get('Name')!r} has {ncomp} components; need a scalar field")
    vtype = da.get("type")
    if vtype not in VTK_TYPES:
        raise _fail(path, f"array type {vtype!r} is not supported (use one of Int8..Float64)")
    dt = np.dtype(order + VTK_TYPES[vtype])
    count = math.prod(dims)
    expected = count * dt.itemsize
    fmt = da.get("format", "ascii")

    if fmt == "ascii":
        text = (da.text or "").split()
        if len(text) != count:
            raise _fail(path, f"ascii array has {len(text)} values; the extent needs {count}")
        try:
            arr = np.array(text, dtype=np.float64 if dt.kind == "f" else np.int64 if dt.kind == "i"
                           else np.uint64).astype(dt.newbyteorder("="))
        except (ValueError, OverflowError):
            raise _fail(path, "ascii array holds non-numbers") from None
        return VolumeData(arr.reshape(dims), spacing, origin)  # type: ignore[arg-type]
    if fmt == "binary":
        raw = _decode_base64_array(path, (da.text or "").encode("ascii"), hdt, compressed, expected)
        return VolumeData(np.frombuffer(raw, dtype=dt).reshape(dims), spacing, origin)  # type: ignore[arg-type]
    if fmt != "appended":
        raise _fail(path, f"DataArray format {fmt!r} is not ascii, binary or appended")

    if start < 0:
        raise _fail(path, "array is 'appended' but there is no <AppendedData>")
    app = root.find("AppendedData")
    enc = app.get("encoding", "raw") if app is not None else "raw"
    try:
        offset = int(da.get("offset", "0"))
    except ValueError:
        raise _fail(path, f"offset {da.get('offset')!r} is not an integer") from None
    if offset < 0 or start + offset >= size:
        raise _fail(path, f"offset {offset} lies outside the file")
    blob = _Blob(buf, start, size)
    if enc == "base64":
        end = bytes(buf[start:size]).find(b"<")
        text = bytes(buf[start + offset:start + end if end >= 0 else size])
        raw = _decode_base64_array(path, text, hdt, compressed, expected)
        return VolumeData(np.frombuffer(raw, dtype=dt).reshape(dims), spacing, origin)  # type: ignore[arg-type]
    if enc != "raw":
        raise _fail(path, f"AppendedData encoding {enc!r} is not raw or base64")
    hs = hdt.itemsize
    if compressed:
        pos = [offset + 3 * hs]

        def read_header(n: int, at: Optional[int]) -> bytes:
            return blob.take(offset + (0 if at is None else at), n, path, "compressed header")

        def read_bytes(n: int) -> bytes:
            if pos[0] == offset + 3 * hs:   # payload follows the whole header
                nblocks = _uints(blob.take(offset, hs, path, "header"), hdt)[0]
                pos[0] = offset + (3 + nblocks) * hs
            b = blob.take(pos[0], n, path, "compressed block")
            pos[0] += n
            return b

        raw = _inflate(path, read_header, read_bytes, hdt, expected)
        return VolumeData(np.frombuffer(raw, dtype=dt).reshape(dims), spacing, origin)  # type: ignore[arg-type]
    n = _uints(blob.take(offset, hs, path, "block header"), hdt)[0]
    if n != expected:
        raise _fail(path, f"appended array holds {n} bytes; the extent and type need {expected}")
    data_at = start + offset + hs
    if data_at + n > size:
        raise _fail(path, f"appended array ({n} bytes) runs past the end of the file")
    arr = np.memmap(path, dtype=dt, mode="r", offset=data_at, shape=dims, order="C")
    return VolumeData(arr, spacing, origin)  # type: ignore[arg-type]


register_format(VolumeFormat(
    name="vti", extensions=(".vti",), description="VTK XML ImageData (ParaView)",
    read=read_vti, write=write_vti, writes_meta=True))
