"""Writes the golden files of a new format version or codec configuration.

Run once per released format version / codec configuration, commit the output, and never
regenerate existing files: they pin what old writers wrote and what those files decode to.
This script therefore refuses to run a mode any of whose files exists (it writes only new
versions); to add a configuration, add a mode with new file names.

    python tests/golden/make_golden.py 1.0
    python tests/golden/make_golden.py 1.1     # bricked ensemble (format 1.1)
    python tests/golden/make_golden.py codec2  # codec "neurvol" version 2 (payload kind 2)
    python tests/golden/make_golden.py codec2-interp   # + interp-coded grids (method 4)
    python tests/golden/make_golden.py codec2-configs  # codec.pipeline as configs (§1.3)
    python tests/golden/make_golden.py 1.2     # error-bounded files (spec/correction.md)
    python tests/golden/make_golden.py 1.3-series  # time series, two variables (spec/series.md)
    python tests/golden/make_golden.py 1.3-series-masked  # + masked members (series.md §3.1)
    python tests/golden/make_golden.py 1.3-series-correction  # series version 2: correction
                                               # groups (series.md §2.1)
    python tests/golden/make_golden.py 1.3-mask  # masked volumes (spec/mask.md)
    python tests/golden/make_golden.py 1.3-mask-rows  # + a rows-coded mask
    python tests/golden/make_golden.py 1.4     # compact header (spec/nvol.md §3.3)
    python tests/golden/make_golden.py 1.5     # error-bounded files with the compact header
                                               # (§3.4) and correction stream version 2
"""
from __future__ import annotations

import os
import sys
from typing import Callable, Dict, List

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
CODEC2_CASES = ("amgsrn", "pruned", "rans")
BOUNDED_CASES = ("bounded_pure_v1.2", "bounded_model_v1.2")
BOUNDED_V15_CASES = ("bounded_pure_v1.5", "bounded_model_v1.5")
MASKED_CASES = ("masked_nan_v1.3", "masked_fill_v1.3")


def _pair(name: str) -> List[str]:
    return [f"{name}.nvol", f"{name}.expected.npy"]


def outputs(mode: str) -> List[str]:
    """The files a mode writes (names inside tests/golden/)."""
    if mode == "1.1":
        return _pair("bricked_v1.1")
    if mode == "codec2-interp":
        return _pair("codec2_interp")
    if mode == "codec2-configs":
        return _pair("codec2_configs")
    if mode == "1.2":
        return [f for name in BOUNDED_CASES for f in _pair(name) + [f"{name}.original.npy"]]
    if mode == "1.5":
        return [f for name in BOUNDED_V15_CASES for f in _pair(name) + [f"{name}.original.npy"]]
    if mode == "1.3-series":
        return _pair("series_v1.3")
    if mode == "1.3-series-masked":
        return _pair("series_masked_v1.3")
    if mode == "1.3-series-correction":
        return _pair("series_correction_v1.3")
    if mode == "1.3-mask":
        return [f for name in MASKED_CASES for f in _pair(name)]
    if mode == "1.3-mask-rows":
        return _pair("masked_rows_v1.3")
    if mode == "codec2":
        return [f for case in CODEC2_CASES for f in _pair(f"codec2_{case}")]
    return _pair(f"fvsrn_v{mode}") + [f"constant_v{mode}.nvol"]


def _save(nv, name: str, expected: bool = True) -> None:
    """Write ``name``.nvol (and its expected decode) without ever replacing a file."""
    path = os.path.join(HERE, name + ".nvol")
    with open(path, "xb") as f:     # "x": fails if the file appeared meanwhile
        f.write(nv.to_bytes())
    if expected:
        with open(os.path.join(HERE, name + ".expected.npy"), "xb") as f:
            np.save(f, nv.decode(dtype=np.float32))


def write_bricked() -> None:
    # Format 1.1 adds bricked ensembles (spec/bricks.md): 2x2x2 bricks, ghost 2, blended.
    import neurvol

    crop = np.ascontiguousarray(neurvol.sample_volume()[20:44, 20:44, 20:44])
    nv = neurvol.encode(crop, ratio=2, bricks=(2, 2, 2), ghost=2, arch="fvsrn", steps=20,
                        seed=0, quiet=True)
    _save(nv, "bricked_v1.1")


