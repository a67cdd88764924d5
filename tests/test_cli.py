"""Tests of the ``neurvol`` command line, run in-process through ``main([...])``.

Fits are tiny (24^3 crop of the sample, ``--steps 30``) and shared across tests.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import types

import numpy as np
import pytest

import neurvol
from neurvol import cli
from neurvol._atomic import atomic_open
from neurvol.cli import main

FIT = ["--ratio", "8", "--steps", "30", "--seed", "0", "--device", "cpu"]
FAST = ["--ratio", "8", "--steps", "3", "--device", "cpu"]  # where fit quality does not matter


@pytest.fixture(scope="module")
def crop(tmp_path_factory):
    """(path of a 24^3 uint8 .npy crop of the sample, the array)."""
    vol = np.ascontiguousarray(neurvol.sample_volume()[:24, :24, :24])
    path = tmp_path_factory.mktemp("in") / "crop.npy"
    np.save(path, vol)
    return path, vol


@pytest.fixture(scope="module")
def packed(crop, tmp_path_factory):
    """(path of the crop packed once with the CLI, the pack command's stdout)."""
    out = tmp_path_factory.mktemp("packed") / "crop.nvol"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = main(["pack", str(crop[0]), "-o", str(out), *FIT])
    assert rc == 0, stderr.getvalue()
    return out, stdout.getvalue()


def _no_temp_files(directory) -> bool:
    return not [n for n in os.listdir(directory) if ".tmp-" in n]


# ------------------------------------------------------------------ round trip


def test_pack_reports_ratio_size_psnr_time(packed):
    path, text = packed
    size = path.stat().st_size
    assert 0 < size <= 24 ** 3 // 8
    assert f"{size:,} bytes" in text
    assert "ratio" in text and ":1" in text
    assert "PSNR" in text and "dB" in text and "max error " in text
    assert text.rstrip().endswith(" s")


@pytest.mark.parametrize("ext", [".npy", ".raw"])
def test_unpack_round_trip(packed, crop, tmp_path, capsys, ext):
    out = tmp_path / f"r{ext}"
    assert main(["unpack", str(packed[0]), "-o", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    if ext == ".npy":
        rec = np.load(out)
    else:
        rec = np.fromfile(out, dtype="<u1").reshape(24, 24, 24)
    assert rec.shape == crop[1].shape and rec.dtype == np.uint8
    assert neurvol.metrics.psnr(crop[1], rec) > 20
    assert _no_temp_files(tmp_path)


def test_unpack_dtype_and_shape(packed, tmp_path):
    out = tmp_path / "r.npy"
    assert main(["unpack", str(packed[0]), "-o", str(out), "--dtype", "float32",
                 "--shape", "12,12,12", "-q"]) == 0
    rec = np.load(out)
    assert rec.shape == (12, 12, 12) and rec.dtype == np.float32


def test_unpack_unknown_extension_fails_before_decoding(packed, tmp_path, capsys):
    assert main(["unpack", str(packed[0]), "-o", str(tmp_path / "r.xyz")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("neurvol: error:") and "--format" in err
    assert os.listdir(tmp_path) == []


def test_info_text_and_json(packed, capsys):
    assert main(["info", str(packed[0])]) == 0
    text = capsys.readouterr().out
    assert "shape: [24, 24, 24]" in text and "dtype: uint8" in text
    assert main(["info", str(packed[0]), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["shape"] == [24, 24, 24]
    # the CLI adds where the bytes go (every brick read) to the library's info()
    nv = neurvol.open(packed[0])
    assert info.pop("bytes") == json.loads(json.dumps(nv.byte_breakdown()))
    assert info == json.loads(json.dumps(nv.info()))


def test_query_prints_values(packed, tmp_path, capsys):
    pts = np.array([[0, 0, 0], [12, 12, 12], [23, 5.5, 7]], dtype=np.float64)
    (tmp_path / "p.csv").write_text("z,y,x\n" + "".join(f"{z},{y},{x}\n" for z, y, x in pts))
    assert main(["query", str(packed[0]), "--points", str(tmp_path / "p.csv")]) == 0
    printed = np.array(capsys.readouterr().out.split(), dtype=np.float32)
    expected = neurvol.open(packed[0]).query(pts)
    np.testing.assert_array_equal(printed, expected)


@pytest.mark.parametrize("ext", [".npy", ".csv"])
def test_query_writes_values(packed, tmp_path, ext):
    pts = np.random.default_rng(1).uniform(0, 23, size=(50, 3))
    np.save(tmp_path / "p.npy", pts)
    out = tmp_path / f"v{ext}"
    assert main(["query", str(packed[0]), "--points", str(tmp_path / "p.npy"), "-o", str(out), "-q"]) == 0
    got = np.load(out) if ext == ".npy" else np.loadtxt(out, dtype=np.float32)
    np.testing.assert_array_equal(got, neurvol.open(packed[0]).query(pts))
    assert main(["query", str(packed[0]), "--points", str(tmp_path / "p.npy"), "-o", str(out)]) == 1


def test_query_normalized_space_and_clamp(packed, tmp_path, capsys):
    np.save(tmp_path / "p.npy", np.array([[0.0, 0.0, 0.0], [1.0, -1.0, 1.0]]))
    assert main(["query", str(packed[0]), "--points", str(tmp_path / "p.npy"), "--space", "normalized"]) == 0
    assert len(capsys.readouterr().out.split()) == 2
    np.save(tmp_path / "far.npy", np.array([[30.0, 0.0, 0.0]]))
    assert main(["query", str(packed[0]), "--points", str(tmp_path / "far.npy")]) == 1
    assert "outside" in capsys.readouterr().err
    assert main(["query", str(packed[0]), "--points", str(tmp_path / "far.npy"), "--clamp"]) == 0


def test_query_points_of_wrong_shape(packed, tmp_path, capsys):
    np.save(tmp_path / "p.npy", np.zeros((4, 2)))
    assert main(["query", str(packed[0]), "--points", str(tmp_path / "p.npy")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("neurvol: error:") and "(N, 3) z,y,x" in err and "Traceback" not in err


def test_pack_raw_input(crop, tmp_path, capsys):
    raw = tmp_path / "crop.raw"
    crop[1].tofile(raw)
    out = tmp_path / "c.nvol"
    assert main(["pack", str(raw), "-o", str(out), "--shape", "24,24,24", "--dtype", "uint8", "-q", *FAST]) == 0
    assert capsys.readouterr().out == ""  # --quiet: nothing on stdout
    assert neurvol.open(out).shape == (24, 24, 24)


# ------------------------------------------------------------------ errors


def test_pack_refuses_to_overwrite_without_force(crop, tmp_path, capsys):
    out = tmp_path / "c.nvol"
    out.write_bytes(b"keep me")
    assert main(["pack", str(crop[0]), "-o", str(out), *FIT]) == 1
    err = capsys.readouterr().err
    assert "already exists" in err and "--force" in err
    assert out.read_bytes() == b"keep me"
    assert main(["pack", str(crop[0]), "-o", str(out), "--force", "-q", *FAST]) == 0
    assert neurvol.open(out).shape == (24, 24, 24)


def test_missing_input(tmp_path, capsys):
    out = tmp_path / "c.nvol"
    assert main(["pack", str(tmp_path / "nope.npy"), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("neurvol: error:") and "not found" in err and "Traceback" not in err
    assert not out.exists()
    for argv in (["info", str(tmp_path / "nope.nvol")],
                 ["unpack", str(tmp_path / "nope.nvol"), "-o", str(tmp_path / "r.npy")]):
        assert main(argv) == 1
        assert "neurvol: error:" in capsys.readouterr().err


def test_not_an_nvol_file(tmp_path, capsys):
    (tmp_path / "x.nvol").write_bytes(b"hello, this is text\n" * 10)
    assert main(["info", str(tmp_path / "x.nvol")]) == 1
    assert "neurvol: error:" in capsys.readouterr().err


def test_raw_without_shape(crop, tmp_path, capsys):
    raw = tmp_path / "crop.raw"
    crop[1].tofile(raw)
    assert main(["pack", str(raw), "-o", str(tmp_path / "c.nvol")]) == 1
    err = capsys.readouterr().err
    assert "--shape" in err and "--dtype" in err


def test_raw_of_wrong_size(crop, tmp_path, capsys):
    raw = tmp_path / "crop.raw"
    crop[1].tofile(raw)
    assert main(["pack", str(raw), "-o", str(tmp_path / "c.nvol"), "--shape", "24,24,25", "--dtype", "uint8"]) == 1
    err = capsys.readouterr().err
    assert "13824 bytes" in err and "14400 bytes" in err
    assert not (tmp_path / "c.nvol").exists()


def test_unknown_input_extension_suggests_format(tmp_path, capsys):
    (tmp_path / "v.dat").write_bytes(b"\0" * 8)
    assert main(["pack", str(tmp_path / "v.dat"), "-o", str(tmp_path / "c.nvol")]) == 1
    assert "--format" in capsys.readouterr().err


def test_output_directory_missing(crop, tmp_path, capsys):
    assert main(["pack", str(crop[0]), "-o", str(tmp_path / "no" / "c.nvol")]) == 1
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    [],
    ["frobnicate"],
    ["--bogus", "info", "x.nvol"],
    ["pack", "x.npy"],                                        # no -o
    ["pack", "x.npy", "-o", "y.nvol", "--ratio", "-3"],
    ["pack", "x.npy", "-o", "y.nvol", "--ratio", "lots"],
    ["pack", "x.npy", "-o", "y.nvol", "--steps", "0"],
    ["pack", "x.raw", "-o", "y.nvol", "--shape", "1,2"],
    ["pack", "x.raw", "-o", "y.nvol", "--dtype", "uint7"],
    ["pack", "x.npy", "-o", "y.nvol", "--device", "gpu"],
    ["pack", "x.raw", "-o", "y.nvol", "--byte-order", "middle"],
    ["query", "x.nvol"],                                      # no --points
    ["query", "x.nvol", "--points", "p.npy", "--space", "world"],
])
def test_usage_errors_exit_2(argv, capsys):
    assert main(argv) == 2
    assert "usage:" in capsys.readouterr().err


def test_help_exits_0(capsys):
    assert main(["--help"]) == 0
    assert "pack" in capsys.readouterr().out
    for command in ("pack", "unpack", "info", "query", "demo"):
        assert main([command, "--help"]) == 0
        assert f"neurvol {command}" in capsys.readouterr().out


def test_global_options_before_and_after_subcommand():
    parser = cli.build_parser()
    assert parser.parse_args(["-v", "info", "x"]).verbose
    assert parser.parse_args(["info", "x", "--verbose"]).verbose
    assert parser.parse_args(["--quiet", "info", "x"]).quiet
    assert parser.parse_args(["info", "-q", "x"]).quiet
    plain = parser.parse_args(["info", "x"])
    assert not plain.quiet and not plain.verbose


def test_verbose_logs_debug_to_stderr(packed, tmp_path, capsys):
    np.save(tmp_path / "p.npy", np.zeros((2, 3)))
    assert main(["query", str(packed[0]), "--points", str(tmp_path / "p.npy"), "--verbose"]) == 0
    assert "DEBUG" in capsys.readouterr().err
    assert main(["query", str(packed[0]), "--points", str(tmp_path / "p.npy")]) == 0
    assert "DEBUG" not in capsys.readouterr().err


# ------------------------------------------------------------------ interrupts


def test_keyboard_interrupt_exits_130(monkeypatch, packed, capsys):
    def boom(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_info", boom)
    assert main(["info", str(packed[0])]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_sigterm_during_save_leaves_no_partial_file(monkeypatch, crop, tmp_path, capsys):
    class FakeVolume:
        def save(self, path):
            with atomic_open(path) as f:
                f.write(b"partial")
                os.kill(os.getpid(), signal.SIGTERM)  # handler raises here
                f.write(b"never")

        def info(self):
            return {}

    fake = types.SimpleNamespace(encode=lambda volume, **kw: FakeVolume())
    monkeypatch.setattr(cli, "_api", lambda: fake)
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "c.nvol"
    assert main(["pack", str(crop[0]), "-o", str(out)]) == 128 + signal.SIGTERM
    assert "terminated" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) is before  # handler restored


# ------------------------------------------------------------------ demo / entry point


def test_demo_on_a_small_sample(monkeypatch, crop, tmp_path, capsys):
    # The command logic is the same for any sample; a 24^3 crop keeps the test fast.
    monkeypatch.setattr(neurvol, "sample_volume", lambda: crop[1].copy())
    assert main(["demo", "--workdir", str(tmp_path / "w"), "-q", *FAST]) == 0
    text = capsys.readouterr().out
    for word in ("ratio", "file", "budget", "PSNR", "max err", "encode", "decode"):
        assert word in text
    assert (tmp_path / "w" / "neghip.nvol").is_file()
    rec = np.load(tmp_path / "w" / "neghip_decoded.npy")
    assert rec.shape == (24, 24, 24)
    err = float(text.split("max err")[1].split()[0])
    assert err == neurvol.metrics.max_abs_error(crop[1], rec)


def test_python_dash_m_help():
    proc = subprocess.run([sys.executable, "-m", "neurvol", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage: neurvol" in proc.stdout
    for command in ("pack", "unpack", "info", "query", "demo"):
        assert command in proc.stdout


# ------------------------------------------------------------------ architecture options


def test_pack_passes_architecture_options(crop, tmp_path, capsys):
    out = tmp_path / "amg.nvol"
    assert main(["pack", str(crop[0]), "-o", str(out), "--arch", "amgsrn", "--grids", "2",
                 "--width", "8", *FAST]) == 0
    config = neurvol.open(out).info()["model"]["config"]
    assert config["grids"] == 2 and config["width"] == 8
    out = tmp_path / "nc.nvol"
    assert main(["pack", str(crop[0]), "-o", str(out), "--arch", "neurcomp", "--layers", "3",
                 "--grad-lambda", "0.1", *FAST]) == 0
    assert neurvol.open(out).info()["model"]["config"]["residual_blocks"] == 2


@pytest.mark.parametrize("args, message, code", [
    (["--arch", "fvsrn", "--grids", "2"], "grids", 1),         # option of another architecture
    (["--grids", "2"], "explicit arch", 1),                    # options need a named arch
    (["--arch", "neurcomp", "--grad-lambda", "-1"], "--grad-lambda", 2),
    (["--arch", "amgsrn", "--grids", "0"], "--grids", 2),
    (["--arch", "amgsrn", "--grids", "9999"], "grids", 1),
])
def test_impossible_architecture_options_are_clear_errors(crop, tmp_path, capsys, args,
                                                          message, code):
    out = tmp_path / "x.nvol"
    assert main(["pack", str(crop[0]), "-o", str(out), *FAST, *args]) == code
    assert message in capsys.readouterr().err
    assert not out.exists()
