"""Lossless coding of a volume's mask (NaN / fill-value voxels), ``spec/mask.md``.

The ``"mask"`` section is one method byte and its body. Methods are a small registry (one
class each, by id, never reused); the encoder writes every method that applies and keeps
the smallest whose decoded form stays within the resource bound (``spec/resources.md``
§3.2), so the file is never larger than the packed bits plus one byte:

* 0 ``bits``: the packed bits as they are (``ceil(N / 8)`` bytes);
* 1 ``bits-zstd``: one zstd frame of the packed bits, content size declared;
* 2 ``runs``: ``u64 count``, then one stream (``spec/payload.md`` §2.2: raw, zstd or
  rANS, the smallest) of ``count`` run lengths, valid and masked runs alternating from a
  valid one. Smooth masks (land, the air around a body) are mostly long runs.

Bits are in C order of the volume's ``(z, y, x)`` voxels, 1 = masked (no data), packed
most significant bit first (``np.packbits``), pad bits 0. Decoding gives a
:class:`VoxelMask` that answers "is voxel i masked" for flat indices without unpacking
the volume (runs stay runs), so memory is bounded by the section's bytes.
"""
from __future__ import annotations

import abc
import math
import struct
from typing import ClassVar, Dict, Optional, Sequence, Tuple, Type

import numpy as np

from ..errors import NeurvolFormatError
from .coders.zstd import zstd_compress, zstd_exact
from .streams import decode_stream, encode_stream

#: Name of the container section that holds the mask.
MASK_SECTION = "mask"
#: The decoded form of a mask section (packed bits, or the runs' plain stream) may be at
#: most this many times the section's length ...
MASK_EXPANSION = 1 << 12
#: ... plus this many bytes (spec/resources.md §3.2).
MASK_FREE_BYTES = 1 << 20
#: Run lengths are stream symbols (< 2^32); longer runs leave the runs method out.
_MAX_RUN = (1 << 32) - 1
_COUNT = struct.Struct("<Q")
#: Voxels looked up per piece when a whole mask is counted (bounded memory).
_COUNT_CHUNK = 1 << 24


def decoded_bound(section_length: int) -> int:
    """The most bytes a mask section of ``section_length`` bytes may decode to."""
    return MASK_EXPANSION * section_length + MASK_FREE_BYTES


class VoxelMask(abc.ABC):
    """Which voxels of a volume of ``voxels`` voxels are masked, by flat C-order index."""

    def __init__(self, voxels: int):
        self.voxels = voxels

    @abc.abstractmethod
    def masked(self, flat: np.ndarray) -> np.ndarray:
        """Bool array (``flat``'s shape): whether each flat voxel index is masked."""

    @abc.abstractmethod
    def count(self) -> int:
        """Number of masked voxels."""

    @property
    @abc.abstractmethod
    def nbytes(self) -> int:
        """Bytes this representation holds in memory."""


class _BitsMask(VoxelMask):
    def __init__(self, packed: np.ndarray, voxels: int):
        super().__init__(voxels)
        self.packed = packed

    def masked(self, flat: np.ndarray) -> np.ndarray:
        flat = np.asarray(flat, dtype=np.int64)
        byte = self.packed[flat >> 3]
        return ((byte >> (7 - (flat & 7)).astype(np.uint8)) & 1).astype(bool)

    def count(self) -> int:
        total = 0
        for s in range(0, self.packed.size, _COUNT_CHUNK):
            total += int(np.unpackbits(self.packed[s:s + _COUNT_CHUNK]).sum(dtype=np.int64))
        return total

    @property
    def nbytes(self) -> int:
        return int(self.packed.nbytes)


