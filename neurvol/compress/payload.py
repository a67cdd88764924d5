"""Brick payloads: named float arrays <-> bytes.

A payload starts with one kind byte:

* ``0x00`` constant brick: one float64 (little-endian), the value of every voxel.
* ``0x01`` tensors (codec ``kmeans-zstd`` version 1, read-only now): one zstandard frame
  whose content is a record per tensor, in the order the architecture lists its tensors.
* ``0x02`` tensors (codec ``neurvol`` version 2, written now): one record per tensor, each
  with its own quantizer and entropy-coded streams (:mod:`.records`).

``spec/payload.md`` gives the byte layouts. Every method is lossy except ``raw32``; the
quantizer is chosen per tensor by a :class:`TensorPlan`. Decoding validates every count
and index before using it.
"""
from __future__ import annotations

import dataclasses
import math
import struct
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import zstandard

from ..errors import NeurvolFormatError
from .bitpack import pack_bits, unpack_bits
from .kmeans import kmeans_quantize, nearest_centroid
from .codebook import MAX_CENTROIDS, fits_f16
from .records import RecordStats, configured, decode_record, encode_record
from .registry import RecordMethod
from .coders.zstd import ZSTD_LEVEL, decompress_at_most

KIND_CONSTANT = 0x00
KIND_TENSORS = 0x01
KIND_RECORDS = 0x02

# Kind 1's record methods: a frozen registry of its own (spec/payload.md §2.1, §2.4).
METHOD_RAW32 = 0
METHOD_RAW16 = 1
METHOD_KMEANS = 2
V1_METHODS = ("raw32", "raw16", "kmeans")

LAYOUT_BITS = 0  # indices bit-packed, ``bits`` bits each, LSB-first
LAYOUT_U8 = 1    # one byte per index (lets zstd's Huffman stage entropy-code them)
LAYOUT_U16 = 2   # two bytes (little-endian) per index

_CODEBOOK_F16 = 0
_CODEBOOK_F32 = 1

TensorSpec = Tuple[str, Tuple[int, ...]]


