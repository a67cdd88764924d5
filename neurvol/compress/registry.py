"""The codec registry: every record method and stream coder a payload can name, by id.

A *record method* (the ``method`` byte of a kind-2 record, ``spec/payload.md`` §2.2) turns
one tensor into a record body and back; a *stream coder* (the ``coder`` byte of a stream)
turns a stream's plain symbols into bytes and back. Each is one class in one module:

* methods: ``neurvol/compress/methods/<name>.py``, a :class:`RecordMethod` subclass
  decorated with :func:`register_method`;
* coders: ``neurvol/compress/coders/<name>.py``, a :class:`StreamCoder` subclass decorated
  with :func:`register_coder`.

Each declares its ``id`` (the byte on disk), ``name``, the spec section that defines its
layout, and its config (``get_config()`` / ``from_config()`` in the numcodecs manner: a
JSON-able dict whose ``"id"`` is the name, plus the parameters). The encoder's grid choices
(``CodecSettings.grids``), the CLI's ``--grid-coding`` choices, the header's
``codec.pipeline`` configs, ``neurvol info`` and the id table of ``spec/payload.md`` §2.4
(``python -m neurvol.compress --markdown``, checked by ``tests/test_registry.py``)
all derive from here.

**Adding a method or coder** is one module plus one spec section: put the module in
``methods/`` or ``coders/`` (it is found there; nothing else lists it), take the next
unused id, and add its subsection to ``spec/payload.md`` with the table row that
``--markdown`` prints. Ids are never reused: a changed layout is a new id.
"""
from __future__ import annotations

import abc
import argparse
import importlib
import pkgutil
import threading
from typing import (Any, Callable, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple,
                    Type, TypeVar, Union)

import numpy as np

from ..errors import NeurvolFormatError

#: ``take(nbytes, what)``: the next ``nbytes`` bytes of a payload (truncation raises).
Take = Callable[[int, str], bytes]
#: Codes one stream of symbols with the coders the encode allows (``streams.encode_stream``).
EncodeStream = Callable[[np.ndarray], bytes]
#: Reads one stream: ``(take, n, what, max_symbol) -> (symbols, coder name)``.
DecodeStream = Callable[..., Tuple[np.ndarray, str]]
#: Ids are one byte on disk.
MAX_ID = 255
#: Config key naming the method or coder (numcodecs' convention).
CONFIG_ID = "id"


class _Registered:
    """What methods and coders share: id, name, spec section, config round trip."""

    #: The byte stored in the file (unique within its registry, never reused).
    id: ClassVar[int]
    #: The name in configs, headers, ``info`` and the CLI.
    name: ClassVar[str]
    #: One line for the spec's id table.
    summary: ClassVar[str]
    #: The section of ``spec/payload.md`` that defines the layout, e.g. ``"§2.2.4"``.
    section: ClassVar[str]
    #: Config parameters (constructor keywords), in the order configs list them.
    params: ClassVar[Tuple[str, ...]] = ()

    def get_config(self) -> Dict[str, Any]:
        """``{"id": name, parameter: value, ...}``: JSON-able, :meth:`from_config` inverts it."""
        return {CONFIG_ID: self.name, **{p: getattr(self, p) for p in self.params}}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Any:
        """An instance from :meth:`get_config`'s dict (unknown keys are refused)."""
        cfg = dict(config)
        if cfg.pop(CONFIG_ID, cls.name) != cls.name:
            raise ValueError(f"config {dict(config)!r} is not a {cls.name} config")
        unknown = set(cfg) - set(cls.params)
        if unknown:
            raise ValueError(f"{cls.name} has no parameter(s) {', '.join(sorted(unknown))}")
        return cls(**cfg)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.get_config() == self.get_config()

    def __hash__(self) -> int:
        return hash((type(self), tuple(self.get_config().items())))

    def __repr__(self) -> str:
        args = ", ".join(f"{p}={getattr(self, p)!r}" for p in self.params)
        return f"{type(self).__name__}({args})"


class RecordMethod(_Registered, abc.ABC):
    """One record method of payload kind 2: how a tensor's values become a record body.

    The record's method and flags bytes and its mask stream are written and read by
    :mod:`..records`; a method encodes and decodes only the body.
    """

    #: Whether records of this method may carry a mask (pruned tensors).
    maskable: ClassVar[bool] = False
    #: Whether ``CodecSettings.grids`` offers it for dense feature grids.
    grid_coding: ClassVar[bool] = False
    #: Least number of tensor axes the method needs (refused on encode and decode).
    min_axes: ClassVar[int] = 0

    @abc.abstractmethod
    def encode(self, values: np.ndarray, encode_stream: EncodeStream) -> Tuple[int, bytes]:
        """The record body of ``values`` (float32: the tensor, or its kept elements in C
        order when masked) and the method id to store (a method may hand over to another,
        as raw16 does to raw32 for values binary16 cannot hold)."""

    @classmethod
    @abc.abstractmethod
    def decode(cls, take: Take, shape: Tuple[int, ...], m: int, name: str,
               decode_stream: DecodeStream) -> Tuple[np.ndarray, str, int]:
        """Read a body of ``m`` values of the tensor ``name`` of ``shape``; returns the
        values (float32, ``m`` of them in C order), the value stream's coder name and the
        bytes its codebook took (0 without one). Every count and index is validated."""

    def check_shape(self, shape: Sequence[int]) -> None:
        """Refuse (ValueError) a tensor this method cannot store."""
        if len(shape) < self.min_axes:
            raise ValueError(f"{self.name} needs a tensor with >= {self.min_axes} axes")


