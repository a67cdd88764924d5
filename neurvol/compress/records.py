"""Tensor records of payload kind 2 (codec ``neurvol`` version 2): each record stores one
tensor with its own quantizer and entropy-coded streams of explicit length, so a reader can
attribute every byte (``neurvol info``) without guessing.

Record: ``u8 method, u8 flags``; if ``flags & 1`` a mask stream (the tensor's non-zero
pattern, bit-packed LSB-first, ``ceil(n / 8)`` byte symbols) follows and the method's
values cover only the kept elements, in C order (the others are 0); then the body, which
the record method of that id writes and reads: one module per method under
:mod:`.methods`, found through :mod:`.registry` (raw32, raw16, kmeans, lorenzo, interp,
vq). Streams are :mod:`.streams`. ``spec/payload.md`` §2.2 is the normative text.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence, Tuple, Union

import numpy as np

from ..errors import NeurvolFormatError
from .bitpack import pack_bits
from .registry import GridMethod, RecordMethod, Take, coder_names, get_method, read_method
from .streams import CoderChoice, decode_stream
from .streams import encode_stream as _encode_stream

FLAG_MASK = 1
#: Every coder, in the order an encode tries them by default (ties go to the first).
DEFAULT_CODERS: Tuple[str, ...] = coder_names()


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


def configured(method: Union[str, RecordMethod], **params: Any) -> RecordMethod:
    """``method`` configured: an instance as it is, a name with its parameters among
    ``params`` (others ignored, so a plan's ``k`` / ``step`` can be passed to any method)."""
    if isinstance(method, RecordMethod):
        return method
    try:
        cls = get_method(method)
    except KeyError:
        raise ValueError(f"unknown method {method!r}") from None
    return cls.from_config({p: params[p] for p in cls.params if p in params})


def encode_record(arr: np.ndarray, method: Union[str, RecordMethod], *, k: int = 0,
                  step: float = 0.0, masked: bool = False,
                  coders: Sequence[CoderChoice] = DEFAULT_CODERS, slack: float = 0.0) -> bytes:
    """One record for ``arr`` (float32) with ``method`` (a name, configured by ``k`` /
    ``step``, or a configured :class:`RecordMethod`). ``masked``: store the zero pattern as
    a mask and quantize only the non-zero elements (pruned tensors). ``coders``: entropy
    coders to try for each stream (the smallest wins; ``slack``: a fast coder within
    this fraction of a slow smallest one wins, :func:`.streams.encode_stream`)."""
    m = configured(method, k=k, step=step)
    if masked and not m.maskable:
        raise ValueError(f"{m.name} records cannot be masked")
    chosen = tuple(coders)

    def encode_stream(sym: np.ndarray) -> bytes:
        return _encode_stream(sym, chosen, slack=slack)

    arr = np.asarray(arr, dtype=np.float32)
    if not masked:
        method_id, body = m.encode(arr, encode_stream)
        return bytes([method_id, 0]) + body
    flat = arr.reshape(-1)
    keep = flat != 0
    mask = encode_stream(np.frombuffer(pack_bits(keep.astype(np.int64), 1), np.uint8))
    method_id, body = m.encode(flat[keep], encode_stream)
    return bytes([method_id, FLAG_MASK]) + mask + body


def decode_record(take: Take, shape: Sequence[int], name: str) -> Tuple[np.ndarray, RecordStats]:
    """Read one record of a tensor of ``shape``; returns its float32 values (that shape)
    and where its bytes went."""
    counter = _Counter(take)
    n = math.prod(shape)
    method_id, flags = counter(2, name)
    if flags & ~FLAG_MASK:
        raise NeurvolFormatError(f"tensor {name!r}: unknown method {method_id} or flags {flags}")
    method = read_method(method_id, f"tensor {name!r}")
    keep = None
    mask_bytes = 0
    if flags & FLAG_MASK:
        if not method.maskable:
            raise NeurvolFormatError(f"tensor {name!r}: a {method.name} record cannot be masked")
        packed, _ = decode_stream(counter, (n + 7) // 8, f"{name} mask", max_symbol=255)
        keep = _unpack_mask(packed.astype(np.uint8, copy=False), n, name)
        mask_bytes = counter.count - 2
    m = int(np.count_nonzero(keep)) if keep is not None else n
    values, coder, book_bytes = method.decode(counter, tuple(shape), m, name, decode_stream)
    if keep is not None:
        full = np.zeros(n, np.float32)
        full[keep] = values
        values = full
    if not np.isfinite(values).all():
        raise NeurvolFormatError(f"tensor {name!r} holds non-finite values")
    stats = RecordStats(name, method.name, coder, counter.count, book_bytes, mask_bytes)
    return values.reshape(tuple(shape)), stats


def _unpack_mask(packed: np.ndarray, n: int, name: str) -> np.ndarray:
    """Keep-bits of a masked record as a bool array (one byte per element, no wider
    temporary); padding bits after element ``n`` must be 0 (spec/payload.md §2.2)."""
    keep = np.unpackbits(packed, count=n, bitorder="little").view(bool)
    pad = packed.size * 8 - n
    if pad and int(packed[-1]) >> (8 - pad):
        raise NeurvolFormatError(f"tensor {name!r}: non-zero padding bits after the mask")
    return keep


def grid_method(name: str, step: float) -> GridMethod:
    """The grid method ``name`` configured for the step search's ``step``."""
    cls = get_method(name)
    if not issubclass(cls, GridMethod):
        raise ValueError(f"{name!r} is not a grid method")
    return cls.at_step(step)


def vq_values(arr: np.ndarray, k: int) -> np.ndarray:
    """The float32 values a vq record of ``arr`` with ``k`` vectors decodes to."""
    return configured("vq", k=k).stored_values(arr)   # type: ignore[attr-defined]


def grid_codes(arr: np.ndarray, method: str, step: float) -> Tuple[np.ndarray, np.ndarray]:
    """(codes, stored values as float32) of a step-coded grid record (lorenzo, interp) of
    ``arr`` at ``step`` (a float32 value): what the record's stream holds before zigzag,
    and what a decoder returns."""
    m = grid_method(method, step)
    if not hasattr(m, "codes"):
        raise ValueError(f"{method!r} is not a step-coded grid method")
    return m.codes(arr)   # type: ignore[attr-defined]


class _Counter:
    """``take`` that counts the bytes it has read (record sizes for ``info``)."""

    def __init__(self, take: Take):
        self.take, self.count = take, 0

    def __call__(self, n: int, what: str) -> bytes:
        data = self.take(n, what)
        self.count += len(data)
        return data
