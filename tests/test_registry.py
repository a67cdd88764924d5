"""The codec registry (neurvol.compress.registry): every record method and stream coder is
one registered class; the spec's id table, the encoder's grid choices, the CLI and the
header's codec.pipeline derive from it, and a new method is one module."""
from __future__ import annotations

import re
import struct
import subprocess
import sys
from pathlib import Path
from typing import Tuple

import numpy as np
import pytest

from neurvol.compress import TensorPlan, decode_payload, encode_records
from neurvol.compress import registry
from neurvol.compress.records import decode_record, encode_record
from neurvol.compress.registry import (GridMethod, RecordMethod, coders,
                                       get_coder, get_method, grid_codings, methods,
                                       stage_names)
from neurvol.errors import NeurvolFormatError

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "spec" / "payload.md"

#: A configuration of each built-in method for the conformance tests.
CONFIGS = {"raw32": {}, "raw16": {}, "kmeans": {"k": 16}, "lorenzo": {"step": 0.01},
           "interp": {"step": 0.01}, "vq": {"k": 8}}


def _take(data: bytes):
    pos = [0]

    def take(n: int, what: str) -> bytes:
        if pos[0] + n > len(data):
            raise NeurvolFormatError(f"truncated while reading {what}")
        out = data[pos[0]:pos[0] + n]
        pos[0] += n
        return out
    return take


def _grid() -> np.ndarray:
    rng = np.random.default_rng(3)
    z, y, x = np.meshgrid(*[np.linspace(0, 1, 9)] * 3, indexing="ij")
    smooth = np.stack([np.sin(3 * z + c) * np.cos(2 * y) + x for c in range(4)])
    return (smooth + 0.01 * rng.standard_normal(smooth.shape)).astype(np.float32)[None]


