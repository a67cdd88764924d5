"""What the step-coded grid methods (lorenzo, interp) share: ``f32 step``, then one stream
of zigzagged integer codes over the tensor's last three axes (``spec/payload.md`` §2.2.7,
§2.2.8). Not a method itself (it registers nothing)."""
from __future__ import annotations

import abc
import math
import struct
from typing import Sequence, Tuple

import numpy as np

from ...errors import NeurvolFormatError
from ..lorenzo import unzigzag, zigzag
from ..registry import DecodeStream, EncodeStream, GridMethod, Take

_STEP = struct.Struct("<f")
#: Largest symbol of a stream of zigzagged 32-bit codes.
_MAX_U32 = (1 << 32) - 1
#: Axes a grid record codes over (the last three).
GRID_AXES = 3
BITS_PER_BYTE = 8
#: The coarsest step: every value rounds to 0 (this many times the largest |value|).
COARSEST_STEP_FACTOR = 4
#: Floor of the largest |value| when computing the coarsest step (all-zero grids).
_TINY_PEAK = 1e-20
#: Codes counted per batch by :func:`code_counts`.
_COUNT_BATCH = 1 << 18


def code_counts(codes: np.ndarray) -> np.ndarray:
    """How often each distinct value of the int64 ``codes`` occurs, in ascending order of
    value: ``np.unique(codes, return_counts=True)[1]``, counted a batch at a time where
    the values span at most as many integers as there are codes (no sorted copy)."""
    flat = codes.reshape(-1)
    if flat.size == 0:
        return np.zeros(0, dtype=np.int64)
    lo, hi = int(flat.min()), int(flat.max())
    if hi - lo >= flat.size:
        return np.unique(flat, return_counts=True)[1]
    counts = np.zeros(hi - lo + 1, dtype=np.int64)
    for a in range(0, flat.size, _COUNT_BATCH):
        counts += np.bincount(flat[a:a + _COUNT_BATCH] - lo, minlength=counts.size)
    return counts[counts > 0]


class StepGridMethod(GridMethod):
    """A grid method whose body is a step and one stream of zigzagged codes."""

    params = ("step",)
    min_axes = GRID_AXES

    def __init__(self, step: float = 1.0):
        if not (isinstance(step, (int, float, np.floating)) and math.isfinite(step) and step > 0):
            raise ValueError(f"{self.name} needs a finite step > 0")
        self.step = float(step)

    @classmethod
    def at_step(cls, step: float) -> "StepGridMethod":
        return cls(step=step)

    @abc.abstractmethod
    def codes(self, arr: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(codes, stored values as float32) of ``arr`` at this step: what the stream holds
        before zigzag (a new int64 array: the encoder zigzags it in place), and what a
        decoder returns."""

    @classmethod
    @abc.abstractmethod
    def reconstruct(cls, codes: np.ndarray, shape: Tuple[int, ...], step: float) -> np.ndarray:
        """float32 values (flat) from the decoded codes (int64, C order)."""

    @classmethod
    def reconstruct_symbols(cls, symbols: np.ndarray, shape: Tuple[int, ...],
                            step: float) -> np.ndarray:
        """:meth:`reconstruct` from the stream's zigzagged symbols (methods that read their
        codes a piece at a time unzigzag them a piece at a time)."""
        return cls.reconstruct(unzigzag(symbols), shape, step)

    @classmethod
    def coarsest_step(cls, arrays: Sequence[np.ndarray]) -> float:
        """Every value rounds to 0."""
        peak = max(float(np.abs(a).max()) for a in arrays)
        return float(np.float32(max(peak, _TINY_PEAK) * COARSEST_STEP_FACTOR))

    def stored_values(self, arr: np.ndarray) -> np.ndarray:
        return self.codes(arr)[1]

    def estimate_bytes(self, arr: np.ndarray) -> float:
        """The codes' zeroth-order entropy, in bytes."""
        codes = self.codes(arr)[0]
        counts = code_counts(codes)
        p = counts / codes.size
        return float(-(counts * np.log2(p)).sum() / BITS_PER_BYTE)

    def encode(self, values: np.ndarray, encode_stream: EncodeStream) -> Tuple[int, bytes]:
        self.check_shape(values.shape)
        stored = type(self)(float(np.float32(self.step)))    # the step as the file holds it
        return self.id, (_STEP.pack(stored.step)
                         + encode_stream(zigzag(stored.codes(values)[0], overwrite=True)))

    def check_shape(self, shape: Tuple[int, ...]) -> None:
        if len(shape) < self.min_axes:
            raise ValueError(f"{self.name} needs a finite step > 0 and a tensor with >= "
                             f"{self.min_axes} axes")

    @classmethod
    def decode(cls, take: Take, shape: Tuple[int, ...], m: int, name: str,
               decode_stream: DecodeStream) -> Tuple[np.ndarray, str, int]:
        if len(shape) < cls.min_axes:
            raise NeurvolFormatError(
                f"tensor {name!r}: {cls.name} needs >= {cls.min_axes} axes, shape {tuple(shape)}")
        (step,) = _STEP.unpack(take(_STEP.size, name))
        if not (math.isfinite(step) and step > 0):
            raise NeurvolFormatError(f"tensor {name!r}: invalid {cls.name} step {step}")
        z, coder = decode_stream(take, m, name, max_symbol=_MAX_U32)
        return cls.reconstruct_symbols(z, tuple(shape), step), coder, 0

    @classmethod
    def reconstruct_symbols(cls, z: np.ndarray, shape: Tuple[int, ...], step: float) -> np.ndarray:
        """:meth:`reconstruct` from the stream's zigzagged symbols (a method may fuse the
        two steps; the values are the same)."""
        return cls.reconstruct(unzigzag(z), shape, step)
