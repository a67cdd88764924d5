"""Tensor records of payload kind 2 (codec ``neurvol`` version 2): each record stores one
tensor with its own quantizer and entropy-coded streams of explicit length, so a reader can
attribute every byte (``neurvol info``) without guessing.

Record: ``u8 method, u8 flags``; if ``flags & 1`` a mask stream (the tensor's non-zero
pattern, bit-packed LSB-first, ``ceil(n / 8)`` byte symbols) follows and the method's
values cover only the kept elements, in C order (the others are 0); then the body:

* ``0`` raw32 / ``1`` raw16: one stream of the float32 / binary16 bit patterns;
* ``2`` kmeans: ``u8 book_kind`` (0 binary16, 1 float32), ``u32 k``, the ``k`` codebook
  values, one stream of indices ``< k``;
* ``3`` lorenzo: ``f32 step``, one stream of zigzagged 3-D Lorenzo residuals of
  ``q = round(value / step)`` over the tensor's last three axes (:mod:`.lorenzo`); the
  value is ``q * step``. Never masked.
* ``4`` interp: ``f32 step``, one stream of zigzagged codes of the multilevel
  interpolation predictor over the tensor's last three axes (:mod:`.interp`); every value
  is within ``step / 2``. Never masked.
* ``5`` vq: the tensor is ``(..., C, D, H, W)``; ``u8 book_kind`` (0 binary16, 1 float32),
  ``u32 k``, the ``k x C`` codebook (row-major), one stream of ``n / C`` indices ``< k``,
  one per vertex in C order of the positions without the channel axis; a vertex's ``C``
  values are its codebook row (:mod:`.vq`). Never masked.

Streams are :mod:`.streams`. ``spec/payload.md`` §2.2 is the normative text.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import struct
from typing import Callable, Sequence, Tuple

import numpy as np

from ..errors import NeurvolFormatError
from .bitpack import pack_bits
from .interp import MAX_CODE, interp_decode, interp_encode
from .kmeans import kmeans_quantize, nearest_centroid
from .lorenzo import lorenzo_reconstruct, lorenzo_residuals, unzigzag, zigzag
from .vq import from_vectors, grid_vectors, nearest_vector, vector_kmeans
from .streams import CODER_NAMES, decode_stream
from .streams import encode_stream as _encode_stream

CODER_IDS = {v: k for k, v in CODER_NAMES.items()}

METHODS = {"raw32": 0, "raw16": 1, "kmeans": 2, "lorenzo": 3, "interp": 4, "vq": 5}
#: Methods for dense grids: a step and one stream of zigzagged codes.
GRID_METHODS = ("lorenzo", "interp")
METHOD_NAMES = {v: k for k, v in METHODS.items()}
FLAG_MASK = 1
MAX_CENTROIDS = 65536
_BOOK_F16, _BOOK_F32 = 0, 1

Take = Callable[[int, str], bytes]


@dataclasses.dataclass(frozen=True)
class RecordStats:
    """Where one record's bytes went (``NeuralVolume.info()["bytes"]``)."""

    name: str
    method: str
    coder: str       # coder of the value stream
    total: int       # the whole record
    codebook: int = 0
    mask: int = 0

    @property
    def values(self) -> int:
        return self.total - self.codebook - self.mask


#: Values below this magnitude survive a binary16 round trip (largest finite: 65504) with
#: room for the rounding; larger ones are stored as float32.
F16_LIMIT = 65000.0


def fits_f16(a: np.ndarray) -> bool:
    """Whether every value of ``a`` can be stored as IEEE binary16 without overflow."""
    return bool(np.all(np.abs(a) < F16_LIMIT))


