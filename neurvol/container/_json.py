"""Canonical JSON encoding and strict decoding of the ``.nvol`` header."""
from __future__ import annotations

import json
import math
from typing import Any, Dict, List, Tuple

from ..errors import NeurvolFormatError, NeurvolInputError


#: Deepest nesting of arrays/objects a reader accepts in a header (spec/nvol.md §3.1 lets
#: readers refuse deeper headers). A fixed limit, rather than whatever depth the JSON
#: parser reaches before Python's recursion limit, makes acceptance independent of the
#: caller's stack depth, and every consumer of the header can safely recurse into it.
MAX_HEADER_DEPTH = 64

#: Most JSON arrays and objects a reader parses in one header (counted as ``[`` and ``{``
#: bytes, strings included, before parsing). A parsed empty object costs ~100 bytes and a
#: Python call of the duplicate-key hook, so without this a 16 MiB header of ``{}`` held
#: ~1 GB and took seconds before it was refused. Real headers have a few per model config
#: (at most 4096 configs, spec/bricks.md) and section: far below the cap.
MAX_HEADER_CONTAINERS = 1 << 17


def canonical_json(obj: Any) -> bytes:
    """Encode *obj* deterministically (sorted keys, no spaces, UTF-8, no NaN)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)
    return text.encode("utf-8")


def check_json_value(value: Any, where: str = "header") -> None:
    """Raise NeurvolInputError unless *value* is plain JSON that round-trips exactly.

    ``json.dumps`` would silently turn int keys into strings and tuples into lists, and it
    rejects numpy scalars with a bare TypeError; checking first gives a message with the
    path of the offending value.
    """
    # Iterative walk: headers come from our own code, but a deep structure must not be
    # able to hit the recursion limit here.
    stack: List[Tuple[Any, str, int]] = [(value, where, 0)]
    while stack:
        v, path, depth = stack.pop()  # depth: containers around v
        if isinstance(v, (list, tuple, dict)) and depth >= MAX_HEADER_DEPTH:
            raise NeurvolInputError(
                f"{path} is nested more than {MAX_HEADER_DEPTH} levels deep; readers refuse "
                "such headers - flatten it")
        if v is None or isinstance(v, (bool, str)):
            if isinstance(v, str):
                _check_encodable(v, path)
            continue
        if type(v) is int:  # not bool, not IntEnum: those would not round-trip
            continue
        if type(v) is float:
            if not math.isfinite(v):
                raise NeurvolInputError(
                    f"{path} is {v!r}; .nvol headers cannot hold NaN or infinity, "
                    "store it as null or a string")
            continue
        if isinstance(v, (list, tuple)):
            stack.extend((item, f"{path}[{i}]", depth + 1) for i, item in enumerate(v))
            continue
        if isinstance(v, dict):
            for k, item in v.items():
                if not isinstance(k, str):
                    raise NeurvolInputError(
                        f"{path} has a non-string key {k!r}; JSON object keys must be str")
                _check_encodable(k, path)
                stack.append((item, f"{path}[{k!r}]", depth + 1))
            continue
        raise NeurvolInputError(
            f"{path} is a {type(v).__module__}.{type(v).__qualname__}; header values must "
            "be plain JSON types (dict, list, str, int, float, bool, None) - convert numpy "
            "scalars with int()/float() and arrays with .tolist()")


def _check_encodable(s: str, path: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise NeurvolInputError(
            f"{path} contains an unpaired surrogate and cannot be written as UTF-8") from None


def _reject_duplicates(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    obj: Dict[str, Any] = {}
    for k, v in pairs:
        if k in obj:
            raise NeurvolFormatError(
                f"header JSON has the key {k!r} twice; duplicate keys are not allowed "
                "(the file is corrupted or was written by a faulty tool)")
        obj[k] = v
    return obj


def _reject_constant(name: str) -> Any:
    raise NeurvolFormatError(
        f"header JSON contains {name}, which is not valid JSON; the file was written by a "
        "faulty tool")


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # e.g. 1e999 overflows to inf
        raise NeurvolFormatError(
            f"header JSON contains the number {text[:40]}, which overflows a double")
    return value


def parse_header(raw: bytes) -> Dict[str, Any]:
    """Decode header bytes: UTF-8, then a strict JSON object.

    Raises NeurvolFormatError on invalid UTF-8, invalid JSON, duplicate keys, NaN or
    Infinity, overflowing numbers, unpaired surrogate escapes, excessive nesting, or a
    top level that is not an object.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise NeurvolFormatError(
            f"header is not valid UTF-8 (byte {e.start} of the header); the file is "
            "corrupted or was written by a faulty tool") from None
    containers = raw.count(b"{") + raw.count(b"[")
    if containers > MAX_HEADER_CONTAINERS:
        raise NeurvolFormatError(
            f"header JSON holds {containers} arrays/objects, more than the "
            f"{MAX_HEADER_CONTAINERS} a reader parses (spec/resources.md); the file is "
            "corrupted or hostile")
    try:
        obj = json.loads(text, object_pairs_hook=_reject_duplicates,
                         parse_constant=_reject_constant, parse_float=_parse_float)
    except NeurvolFormatError:
        raise
    except RecursionError:
        raise NeurvolFormatError("header JSON is nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, and int() digit limits on huge numbers
        raise NeurvolFormatError(f"header is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise NeurvolFormatError(
            f"header JSON must be an object, found {type(obj).__name__}")
    _check_depth(obj)
    # "\ud800" escapes decode to lone surrogates that cannot be re-encoded; refuse them so
    # that every header we accept can be written back unchanged.
    try:
        canonical_json(obj)
    except UnicodeEncodeError:
        raise NeurvolFormatError(
            "header JSON contains an unpaired UTF-16 surrogate escape (e.g. \\ud800)"
        ) from None
    except RecursionError:
        raise NeurvolFormatError("header JSON is nested too deeply") from None
    return obj


def _check_depth(obj: Any) -> None:
    """Raise NeurvolFormatError if *obj* nests deeper than MAX_HEADER_DEPTH (iterative)."""
    stack: List[Tuple[Any, int]] = [(obj, 1)]
    while stack:
        v, depth = stack.pop()
        if depth > MAX_HEADER_DEPTH:
            raise NeurvolFormatError(
                f"header JSON is nested too deeply (more than {MAX_HEADER_DEPTH} levels)")
        if isinstance(v, dict):
            stack.extend((x, depth + 1) for x in v.values() if isinstance(x, (dict, list)))
        elif isinstance(v, list):
            stack.extend((x, depth + 1) for x in v if isinstance(x, (dict, list)))