def test_spec_table_is_the_registry_table() -> None:
    """spec/payload.md §2.4 holds exactly what `python -m neurvol.compress --markdown`
    prints (regenerate the table with it after adding a method or coder)."""
    out = subprocess.run([sys.executable, "-m", "neurvol.compress", "--markdown"],
                         capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.startswith(registry.TABLE_BEGIN) and registry.TABLE_END in out
    text = SPEC.read_text()
    begin, end = text.index(registry.TABLE_BEGIN), text.index(registry.TABLE_END)
    assert text[begin:end + len(registry.TABLE_END)] + "\n" == out
    for cls in methods() + coders():
        assert f"| {cls.id} | `{cls.name}` |" in out


def test_builtin_ids_are_the_specs() -> None:
    assert [(m.id, m.name) for m in methods()] == [
        (0, "raw32"), (1, "raw16"), (2, "kmeans"), (3, "lorenzo"), (4, "interp"), (5, "vq")]
    assert [(c.id, c.name) for c in coders()] == [(0, "raw"), (1, "zstd"), (2, "rans")]
    for cls in methods() + coders():
        assert get_method(cls.id) is cls if issubclass(cls, RecordMethod) else \
            get_coder(cls.id) is cls
        assert re.fullmatch(r"§\d+(\.\d+)*", cls.section), cls
    assert grid_codings() == ("kmeans", "lorenzo", "interp", "vq")
    with pytest.raises(KeyError, match="unknown record method"):
        get_method("nope")
    with pytest.raises(KeyError, match="unknown stream coder"):
        get_coder(7)


#: A subsection heading of spec/payload.md that defines one registry entry.
_ENTRY_HEADING = re.compile(r"^(#{2,5}) (\d+(?:\.\d+)*) (Method|Coder) (\d+): `(\w+)`\s*$", re.M)


def _spec_subsections() -> dict:
    """``{(kind, id): (section number, name, text)}`` of the entry subsections; a
    subsection's text runs to the next heading of its level or above."""
    text = SPEC.read_text(encoding="utf-8")
    out = {}
    for m in _ENTRY_HEADING.finditer(text):
        key = (m.group(3), int(m.group(4)))
        assert key not in out, f"two subsections define {key}"
        nxt = re.compile(rf"^#{{1,{len(m.group(1))}}} ", re.M).search(text, m.end())
        out[key] = (m.group(2), m.group(5), text[m.end():nxt.start() if nxt else len(text)])
    return out


@pytest.mark.parametrize("cls", methods() + coders(), ids=lambda c: c.name)
def test_every_id_has_its_own_spec_subsection(cls) -> None:
    """Adding a method or coder = one module + one spec section: each registered id has a
    subsection headed ``<section> Method|Coder <id>: `<name>` `` at the section the class
    declares, and a method's subsection states its masking and axis rules as the class
    enforces them."""
    kind = "Method" if issubclass(cls, RecordMethod) else "Coder"
    subsections = _spec_subsections()
    assert (kind, cls.id) in subsections, f"spec/payload.md has no subsection for {kind} {cls.id}"
    number, name, body = subsections[(kind, cls.id)]
    assert (f"§{number}", name) == (cls.section, cls.name)
    assert "MUST" in body or kind == "Method", f"{cls.name}: no decoder requirement"
    if kind == "Method":
        rule = ("Maskable." if cls.maskable else
                f"Never masked; the tensor MUST have at least {cls.min_axes} axes")
        assert body.strip().startswith(rule), f"{cls.name}: the subsection should open {rule!r}"
    informative_heading = False
    for para in body.split("\n\n"):
        if para.lstrip().startswith("#"):
            informative_heading = "informative" in para.splitlines()[0].lower()
        if ("reference" in para.lower() and not informative_heading
                and "informative" not in para.lower()):
            pytest.fail(f"{cls.name}: an encoder note not marked informative: {para[:80]!r}")


def test_spec_subsections_are_all_registered() -> None:
    """No subsection describes an id the registry lacks (a removed or renamed entry)."""
    registered = {("Method" if issubclass(c, RecordMethod) else "Coder", c.id)
                  for c in methods() + coders()}
    assert set(_spec_subsections()) == registered


@pytest.mark.parametrize("cls", methods() + coders(), ids=lambda c: c.name)
def test_config_round_trip(cls) -> None:
    params = CONFIGS.get(cls.name, {})
    obj = cls.from_config(dict(params, id=cls.name))
    cfg = obj.get_config()
    assert cfg["id"] == cls.name and set(cfg) == {"id", *cls.params}
    assert cls.from_config(cfg) == obj and cls.from_config(cfg).get_config() == cfg
    with pytest.raises(ValueError):
        cls.from_config(dict(cfg, id="something-else"))
    with pytest.raises(ValueError, match="no parameter"):
        cls.from_config(dict(cfg, bogus=1))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_method_round_trips_through_its_record(name) -> None:
    """Conformance of each registered method: its record decodes to what the method says
    it stores, names itself in the stats, and refuses a mask unless it is maskable."""
    cls = get_method(name)
    arr = _grid() if name == "vq" else _grid()[0]
    method = cls.from_config(CONFIGS[name])
    rec = encode_record(arr, method)
    assert rec[0] == cls.id
    out, st = decode_record(_take(rec), arr.shape, "t")
    assert st.method == name and st.total == len(rec) and out.shape == arr.shape
    if name == "raw32":
        np.testing.assert_array_equal(out, arr)
    elif name == "raw16":
        np.testing.assert_array_equal(out, arr.astype(np.float16).astype(np.float32))
    elif issubclass(cls, GridMethod):
        stored = cls.from_config(dict(CONFIGS[name], **(
            {"step": float(np.float32(CONFIGS[name]["step"]))} if "step" in CONFIGS[name]
            else {})))
        np.testing.assert_array_equal(out, stored.stored_values(arr))
        if "step" in CONFIGS[name]:
            assert np.abs(out - arr).max() <= CONFIGS[name]["step"] / 2 * (1 + 1e-5)
    else:
        assert len(np.unique(out)) <= CONFIGS[name]["k"]
    if not cls.maskable:
        with pytest.raises(ValueError, match="cannot be masked"):
            encode_record(arr, method, masked=True)
        with pytest.raises(ValueError, match="cannot be masked"):
            TensorPlan(name, masked=True, **CONFIGS[name])


@pytest.mark.parametrize("coder", [c.name for c in coders()])
def test_every_coder_round_trips_a_stream(coder) -> None:
    from neurvol.compress.streams import decode_stream, encode_stream
    sym = np.random.default_rng(1).integers(0, 40, 5000)
    data = encode_stream(sym, coders=(coder,))
    assert data[0] == get_coder(coder).id
    out, used = decode_stream(_take(data), sym.size, "s", max_symbol=39)
    assert used == coder
    np.testing.assert_array_equal(out, sym)


def test_unknown_ids_in_a_file_are_format_errors() -> None:
    rec = bytearray(encode_record(np.arange(8, dtype=np.float32), "raw32"))
    rec[0] = 99
    with pytest.raises(NeurvolFormatError, match="unknown record method 99.*newer"):
        decode_record(_take(bytes(rec)), (8,), "t")
    rec = bytearray(encode_record(np.arange(8, dtype=np.float32), "raw32"))
    rec[2] = 9                               # the value stream's coder byte
    with pytest.raises(NeurvolFormatError, match="unknown stream coder 9"):
        decode_record(_take(bytes(rec)), (8,), "t")


def test_ids_and_names_are_never_reused() -> None:
    class Clash(RecordMethod):
        id = get_method("raw32").id
        name = "clash"
        summary = section = ""

        def encode(self, values, encode_stream):   # pragma: no cover - never called
            raise AssertionError

        @classmethod
        def decode(cls, take, shape, m, name, decode_stream):   # pragma: no cover
            raise AssertionError

    with pytest.raises(ValueError, match="already registered"):
        registry.register_method(Clash)
    Clash.id, Clash.name = 250, "interp"
    with pytest.raises(ValueError, match="already registered"):
        registry.register_method(Clash)
    with pytest.raises(TypeError):
        registry.register_coder(Clash)
    assert get_method("interp").id == 4 and 250 not in registry._METHODS.by_id


class _Negate(RecordMethod):
    """A toy method, as a new module would declare it: ``f32 scale``, then the float32
    bit patterns of ``-scale * value``."""

    id = 200
    name = "negate"
    summary = "`f32 scale` + float32 bit patterns of minus the scaled values"
    section = "§9.9"
    params = ("scale",)
    maskable = True

    def __init__(self, scale: float = 1.0):
        self.scale = float(scale)

    def encode(self, values, encode_stream) -> Tuple[int, bytes]:
        scaled = (-self.scale * values.reshape(-1)).astype("<f4")
        return self.id, struct.pack("<f", self.scale) + encode_stream(scaled.view("<u4"))

    @classmethod
    def decode(cls, take, shape, m, name, decode_stream):
        (scale,) = struct.unpack("<f", take(4, name))
        bits, coder = decode_stream(take, m, name, max_symbol=(1 << 32) - 1)
        return (bits.astype("<u4").view("<f4") / -scale).astype(np.float32), coder, 0


@pytest.fixture
def negate(monkeypatch):
    """_Negate registered for one test (the registry's tables restored afterwards)."""
    registry.methods()      # load the built-ins first
    monkeypatch.setattr(registry._METHODS, "by_id", dict(registry._METHODS.by_id))
    monkeypatch.setattr(registry._METHODS, "by_name", dict(registry._METHODS.by_name))
    return registry.register_method(_Negate)


def test_a_new_method_is_one_class(negate) -> None:
    """Registering a class is all it takes: plans, records, payloads, the spec table."""
    w = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)
    w[w < 0] = 0
    plan = TensorPlan("negate", masked=True, params=(("scale", 2.0),))
    assert plan.record_method().get_config() == {"id": "negate", "scale": 2.0}
    payload = encode_records([("w", w)], {"w": plan})
    assert payload[1:3] == bytes([200, 1])          # method id, masked
    np.testing.assert_array_equal(decode_payload(payload, [("w", (16, 8))])["w"], w)
    assert "| 200 | `negate` | `scale` | `f32 scale` + float32 bit patterns of minus the " \
        "scaled values | §9.9 |" in registry.markdown_table()
    assert "negate" not in grid_codings()      # not a grid coding unless it says so