def write_codec2_interp() -> None:
    import neurvol

    crop = np.ascontiguousarray(neurvol.sample_volume()[16:48, 16:48, 16:48])
    nv = neurvol.encode(crop, steps=30, seed=0, quiet=True, arch="amgsrn", ratio=8,
                        codec={"grids": "interp"})
    _save(nv, "codec2_interp")


def write_codec2_configs() -> None:
    # The header's codec.pipeline as stage configs ({"id": name, ...}; spec/payload.md
    # §1.3), as writers since the codec registry write it; vq grids, pruning and both
    # coders, so the list holds parameters of several kinds.
    import neurvol

    crop = np.ascontiguousarray(neurvol.sample_volume()[16:48, 16:48, 16:48])
    nv = neurvol.encode(crop, steps=30, seed=0, quiet=True, arch="fvsrn", ratio=8,
                        codec={"grids": "vq", "prune": 0.2})
    assert all(isinstance(s, dict) for s in nv.header["codec"]["pipeline"])
    _save(nv, "codec2_configs")


def write_codec2() -> None:
    # Payload kind 2: Lorenzo grids + fine-tuning (amgsrn), masked k-means (pruned fvsrn),
    # and every stream forced through rANS (or raw where rANS cannot code it).
    import neurvol

    crop = np.ascontiguousarray(neurvol.sample_volume()[16:48, 16:48, 16:48])
    cases = {"amgsrn": dict(arch="amgsrn", codec={"grids": "lorenzo"}, ratio=8),
             "pruned": dict(arch="fvsrn", codec={"prune": 0.3}, ratio=8),
             "rans": dict(arch="fvsrn", codec={"coders": ["raw", "rans"]}, ratio=3)}
    assert tuple(cases) == CODEC2_CASES
    for name, kw in cases.items():
        _save(neurvol.encode(crop, steps=30, seed=0, quiet=True, **kw), f"codec2_{name}")


def write_bounded() -> None:
    # Format 1.2: error-bounded files. A pure predictor-coded uint8 crop (every block in a
    # data mode), and a float32 crop with a model and its correction stream (8^3 blocks,
    # so several modes and block shapes occur).
    import neurvol
    from neurvol.encoding.bounded import encode_bounded

    crop = np.ascontiguousarray(neurvol.sample_volume()[16:44, 18:44, 20:44])
    cases = {
        "bounded_pure_v1.2": (crop, lambda v: encode_bounded(
            v, 2.0, None, model_ratios=(), block=8)),
        "bounded_model_v1.2": (crop.astype(np.float32) * np.float32(0.37), lambda v: encode_bounded(
            v, 0.2, None, model_ratios=(6.0,), require_model=True, block=8, arch="fvsrn",
            steps=40, seed=0, quiet=True, device="cpu")),
    }
    assert tuple(cases) == BOUNDED_CASES
    _write_bounded(cases)


def _write_bounded(cases, version=None) -> None:
    """Each case's file, its decode and its original (never overwriting a golden)."""
    for name, (vol, enc) in cases.items():
        nv = enc(vol)
        if version is not None:
            assert nv.info()["format_version"] == version
        with open(os.path.join(HERE, name + ".nvol"), "xb") as f:
            f.write(nv.to_bytes())
        for suffix, arr in ((".expected.npy", nv.decode()), (".original.npy", vol)):
            with open(os.path.join(HERE, name + suffix), "xb") as f:
                np.save(f, arr)


def write_bounded_v15() -> None:
    # Format 1.5: error-bounded files with the compact header and correction stream
    # version 2. The pure crop forces level-wise bin widths (alpha 1.5, beta 4) and a
    # non-default axis order (index 4: x, z, y) so the file pins them; the model crop is
    # as the encoder chooses (8^3 blocks, several modes).
    import neurvol
    from neurvol.compress import encode_constant
    from neurvol.compress.correction import encode_correction
    from neurvol.encoding.bounded import bounded_file, encode_bounded
    from neurvol.encoding.plan import CODEC
    from neurvol.neural_volume import NeuralVolume
    from neurvol.container import NvolReader

    crop = np.ascontiguousarray(neurvol.sample_volume()[16:44, 18:44, 20:44])

    def pure(v):
        lo, hi = float(v.min()), float(v.max())
        stream, _ = encode_correction(v, 2.0, None, block=8, levels=(1.5, 4.0), order=4)
        header = {"volume": {"shape": list(v.shape), "dtype": v.dtype.str, "min": lo,
                             "max": hi, "spacing": [1.0, 1.0, 1.0], "origin": [0.0, 0.0, 0.0]},
                  "bricks": {"grid": [1, 1, 1]}, "codec": CODEC}
        return NeuralVolume(NvolReader(bounded_file(header, encode_constant(0.5 * (lo + hi)),
                                                    stream, 2.0, None)))

    cases = {
        "bounded_pure_v1.5": (crop, pure),
        "bounded_model_v1.5": (crop.astype(np.float32) * np.float32(0.37), lambda v: encode_bounded(
            v, 0.2, None, model_ratios=(6.0,), require_model=True, block=8, arch="fvsrn",
            steps=40, seed=0, quiet=True, device="cpu")),
    }
    assert tuple(cases) == BOUNDED_V15_CASES
    _write_bounded(cases, "1.5")