def encode_record(arr: np.ndarray, method: str, *, k: int = 0, step: float = 0.0,
                  masked: bool = False, coders: Sequence[str] = ("raw", "zstd", "rans")) -> bytes:
    """One record for ``arr`` (float32). ``masked``: store the zero pattern as a mask and
    quantize only the non-zero elements (pruned tensors). ``coders``: entropy coders to
    try for each stream (the smallest wins)."""
    ids = tuple(CODER_IDS[c] for c in coders)

    def encode_stream(sym: np.ndarray) -> bytes:
        return _encode_stream(sym, ids)

    arr = np.asarray(arr, dtype=np.float32)
    flat = arr.reshape(-1)
    if method in GRID_METHODS:
        if masked:
            raise ValueError(f"{method} records cannot be masked")
        if not (math.isfinite(step) and step > 0) or arr.ndim < 3:
            raise ValueError(f"{method} needs a finite step > 0 and a tensor with >= 3 axes")
        step = float(np.float32(step))
        return (bytes([METHODS[method], 0]) + struct.pack("<f", step)
                + encode_stream(zigzag(grid_codes(arr, method, step)[0])))
    if method == "vq":
        if masked:
            raise ValueError("vq records cannot be masked")
        if not 1 <= k <= MAX_CENTROIDS:
            raise ValueError(f"k must be in [1, {MAX_CENTROIDS}]")
        kind, book, idx = _vq_parts(arr, k)
        return (bytes([METHODS["vq"], 0]) + struct.pack("<BI", kind, book.shape[0])
                + book.tobytes() + encode_stream(idx))
    flags = 0
    mask = b""
    if masked:
        keep = flat != 0
        flags = FLAG_MASK
        mask = encode_stream(np.frombuffer(pack_bits(keep.astype(np.int64), 1), np.uint8))
        flat = flat[keep]
    if method == "raw16" and not fits_f16(flat):
        method = "raw32"
    if method == "raw32":
        body = encode_stream(flat.astype("<f4").view("<u4"))
    elif method == "raw16":
        body = encode_stream(flat.astype("<f2").view("<u2"))
    elif method == "kmeans":
        if not 1 <= k <= MAX_CENTROIDS:
            raise ValueError(f"k must be in [1, {MAX_CENTROIDS}]")
        codebook = kmeans_quantize(flat, k)[0] if flat.size else np.zeros(1, np.float32)
        kind = _BOOK_F16 if fits_f16(codebook) else _BOOK_F32
        book = codebook.astype("<f2" if kind == _BOOK_F16 else "<f4")
        idx = nearest_centroid(flat, book.astype(np.float32))   # against the stored codebook
        body = struct.pack("<BI", kind, book.size) + book.tobytes() + encode_stream(idx)
    else:
        raise ValueError(f"unknown method {method!r}")
    return bytes([METHODS[method], flags]) + mask + body