def test_stage_names_reads_labels_configs_and_junk() -> None:
    assert stage_names(["kmeans", "interp"]) == ["kmeans", "interp"]
    assert stage_names([{"id": "rate", "weight": 12.0}, "kmeans", {"id": "zstd"}]) == \
        ["rate", "kmeans", "zstd"]
    assert stage_names([{"no": "id"}, 3, None, {"id": 5}]) == []
    assert stage_names("kmeans") == [] and stage_names(None) == []


def test_codec_settings_and_cli_take_their_choices_from_the_registry(negate) -> None:
    from neurvol import cli
    from neurvol.pipeline import GRID_CODINGS, CodecSettings
    assert GRID_CODINGS == grid_codings()
    parser = cli.build_parser()
    for grids in GRID_CODINGS:
        args = parser.parse_args(["pack", "in.npy", "-o", "out.nvol", "--grid-coding", grids])
        assert args.grid_coding == grids
    with pytest.raises(SystemExit):
        parser.parse_args(["pack", "in.npy", "-o", "out.nvol", "--grid-coding", "negate"])
    with pytest.raises(ValueError, match="grids must be one of kmeans, lorenzo, interp, vq"):
        CodecSettings(grids="negate")
    with pytest.raises(ValueError, match="coders must be a non-empty subset of raw, zstd, rans"):
        CodecSettings(coders=("raw", "lz4"))