def write_series() -> None:
    # Format 1.3: a time series of two variables (spec/series.md): 5 steps of a crop
    # drifting through the sample, groups of 3 (a key, two deltas; a key, one delta), a
    # uint8 variable and a float32 one with units, attributes and a time axis.
    import neurvol

    vol = neurvol.sample_volume()
    steps = np.stack([vol[20 + t:40 + t, 22:42, 22:42] for t in range(5)])
    data = {"density": np.ascontiguousarray(steps),
            "scaled": np.ascontiguousarray(steps.astype(np.float32) * np.float32(0.37))}
    nv = neurvol.encode(data, ratio=6, group=3, steps=40, seed=0, quiet=True, arch="fvsrn",
                        time=[0.0, 0.5, 1.0, 1.5, 2.0],
                        metadata={"scaled": {"units": "kg m-3", "attrs": {"source": "neghip"}}})
    with open(os.path.join(HERE, "series_v1.3.nvol"), "xb") as f:
        f.write(nv.to_bytes())
    expected = np.stack([nv[name].decode(dtype=np.float32) for name in data])
    with open(os.path.join(HERE, "series_v1.3.expected.npy"), "xb") as f:
        np.save(f, expected)


def write_series_masked() -> None:
    # Format 1.3: a time series with masked members (spec/series.md §3.1): 4 steps of a
    # drifting crop, groups of 2 (keys and deltas both masked). "density" (float32) has
    # NaN in its first 3 slices at every step (one shared section) and, at step 2, a
    # corner of its own; "count" (uint16) has the fill value 0 where a moving stripe is,
    # a distinct mask per step, and none at step 0. Global and time attributes too.
    import neurvol

    vol = neurvol.sample_volume()
    steps = np.stack([vol[20 + t:36 + t, 22:40, 22:42] for t in range(4)]).astype(np.float32)
    density = steps * np.float32(0.37)
    density[:, :3] = np.nan
    density[2, 10:, 12:, 15:] = np.nan
    count = steps.astype(np.uint16) + 1
    for t in range(1, 4):
        count[t, :, 4 + t:6 + t, :] = 0
    nv = neurvol.encode({"density": density, "count": count}, ratio=5, group=2, steps=40,
                        seed=0, quiet=True, arch="fvsrn", fill_value={"count": 0},
                        time=[0.0, 0.5, 1.0, 1.5], time_attrs={"units": "s"},
                        attrs={"title": "masked golden", "version": 3},
                        metadata={"density": {"units": "kg m-3", "attrs": {}}})
    with open(os.path.join(HERE, "series_masked_v1.3.nvol"), "xb") as f:
        f.write(nv.to_bytes())
    expected = np.stack([nv[name].decode(dtype=np.float32) for name in ("density", "count")])
    assert np.array_equal(np.isnan(expected[0]), np.isnan(density))
    assert np.array_equal(expected[1] == 0, count == 0)
    with open(os.path.join(HERE, "series_masked_v1.3.expected.npy"), "xb") as f:
        np.save(f, expected)