@dataclasses.dataclass(frozen=True)
class TensorPlan:
    """How to store one tensor: a registered record method (:mod:`.registry`) by name with
    its parameters: ``raw32``, ``raw16``, ``kmeans`` with ``k`` centroids, or for feature
    grids ``lorenzo`` (uniform quantization with ``step`` + 3-D Lorenzo prediction),
    ``interp`` (multilevel interpolation prediction, error <= ``step / 2``) or ``vq`` (each
    vertex's channel vector -> one of ``k`` codebook vectors). ``masked``: zeros (pruned
    weights) are stored as an entropy-coded bit mask. ``params``: ``(name, value)`` pairs
    for a method's parameters other than ``k`` and ``step``."""

    method: str
    k: int = 0
    step: float = 0.0
    masked: bool = False
    params: Tuple[Tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        m = self.record_method()         # validates the method's parameters
        if self.masked and not m.maskable:
            raise ValueError(f"{self.method} records cannot be masked")

    def record_method(self) -> RecordMethod:
        """The configured record method (ValueError for an unknown one or bad parameters)."""
        return configured(self.method, k=self.k, step=self.step, **dict(self.params))


def default_plan(size: int, k: int, precise: bool = False) -> TensorPlan:
    """The default plan: tensors under 64 values (biases) and ``precise`` ones (whose
    errors the network amplifies) as float16, every other one with k-means to ``k``
    levels, but never more than a quarter of its size so a codebook cannot cost more than
    it saves."""
    if size < 64 or precise:
        return TensorPlan("raw16")
    return TensorPlan("kmeans", max(2, min(k, size // 4)))


def encode_constant(value: float) -> bytes:
    """Payload of a brick whose every voxel equals ``value`` (exact)."""
    return struct.pack("<Bd", KIND_CONSTANT, float(value))


def encode_records(arrays: Sequence[Tuple[str, np.ndarray]], plans: Mapping[str, TensorPlan]) -> bytes:
    """Quantize and entropy-code ``arrays`` (in the given order) into a kind-2 payload."""
    out = [bytes([KIND_RECORDS])]
    for name, a in arrays:
        p = plans[name]
        out.append(encode_record(a, p.record_method(), masked=p.masked))
    return b"".join(out)


def encode_tensors(
    arrays: Sequence[Tuple[str, np.ndarray]], plans: Mapping[str, TensorPlan], seed: int = 0
) -> bytes:
    """Version-1 (kind 1) payload: every record in one zstd frame. Kept to write golden
    files and to compare against; new files use :func:`encode_records`."""
    if any(p.method not in V1_METHODS or p.masked for p in plans.values()):
        raise ValueError("codec version 1 has no grid or masked records")
    records = [_encode_record(np.asarray(a, dtype=np.float32), plans[name], seed) for name, a in arrays]
    frame = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=False).compress(b"".join(records))
    return bytes([KIND_TENSORS]) + frame


def _encode_record(arr: np.ndarray, plan: TensorPlan, seed: int) -> bytes:
    flat = arr.reshape(-1)
    if plan.method == "raw32":
        return bytes([METHOD_RAW32]) + flat.astype("<f4").tobytes()
    if plan.method == "raw16":
        if not fits_f16(flat):
            return bytes([METHOD_RAW32]) + flat.astype("<f4").tobytes()
        return bytes([METHOD_RAW16]) + flat.astype("<f2").tobytes()
    codebook, idx = kmeans_quantize(flat, plan.k, seed)
    book_kind = _CODEBOOK_F16 if fits_f16(codebook) else _CODEBOOK_F32
    book = codebook.astype("<f2" if book_kind == _CODEBOOK_F16 else "<f4")
    # Refer the indices to the stored (possibly float16-rounded) codebook.
    idx = nearest_centroid(flat, book.astype(np.float32))
    k = codebook.size
    bits = max(1, math.ceil(math.log2(k))) if k > 1 else 1
    candidates = [(LAYOUT_BITS, pack_bits(idx, bits))]
    if bits <= 8:
        candidates.append((LAYOUT_U8, idx.astype(np.uint8).tobytes()))
    else:
        candidates.append((LAYOUT_U16, idx.astype("<u2").tobytes()))
    # Keep whichever layout zstd codes smaller: byte-aligned indices usually win because
    # zstd's Huffman stage then sees whole symbols, bit-packing wins for near-uniform ones.
    cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    layout, stream = min(candidates, key=lambda c: (len(cctx.compress(c[1])), c[0]))
    head = struct.pack("<BBBBI", METHOD_KMEANS, book_kind, layout, bits, k)
    return head + book.tobytes() + stream


Decoded = Union[float, Dict[str, np.ndarray]]


def decode_payload(payload: bytes, specs: Sequence[TensorSpec]) -> Decoded:
    """Decode a brick payload: a float for a constant brick, else ``{name: float32 array}``
    with the shapes given by ``specs`` (which the architecture's config determines)."""
    if len(payload) < 1:
        raise NeurvolFormatError("empty brick payload")
    kind = payload[0]
    if kind == KIND_CONSTANT:
        if len(payload) != 9:
            raise NeurvolFormatError(f"constant brick payload has {len(payload)} bytes, expected 9")
        value = struct.unpack("<d", payload[1:])[0]
        if not math.isfinite(value):
            raise NeurvolFormatError("constant brick holds a non-finite value")
        return value
    if kind == KIND_RECORDS:
        return _decode_records(payload, specs)[0]
    if kind != KIND_TENSORS:
        raise NeurvolFormatError(f"unknown brick payload kind {kind}")
    sizes = [_spec_size(name, shape) for name, shape in specs]
    check_amplification(sum(sizes), len(payload))
    # A record can't be larger than raw float32 plus its header and a full u16 codebook;
    # nor can the frame produce more than the resource model allows for its length.
    cap = min(sum(17 + 4 * n + 4 * MAX_CENTROIDS for n in sizes),
              4 * element_budget(len(payload)) + 17 * len(sizes))
    stream = _bounded_decompress(payload[1:], cap)
    reader = _Reader(stream)
    out: Dict[str, np.ndarray] = {}
    for (name, shape), n in zip(specs, sizes):
        out[name] = _decode_record(reader, n, name).reshape(shape)
    if reader.remaining:
        raise NeurvolFormatError(f"brick payload has {reader.remaining} unexpected trailing bytes")
    return out


def payload_stats(payload: bytes, specs: Sequence[TensorSpec]) -> Optional[List[RecordStats]]:
    """Where a kind-2 payload's bytes went, record by record (None for other kinds)."""
    if len(payload) < 1 or payload[0] != KIND_RECORDS:
        return None
    return _decode_records(payload, specs)[1]


def _decode_records(payload: bytes, specs: Sequence[TensorSpec]
                    ) -> Tuple[Dict[str, np.ndarray], List[RecordStats]]:
    check_amplification(sum(_spec_size(name, shape) for name, shape in specs), len(payload))
    reader = _Reader(payload)
    reader.take(1, "payload kind")
    out: Dict[str, np.ndarray] = {}
    stats: List[RecordStats] = []
    for name, shape in specs:
        _spec_size(name, shape)
        out[name], st = decode_record(reader.take, tuple(shape), name)
        stats.append(st)
    if reader.remaining:
        raise NeurvolFormatError(f"brick payload has {reader.remaining} unexpected trailing bytes")
    return out, stats


#: Resource model (spec/resources.md): a model payload of ``L`` bytes may declare at most
#: ``max(FREE_ELEMENTS, ELEMENTS_PER_BYTE * L)`` tensor elements. Real payloads hold a
#: few elements per byte (the golden files 1-3; pruned or smooth tensors a few tens), so
#: nothing an encoder writes comes near it, while a payload of a few KB can no longer
#: declare (and make a reader allocate and decode) a 2^28-element model.
ELEMENTS_PER_BYTE = 256
#: Elements any payload may declare whatever its length (1 MiB as float32).
FREE_ELEMENTS = 1 << 18


def element_budget(payload_bytes: int) -> int:
    """Most tensor elements a model payload of ``payload_bytes`` bytes may declare."""
    return max(FREE_ELEMENTS, ELEMENTS_PER_BYTE * payload_bytes)


def check_amplification(elements: int, payload_bytes: int) -> None:
    """Refuse a payload whose model declares more elements than its length allows
    (spec/resources.md), before anything is decompressed or allocated."""
    if elements > element_budget(payload_bytes):
        raise NeurvolFormatError(
            f"a {payload_bytes}-byte brick payload cannot hold a model of {elements:,} values "
            f"(at most {element_budget(payload_bytes):,}: {ELEMENTS_PER_BYTE} per byte, "
            "spec/resources.md); the header's model config does not match the payload - "
            "the file is corrupted or hostile")


def _zstd_bound(n: int) -> int:
    """zstd's worst-case frame size for ``n`` input bytes (``ZSTD_COMPRESSBOUND``)."""
    small = (128 * 1024 - n) >> 11 if n < 128 * 1024 else 0
    return n + (n >> 8) + small


#: A kind-2 record's overhead beyond its streams' data: method, flags, book kind, k, step.
_RECORD_OVERHEAD = 16
#: A stream's overhead beyond its symbols: head (6), rANS alphabet and table length (8), a
#: zstd frame of up to MAX_ALPHABET u32 counts (zstd's worst-case bound), one spare word.
_STREAM_OVERHEAD = 6 + 8 + _zstd_bound(4 * (1 << 20)) + 8


def max_payload_bytes(specs: Sequence[TensorSpec]) -> int:
    """An upper bound on the length of any valid model payload for tensors ``specs``, of
    either kind: a brick index entry longer than this is refused before the brick is read.

    Per tensor of ``n`` elements: a mask stream and a value stream of at most 4 bytes per
    symbol (raw32 is the largest plain form; zstd's and rANS's worst cases are bounded by
    ``compress_bound``), plus a codebook of at most 65,536 float32 vectors.
    """
    total = 1 + _zstd_bound(0)
    for name, shape in specs:
        n = _spec_size(name, shape)
        vector = shape[-4] if len(shape) >= 4 else 1
        total += (_RECORD_OVERHEAD + 4 * MAX_CENTROIDS * vector
                  + 2 * _STREAM_OVERHEAD + _zstd_bound((n + 7) // 8)
                  + _zstd_bound(4 * n))
    return total


def _spec_size(name: str, shape: Sequence[int]) -> int:
    if not all(type(d) is int and d >= 0 for d in shape):
        raise NeurvolFormatError(f"tensor {name!r} has an invalid shape {tuple(shape)!r}")
    return math.prod(shape)


# Indices are unpacked this many at a time (a multiple of 8, so every piece starts on a
# byte boundary); unpack_bits needs ~9 bytes per index and bit of temporary memory.
_UNPACK_CHUNK = 1 << 16


def _bounded_decompress(frame: bytes, cap: int) -> bytes:
    """Decompress *frame*, refusing output beyond *cap* bytes without ever holding more
    than ``cap`` bytes plus one read piece (a crafted frame, a "zstd bomb", cannot exhaust
    memory, whatever content size its header declares)."""
    try:
        declared = zstandard.get_frame_parameters(frame).content_size
    except zstandard.ZstdError as exc:
        raise NeurvolFormatError(f"brick payload is not a valid zstd frame: {exc}") from exc
    # Writers store the content size (spec/payload.md §2.1); one beyond the cap is refused
    # before anything is decompressed.
    if declared == zstandard.CONTENTSIZE_UNKNOWN or declared > cap:
        raise NeurvolFormatError(
            "brick payload's zstd frame declares "
            + ("no content size" if declared == zstandard.CONTENTSIZE_UNKNOWN
               else f"{declared} bytes, more than its tensors can hold ({cap})")
            + "; the file is corrupted or hostile")
    out = decompress_at_most(frame, cap, "brick payload is not a valid zstd frame")
    if len(out) > cap:
        raise NeurvolFormatError("brick payload decompresses to more than its tensors can hold")
    return out


def _unpack_indices(data: bytes, bits: int, n: int, name: str) -> np.ndarray:
    """Bit-packed indices (layout 0) as uint16 (``bits <= 16``), unpacked in pieces so the
    temporary memory stays small for tensors of any size; non-zero padding is refused."""
    idx = np.empty(n, dtype=np.uint16)
    for s in range(0, n, _UNPACK_CHUNK):
        m = min(_UNPACK_CHUNK, n - s)
        first = s * bits // 8  # exact: s is a multiple of 8
        piece = data[first:first + (m * bits + 7) // 8]
        idx[s:s + m] = unpack_bits(piece, bits, m)
    pad = len(data) * 8 - n * bits
    if pad and data[-1] >> (8 - pad):
        raise NeurvolFormatError(f"tensor {name!r}: non-zero padding bits after the indices")
    return idx


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise NeurvolFormatError(f"brick payload truncated while reading {what}")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk


def _decode_record(r: _Reader, n: int, name: str) -> np.ndarray:
    method = r.take(1, name)[0]
    if method == METHOD_RAW32:
        values = np.frombuffer(r.take(4 * n, name), dtype="<f4")
    elif method == METHOD_RAW16:
        values = np.frombuffer(r.take(2 * n, name), dtype="<f2")
    elif method == METHOD_KMEANS:
        book_kind, layout, bits, k = struct.unpack("<BBBI", r.take(7, name))
        if book_kind not in (_CODEBOOK_F16, _CODEBOOK_F32) or not 1 <= k <= MAX_CENTROIDS \
                or not 1 <= bits <= 16 or k > 2 ** bits:
            raise NeurvolFormatError(f"tensor {name!r}: invalid k-means header (k={k}, bits={bits})")
        width = 2 if book_kind == _CODEBOOK_F16 else 4
        book = np.frombuffer(r.take(width * k, name), dtype="<f2" if width == 2 else "<f4")
        if layout == LAYOUT_BITS:
            idx = _unpack_indices(r.take((n * bits + 7) // 8, name), bits, n, name)
        elif layout == LAYOUT_U8:
            idx = np.frombuffer(r.take(n, name), dtype=np.uint8)
        elif layout == LAYOUT_U16:
            idx = np.frombuffer(r.take(2 * n, name), dtype="<u2")
        else:
            raise NeurvolFormatError(f"tensor {name!r}: unknown index layout {layout}")
        if idx.size and int(idx.max()) >= k:
            raise NeurvolFormatError(f"tensor {name!r}: index out of codebook range")
        values = book[idx]
    else:
        raise NeurvolFormatError(f"tensor {name!r}: unknown storage method {method}")
    values = values.astype(np.float32)
    if not np.all(np.isfinite(values)):
        raise NeurvolFormatError(f"tensor {name!r} holds non-finite values")
    return values