class GridMethod(RecordMethod):
    """A method for dense feature grids whose fineness the encoder searches by one number,
    ``step`` (smaller: finer and more bytes; what it means is the method's)."""

    grid_coding = True
    #: How close the step search's bracket ends must get (their ratio).
    step_tolerance: ClassVar[float] = 1.01
    #: Bits per grid value the size solver plans for unless ``CodecSettings.grid_bits``
    #: says (fewer: a larger model for the same bytes).
    default_grid_bits: ClassVar[float] = 4.0

    @classmethod
    @abc.abstractmethod
    def at_step(cls, step: float) -> "GridMethod":
        """The configured method for the search's ``step``."""

    @classmethod
    @abc.abstractmethod
    def coarsest_step(cls, arrays: Sequence[np.ndarray]) -> float:
        """The coarsest step worth trying for ``arrays`` (the search's upper end)."""

    @abc.abstractmethod
    def stored_values(self, arr: np.ndarray) -> np.ndarray:
        """The float32 values (``arr``'s shape) a record of ``arr`` decodes to."""

    @abc.abstractmethod
    def estimate_bytes(self, arr: np.ndarray) -> float:
        """A quick estimate of the record's bytes (the step search's starting point)."""


class StreamCoder(_Registered, abc.ABC):
    """One entropy coder of a stream (``spec/payload.md`` §2.2, "Stream")."""

    #: Whether decoding runs symbol by symbol (rANS), far slower than copying or zstd:
    #: the encoder's coder choice may trade a few bytes for a fast coder
    #: (``streams.encode_stream``'s ``slack``).
    slow_decode: ClassVar[bool] = False

    @abc.abstractmethod
    def encode(self, symbols: np.ndarray, plain: bytes) -> Optional[bytes]:
        """The coded data of ``symbols`` (their plain form: ``plain``), or None where this
        coder does not apply (the encoder then tries the others)."""

    @classmethod
    @abc.abstractmethod
    def decode(cls, data: bytes, n: int, dtype: np.dtype, what: str) -> np.ndarray:
        """Exactly ``n`` symbols of ``dtype`` from ``data``; anything else is a format error
        raised before more than the plain form's bytes are allocated."""


_M = TypeVar("_M", bound=Type[RecordMethod])
_C = TypeVar("_C", bound=Type[StreamCoder])


