"""Turn trained weights (named float arrays) into bytes and back. No torch here."""
from .payload import (
    TensorPlan,
    decode_payload,
    default_plan,
    encode_constant,
    encode_tensors,
)

__all__ = ["TensorPlan", "decode_payload", "default_plan", "encode_constant", "encode_tensors"]
