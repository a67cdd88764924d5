"""Fast tests of the benchmark harness (baselines, runner, CLI)."""
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

import neurvol
from neurvol.bench import baselines as B
from neurvol.bench import runner as R
from neurvol.bench import COLUMNS, format_markdown, run_benchmark

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sample():
    return neurvol.sample_volume()  # neghip 66^3 uint8, identical to /work/shared/data/sim_neghip.npy


@pytest.fixture(scope="module")
def crop20(sample):
    return np.ascontiguousarray(sample[20:40, 20:40, 20:40])


# ---------------------------------------------------------------------- downsample
@pytest.mark.parametrize("ratio", [10, 100, 400])
def test_downsample_respects_budget(sample, ratio):
    budget = B.budget_for(sample, ratio)
    recon, stored = B.downsample_baseline(sample, budget)
    assert stored <= budget
    assert recon.shape == sample.shape and recon.dtype == sample.dtype
    p = neurvol.metrics.psnr(sample, recon)
    assert p > {10: 28, 100: 22, 400: 18}[ratio]


def test_downsample_ref_reproduces_readme_numbers(sample):
    # /work/shared/data/README.md: sim_neghip downsample 23.46 @100, 20.37 @400.
    for ratio, ref in ((100, 23.46), (400, 20.37)):
        r = B.get_baseline("downsample_ref")(sample, B.budget_for(sample, ratio))
        assert abs(neurvol.metrics.psnr(sample, r.reconstruction) - ref) < 0.05


def test_proportional_grid():
    for shape in [(64, 64, 64), (114, 96, 128), (25, 125, 125), (3, 200, 7)]:
        for vox in [8, 100, 2621, 14008, 10 ** 9]:
            g = B.proportional_grid(shape, vox)
            assert math.prod(g) <= max(vox, 8)
            assert all(2 <= a <= n for a, n in zip(g, shape))
    assert B.proportional_grid((64, 64, 64), 2621) == (13, 13, 13)
    assert B.proportional_grid((10, 10, 10), 5000) == (10, 10, 10)   # never finer than the volume
    with pytest.raises(ValueError):
        B.proportional_grid((10, 10, 10), 7)
    assert B.reference_grid((114, 96, 128), 100) == (25, 21, 28)


def test_resample_corners_identity_and_chunking(sample, monkeypatch):
    v = sample[:30, :20, :25].astype(np.float32)
    assert np.array_equal(B.resample_trilinear(v, v.shape, dtype=np.float32), v)
    small = B.resample_trilinear(v, (5, 4, 6))
    assert small[0, 0, 0] == v[0, 0, 0] and small[-1, -1, -1] == v[-1, -1, -1]  # corner centres coincide
    # a linear ramp is reproduced exactly by down + up sampling
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in (9, 7, 11)), indexing="ij")
    ramp = 2 * z - y + 0.5 * x
    back = B.resample_trilinear(B.resample_trilinear(ramp, (3, 4, 5)), ramp.shape)
    np.testing.assert_allclose(back, ramp, atol=1e-9)
    full = B.resample_trilinear(small, v.shape)
    monkeypatch.setattr(B, "_SLAB_VOXELS", 50)   # force many slabs
    np.testing.assert_array_equal(B.resample_trilinear(small, v.shape), full)


def test_native_dtype_round_and_clip():
    out = B.to_native(np.array([-3.0, 0.4, 0.6, 254.6, 300.0]), np.uint8)
    assert out.dtype == np.uint8 and out.tolist() == [0, 0, 1, 255, 255]


def test_zstd_lossless(sample):
    assert B.zstd_lossless(sample, level=3) > 1.0
    r = B.get_baseline("zstd")(sample, 0)
    assert np.array_equal(r.reconstruction, sample) and not B.is_budgeted("zstd")


def test_registry():
    assert {"downsample", "downsample_ref", "zstd", "zfp", "sz3"} <= set(B.BASELINES)
    avail = B.available_baselines()
    assert avail["downsample"] is None
    with pytest.raises(KeyError):
        B.get_baseline("nope")