class _RunsMask(VoxelMask):
    def __init__(self, runs: np.ndarray, voxels: int):
        super().__init__(voxels)
        # bounds[k]: first voxel of run k; run k is masked when k is odd.
        self.bounds = np.concatenate([[0], np.cumsum(runs, dtype=np.int64)])
        self.runs = runs

    def masked(self, flat: np.ndarray) -> np.ndarray:
        k = np.searchsorted(self.bounds, np.asarray(flat, dtype=np.int64), side="right") - 1
        return (k & 1).astype(bool)

    def count(self) -> int:
        return int(self.runs[1::2].sum(dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return int(self.bounds.nbytes + self.runs.nbytes)


class MaskMethod(abc.ABC):
    """One way of coding a mask: ``id`` (the section's first byte) and ``name``."""

    id: ClassVar[int]
    name: ClassVar[str]

    @classmethod
    @abc.abstractmethod
    def encode(cls, mask: np.ndarray) -> Optional[bytes]:
        """The body for a bool mask (C order), or None where the method does not apply."""

    @classmethod
    @abc.abstractmethod
    def decode(cls, body: bytes, voxels: int, bound: int) -> VoxelMask:
        """The mask of ``voxels`` voxels from ``body``; its decoded form is refused above
        ``bound`` bytes before it is allocated."""


_METHODS: Dict[int, Type[MaskMethod]] = {}


def register_mask_method(cls: Type[MaskMethod]) -> Type[MaskMethod]:
    """Class decorator: add a mask method to the registry (ids are never reused)."""
    if cls.id in _METHODS or any(m.name == cls.name for m in _METHODS.values()):
        raise ValueError(f"mask method {cls.id} / {cls.name!r} is already registered")
    _METHODS[cls.id] = cls
    return cls


def mask_methods() -> Tuple[Type[MaskMethod], ...]:
    """The registered mask methods, by id."""
    return tuple(_METHODS[k] for k in sorted(_METHODS))


def _packed_bytes(voxels: int) -> int:
    return -(-voxels // 8)


def _check_packed(voxels: int, bound: int, what: str) -> int:
    n = _packed_bytes(voxels)
    if n > bound:
        raise NeurvolFormatError(
            f"{what}: {voxels} voxels need {n} bytes of mask bits, more than the "
            f"{bound} bytes this section may decode to (spec/resources.md §3.2); the file "
            "is damaged")
    return n


def _pad_bits_clear(packed: np.ndarray, voxels: int, what: str) -> None:
    pad = packed.size * 8 - voxels
    if pad and int(packed[-1]) & ((1 << pad) - 1):
        raise NeurvolFormatError(f"{what}: the mask's pad bits are not 0; the file is damaged")


@register_mask_method
class BitsMethod(MaskMethod):
    """The packed bits as they are: a bound that always holds (no expansion)."""

    id = 0
    name = "bits"

    @classmethod
    def encode(cls, mask: np.ndarray) -> Optional[bytes]:
        return np.packbits(mask.reshape(-1)).tobytes()

    @classmethod
    def decode(cls, body: bytes, voxels: int, bound: int) -> VoxelMask:
        what = "mask (bits)"
        n = _check_packed(voxels, bound, what)
        if len(body) != n:
            raise NeurvolFormatError(f"{what}: {len(body)} bytes, expected {n}")
        packed = np.frombuffer(body, dtype=np.uint8)
        _pad_bits_clear(packed, voxels, what)
        return _BitsMask(packed, voxels)


@register_mask_method
class BitsZstdMethod(MaskMethod):
    """One zstd frame of the packed bits."""

    id = 1
    name = "bits-zstd"

    @classmethod
    def encode(cls, mask: np.ndarray) -> Optional[bytes]:
        return zstd_compress(np.packbits(mask.reshape(-1)).tobytes())

    @classmethod
    def decode(cls, body: bytes, voxels: int, bound: int) -> VoxelMask:
        what = "mask (bits-zstd)"
        n = _check_packed(voxels, bound, what)
        packed = np.frombuffer(zstd_exact(body, n, what), dtype=np.uint8)
        _pad_bits_clear(packed, voxels, what)
        return _BitsMask(packed, voxels)


@register_mask_method
class RunsMethod(MaskMethod):
    """Run lengths, valid first, as one entropy-coded stream."""

    id = 2
    name = "runs"

    @classmethod
    def encode(cls, mask: np.ndarray) -> Optional[bytes]:
        runs = mask_runs(mask)
        if runs.size and int(runs.max()) > _MAX_RUN:
            return None
        return _COUNT.pack(runs.size) + encode_stream(runs)

    @classmethod
    def decode(cls, body: bytes, voxels: int, bound: int) -> VoxelMask:
        what = "mask (runs)"
        if len(body) < _COUNT.size:
            raise NeurvolFormatError(f"{what}: truncated")
        (count,) = _COUNT.unpack_from(body)
        # Runs after the first are >= 1, so a mask has at most voxels + 1 of them; the
        # plain form is at least one byte a run.
        if count < 1 or count > voxels + 1 or count > bound:
            raise NeurvolFormatError(
                f"{what}: {count} runs is impossible for {voxels} voxels within the "
                f"section's bound of {bound} bytes (spec/resources.md §3.2)")
        pos = [_COUNT.size]

        def take(n: int, label: str) -> bytes:
            if n > len(body) - pos[0]:
                raise NeurvolFormatError(f"{label}: truncated")
            out = body[pos[0]:pos[0] + n]
            pos[0] += n
            return out

        head = body[pos[0]:pos[0] + 2]
        width = head[1] if len(head) == 2 else 1
        if count * max(1, width) > bound:
            raise NeurvolFormatError(
                f"{what}: {count} runs of {width} bytes exceed the section's bound of "
                f"{bound} bytes (spec/resources.md §3.2)")
        runs, _ = decode_stream(take, int(count), what)
        if pos[0] != len(body):
            raise NeurvolFormatError(f"{what}: {len(body) - pos[0]} bytes after the runs")
        runs = runs.astype(np.int64)
        if runs.size > 1 and int(runs[1:].min()) < 1:
            raise NeurvolFormatError(f"{what}: a run after the first has length 0")
        if int(runs.sum(dtype=np.int64)) != voxels:
            raise NeurvolFormatError(
                f"{what}: runs cover {int(runs.sum(dtype=np.int64))} voxels, the volume "
                f"has {voxels}")
        return _RunsMask(runs, voxels)


def mask_runs(mask: np.ndarray) -> np.ndarray:
    """Run lengths of a bool mask in C order: valid (0) and masked (1) runs alternating,
    starting with a valid run (0 long when the first voxel is masked)."""
    flat = mask.reshape(-1).view(np.uint8) if mask.dtype == bool else \
        mask.reshape(-1).astype(np.uint8)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    edges = np.concatenate([[0], change, [flat.size]]).astype(np.int64)
    runs = np.diff(edges)
    if flat.size and flat[0]:
        runs = np.concatenate([[0], runs])
    return runs


def encode_mask(mask: np.ndarray) -> bytes:
    """The ``"mask"`` section of a bool mask (True: masked): the smallest method whose
    decoded form is within the bound for its length (``bits`` always is)."""
    best: Optional[bytes] = None
    voxels = int(mask.size)
    for method in mask_methods():
        body = method.encode(mask)
        if body is None:
            continue
        section = bytes([method.id]) + body
        if method is not BitsMethod and _decoded_size(method, body, voxels) > \
                decoded_bound(len(section)):
            continue
        if best is None or len(section) < len(best):
            best = section
    assert best is not None   # bits always applies
    return best


def _decoded_size(method: Type[MaskMethod], body: bytes, voxels: int) -> int:
    if method is RunsMethod:
        (count,) = _COUNT.unpack_from(body)
        return int(count) * body[_COUNT.size + 1]
    return _packed_bytes(voxels)


def decode_mask(section: bytes, shape: Sequence[int]) -> VoxelMask:
    """The mask of a volume of ``shape`` from its ``"mask"`` section (every size checked
    against the section's length before anything is allocated)."""
    if not section:
        raise NeurvolFormatError("mask section is empty; the file is damaged")
    method = _METHODS.get(section[0])
    if method is None:
        raise NeurvolFormatError(
            f"mask method {section[0]} is unknown (a newer neurvol may read it, else the "
            "file is damaged)")
    return method.decode(section[1:], math.prod(int(n) for n in shape),
                         decoded_bound(len(section)))


def mask_method_name(section: bytes) -> Optional[str]:
    """The name of the method a ``"mask"`` section uses (None if unknown)."""
    method = _METHODS.get(section[0]) if section else None
    return None if method is None else method.name