class _Registry:
    def __init__(self, kind: str, base: type, package: str):
        self.kind, self.base, self.package = kind, base, package
        self.by_id: Dict[int, type] = {}
        self.by_name: Dict[str, type] = {}
        self.loaded = False
        # Readers decode bricks on several threads: the first lookup imports the package
        # while the others wait (an RLock: a module that looks up during its import
        # returns at once, as the table it sees is being filled by its own thread).
        self._lock = threading.RLock()
        self._importing = False
        # all()'s tuple, rebuilt after a registration (readers ask for it per stream).
        self._all: Optional[Tuple[type, ...]] = None

    def register(self, cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise TypeError(f"a {self.kind} must subclass {self.base.__name__}")
        if not (type(cls.id) is int and 0 <= cls.id <= MAX_ID):
            raise ValueError(f"{self.kind} id must be an int in 0..{MAX_ID}, got {cls.id!r}")
        for key, table in ((cls.id, self.by_id), (cls.name, self.by_name)):
            if table.get(key, cls) is not cls:
                raise ValueError(f"{self.kind} {key!r} is already registered "
                                 f"({table[key].__name__}); ids and names are never reused")
        self.by_id[cls.id] = cls
        self.by_name[cls.name] = cls
        self._all = None
        return cls

    def load(self) -> None:
        """Import every module of the package (each registers itself)."""
        if self.loaded:
            return
        with self._lock:
            if self.loaded or self._importing:
                return
            self._importing = True
            try:
                pkg = importlib.import_module(self.package)
                for mod in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
                    importlib.import_module(f"{self.package}.{mod.name}")
            finally:
                self._importing = False
            self.loaded = True

    def get(self, key: Union[int, str]) -> type:
        self.load()
        table: Mapping[Any, type] = self.by_id if isinstance(key, int) else self.by_name
        if key not in table:
            known = ", ".join(c.name for c in self.all())
            raise KeyError(f"unknown {self.kind} {key!r} (known: {known})")
        return table[key]

    def read(self, key: int, what: str) -> type:
        """The entry of an id byte read from a file (an unknown id is a format error)."""
        try:
            return self.get(key)
        except KeyError:
            raise NeurvolFormatError(
                f"{what}: unknown {self.kind} {key} (the file may need a newer neurvol, "
                "or it is damaged)") from None

    def all(self) -> Tuple[type, ...]:
        self.load()
        entries = self._all
        if entries is None:
            entries = self._all = tuple(self.by_id[i] for i in sorted(self.by_id))
        return entries


_METHODS = _Registry("record method", RecordMethod, "neurvol.compress.methods")
_CODERS = _Registry("stream coder", StreamCoder, "neurvol.compress.coders")


def register_method(cls: _M) -> _M:
    """Class decorator: add a record method to the registry (id and name unique)."""
    return _METHODS.register(cls)


def register_coder(cls: _C) -> _C:
    """Class decorator: add a stream coder to the registry (id and name unique)."""
    return _CODERS.register(cls)


def get_method(key: Union[int, str]) -> Type[RecordMethod]:
    """The record method of id or name ``key`` (KeyError if there is none)."""
    return _METHODS.get(key)


def get_coder(key: Union[int, str]) -> Type[StreamCoder]:
    """The stream coder of id or name ``key`` (KeyError if there is none)."""
    return _CODERS.get(key)


def methods() -> Tuple[Type[RecordMethod], ...]:
    """Every record method, by id."""
    return _METHODS.all()


def coders() -> Tuple[Type[StreamCoder], ...]:
    """Every stream coder, by id."""
    return _CODERS.all()


def method_names() -> Tuple[str, ...]:
    """Every record method's name, by id."""
    return tuple(m.name for m in methods())


def coder_names() -> Tuple[str, ...]:
    """Every stream coder's name, by id."""
    return tuple(c.name for c in coders())


def stage_names(pipeline: Any) -> List[str]:
    """The stage names of a header's ``codec.pipeline`` (``spec/payload.md`` §1.3), of
    either form: configs (``{"id": name, ...}``, written since the registry) or plain
    labels (older files). It is informative: entries of neither form are skipped."""
    if not isinstance(pipeline, list):
        return []
    names = []
    for entry in pipeline:
        if isinstance(entry, dict):
            entry = entry.get(CONFIG_ID)
        if isinstance(entry, str):
            names.append(entry)
    return names


def method_from_config(config: Mapping[str, Any]) -> RecordMethod:
    """A configured record method from its config dict (``{"id": name, ...}``)."""
    return get_method(str(config.get(CONFIG_ID))).from_config(config)


def grid_methods() -> Tuple[Type[GridMethod], ...]:
    """The methods whose step the encoder searches for dense feature grids."""
    return tuple(m for m in methods() if issubclass(m, GridMethod))


def grid_codings() -> Tuple[str, ...]:
    """Names ``CodecSettings.grids`` accepts: every grid-coding method, by id. A method
    that is not a :class:`GridMethod` (kmeans) codes the grids as the other tensors."""
    return tuple(m.name for m in methods() if m.grid_coding)


def read_method(method_id: int, what: str) -> Type[RecordMethod]:
    """The method of a record's method byte (an unknown id is a format error)."""
    return _METHODS.read(method_id, what)


def read_coder(coder_id: int, what: str) -> Type[StreamCoder]:
    """The coder of a stream's coder byte (an unknown id is a format error)."""
    return _CODERS.read(coder_id, what)


#: The generated part of spec/payload.md §2.4 sits between these lines.
TABLE_BEGIN = "<!-- registry table: generated by `python -m neurvol.compress --markdown` -->"
TABLE_END = "<!-- end of registry table -->"


def markdown_table() -> str:
    """The record method and stream coder rows of the spec's id table (§2.4)."""
    rows: List[str] = ["| registry | field | id | name | parameters | summary | defined in |",
                       "|---|---|---|---|---|---|---|"]
    for label, field, items in (("record method, kind 2", "method byte", methods()),
                                ("stream coder", "coder byte", coders())):
        for i, cls in enumerate(items):
            params = ", ".join(f"`{p}`" for p in cls.params) or "-"
            first = (label, field) if i == 0 else ("", "")
            rows.append(f"| {first[0]} | {first[1]} | {cls.id} | `{cls.name}` | {params} | "
                        f"{cls.summary} | {cls.section} |")
    return "\n".join(rows) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m neurvol.compress",
                                description="List the registered record methods and coders.")
    p.add_argument("--markdown", action="store_true",
                   help="print spec/payload.md §2.4's generated table")
    args = p.parse_args(argv)
    if args.markdown:
        print(TABLE_BEGIN)
        print(markdown_table(), end="")
        print(TABLE_END)
    else:
        for cls in methods():
            print(f"method {cls.id:3d} {cls.name:8s} {cls.summary}")
        for cls in coders():
            print(f"coder  {cls.id:3d} {cls.name:8s} {cls.summary}")
    return 0

