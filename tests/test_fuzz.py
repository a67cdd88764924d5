"""Fuzzing of the reader (open + info + decode + query + region read + re-serialization).

Bounded hypothesis runs of the structure-aware mutations in ``tests/fuzz/nvol_fuzzlib.py``
over valid seed files (a tiny fvsrn model, a constant volume and every
``tests/golden/*.nvol``). Only NeurvolFormatError may come out of a damaged file; every
input runs under a deadline (a hang is a bug) and an address-space cap (so is a huge
allocation). The long-running fuzzer is ``tests/fuzz/fuzz_open.py`` (RELIABILITY.md).

The examples are derandomized so CI runs are reproducible; set NEURVOL_FUZZ_RANDOM=1 to
explore new ones and NEURVOL_FUZZ_SCALE=10 for ten times as many.
"""
from __future__ import annotations

import json
import os
import struct
import sys

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import neurvol
from neurvol import NeuralVolume, NeurvolFormatError
from neurvol.container import NvolReader, serialize_nvol
from neurvol.models.base import MAX_MODEL_PARAMS

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "fuzz"))
import nvol_fuzzlib as F  # noqa: E402

SCALE = float(os.environ.get("NEURVOL_FUZZ_SCALE", "1"))
DEADLINE_S = 10.0  # per input; a legitimate input of these sizes takes milliseconds
MEMORY_CAP = 2560 << 20  # address space above the current size while fuzzing


def _settings(n: int):
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None, database=None,
                    derandomize=os.environ.get("NEURVOL_FUZZ_RANDOM") != "1",
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def seeds():
    return F.seed_files()


@pytest.fixture(scope="module", autouse=True)
def _memory_cap(seeds):
    with F.memory_cap(MEMORY_CAP):
        yield


def _run(seeds, data, kinds, rounds_max):
    ch = F.HypothesisChooser(data)
    name, raw = ch.choice(seeds)
    mutated, applied = F.mutate(raw, ch, rounds=ch.int(1, rounds_max), kinds=kinds)
    try:
        F.guarded(mutated, DEADLINE_S)
    except Exception:
        # Keep the input: `python tests/fuzz/fuzz_open.py <file>` replays it.
        path = os.path.join(os.path.dirname(F.__file__), "crashes")
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, f"hypothesis-{name}-{'-'.join(applied)}.nvol"), "wb") as f:
            f.write(mutated)
        raise


def test_seeds_are_valid_and_include_every_golden_file(seeds):
    names = [n for n, _ in seeds]
    golden = [os.path.basename(p) for p in F.golden_files()]
    assert golden and set(golden) <= set(names)
    assert any(n.startswith("fvsrn") for n in golden)
    for name, data in seeds:
        assert F.guarded(data, DEADLINE_S) == "ok", name
    assert 1000 <= len(F.tiny_model_file()) <= 3000


@_settings(400)
@given(data=st.data())
def test_fuzz_byte_mutations(seeds, data):
    _run(seeds, data, ["bytes"], 3)


@_settings(900)
@given(data=st.data())
def test_fuzz_header_edits_behind_valid_crc(seeds, data):
    _run(seeds, data, ["header"], 2)


@_settings(300)
@given(data=st.data())
def test_fuzz_compact_header_edits_behind_valid_crc(seeds, data):
    """Compact headers (format 1.4): edited reduced JSON, declared sizes, dictionary ids,
    junk after the frame, all behind a valid header CRC."""
    compact = [(n, d) for n, d in seeds if F.split_compact(d) is not None]
    assert compact
    _run(compact, data, ["compact"], 2)


@_settings(200)
@given(data=st.data())
def test_fuzz_compact_sections_header_edits_behind_valid_crc(seeds, data):
    """Compact headers with sections (format 1.5, the error-bounded golden files): lying
    brick and section lengths, counts, names and CRCs, edited reduced JSON, all behind a
    valid header CRC."""
    compact = [(n, d) for n, d in seeds if F.split_compact_sections(d) is not None]
    assert compact
    _run(compact, data, ["compact_sections"], 2)


@_settings(500)
@given(data=st.data())
def test_fuzz_payload_and_record_edits_rechecksummed(seeds, data):
    _run(seeds, data, ["payload", "records", "streams", "grid"], 2)


@_settings(500)
@given(data=st.data())
def test_fuzz_stacked_mutations(seeds, data):
    _run(seeds, data, None, 3)


