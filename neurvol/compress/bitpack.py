"""Pack unsigned integers of ``bits`` bits each into bytes (LSB-first, little-endian)."""
from __future__ import annotations

import numpy as np


def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Pack ``values`` (each < 2**bits) into ``ceil(n*bits/8)`` bytes, LSB-first."""
    v = np.asarray(values, dtype=np.uint64).reshape(-1)
    planes = ((v[:, None] >> np.arange(bits, dtype=np.uint64)) & 1).astype(np.uint8)
    return np.packbits(planes.reshape(-1), bitorder="little").tobytes()


def unpack_bits(data: bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``count`` values of ``bits`` bits as int64."""
    need = (count * bits + 7) // 8
    if len(data) != need:
        raise ValueError(f"packed stream has {len(data)} bytes, expected {need}")
    flat = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=count * bits, bitorder="little")
    planes = flat.reshape(count, bits).astype(np.int64)
    return (planes << np.arange(bits, dtype=np.int64)).sum(axis=1)
