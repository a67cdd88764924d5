"""Run reader checks on hostile inputs in a separate worker process, under a time limit
and an address-space cap, and measure each input's peak memory.

Used by ``tests/test_hostile.py`` (one input per check) and ``tests/fuzz/campaign.py``
(many inputs per worker). The worker imports neurvol once, warms it up (so the first
input does not pay for lazy imports), then answers requests on a pipe. Per input it

* resets the kernel's peak-RSS counter (``/proc/self/clear_refs``) and reads ``VmRSS``,
* runs the check under ``SIGALRM`` (a Python-level deadline),
* reports the outcome, the seconds taken and the peak RSS increase (``VmHWM`` - start).

The parent enforces the time limit too: a worker that does not answer within the limit
plus a grace period (a hang in C code, where SIGALRM cannot interrupt) is killed and the
input counts as a timeout. The address-space cap (``RLIMIT_AS`` = the warmed worker's
size + ``memory_cap``) turns a runaway allocation into a MemoryError, reported as
``over-memory``. Linux only (``/proc``); elsewhere peak memory is reported as None.
"""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from typing import Any, Dict, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

#: What a check does with the input (``data``: its bytes), by name.
CHECKS = {
    # open + info + a 4-point query + a 16^3 decode (the campaign's acceptance check),
    # plus the default-dtype decode (integer casts).
    "read": """
nv = neurvol.NeuralVolume(NvolReader(data))
with nv:
    json.dumps(nv.info(), allow_nan=False)
    pts = np.array([[-1, -1, -1], [1, 1, 1], [0, 0, 0], [-1, 0.25, 1]], np.float64)
    v = nv.query(pts, space="normalized")
    assert v.shape == (4,) and (nv.masked or np.isfinite(v).all())   # masked: NaN there
    g = nv.decode(shape=(16, 16, 16), dtype=np.float32)
    assert nv.masked or np.isfinite(g).all()
    nv.decode(shape=(2, 3, 2))
""",
    # what `neurvol info` does (header, model description, where the bytes go)
    "info": """
import contextlib, io as _io
from neurvol import cli
f = tempfile.NamedTemporaryFile(suffix=".nvol", delete=False)
f.write(data); f.close()
err = _io.StringIO()
with contextlib.redirect_stdout(_io.StringIO()), contextlib.redirect_stderr(err):
    code = cli.main(["info", f.name])
os.unlink(f.name)
assert "Traceback" not in err.getvalue(), err.getvalue()
if code != 0:
    raise neurvol.NeurvolFormatError(err.getvalue().strip())
""",
}

