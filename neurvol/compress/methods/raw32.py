"""Method 0, raw32: one stream of the float32 bit patterns (lossless; ``spec/payload.md``
§2.2.4)."""
from __future__ import annotations

from ..registry import register_method
from .rawbits import RawBitsMethod


@register_method
class Raw32(RawBitsMethod):
    """Every value as its float32 bit pattern."""

    id = 0
    name = "raw32"
    summary = "float32 bit patterns (lossless)"
    section = "§2.2.4"
    float_dtype = "<f4"
