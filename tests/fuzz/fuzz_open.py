#!/usr/bin/env python
"""Long-running fuzzer of ``neurvol.open`` + ``info`` + ``decode`` + ``query``.

Coverage-guided with atheris (libFuzzer) when it is installed, else (or with
``--random``) a plain random-mutation loop; both use the harness and structure-aware
mutations of ``nvol_fuzzlib`` (header JSON edits behind a recomputed CRC, payload and
tensor-record edits re-checksummed, zstd bombs, ...), seeded with a tiny fvsrn file, a
constant file and every ``tests/golden/*.nvol``.

    pip install atheris                       # optional
    python tests/fuzz/fuzz_open.py --seconds 300
    python tests/fuzz/fuzz_open.py -runs=100000
    python tests/fuzz/fuzz_open.py --random --seconds 60 --seed 1
    python tests/fuzz/fuzz_open.py crash-1234...   # replay one input (atheris mode)

Any exception other than NeurvolFormatError, an input taking longer than ``--deadline``
seconds, or an allocation beyond ``--memory-mb`` above the start-up address space is a
bug. atheris stops at the first one and writes ``crash-<sha1>`` in the working
directory; the random loop keeps going and saves every distinct crash under
``--crash-dir``. Exit status 0 means no bug was found.
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import os
import random
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--random", action="store_true", help="random loop even if atheris is installed")
    p.add_argument("--seed", type=int, default=0, help="random loop: RNG seed")
    p.add_argument("--deadline", type=float, default=20.0, help="seconds per input before it counts as a hang")
    p.add_argument("--memory-mb", type=int, default=3072,
                   help="address space allowed above the start-up size (MiB)")
    p.add_argument("--crash-dir", default=os.path.join(HERE, "crashes"),
                   help="random loop: where distinct crashing inputs are saved")
    p.add_argument("--corpus", default=None,
                   help="atheris: corpus directory (default: a temporary one holding the seeds)")
    args, rest = p.parse_known_args(argv)
    runs = None
    for a in rest:
        if a.startswith("-runs="):
            runs = int(a.split("=", 1)[1])
    return args, rest, runs


def main(argv=None) -> int:
    args, rest, runs = _parse(sys.argv[1:] if argv is None else argv)
    try:
        if args.random:
            raise ImportError
        import atheris  # noqa: F401
    except ImportError:
        return random_loop(args, runs)
    return atheris_loop(args, rest)


# ---------------------------------------------------------------------------------------


def atheris_loop(args, rest) -> int:
    import atheris

    with atheris.instrument_imports(include=["neurvol"]):
        import nvol_fuzzlib as F

    seeds = F.seed_files()
    corpus = args.corpus or tempfile.mkdtemp(prefix="nvol-corpus-")
    os.makedirs(corpus, exist_ok=True)
    for name, data in seeds:
        with open(os.path.join(corpus, "seed-" + name), "wb") as f:
            f.write(data)
    seed_bytes = [d for _, d in seeds]

    def test_one_input(data: bytes) -> None:
        F.guarded(data, args.deadline)

    def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
        rng = random.Random(seed)
        if rng.random() < 0.05:
            data = rng.choice(seed_bytes)
        if rng.random() < 0.35:
            return atheris.Mutate(data, max_size)
        try:
            out, _ = F.mutate(data, F.RandomChooser(rng), rounds=rng.randint(1, 2))
        except Exception:  # noqa: BLE001 - a mutator bug must not stop the fuzzer
            return atheris.Mutate(data, max_size)
        return out[:max_size]

    libfuzzer_args = [sys.argv[0]] + [a for a in rest if a.startswith("-")]
    if args.seconds is not None:
        libfuzzer_args.append(f"-max_total_time={int(args.seconds)}")
    if not any(a.startswith("-max_len=") for a in rest):
        libfuzzer_args.append("-max_len=65536")
    if not any(a.startswith("-timeout=") for a in rest):
        libfuzzer_args.append(f"-timeout={int(args.deadline) + 10}")
    if not any(a.startswith("-rss_limit_mb=") for a in rest):
        libfuzzer_args.append(f"-rss_limit_mb={args.memory_mb + 1024}")
    files = [a for a in rest if not a.startswith("-")]
    libfuzzer_args += files if files else [corpus]
    print(f"fuzz_open: atheris, {len(seeds)} seeds in {corpus}", file=sys.stderr)
    with F.memory_cap(args.memory_mb << 20):
        atheris.Setup(libfuzzer_args, test_one_input, custom_mutator=custom_mutator)
        atheris.Fuzz()
    return 0


def random_loop(args, runs) -> int:
    import nvol_fuzzlib as F

    seeds = F.seed_files()
    rng = random.Random(args.seed)
    outcomes: collections.Counter = collections.Counter()
    crashes: dict = {}
    t0 = time.monotonic()
    n = 0
    print(f"fuzz_open: random loop, seed {args.seed}, {len(seeds)} seeds", file=sys.stderr)
    with F.memory_cap(args.memory_mb << 20):
        while True:
            if runs is not None and n >= runs:
                break
            if args.seconds is not None and time.monotonic() - t0 >= args.seconds:
                break
            if runs is None and args.seconds is None and n >= 10000:
                break
            name, data = rng.choice(seeds)
            mutated, kinds = F.mutate(data, F.RandomChooser(rng), rounds=rng.randint(1, 3))
            n += 1
            try:
                outcomes[F.guarded(mutated, args.deadline)] += 1
            except Exception as e:  # noqa: BLE001 - every other exception is a finding
                tb = traceback.extract_tb(e.__traceback__)
                where = f"{tb[-1].filename}:{tb[-1].lineno}" if tb else "?"
                key = (type(e).__name__, where)
                if key not in crashes:
                    os.makedirs(args.crash_dir, exist_ok=True)
                    path = os.path.join(args.crash_dir,
                                        "crash-" + hashlib.sha1(mutated).hexdigest())
                    with open(path, "wb") as f:
                        f.write(mutated)
                    print(f"CRASH {type(e).__name__}: {str(e)[:200]} at {where} "
                          f"(seed {name}, mutations {kinds}) -> {path}", file=sys.stderr)
                crashes[key] = crashes.get(key, 0) + 1
            if n % 5000 == 0:
                print(f"#{n} {dict(outcomes)} {n / (time.monotonic() - t0):.0f} exec/s",
                      file=sys.stderr)
    elapsed = time.monotonic() - t0
    print(f"fuzz_open: {n} inputs in {elapsed:.0f} s ({n / max(elapsed, 1e-9):.0f}/s), outcomes "
          f"{dict(outcomes)}, {len(crashes)} distinct crashes", file=sys.stderr)
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