def test_header_pipeline_lists_configs() -> None:
    """New files' codec.pipeline: registry configs with parameters, not labels."""
    from neurvol.pipeline import CodecSettings
    configs = CodecSettings(rate=4.0, prune=0.25).stage_configs(True)
    assert configs == [{"id": "rate", "weight": 4.0}, {"id": "prune", "fraction": 0.25},
                       {"id": "kmeans"}, {"id": "interp", "grid_bits": 4.0},
                       {"id": "finetune", "fraction": 0.1}, {"id": "rans"},
                       {"id": "zstd", "level": 19}]
    assert stage_names(configs) == ["rate", "prune", "kmeans", "interp", "finetune", "rans",
                                    "zstd"]
    vq = CodecSettings(grids="vq", vq_ema=0.9, coders=("raw",)).stage_configs(True)
    assert vq == [{"id": "kmeans"}, {"id": "vq", "grid_bits": 2.0}, {"id": "ema", "decay": 0.9},
                  {"id": "finetune", "fraction": 0.1}]
    assert CodecSettings().stage_configs(False) == [{"id": "kmeans"}, {"id": "rans"},
                                                    {"id": "zstd", "level": 19}]


def test_widest_pipeline_bounds_every_codec() -> None:
    """Sizing reserves the widest codec.pipeline: no codec writes a longer one."""
    import itertools
    import json

    from neurvol.encoding.plan import WIDEST_PIPELINE
    from neurvol.pipeline import PRUNE_METHODS, CodecSettings
    widest = len(json.dumps(WIDEST_PIPELINE, separators=(",", ":")))
    for grids, method in itertools.product(grid_codings(), PRUNE_METHODS):
        codec = CodecSettings(grids=grids, prune=0.123456789, prune_method=method,
                              finetune=0.987654321, vq_ema=0.123456789 if grids == "vq" else 0,
                              rate=12.3456789 if grids == "interp" else 0)
        for has_grids in (True, False):
            n = len(json.dumps(codec.stage_configs(has_grids), separators=(",", ":")))
            assert n <= widest, (grids, method)


def test_payload_layout_is_unchanged_by_the_registry() -> None:
    """Records the registry's methods write are those of spec/payload.md §2.2 (a
    hand-built raw16 record and a kmeans record's head)."""
    v = np.array([1.0, -2.0, 0.5], np.float32)
    body = v.astype("<f2").view("<u2").astype("<u2").tobytes()
    assert encode_record(v, "raw16", coders=("raw",)) == \
        bytes([1, 0]) + struct.pack("<BBI", 0, 2, len(body)) + body
    rec = encode_record(np.tile(v, 30), "kmeans", k=3, coders=("raw",))
    assert rec[:2] == bytes([2, 0]) and struct.unpack("<BI", rec[2:7]) == (0, 3)
