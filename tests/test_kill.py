"""Killing a real `neurvol pack` never damages an existing output (RELIABILITY.md).

Real subprocesses, real signals. Two moments are tested: while fitting (the long part; the
output is not touched yet) and inside the atomic write itself (the temp file exists, fully
written, not yet renamed: ``os.fsync`` is slowed down in the child to hold it there).

* SIGTERM: the CLI turns it into an exception, the atomic writer removes its temp file,
  the exit code is 143, and the existing output is unchanged.
* SIGKILL: nothing can run, so a temp file ``.<name>.tmp-XXXXXXXX`` may stay behind;
  the existing output is still unchanged (the rename never happened), the leftover never
  matches ``*.nvol``, and the next write succeeds and ignores it.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import neurvol
from neurvol import cli

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")

START_TIMEOUT = 120  # importing torch on a loaded 2-core machine can take a while
TEMP_RE = re.compile(r"^\.out\.nvol\.tmp-[A-Za-z0-9_]+$")

# In the child: hold the atomic write between "temp file written" and "renamed".
_SLOW_SAVE = """
import os, sys, time
_fsync = os.fsync
def slow_fsync(fd):
    sys.stderr.write("SAVING\\n"); sys.stderr.flush()
    time.sleep(120)
    _fsync(fd)
os.fsync = slow_fsync
from neurvol.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def existing() -> bytes:
    """The content out.nvol has before each run: a valid file, so 'intact' means usable."""
    return neurvol.encode(np.full((6, 7, 8), 42.0), ratio=2, quiet=True).to_bytes()


@pytest.fixture
def workdir(tmp_path, small_volume, existing):
    np.save(tmp_path / "vol.npy", small_volume)
    (tmp_path / "out.nvol").write_bytes(existing)
    return tmp_path


class _Child:
    """A subprocess whose stderr is collected by a thread, so we can wait for a marker."""

    def __init__(self, argv, cwd):
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.err = b""
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self):
        while True:
            chunk = self.proc.stderr.read1(4096)
            if not chunk:
                return
            with self._lock:
                self.err += chunk

    def wait_for(self, marker: bytes, timeout: float = START_TIMEOUT) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                if marker in self.err:
                    return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.proc.kill()
        self.proc.wait()
        pytest.fail(f"child never printed {marker!r} (exit {self.proc.returncode}): "
                    f"{self.err[-2000:]!r}")

    def finish(self, sig: int, timeout: float = 60) -> int:
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail("child did not exit after the signal")
        self._thread.join(5)
        return rc


def _pack_argv(steps: int):
    return ["pack", "vol.npy", "-o", "out.nvol", "--force", "--steps", str(steps),
            "--ratio", "5", "--device", "cpu"]


def _start_fitting(workdir) -> _Child:
    child = _Child([sys.executable, "-m", "neurvol"] + _pack_argv(100000), workdir)
    child.wait_for(b"loss=")  # a progress line after the first step: the fit is running
    return child


def _start_saving(workdir) -> _Child:
    child = _Child([sys.executable, "-c", _SLOW_SAVE] + _pack_argv(2) + ["-q"], workdir)
    child.wait_for(b"SAVING")
    leftovers = [n for n in os.listdir(workdir) if TEMP_RE.match(n)]
    assert len(leftovers) == 1, os.listdir(workdir)  # the temp file exists right now
    return child


def _assert_intact(workdir, existing, allow_temp: bool) -> None:
    assert (workdir / "out.nvol").read_bytes() == existing
    with neurvol.open(workdir / "out.nvol") as nv:
        assert nv.decode().max() == 42
    names = set(os.listdir(workdir)) - {"vol.npy", "out.nvol"}
    if allow_temp:
        assert all(TEMP_RE.match(n) for n in names), names
    else:
        assert not names, names
    # Whatever is left over is never taken for an .nvol file.
    assert sorted(p.name for p in workdir.glob("*.nvol")) == ["out.nvol"]


def test_sigterm_while_fitting(workdir, existing):
    child = _start_fitting(workdir)
    rc = child.finish(signal.SIGTERM)
    assert rc == 143, child.err[-2000:]
    assert b"terminated" in child.err
    _assert_intact(workdir, existing, allow_temp=False)


def test_sigkill_while_fitting(workdir, existing):
    child = _start_fitting(workdir)
    assert child.finish(signal.SIGKILL) == -signal.SIGKILL
    _assert_intact(workdir, existing, allow_temp=True)


def test_sigterm_inside_the_atomic_write_removes_the_temp_file(workdir, existing):
    child = _start_saving(workdir)
    rc = child.finish(signal.SIGTERM)
    assert rc == 143, child.err[-2000:]
    _assert_intact(workdir, existing, allow_temp=False)


def test_sigkill_inside_the_atomic_write_leaves_only_a_temp_file(workdir, existing,
                                                                   small_volume, monkeypatch):
    child = _start_saving(workdir)
    assert child.finish(signal.SIGKILL) == -signal.SIGKILL
    _assert_intact(workdir, existing, allow_temp=True)
    stale = [n for n in os.listdir(workdir) if TEMP_RE.match(n)]
    assert len(stale) == 1
    stale_bytes = (workdir / stale[0]).read_bytes()
    # The next write succeeds, replaces out.nvol and leaves the stale temp alone.
    monkeypatch.chdir(workdir)
    assert cli.main(_pack_argv(2) + ["-q"]) == 0
    assert (workdir / "out.nvol").read_bytes() != existing
    with neurvol.open(workdir / "out.nvol") as nv:
        assert nv.shape == small_volume.shape
    assert (workdir / stale[0]).read_bytes() == stale_bytes
    assert sorted(p.name for p in workdir.glob("*.nvol")) == ["out.nvol"]


def test_refuses_to_overwrite_without_force(workdir, existing, capsys, monkeypatch):
    monkeypatch.chdir(workdir)
    argv = [a for a in _pack_argv(2) if a != "--force"]
    assert cli.main(argv) == 1
    assert "--force" in capsys.readouterr().err
    _assert_intact(workdir, existing, allow_temp=False)