def test_zfp(sample):
    pytest.importorskip("zfpy")
    v = sample.astype(np.float32)
    budget = B.budget_for(v, 50)
    r = B.get_baseline("zfp")(v, budget)
    assert r.stored_bytes <= budget and neurvol.metrics.psnr(v, r.reconstruction) > 15
    with pytest.raises(B.BaselineUnavailable):   # below zfpy's safe rate: refused, not a segfault
        B.get_baseline("zfp")(sample, B.budget_for(sample, 400))
    # ... and its floor is the smallest budget it takes: the ratio ZFP reaches at its lowest rate
    floor = B.zfp_floor_bytes(sample.shape, sample.dtype)
    assert B.budget_for(sample, 400) < floor
    at_floor = B.get_baseline("zfp")(sample, floor)
    assert at_floor.stored_bytes <= floor and at_floor.params["rate_bits_per_value"] == 10 / 64
    with pytest.raises(B.BaselineUnavailable):
        B.get_baseline("zfp")(sample, floor - 1)


def test_sz3(sample):
    pytest.importorskip("pysz")
    budget = B.budget_for(sample, 100)
    r = B.get_baseline("sz3")(sample, budget)
    assert r.stored_bytes <= budget and r.reconstruction.dtype == sample.dtype
    assert neurvol.metrics.psnr(sample, r.reconstruction) > 20


@pytest.mark.parametrize("ratio", [100, 400])
def test_sperr(sample, ratio):
    pytest.importorskip("hdf5plugin")
    budget = B.budget_for(sample, ratio)
    r = B.get_baseline("sperr")(sample, budget)
    assert r.stored_bytes <= budget and r.reconstruction.dtype == sample.dtype
    assert r.stored_bytes >= 0.9 * budget          # the rate search fills the budget
    assert neurvol.metrics.psnr(sample, r.reconstruction) > 20
    # a non-cubic crop goes through 64^3 chunks
    crop = np.ascontiguousarray(sample[:40, :66, :50])
    r = B.get_baseline("sperr")(crop, B.budget_for(crop, ratio // 4))
    assert r.params["chunks"] == [40, 64, 50]


# ---------------------------------------------------------------------- runner
def test_runner_end_to_end(crop20):
    # The smallest fvsrn model that fits a tiny crop depends on the encoder's sizing; use the
    # first of a few modest ratios it can meet.
    for ratio in (4, 6, 8, 1.5):
        rows = run_benchmark(crop20, "neghip[crop]", ratios=(ratio,), archs=("fvsrn",),
                             baselines=("downsample", "zstd"), steps=5, query_points=50_000)
        if not rows[1]["note"]:
            break
    assert [r["method"] for r in rows] == ["downsample", "neurvol-fvsrn", "zstd"]
    for r in rows:
        assert set(COLUMNS) <= set(r)
    nv = rows[1]
    for k in ("ratio_achieved", "bytes", "psnr_db", "max_abs_error", "encode_s", "decode_s",
              "query_mpts_s", "cold_query_ms"):
        assert nv[k] is not None and nv[k] > 0, k
    assert nv["ratio_achieved"] >= ratio and nv["bytes"] <= crop20.nbytes // ratio
    assert rows[0]["query_mpts_s"] is None and rows[0]["bytes"] <= crop20.nbytes // ratio
    assert rows[2]["ratio_requested"] is None and rows[2]["psnr_db"] == math.inf
    md = format_markdown(rows)
    assert md.count("\n|") == 4 and "PSNR dB" in md and "neurvol-fvsrn" in md
    json.dumps(R.rows_to_json(rows))


def test_runner_reports_unmeetable_budget(crop20):
    rows = run_benchmark(crop20, "c", ratios=(2000,), baselines=("downsample",), steps=1)
    assert rows[0]["note"].startswith("skipped") and rows[1]["note"].startswith("cannot meet budget")
    assert "[1]" in format_markdown(rows)


def _cli():
    spec = importlib.util.spec_from_file_location("run_codec", ROOT / "benchmarks" / "run_codec.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cli_baselines_only(tmp_path, sample, capsys):
    path = tmp_path / "neghip.npy"
    np.save(path, sample)
    out, js = tmp_path / "r.md", tmp_path / "r.json"
    rc = _cli().main([str(path), "--ratios", "100,400", "--subsample", "2", "--archs", "",
                      "--baselines", "downsample", "--out", str(out), "--json", str(js), "--quiet"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "CPU:" in text and "torch" in text and "neghip[::2]" in text
    data = json.loads(js.read_text())
    assert [r["ratio_requested"] for r in data["rows"]] == [100.0, 400.0]
    assert data["rows"][0]["shape"] == "33x33x33" and "cpu" in data["machine"]
    assert "| neghip[::2] | downsample |" in out.read_text()