def write_series_correction() -> None:
    # Format 1.3, series version 2: correction groups (spec/series.md §2.1). 6 steps
    # blending two crops of the sample (consecutive steps close, as a simulation's are),
    # groups of 3, a uint8 variable and a float32 one; at ratio 8 with a short fit the
    # pure predictor wins every key, so every group is a correction group (a predictor
    # key, then streams against the step before).
    import neurvol

    vol = neurvol.sample_volume().astype(np.float32)
    a, b = vol[20:40, 22:42, 22:42], vol[24:44, 22:42, 22:42]
    blend = np.stack([a + (b - a) * np.float32(t / 20) for t in range(6)])
    data = {"density": np.ascontiguousarray(np.rint(blend).astype(np.uint8)),
            "scaled": np.ascontiguousarray(blend * np.float32(0.37))}
    nv = neurvol.encode(data, ratio=8, group=3, steps=40, seed=0, quiet=True)
    for v in nv.header["series"]["variables"]:
        assert all("max_error" in g for g in v["groups"]), v["groups"]
    with open(os.path.join(HERE, "series_correction_v1.3.nvol"), "xb") as f:
        f.write(nv.to_bytes())
    expected = np.stack([nv[name].decode(dtype=np.float32) for name in data])
    with open(os.path.join(HERE, "series_correction_v1.3.expected.npy"), "xb") as f:
        np.save(f, expected)


def write_masked() -> None:
    # Format 1.3: masked volumes. A float32 crop whose first 4 slices are NaN (a runs-coded
    # mask starting with a masked voxel), and a uint16 crop whose fill value 0 marks a
    # slab and scattered voxels (bits-zstd).
    import neurvol
    from neurvol.compress.mask import mask_method_name

    crop = np.ascontiguousarray(neurvol.sample_volume()[26:38, 24:38, 22:38])
    z, y, x = np.indices(crop.shape)
    nan_vol = crop.astype(np.float32)
    nan_vol[:4] = np.nan
    fill_vol = crop.astype(np.uint16) * 100 + 1
    fill_vol[:3] = 0
    fill_vol[(z * 7 + y * 3 + x) % 11 == 0] = 0
    cases = {"masked_nan_v1.3": dict(volume=nan_vol),
             "masked_fill_v1.3": dict(volume=fill_vol, fill_value=0)}
    assert tuple(cases) == MASKED_CASES
    for name, kw in cases.items():
        nv = neurvol.encode(kw.pop("volume"), ratio=2, steps=40, seed=0, quiet=True,
                            arch="fvsrn", **kw)
        assert nv.masked and nv.info()["format_version"] == "1.3"
        assert mask_method_name(nv._reader.read_section("mask")) == {
            "masked_nan_v1.3": "runs", "masked_fill_v1.3": "bits-zstd"}[name]
        _save(nv, name)


def write_masked_rows() -> None:
    # Format 1.3, the rows mask method: NaN beyond a wavy "coastline" (a smooth outline).
    import neurvol
    from neurvol.compress.mask import mask_method_name

    crop = np.ascontiguousarray(neurvol.sample_volume()[16:48, 16:48, 16:48]).astype(np.float32)
    z, y, x = np.indices(crop.shape)
    crop[x + 0.3 * y + 4 * np.sin(z / 5.0) > 18] = np.nan
    nv = neurvol.encode(crop, ratio=16, steps=40, seed=0, quiet=True, arch="fvsrn")
    assert mask_method_name(nv._reader.read_section("mask")) == "rows"
    _save(nv, "masked_rows_v1.3")


def write_version(version: str) -> None:
    import neurvol

    vol = np.ascontiguousarray(neurvol.sample_volume()[26:38, 24:38, 22:38]).astype(np.float32)
    _save(neurvol.encode(vol, ratio=2, steps=40, seed=0, quiet=True), f"fvsrn_v{version}")
    const = neurvol.encode(np.full((10, 12, 14), 77, dtype=np.uint16), ratio=2, quiet=True)
    _save(const, f"constant_v{version}", expected=False)


WRITERS: Dict[str, Callable[[], None]] = {
    "1.1": write_bricked, "codec2-interp": write_codec2_interp, "codec2": write_codec2,
    "codec2-configs": write_codec2_configs, "1.2": write_bounded, "1.5": write_bounded_v15,
    "1.3-mask": write_masked,
    "1.3-mask-rows": write_masked_rows, "1.3-series": write_series,
    "1.3-series-masked": write_series_masked,
    "1.3-series-correction": write_series_correction}


def main(argv: List[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    mode = argv[0]
    existing = [f for f in outputs(mode) if os.path.exists(os.path.join(HERE, f))]
    if existing:
        print(f"make_golden: refusing to write mode {mode!r}: {', '.join(existing)} already "
              "exist in tests/golden/. Golden files are never regenerated; add a new mode "
              "(new file names) for a new version or configuration.", file=sys.stderr)
        return 1
    WRITERS.get(mode, lambda: write_version(mode))()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
