"""Lossless coding of a volume's mask (NaN / fill-value voxels), ``spec/mask.md``.

The ``"mask"`` section is one method byte and its body. Methods are a small registry (one
class each, by id, never reused); the encoder writes every method that applies and keeps
the smallest whose decoded form stays within the resource bound (``spec/resources.md``
§3.2), so the file is never larger than the packed bits plus one byte:

* 0 ``bits``: the packed bits as they are (``ceil(N / 8)`` bytes);
* 1 ``bits-zstd``: one zstd frame of the packed bits, content size declared;
* 2 ``runs``: ``u64 count``, then one stream (``spec/payload.md`` §2.2: raw, zstd or
  rANS, the smallest) of ``count`` run lengths, valid and masked runs alternating from a
  valid one. Smooth masks (land, the air around a body) are mostly long runs;
* 3 ``rows``: per row of x, where the bit changes, coded against the previous row: a
  smooth outline moves by a voxel or so from row to row (:class:`RowsMethod`).

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
    def decode(cls, body: bytes, shape: Sequence[int], bound: int) -> VoxelMask:
        """The mask of a volume of ``shape`` from ``body``; its decoded form is refused
        above ``bound`` bytes before it is allocated."""


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


class _PackedBitsMethod(MaskMethod):
    """Base of the methods that store the packed bits (``np.packbits``, C order), framed
    by ``_frame`` / ``_unframe``."""

    @classmethod
    def _frame(cls, packed: bytes) -> bytes:
        raise NotImplementedError

    @classmethod
    def _unframe(cls, body: bytes, n: int, what: str) -> bytes:
        raise NotImplementedError

    @classmethod
    def encode(cls, mask: np.ndarray) -> Optional[bytes]:
        return cls._frame(np.packbits(mask.reshape(-1)).tobytes())

    @classmethod
    def decode(cls, body: bytes, shape: Sequence[int], bound: int) -> VoxelMask:
        what = f"mask ({cls.name})"
        voxels = math.prod(shape)
        n = _check_packed(voxels, bound, what)
        packed = np.frombuffer(cls._unframe(body, n, what), dtype=np.uint8)
        _pad_bits_clear(packed, voxels, what)
        return _BitsMask(packed, voxels)


@register_mask_method
class BitsMethod(_PackedBitsMethod):
    """The packed bits as they are: a bound that always holds (no expansion)."""

    id = 0
    name = "bits"

    @classmethod
    def _frame(cls, packed: bytes) -> bytes:
        return packed

    @classmethod
    def _unframe(cls, body: bytes, n: int, what: str) -> bytes:
        if len(body) != n:
            raise NeurvolFormatError(f"{what}: {len(body)} bytes, expected {n}")
        return body


@register_mask_method
class BitsZstdMethod(_PackedBitsMethod):
    """One zstd frame of the packed bits."""

    id = 1
    name = "bits-zstd"

    @classmethod
    def _frame(cls, packed: bytes) -> bytes:
        return zstd_compress(packed)

    @classmethod
    def _unframe(cls, body: bytes, n: int, what: str) -> bytes:
        return zstd_exact(body, n, what)


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
    def decode(cls, body: bytes, shape: Sequence[int], bound: int) -> VoxelMask:
        what = "mask (runs)"
        voxels = math.prod(shape)
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


def _zigzag(v: np.ndarray) -> np.ndarray:
    v = v.astype(np.int64)
    return np.where(v >= 0, 2 * v, -2 * v - 1)


def _unzigzag(u: np.ndarray) -> np.ndarray:
    u = u.astype(np.int64)
    return np.where(u & 1, -((u + 1) >> 1), u >> 1)


def _grouped_cumsum(values: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Cumulative sums of ``values`` within each group of equal ``keys``, in the values'
    order (a stable sort brings each group together)."""
    order = np.argsort(keys, kind="stable")
    v = values[order]
    k = keys[order]
    c = np.cumsum(v)
    start = np.ones(k.size, dtype=bool)
    start[1:] = k[1:] != k[:-1]
    first = np.flatnonzero(start)
    base = np.repeat(c[first] - v[first], np.diff(np.append(first, k.size)))
    out = np.empty_like(c)
    out[order] = c - base
    return out


