#!/usr/bin/env python
"""Fuzz campaign under the resource model: structure-aware mutations, run in worker
processes with an address-space cap and a per-input time limit.

Every input is a seed file (a tiny fvsrn, a tiny amgsrn, a constant, every golden file)
mutated by ``nvol_fuzzlib.mutate``: header fields, sizes, counts and stream contents with
the checksums recomputed, plus byte-level damage. Each input runs the sandbox's ``read``
check (open + info + a 4-point query + a 16^3 decode + a default-dtype decode) in a
reused worker (``sandbox.Worker``), which must end in <= ``--deadline`` seconds and
<= ``--memory-mb`` of peak memory increase, either correctly or with a NeurvolError.
Anything else - another exception, a dead worker, a timeout, a MemoryError under the
address-space cap, or a peak over the limit - is a failure: the input is saved under
``--crash-dir`` (re-run in a fresh forked child first, to confirm the measurement).

    python tests/fuzz/campaign.py --workers 4 --count 1000000 --seed 1
    python tests/fuzz/campaign.py --seconds 60              # a short run
    python tests/fuzz/campaign.py --replay tests/fuzz/crashes/campaign-<sha1>

It reports inputs/s, the distribution of time and peak memory, the slowest and largest
inputs, and coverage as the distinct outcomes: each NeurvolError message class (the
message with numbers and names removed) and the mutators that reached it. Exit status
0 means no failure.
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import random
import re
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

FAIL = ("crash", "timeout", "over-memory")
#: A worker is replaced after this many inputs, so allocator state does not accumulate.
RESTART_EVERY = 2000


def _message_class(msg: str) -> str:
    """A message with the input-specific parts (numbers, quoted names) removed."""
    msg = re.sub(r"'[^']*'|\"[^\"]*\"", "'_'", msg)
    msg = re.sub(r"0x[0-9a-fA-F]+", "N", msg)
    msg = re.sub(r"-?\d[\d,._e+-]*", "N", msg)
    msg = re.sub(r"[\[{(][^\]})]*[\]})]", "[..]", msg)
    return msg[:90]


class Campaign:
    def __init__(self, args: argparse.Namespace) -> None:
        import nvol_fuzzlib as F

        self.F = F
        self.args = args
        self.seeds = F.seed_files()
        self.lock = threading.Lock()
        self.results: List[Tuple[float, Optional[int], str, str, str]] = []
        self.outcomes: collections.Counter = collections.Counter()
        self.classes: Dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.failures: List[Dict[str, Any]] = []
        self.n = 0
        self.rng = random.Random(args.seed)

    def next_seed(self) -> Optional[int]:
        with self.lock:
            if self.args.count is not None and self.n >= self.args.count:
                return None
            if time.monotonic() >= self.stop_at:
                return None
            self.n += 1
            return self.rng.getrandbits(63)

    def _over(self, res: Dict[str, Any]) -> bool:
        peak = res.get("peak_bytes")
        return (res["outcome"] in FAIL or res.get("seconds", 0) > self.args.deadline
                or (peak is not None and peak > self.args.memory_mb << 20))

    def record(self, seed: int, res: Dict[str, Any]) -> None:
        from sandbox import Worker

        if self._over(res):
            # Recover the input (a killed worker could not send it), then confirm in a
            # fresh forked child: a reused worker's allocator state can skew a measure.
            data_hex = res.get("data")
            if data_hex is None:
                with Worker(fuzzing=True) as w:
                    data_hex = w.make(seed)["data"]
            data = bytes.fromhex(data_hex)
            with Worker(memory_cap=self.args.memory_mb << 20, fork=True) as w:
                again = w.run(data, seconds=self.args.deadline)
            again.update({k: res[k] for k in ("seed", "mutations", "size") if k in res})
            if self._over(again):
                self._save(data, again)
            res = again
        outcome = res["outcome"]
        kinds = res.get("mutations", "?")
        with self.lock:
            self.outcomes[outcome] += 1
            key = outcome if outcome != "error" else "error: " + _message_class(res["message"])
            self.classes[key][kinds.split("+")[0]] += 1
            self.results.append((res.get("seconds", 0.0), res.get("peak_bytes"),
                                 res.get("seed", "?"), kinds, seed))

    def _save(self, data: bytes, res: Dict[str, Any]) -> None:
        seed_name, kinds = res.get("seed", "?"), res.get("mutations", "?")
        os.makedirs(self.args.crash_dir, exist_ok=True)
        path = os.path.join(self.args.crash_dir, "campaign-" + hashlib.sha1(data).hexdigest())
        with open(path, "wb") as f:
            f.write(data)
        with open(path + ".json", "w") as f:
            json.dump(res, f, indent=1)
        with self.lock:
            self.failures.append(dict(res, path=path))
        print(f"FAILURE {res['outcome']} {res.get('type', '')}: {res.get('message', '')[:200]} "
              f"(seed {seed_name}, mutations {kinds}) -> {path}", file=sys.stderr)

    def work(self, worker: Any) -> None:
        try:
            while True:
                seed = self.next_seed()
                if seed is None:
                    return
                if worker.inputs >= RESTART_EVERY:
                    worker.stop()
                self.record(seed, worker.fuzz(seed, seconds=self.args.deadline))
                if self.args.progress and self.n % self.args.progress == 0:
                    print(f"#{self.n} {dict(self.outcomes)} "
                          f"{self.n / (time.monotonic() - self.t0):.0f}/s", file=sys.stderr)
        finally:
            worker.stop()

    def run(self) -> int:
        from sandbox import Worker

        # Workers start (import, warm up, encode the seed files) before the clock does:
        # inputs/s is the steady rate.
        if self.args.coverage:
            os.makedirs(self.args.coverage, exist_ok=True)
        workers = [Worker(memory_cap=self.args.memory_mb << 20, fuzzing=True,
                          limit_s=self.args.deadline, coverage_dir=self.args.coverage or "",
                          fork=self.args.fork)
                   for _ in range(self.args.workers)]
        starters = [threading.Thread(target=w.start) for w in workers]
        for t in starters:
            t.start()
        for t in starters:
            t.join()
        self.t0 = time.monotonic()
        self.stop_at = self.t0 + (self.args.seconds if self.args.seconds else float("inf"))
        threads = [threading.Thread(target=self.work, args=(w,)) for w in workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.elapsed = time.monotonic() - self.t0
        self.report()
        return 1 if self.failures else 0

    def report(self) -> Dict[str, Any]:
        import numpy as np

        secs = np.array([r[0] for r in self.results]) if self.results else np.zeros(1)
        peaks = np.array([r[1] for r in self.results if r[1] is not None] or [0]) / 2 ** 20
        q = [50, 90, 99, 99.9, 100]
        rep = {
            "inputs": len(self.results),
            "seconds": round(self.elapsed, 1),
            "inputs_per_s": round(len(self.results) / max(self.elapsed, 1e-9), 1),
            "workers": self.args.workers,
            "outcomes": dict(self.outcomes),
            "time_ms_percentiles": dict(zip(map(str, q), np.round(np.percentile(secs, q) * 1e3, 2).tolist())),
            "peak_mib_percentiles": dict(zip(map(str, q), np.round(np.percentile(peaks, q), 1).tolist())),
            "slowest": [dict(zip(("seconds", "peak_bytes", "seed_file", "mutations", "rng_seed"), r))
                        for r in sorted(self.results, key=lambda r: -r[0])[:5]],
            "largest": [dict(zip(("seconds", "peak_bytes", "seed_file", "mutations", "rng_seed"), r))
                        for r in sorted(self.results, key=lambda r: -(r[1] or 0))[:5]],
            "distinct_outcomes": len(self.classes),
            "coverage": {k: dict(v) for k, v in sorted(self.classes.items(),
                                                        key=lambda kv: -sum(kv[1].values()))},
            "failures": len(self.failures),
        }
        if self.args.coverage:
            rep["line_coverage"] = _line_coverage(self.args.coverage)
        text = json.dumps(rep, indent=1)
        print(text)
        if self.args.report:
            with open(self.args.report, "w") as f:
                f.write(text)
        return rep


#: The reader's modules whose line coverage the report lists.
_COVERED = ("container/", "compress/", "neural_volume.py", "model_limits.py",
            "volume_checks.py", "errors.py", "models/base.py")


def _line_coverage(directory: str) -> Dict[str, Any]:
    """Combine the workers' coverage data; percent of lines run per reader module."""
    import coverage

    cov = coverage.Coverage(data_file=os.path.join(directory, ".coverage"))
    cov.combine(data_paths=[directory], keep=True)
    data = cov.get_data()
    out: Dict[str, Any] = {}
    run = total = 0
    for path in sorted(data.measured_files()):
        rel = path.split(os.sep + "neurvol" + os.sep, 1)[-1]
        if not rel.startswith(_COVERED):
            continue
        _, statements, _, missing, _ = cov.analysis2(path)
        if statements:
            out[rel] = round(100 * (len(statements) - len(missing)) / len(statements), 1)
            run += len(statements) - len(missing)
            total += len(statements)
    out["all of the above"] = round(100 * run / max(total, 1), 1)
    return out