# ---------------------------------------------------------------------------------------
# Regressions: one input per bug the fuzzers found (RELIABILITY.md lists them).


def _with_header(data: bytes, edit) -> bytes:
    hdr, _ = F.split_head(data)
    bricks = F.bricks_of(data)
    edit(hdr)
    out = F.rebuild(hdr, bricks)
    # The writer refuses some hostile headers (e.g. nesting): forge those behind a valid CRC.
    return out if out is not None else F.forge(hdr, F.split_head(data)[1])


_set = F.set_at


HOSTILE_HEADERS = [
    # model / config of the wrong JSON type (AttributeError / TypeError before)
    ("model", "a string"), ("model", [1, 2]), ("model", 3.5),
    ("model.arch", ["fvsrn"]), ("model.arch", {"a": 1}),
    ("model.config", [["grid", 1]]), ("model.config", 5), ("model.config", True),
    ("model.config", ["grid", "channels", "width", "hidden_layers"]),
    ("model.config.width", [4]), ("model.config.channels", 2.0),
    # allocation bombs in the config (8 GiB grid, 275 GB MLP before)
    ("model.config.grid", [4096, 4096, 4096]),
    ("model.config.grid", [1024, 1024, 512]),  # 2^31 values: passes fvsrn's own check
    ("model.config.width", True),
    ("model.config.width", 4096),
    ("model.config.hidden_layers", 4096),
    # volume values of the wrong type or out of range
    ("volume.min", 10 ** 400), ("volume.max", 10 ** 400), ("volume.min", "0"),
    ("volume.min", True), ("volume.min", -1.7976931348623157e308),
    ("volume.shape", "234"), ("volume.shape", [2 ** 40, 2 ** 40, 2]),
    ("volume.shape", [2.0, 3, 4]), ("volume.shape", [2 ** 31 + 1, 2, 2]),
    ("volume.dtype", None), ("volume.dtype", "(100000000000000,)f4"),
    ("volume.dtype", "U3"), ("volume.dtype", "f4,f4"), ("volume.dtype", ["f4"]),
    ("codec", {"name": "other", "version": 1}), ("codec", None), ("codec.version", 3),
    ("deep", F._nested(70)),
]


@pytest.mark.parametrize("path,value", HOSTILE_HEADERS, ids=lambda v: repr(v)[:30])
def test_hostile_header_values_are_format_errors(seeds, path, value):
    data = dict(seeds)["tiny_fvsrn"]
    bad = _with_header(data, _set(path.split("."), value))
    # Bounded by the deadline (a hang fails), not by a wall-clock assert.
    with pytest.raises(NeurvolFormatError):
        with F.deadline(DEADLINE_S), NeuralVolume(NvolReader(bad)) as nv:
            nv.info()
            nv.decode(shape=(3, 3, 3))


def test_param_cap_refuses_huge_grid_before_allocating(seeds):
    """A config declaring a 4096^3 x 4096 feature grid (2^48 values) is refused from the
    config alone; one just under the cap is refused by the payload check, still without
    building the model (the meta-device shapes are enough)."""
    data = dict(seeds)["tiny_fvsrn"]
    huge = _with_header(data, _set(["model", "config"], {"grid": [4096] * 3, "channels": 4096,
                                                          "width": 8, "hidden_layers": 2}))
    with pytest.raises(NeurvolFormatError, match="limit|too large"):
        NeuralVolume(NvolReader(huge)).decode(shape=(2, 2, 2))
    # A 4096-wide, 4096-deep MLP (6.9e10 parameters: 275 GB, and 30 s of layer building
    # before the allocation failed).
    mlp = _with_header(data, _set(["model", "config"], {"grid": [6, 8, 9], "channels": 4,
                                                         "width": 4096, "hidden_layers": 4096}))
    # Refused from the config alone: no module is built (an operation count, not time).
    from neurvol import model_limits

    built = []
    real = model_limits._count
    model_limits._count = lambda kind, limit: (built.append(kind), real(kind, limit))
    try:
        with pytest.raises(NeurvolFormatError, match="limit"):
            NeuralVolume(NvolReader(mlp)).decode(shape=(2, 2, 2))
    finally:
        model_limits._count = real
    assert built == []
    # 2^26 grid values < MAX_MODEL_PARAMS: shapes pass, the ~2 KB payload cannot fill them.
    big = _with_header(data, _set(["model", "config", "grid"], [1024, 1024, 16]))
    assert 4 * 1024 * 1024 * 16 < MAX_MODEL_PARAMS
    with F.memory_cap(256 << 20), pytest.raises(NeurvolFormatError):
        NeuralVolume(NvolReader(big)).decode(shape=(2, 2, 2))