_WORKER = r"""
import json, os, resource, signal, sys, tempfile, time, traceback
sys.path.insert(0, {root!r})
COV = None
if {coverage_dir!r}:
    # Line coverage of imports and inputs (no warm-up then), saved at a clean exit.
    import coverage
    COV = coverage.Coverage(data_file=os.path.join({coverage_dir!r}, ".coverage"),
                            data_suffix=True, source=[os.path.join({root!r}, "neurvol")])
    COV.start()
import numpy as np
import neurvol
from neurvol.container import NvolReader
from neurvol.errors import NeurvolError

CHECKS = {checks}

def status():
    out = {{}}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "VmSize"):
                out[k] = int(v.split()[0]) * 1024
    return out

class Timeout(BaseException):
    pass

def on_alarm(signum, frame):
    raise Timeout()

CODE = {{name: compile(src, name, "exec") for name, src in CHECKS.items()}}

def run(check, data):
    exec(CODE[check], {{"data": data, "np": np, "neurvol": neurvol, "json": json,
                         "NvolReader": NvolReader, "tempfile": tempfile, "os": os}})

# Warm up: lazy imports, torch's first inference, the allocator.
golden = os.path.join({root!r}, "tests", "golden", "fvsrn_v1.0.nvol")
with open(golden, "rb") as f:
    warm = f.read()
for check in CHECKS if COV is None else ():
    run(check, warm)
can_peak = os.path.exists("/proc/self/clear_refs")
cap = {memory_cap}
LIMIT_S = {limit_s}
if {preload_fuzz}:
    # Making seeds and mutating use the library too; coverage counts only the checks.
    if COV is not None:
        COV.stop()
    sys.path.insert(0, {here!r})
    import random
    import nvol_fuzzlib as FUZZ
    SEEDS = FUZZ.seed_files()
    if COV is not None:
        COV.start()
if cap and can_peak:
    size = status()["VmSize"]
    resource.setrlimit(resource.RLIMIT_AS, (size + cap, resource.RLIM_INFINITY))
signal.signal(signal.SIGALRM, on_alarm)
out = os.fdopen(int(sys.argv[1]), "w")
out.write("ready\n"); out.flush()
inp = sys.stdin.buffer
while True:
    head = inp.readline()
    if not head:
        break
    check, n, seconds = head.decode().split()
    meta = {{}}
    if check in ("fuzz", "make"):
        # Mutate here (in parallel across workers), from a seed the parent chose; the
        # input's bytes go back only when the parent needs them (see below), or for
        # "make", which only builds the input (to recover one whose worker was killed).
        rng = random.Random(int(n))
        seed_name, data = rng.choice(SEEDS)
        if COV is not None:
            COV.stop()
        data, kinds = FUZZ.mutate(data, FUZZ.RandomChooser(rng), rounds=rng.randint(1, 3))
        if COV is not None:
            COV.start()
        meta = {{"seed": seed_name, "mutations": "+".join(kinds), "size": len(data)}}
        if check == "make":
            out.write(json.dumps(dict(meta, data=data.hex())) + "\n"); out.flush()
            continue
        check = "read"
    else:
        data = inp.read(int(n))
    if {fork}:
        # One child per input: its peak is measured from a clean, warmed state (a
        # reused process's allocator would hide allocations it can serve from freed
        # memory), and a crash or hang costs only the child.
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid:
            os.close(wfd)
            t0 = time.perf_counter()
            limit = float(seconds) + 2.0
            while True:
                done, status_ = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                if time.perf_counter() - t0 > limit:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    status_ = None
                    break
                time.sleep(0.002)
            with os.fdopen(rfd) as r:
                line = r.read().strip()
            if not line:
                line = json.dumps({{"outcome": "timeout" if status_ is None else "crash",
                                   "type": "child died", "message": f"status {{status_}}",
                                   "seconds": time.perf_counter() - t0, "peak_bytes": None}})
            out.write(line + "\n"); out.flush()
            continue
        os.close(rfd)
        out = os.fdopen(wfd, "w")
    if can_peak:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    before = status()["VmRSS"] if can_peak else None
    t0 = time.perf_counter()
    res = {{"outcome": "ok"}}
    signal.setitimer(signal.ITIMER_REAL, float(seconds))
    try:
        run(check, data)
    except Timeout:
        res = {{"outcome": "timeout"}}
    except MemoryError:
        res = {{"outcome": "over-memory", "where": traceback.format_exc()[-2000:]}}
    except NeurvolError as e:
        res = {{"outcome": "error", "type": type(e).__name__, "message": str(e)[:300]}}
    except BaseException as e:
        res = {{"outcome": "crash", "type": type(e).__name__, "message": str(e)[:300],
               "where": traceback.format_exc()[-3000:]}}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    res["seconds"] = time.perf_counter() - t0
    res["peak_bytes"] = (status()["VmHWM"] - before) if can_peak else None
    res.update(meta)
    if meta and (res["outcome"] not in ("ok", "error") or res["seconds"] > LIMIT_S
                 or (res["peak_bytes"] or 0) > cap):
        res["data"] = data.hex()
    out.write(json.dumps(res) + "\n"); out.flush()
    if {fork}:
        os._exit(0)
if COV is not None:
    COV.stop()
    COV.save()
"""