def _parse(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--count", type=int, default=None, help="inputs to run")
    p.add_argument("--seconds", type=float, default=None, help="stop after this long")
    p.add_argument("--seed", type=int, default=0, help="RNG seed of the mutations")
    p.add_argument("--deadline", type=float, default=5.0, help="seconds per input (5)")
    p.add_argument("--memory-mb", type=int, default=1024,
                   help="address space and peak memory allowed per input (MiB, 1024)")
    p.add_argument("--crash-dir", default=os.path.join(HERE, "crashes"))
    p.add_argument("--report", default=None, help="also write the JSON report here")
    p.add_argument("--progress", type=int, default=0, help="print progress every N inputs")
    p.add_argument("--coverage", default=None, metavar="DIR",
                   help="measure line coverage of the inputs (needs the coverage package; "
                        "slower); data in DIR, percentages in the report")
    p.add_argument("--fork", action="store_true",
                   help="run each input in a fresh forked child of the worker: exact peak "
                        "memory per input (a reused worker's allocator hides memory it "
                        "already holds), several times slower")
    p.add_argument("--replay", default=None, help="run one saved input and print its outcome")
    args = p.parse_args(argv)
    if args.count is None and args.seconds is None and args.replay is None:
        args.count = 1000
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = _parse(argv)
    if args.replay:
        from sandbox import Worker

        with open(args.replay, "rb") as f:
            data = f.read()
        with Worker(memory_cap=args.memory_mb << 20, fork=True) as w:
            res = w.run(data, seconds=args.deadline)
        print(json.dumps(res, indent=1))
        return 1 if res["outcome"] in FAIL else 0
    return Campaign(args).run()


if __name__ == "__main__":
    sys.exit(main())
