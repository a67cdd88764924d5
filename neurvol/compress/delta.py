"""Delta payloads of time series (``spec/series.md`` §4): a member's tensors as quantized
differences from its predecessor's *decoded* tensors.

Layout: the kind byte ``0x03``, then per tensor in the architecture's order either ``u8 0``
(unchanged: the predecessor's values) or ``u8 1``, ``f32 step`` and one entropy-coded
stream (:mod:`.streams`) of ``n`` zigzagged codes. The decoded tensor is
``float32(float64(prev) + float64(step) * code)``: the encoder computes the same numbers,
so the encoder's view of a chain is the decoder's (closed loop, no drift).
"""
from __future__ import annotations

import math
import struct
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..errors import NeurvolFormatError
from .payload import TensorSpec, check_amplification
from .streams import CoderChoice, decode_stream, encode_stream

#: The payload kind byte of a delta payload (kinds 0-2: spec/payload.md).
KIND_DELTA = 0x03
_FLAG_SAME = 0
_FLAG_CODED = 1
_STEP = struct.Struct("<f")
#: Largest |code|: a zigzagged code is a u32 symbol.
MAX_DELTA_CODE = (1 << 31) - 1


def _zigzag(q: np.ndarray) -> np.ndarray:
    return np.where(q >= 0, 2 * q, -2 * q - 1).astype(np.int64)


def _unzigzag(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.int64)
    return np.where(z & 1, -(z >> 1) - 1, z >> 1)


def _apply(prev: np.ndarray, step: float, codes: np.ndarray) -> np.ndarray:
    """The normative reconstruction of a coded tensor."""
    return (prev.astype(np.float64) + np.float64(np.float32(step)) * codes).astype(np.float32)


def encode_delta(prev: Mapping[str, np.ndarray], new: Mapping[str, np.ndarray],
                 specs: Sequence[TensorSpec], steps: Mapping[str, Optional[float]],
                 coders: Optional[Sequence[CoderChoice]] = None
                 ) -> Tuple[bytes, Dict[str, np.ndarray]]:
    """The delta payload of ``new`` against ``prev`` and the tensors a decoder gets from it.

    ``steps``: per tensor name, the quantization step (float32-representable, > 0), or
    None to keep the predecessor's values (the tensor is not coded)."""
    out: List[bytes] = [bytes([KIND_DELTA])]
    decoded: Dict[str, np.ndarray] = {}
    for name, shape in specs:
        step = steps.get(name)
        base = np.asarray(prev[name], dtype=np.float32).reshape(shape)
        if step is None:
            out.append(bytes([_FLAG_SAME]))
            decoded[name] = base
            continue
        step32 = float(np.float32(step))
        if not (math.isfinite(step32) and step32 > 0):
            raise ValueError(f"delta step for {name} must be finite and > 0, got {step!r}")
        diff = np.asarray(new[name], dtype=np.float64).reshape(shape) - base
        codes = np.rint(diff / step32)
        if codes.size and float(np.abs(codes).max()) > MAX_DELTA_CODE:
            raise ValueError(f"delta step {step32:g} is too small for tensor {name}")
        codes = codes.astype(np.int64)
        out.append(bytes([_FLAG_CODED]) + _STEP.pack(step32)
                   + encode_stream(_zigzag(codes).reshape(-1), coders))
        decoded[name] = _apply(base, step32, codes)
    return b"".join(out), decoded


def decode_delta(payload: bytes, prev: Mapping[str, np.ndarray],
                 specs: Sequence[TensorSpec]) -> Dict[str, np.ndarray]:
    """The tensors of a delta payload applied to ``prev`` (the predecessor's decoded
    tensors, shapes as ``specs``). Every count and value is checked before use."""
    if len(payload) < 1 or payload[0] != KIND_DELTA:
        raise NeurvolFormatError("series member payload is not a delta payload (kind 3)")
    sizes = [math.prod(shape) for _, shape in specs]
    check_amplification(sum(sizes), len(payload))
    pos = 1

    def take(n: int, what: str) -> bytes:
        nonlocal pos
        if n < 0 or pos + n > len(payload):
            raise NeurvolFormatError(f"delta payload truncated while reading {what}")
        chunk = payload[pos:pos + n]
        pos += n
        return chunk

    out: Dict[str, np.ndarray] = {}
    for (name, shape), n in zip(specs, sizes):
        base = prev.get(name)
        if base is None or tuple(base.shape) != tuple(shape):
            raise NeurvolFormatError(
                f"delta payload: predecessor has no tensor {name!r} of shape {tuple(shape)}")
        flag = take(1, name)[0]
        if flag == _FLAG_SAME:
            out[name] = base
            continue
        if flag != _FLAG_CODED:
            raise NeurvolFormatError(f"delta payload: tensor {name!r} has unknown flag {flag}")
        (step,) = _STEP.unpack(take(_STEP.size, name))
        if not (math.isfinite(step) and step > 0):
            raise NeurvolFormatError(f"delta payload: tensor {name!r} has step {step!r}")
        symbols, _ = decode_stream(take, n, f"delta of {name}", 2 * MAX_DELTA_CODE + 1)
        values = _apply(base, step, _unzigzag(symbols).reshape(shape))
        if not np.isfinite(values).all():
            raise NeurvolFormatError(
                f"delta payload: tensor {name!r} decodes to non-finite values; the file is "
                "corrupted")
        out[name] = values
    if pos != len(payload):
        raise NeurvolFormatError(f"delta payload has {len(payload) - pos} unexpected trailing bytes")
    return out