def decode_record(take: Take, shape: Sequence[int], name: str) -> Tuple[np.ndarray, RecordStats]:
    """Read one record of a tensor of ``shape``; returns its float32 values (that shape)
    and where its bytes went."""
    counter = _Counter(take)
    n = math.prod(shape)
    method, flags = counter(2, name)
    if method not in METHOD_NAMES or flags & ~FLAG_MASK:
        raise NeurvolFormatError(f"tensor {name!r}: unknown method {method} or flags {flags}")
    mname = METHOD_NAMES[method]
    keep = None
    mask_bytes = 0
    if flags & FLAG_MASK:
        if mname in GRID_METHODS + ("vq",):
            raise NeurvolFormatError(f"tensor {name!r}: a {mname} record cannot be masked")
        packed, _ = decode_stream(counter, (n + 7) // 8, f"{name} mask", max_symbol=255)
        keep = _unpack_mask(packed.astype(np.uint8, copy=False), n, name)
        mask_bytes = counter.count - 2
    m = int(np.count_nonzero(keep)) if keep is not None else n
    book_bytes = 0
    if mname == "raw32":
        bits, coder = decode_stream(counter, m, name, max_symbol=(1 << 32) - 1)
        values = bits.astype("<u4").view("<f4").astype(np.float32)
    elif mname == "raw16":
        bits, coder = decode_stream(counter, m, name, max_symbol=(1 << 16) - 1)
        values = bits.astype("<u2").view("<f2").astype(np.float32)
    elif mname == "kmeans":
        kind, k = struct.unpack("<BI", counter(5, name))
        if kind not in (_BOOK_F16, _BOOK_F32) or not 1 <= k <= MAX_CENTROIDS:
            raise NeurvolFormatError(f"tensor {name!r}: invalid k-means header (kind {kind}, k {k})")
        width = 2 if kind == _BOOK_F16 else 4
        book = np.frombuffer(counter(width * k, name), dtype="<f2" if width == 2 else "<f4")
        book_bytes = 5 + width * k
        idx, coder = decode_stream(counter, m, name, max_symbol=k - 1)
        values = book[idx].astype(np.float32)    # idx < k: checked by decode_stream
    elif mname == "vq":
        if len(shape) < 4 or shape[-4] < 1:
            raise NeurvolFormatError(f"tensor {name!r}: vq needs >= 4 axes, shape {tuple(shape)}")
        c = int(shape[-4])
        kind, k = struct.unpack("<BI", counter(5, name))
        if kind not in (_BOOK_F16, _BOOK_F32) or not 1 <= k <= MAX_CENTROIDS:
            raise NeurvolFormatError(f"tensor {name!r}: invalid vq header (kind {kind}, k {k})")
        width = 2 if kind == _BOOK_F16 else 4
        book = np.frombuffer(counter(width * k * c, name),
                             dtype="<f2" if width == 2 else "<f4").reshape(k, c)
        book_bytes = 5 + width * k * c
        idx, coder = decode_stream(counter, n // c, name, max_symbol=k - 1)
        values = from_vectors(book[idx].astype(np.float32),
                              tuple(shape)).reshape(-1)
    else:
        if len(shape) < 3:
            raise NeurvolFormatError(f"tensor {name!r}: {mname} needs >= 3 axes, shape {tuple(shape)}")
        (step,) = struct.unpack("<f", counter(4, name))
        if not (math.isfinite(step) and step > 0):
            raise NeurvolFormatError(f"tensor {name!r}: invalid {mname} step {step}")
        z, coder = decode_stream(counter, n, name, max_symbol=(1 << 32) - 1)
        codes = unzigzag(z)
        del z
        if mname == "lorenzo":
            # |residual| < 2^31 and n <= 2^28, so the cumulative sums stay far inside int64.
            q = lorenzo_reconstruct(codes.reshape(tuple(shape)), overwrite=True).reshape(-1)
            values = _scaled_f32(q, step)
        else:
            rec = interp_decode(codes, tuple(shape), step)
            with np.errstate(over="ignore", invalid="ignore"):  # rejected below: non-finite
                values = rec.astype(np.float32).reshape(-1)
    if keep is not None:
        full = np.zeros(n, np.float32)
        full[keep] = values
        values = full
    if not np.all(np.isfinite(values)):
        raise NeurvolFormatError(f"tensor {name!r} holds non-finite values")
    stats = RecordStats(name, mname, coder, counter.count, book_bytes, mask_bytes)
    return values.reshape(tuple(shape)), stats


#: Elements converted at a time from integer codes to float32 values.
_CONVERT_CHUNK = 1 << 20


def _scaled_f32(q: np.ndarray, step: float) -> np.ndarray:
    """``float32(float64(q) * step)``, a piece at a time (no full-size float64 copy)."""
    out = np.empty(q.size, np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # rejected by the caller: non-finite
        for s in range(0, q.size, _CONVERT_CHUNK):
            out[s:s + _CONVERT_CHUNK] = q[s:s + _CONVERT_CHUNK].astype(np.float64) * step
    return out


def _unpack_mask(packed: np.ndarray, n: int, name: str) -> np.ndarray:
    """Keep-bits of a masked record as a bool array (one byte per element, no wider
    temporary); padding bits after element ``n`` must be 0 (spec/payload.md §2.2)."""
    keep = np.unpackbits(packed, count=n, bitorder="little").view(bool)
    pad = packed.size * 8 - n
    if pad and int(packed[-1]) >> (8 - pad):
        raise NeurvolFormatError(f"tensor {name!r}: non-zero padding bits after the mask")
    return keep


_VQ_MEMO: "dict[tuple, Tuple[int, np.ndarray, np.ndarray]]" = {}


def _vq_parts(arr: np.ndarray, k: int) -> Tuple[int, np.ndarray, np.ndarray]:
    """(book kind, stored codebook, indices) of a vq record of ``arr`` with ``k`` vectors.
    Memoised (a few entries): the encoder's search asks for the same record repeatedly."""
    a = np.ascontiguousarray(arr, dtype=np.float32)
    key = (hashlib.sha1(a.tobytes()).hexdigest(), a.shape, int(k))
    if key not in _VQ_MEMO:
        if len(_VQ_MEMO) >= 16:
            _VQ_MEMO.pop(next(iter(_VQ_MEMO)))
        _VQ_MEMO[key] = _vq_compute(a, k)
    return _VQ_MEMO[key]


def _vq_compute(arr: np.ndarray, k: int) -> Tuple[int, np.ndarray, np.ndarray]:
    vectors = grid_vectors(arr)
    codebook = vector_kmeans(vectors, k)[0]
    kind = _BOOK_F16 if fits_f16(codebook) else _BOOK_F32
    book = codebook.astype("<f2" if kind == _BOOK_F16 else "<f4")
    return kind, book, nearest_vector(vectors, book.astype(np.float32))  # the stored book


def vq_values(arr: np.ndarray, k: int) -> np.ndarray:
    """The float32 values a vq record of ``arr`` with ``k`` vectors decodes to."""
    _, book, idx = _vq_parts(arr, k)
    return from_vectors(book[idx].astype(np.float32), tuple(np.shape(arr)))


def grid_codes(arr: np.ndarray, method: str, step: float) -> Tuple[np.ndarray, np.ndarray]:
    """(codes, stored values as float32) of a grid record of ``arr`` at ``step`` (a float32
    value): what the record's stream holds before zigzag, and what a decoder returns."""
    x = np.asarray(arr, dtype=np.float64)
    if method == "lorenzo":
        q = np.round(x / step)
        if q.size and float(np.abs(q).max()) > MAX_CODE // 8:
            raise ValueError(f"step {step:g} is too small for values of this range")
        q = q.astype(np.int64)
        return lorenzo_residuals(q).reshape(-1), (q.astype(np.float64) * step).astype(np.float32)
    if method == "interp":
        codes, rec = interp_encode(x, step)
        return codes, rec.astype(np.float32)
    raise ValueError(f"{method!r} is not a grid method")


class _Counter:
    """``take`` that counts the bytes it has read (record sizes for ``info``)."""

    def __init__(self, take: Take):
        self.take, self.count = take, 0

    def __call__(self, n: int, what: str) -> bytes:
        data = self.take(n, what)
        self.count += len(data)
        return data