@register_mask_method
class RowsMethod(MaskMethod):
    """Per row of x, the positions where the bit changes, coded against the row before:
    a row with as many changes as the previous one stores how far each moved (mostly 0 or
    1 for a smooth outline), another row its changes afresh. Three streams: the change
    counts' differences (zigzag), the fresh rows' gaps, the moved rows' shifts (zigzag)."""

    id = 3
    name = "rows"

    @classmethod
    def encode(cls, mask: np.ndarray) -> Optional[bytes]:
        w = int(mask.shape[-1])
        rows = mask.reshape(-1, w)
        prev = np.zeros_like(rows)
        prev[:, 1:] = rows[:, :-1]
        r, c = np.nonzero(rows != prev)            # row-major: rows in order, columns sorted
        n = np.bincount(r, minlength=rows.shape[0]).astype(np.int64)
        fresh, slot_row = cls._fresh(n), r
        start = np.concatenate([[0], np.cumsum(n)])[:-1]
        in_fresh = fresh[slot_row]
        gaps = c.astype(np.int64).copy()
        later = np.arange(c.size) > start[slot_row]           # not the row's first change
        gaps[later] -= c[np.flatnonzero(later) - 1]
        k = np.flatnonzero(~in_fresh)
        shifts = c[k].astype(np.int64) - c[k - n[slot_row[k]]]
        parts = [encode_stream(_zigzag(np.diff(np.concatenate([[0], n])))),
                 _COUNT.pack(int(in_fresh.sum())), encode_stream(gaps[in_fresh]),
                 _COUNT.pack(k.size), encode_stream(_zigzag(shifts))]
        return b"".join(parts)

    @staticmethod
    def _fresh(n: np.ndarray) -> np.ndarray:
        """Rows coded afresh: the first, and each whose change count differs from the
        previous row's."""
        fresh = np.ones(n.size, dtype=bool)
        fresh[1:] = n[1:] != n[:-1]
        return fresh

    @classmethod
    def decode(cls, body: bytes, shape: Sequence[int], bound: int) -> VoxelMask:
        what = "mask (rows)"
        voxels = math.prod(shape)
        w = int(shape[-1])
        n_rows = voxels // w
        pos = [0]

        def take(nbytes: int, label: str) -> bytes:
            if nbytes > len(body) - pos[0]:
                raise NeurvolFormatError(f"{label}: truncated")
            out = body[pos[0]:pos[0] + nbytes]
            pos[0] += nbytes
            return out

        def stream(n: int, label: str) -> np.ndarray:
            head = body[pos[0]:pos[0] + 2]
            width = head[1] if len(head) == 2 else 1
            if n * max(1, width) > bound:
                raise NeurvolFormatError(
                    f"{label}: {n} symbols of {width} bytes exceed the section's bound of "
                    f"{bound} bytes (spec/resources.md §3.2)")
            return decode_stream(take, n, label)[0]

        def count(label: str) -> int:
            (v,) = _COUNT.unpack(take(_COUNT.size, label))
            return int(v)

        n = np.cumsum(_unzigzag(stream(n_rows, f"{what} counts")))
        if n.size and (int(n.min()) < 0 or int(n.max()) > w):
            raise NeurvolFormatError(f"{what}: a row has a change count outside [0, {w}]")
        fresh = cls._fresh(n)
        total = int(n.sum())
        n_fresh, n_moved = int(n[fresh].sum()), total - int(n[fresh].sum())
        if count(what) != n_fresh:
            raise NeurvolFormatError(f"{what}: the fresh rows' count disagrees with their rows")
        gaps = stream(n_fresh, f"{what} gaps").astype(np.int64)
        if count(what) != n_moved:
            raise NeurvolFormatError(f"{what}: the moved rows' count disagrees with their rows")
        shifts = _unzigzag(stream(n_moved, f"{what} shifts"))
        if pos[0] != len(body):
            raise NeurvolFormatError(f"{what}: {len(body) - pos[0]} bytes after the streams")
        slot_row = np.repeat(np.arange(n_rows, dtype=np.int64), n)
        start = np.concatenate([[0], np.cumsum(n)])[:-1]
        slot_in_row = np.arange(total, dtype=np.int64) - start[slot_row]
        in_fresh = fresh[slot_row]
        values = np.empty(total, dtype=np.int64)
        values[in_fresh] = gaps
        values[~in_fresh] = shifts
        # Fresh rows: positions are the gaps' running sums within the row.
        fresh_pos = _grouped_cumsum(values[in_fresh], slot_row[in_fresh])
        values[in_fresh] = fresh_pos
        # Moved rows: a slot is the same slot of the segment's fresh row plus the shifts
        # since (a segment: a fresh row and the moved rows after it, all with n changes).
        segment = np.cumsum(fresh) - 1
        c = _grouped_cumsum(values, segment[slot_row] * (w + 1) + slot_in_row)
        if c.size:
            later = slot_in_row > 0
            if int(c.min()) < 0 or int(c.max()) >= w or (np.diff(c)[later[1:]] <= 0).any():
                raise NeurvolFormatError(f"{what}: change positions out of order or outside "
                                         "their row")
        return _RunsMask(_runs_from_changes(slot_row, c, n, w, voxels), voxels)


def _runs_from_changes(slot_row: np.ndarray, cols: np.ndarray, n: np.ndarray, w: int,
                       voxels: int) -> np.ndarray:
    """The flat mask's runs (:func:`mask_runs`) from each row's change positions (each
    row starting from a valid voxel): a row after one that ended masked starts with an
    implied change, which cancels a change at its first voxel."""
    flat = slot_row * w + cols
    ended_masked = np.flatnonzero(n[:-1] % 2 == 1) + 1       # rows after an odd row
    pos = np.concatenate([flat, ended_masked.astype(np.int64) * w])
    uniq, times = np.unique(pos, return_counts=True)
    changes = uniq[times % 2 == 1]
    # A change at voxel 0 gives the leading valid run of length 0 (mask_runs' convention).
    return np.diff(np.concatenate([[0], changes, [voxels]]))


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
    for method in mask_methods():
        body = method.encode(mask)
        if body is None:
            continue
        section = bytes([method.id]) + body
        if best is not None and len(section) >= len(best):
            continue
        if method is not BitsMethod:
            # What a reader will accept: decoded within the bound, to this very mask.
            try:
                got = decode_mask(section, mask.shape)
            except NeurvolFormatError:
                continue
            assert got.count() == int(np.count_nonzero(mask))
        best = section
    assert best is not None   # bits always applies
    return best


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
    return method.decode(section[1:], tuple(int(n) for n in shape),
                         decoded_bound(len(section)))


def mask_method_name(section: bytes) -> Optional[str]:
    """The name of the method a ``"mask"`` section uses (None if unknown)."""
    method = _METHODS.get(section[0]) if section else None
    return None if method is None else method.name
