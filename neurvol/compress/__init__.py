"""Turn trained weights (named float arrays) into bytes and back. No torch here."""
from .payload import (
    TensorPlan,
    decode_payload,
    default_plan,
    encode_constant,
    encode_records,
    encode_tensors,
    payload_stats,
)
from .records import RecordStats

__all__ = ["RecordStats", "TensorPlan", "decode_payload", "default_plan", "encode_constant",
           "encode_records", "encode_tensors", "payload_stats"]