class Worker:
    """One worker process; :meth:`run` checks one input (``fork=True``: in a fresh child
    of the warmed worker, for exact per-input peaks); with ``fuzzing=True`` it also
    makes inputs itself (:meth:`fuzz`, :meth:`make`). Restart it after a timeout or a
    crash (:meth:`run` does so itself when the worker died or was killed)."""

    def __init__(self, memory_cap: int = 1 << 30, startup_s: float = 300.0,
                 fork: bool = False, limit_s: float = 5.0, fuzzing: bool = False,
                 coverage_dir: str = "") -> None:
        self.memory_cap = memory_cap
        self.coverage_dir = coverage_dir
        self.fuzzing = fuzzing
        self.limit_s = limit_s
        self.fork = fork
        self.startup_s = startup_s
        self.proc: Optional[subprocess.Popen] = None
        self.inputs = 0

    def start(self) -> None:
        r, w = os.pipe()
        code = _WORKER.format(root=ROOT, checks=repr(CHECKS), memory_cap=int(self.memory_cap),
                              fork=bool(self.fork), here=HERE, limit_s=float(self.limit_s),
                              preload_fuzz=bool(self.fuzzing), coverage_dir=self.coverage_dir)
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(w)], stdin=subprocess.PIPE,
                                     pass_fds=(w,), env=env, cwd=ROOT)
        os.close(w)
        self._out = os.fdopen(r, "r")
        line = self._readline(self.startup_s)
        if line != "ready":
            self.stop()
            raise RuntimeError(f"sandbox worker did not start (got {line!r})")
        self.inputs = 0

    def _readline(self, timeout: float) -> Optional[str]:
        ready, _, _ = select.select([self._out], [], [], timeout)
        if not ready:
            return None
        line = self._out.readline()
        return line.strip() if line else ""

    def run(self, data: bytes, check: str = "read", seconds: float = 5.0,
            grace: float = 5.0) -> Dict[str, Any]:
        """Outcome of *check* on *data*: a dict with ``outcome`` (``ok``, ``error`` (a
        NeurvolError: ``type``, ``message``), ``crash``, ``timeout``, ``over-memory``),
        ``seconds`` and ``peak_bytes``. The worker's own deadline is *seconds*; the
        parent kills it at *seconds* + *grace*."""
        return self._request(f"{check} {len(data)} {seconds}\n".encode() + data,
                             seconds + grace)

    def _request(self, message: bytes, timeout: float) -> Dict[str, Any]:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        assert self.proc is not None and self.proc.stdin is not None
        t0 = time.perf_counter()
        try:
            self.proc.stdin.write(message)
            self.proc.stdin.flush()
            line = self._readline(timeout)
        except (BrokenPipeError, OSError):
            line = ""
        self.inputs += 1
        if line:
            return json.loads(line)
        wall = time.perf_counter() - t0
        died = self.proc.poll()
        if died is None:
            self.proc.send_signal(signal.SIGKILL)   # hung: no clean exit to wait for
        self.stop()
        if line is None:
            return {"outcome": "timeout", "seconds": wall, "peak_bytes": None,
                    "message": "killed by the parent"}
        return {"outcome": "crash", "type": "worker died", "seconds": wall,
                "peak_bytes": None, "message": f"exit status {died}"}

    def fuzz(self, seed: int, seconds: float = 5.0, grace: float = 5.0) -> Dict[str, Any]:
        """Like :meth:`run` on an input the worker makes itself: a seed file mutated by
        ``nvol_fuzzlib.mutate`` with ``random.Random(seed)``. The result names the seed
        file and the mutations, and holds the input (``data``, hex) when it failed or
        exceeded a limit."""
        return self._request(f"fuzz {int(seed)} {seconds}\n".encode(), seconds + grace)

    def make(self, seed: int, timeout: float = 60.0) -> Dict[str, Any]:
        """The input :meth:`fuzz` runs for *seed* (``data``, hex), without running it."""
        return self._request(f"make {int(seed)} 0\n".encode(), timeout)

    def stop(self) -> None:
        """End the worker: a clean exit (end of input) when it is idle, so it can save
        what it must (coverage); killed if it does not exit within 10 s."""
        if self.proc is not None:
            if self.proc.stdin:
                try:
                    self.proc.stdin.close()
                except OSError:
                    pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait()
            self._out.close()
        self.proc = None

    def __enter__(self) -> "Worker":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