def _rebrick(data: bytes, payload: bytes) -> bytes:
    hdr, _ = F.split_head(data)
    return serialize_nvol({k: v for k, v in hdr.items() if k != "sections"}, [payload])


@pytest.mark.parametrize("payload", [
    struct.pack("<Bd", 0, float("inf")),
    struct.pack("<Bd", 0, 1e300),           # finite but outside [min, max]
    b"\x01" + zstandard.ZstdCompressor().compress(b"\x00" * (1 << 26)),  # 64 MiB bomb
    b"\x01" + zstandard.ZstdCompressor().compress(b"\x02\x00\x00\x10" + b"\xff" * 64),
], ids=["inf-constant", "out-of-range-constant", "zstd-bomb", "bits-16-k-huge"])
def test_hostile_payloads_are_format_errors(seeds, payload):
    bad = _rebrick(dict(seeds)["tiny_fvsrn"], payload)
    with F.memory_cap(512 << 20), pytest.raises(NeurvolFormatError):
        with NeuralVolume(NvolReader(bad)) as nv:
            nv.decode(shape=(3, 3, 3))


def test_non_finite_model_output_is_a_format_error(seeds):
    """Finite weights whose products overflow float32: the decoder refuses the brick
    instead of returning inf/NaN (or garbage integers after the cast)."""
    from neurvol.neural_volume import _config_of, tensor_specs

    data = dict(seeds)["tiny_fvsrn"]
    hdr, _ = F.split_head(data)
    arch, cfg = _config_of(hdr["model"])
    records = b""
    for _, shape in tensor_specs(arch, cfg):
        records += b"\x00" + np.full(int(np.prod(shape)), 1e30, dtype="<f4").tobytes()
    bad = _rebrick(data, b"\x01" + zstandard.ZstdCompressor().compress(records))
    with pytest.raises(NeurvolFormatError, match="non-finite"):
        NeuralVolume(NvolReader(bad)).decode(shape=(3, 3, 3))


def test_info_of_deeply_nested_opaque_keys_prints(seeds, capsys, tmp_path):
    """`neurvol info` on a header nested as deep as readers allow (the text formatter
    recursed per level before)."""
    from neurvol import cli

    deep = F._nested(60)
    bad = _with_header(dict(seeds)["constant"], _set(["fit"], {"x": deep, "y": [deep] * 3}))
    path = tmp_path / "deep.nvol"
    path.write_bytes(bad)
    assert cli.main(["info", str(path)]) == 0
    text = capsys.readouterr().out
    assert "fit:" in text and "[[[[" in text
    assert cli.main(["info", "--json", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["format_version"] == "1.0"


def test_region_read_of_a_huge_declared_volume_is_cheap(seeds):
    """nv[0, :2, -1] of a volume declared 2^31 voxels long used np.arange(2^31) (16 GiB)."""
    bad = _with_header(dict(seeds)["constant"], _set(["volume", "shape"], [2, 2, 2 ** 31]))
    with F.memory_cap(256 << 20), NeuralVolume(NvolReader(bad)) as nv:
        assert nv[0, :2, -1].shape == (2,)
        assert nv[1, 1, 2 ** 31 - 5:].shape == (5,)


# ---------------------------------------------------------------------------------------
# The campaign harness (tests/fuzz/campaign.py), a short run: worker processes under a
# 1 GiB address-space cap and a 5 s limit per input (RELIABILITY.md, "Fuzz campaign").


@pytest.mark.fuzz
def test_campaign_short_run(tmp_path, capsys):
    import campaign

    report = tmp_path / "report.json"
    code = campaign.main(["--workers", "1", "--count", "300", "--seed", "3",
                          "--crash-dir", str(tmp_path / "crashes"), "--report", str(report)])
    rep = json.loads(report.read_text())
    assert rep["failures"] == 0 and code == 0, rep
    assert rep["inputs"] == 300
    assert set(rep["outcomes"]) <= {"ok", "error"}
    # The mutations reach both accepted files and many distinct refusals.
    assert rep["outcomes"].get("ok", 0) > 0 and rep["distinct_outcomes"] >= 20
    assert not (tmp_path / "crashes").exists()
