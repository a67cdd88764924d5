"""Time series: one series encode at a total ratio against independent encodes of each step.

    python benchmarks/run_series.py                         # the full run (lead, alone)
    python benchmarks/run_series.py --small                 # a quick check that it works
    python benchmarks/run_series.py --baseline-every 2      # independent encodes of every
                                                            # 2nd step only (time scaled)

Data (``$NEURVOL_DATA/timeseries``): viscous fingers run01, 32 steps of 64^3 (groups of 8),
and the Isabel wind speed, three runs of four consecutive steps (groups of 4, one per run).
For each: ``neurvol.encode(step, ratio=R)`` of every step (the baseline) against
``neurvol.encode(series, ratio=R, group=G)``: mean and min PSNR over steps (each step's own
data range, as ``neurvol.metrics.psnr``), max abs error, total bytes and total encode time;
then the file is opened again and its last step decoded, with the reader's counters
(members decoded, payload bytes read). Acceptance (issue 25): mean PSNR >= baseline + 2 dB,
encode time <= half the baseline's. With ``--baseline-every k`` the baseline's PSNR is the
mean over the steps it encoded and its time that mean times the step count (marked in the
table).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any, Dict, List, Optional

import numpy as np

import neurvol
from neurvol.metrics import max_abs_error, psnr

DATA = os.environ.get("NEURVOL_DATA", "/work/shared/data")
#: (label, file, steps used, group)
SERIES = (
    ("viscous fingers run01 (32 x 64^3)", "timeseries/sim_viscous_fingers_run01_t33-64.npy", 32, 8),
    ("Isabel wind speed (3 runs x 4, 25x125x125)", "timeseries/sim_isabel_windspeed_12steps.npy", 12, 4),
)
RATIO = 100.0
#: The acceptance: dB above the independent encodes, and the encode-time fraction.
GAIN_DB = 2.0
TIME_FRACTION = 0.5


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def baseline(data: np.ndarray, every: int, fit_steps: Optional[int]) -> Dict[str, Any]:
    """Independent encodes of every ``every``-th step."""
    ps, errs, sizes, secs = [], [], [], []
    for t in range(0, data.shape[0], every):
        t0 = time.perf_counter()
        nv = neurvol.encode(data[t], ratio=RATIO, quiet=True, steps=fit_steps)
        secs.append(time.perf_counter() - t0)
        dec = nv.decode(dtype=np.float32)
        ps.append(psnr(data[t], dec))
        errs.append(max_abs_error(data[t], dec))
        sizes.append(nv.nbytes_file)
        _log(f"  independent step {t}: {ps[-1]:.2f} dB, {sizes[-1]} bytes, {secs[-1]:.1f} s")
    scale = data.shape[0] / len(ps)
    return {"psnr_mean": float(np.mean(ps)), "psnr_min": float(np.min(ps)),
            "max_abs_error": float(max(errs)), "bytes": int(round(sum(sizes) * scale)),
            "seconds": float(sum(secs) * scale), "steps_encoded": len(ps)}


def baseline_from_log(path: str, steps: int) -> Dict[str, Any]:
    """The independent encodes of an earlier run of this script, from its stderr lines
    ("independent step t: P dB, B bytes, S s"); the max abs error is not in them."""
    import re

    rows = [tuple(float(x) for x in m.groups()) for m in re.finditer(
        r"independent step \d+: ([\d.]+) dB, (\d+) bytes, ([\d.]+) s", open(path).read())]
    if not rows:
        raise SystemExit(f"no independent encodes in {path}")
    ps, sizes, secs = zip(*rows)
    scale = steps / len(rows)
    return {"psnr_mean": float(np.mean(ps)), "psnr_min": float(np.min(ps)),
            "max_abs_error": None, "bytes": int(round(sum(sizes) * scale)),
            "seconds": float(sum(secs) * scale), "steps_encoded": len(rows), "from_log": path}


def series(data: np.ndarray, group: int, fit_steps: Optional[int]) -> Dict[str, Any]:
    """One series encode, its quality per step, and a one-step decode's counters."""
    nv = neurvol.encode(data, ratio=RATIO, quiet=True, group=group, steps=fit_steps)
    seconds = nv.encode_seconds
    raw = nv.to_bytes()
    _log(f"  series encode: {seconds:.1f} s, {len(raw)} bytes")
    ps, errs = [], []
    for t in range(data.shape[0]):
        dec = nv.step(t).decode(dtype=np.float32)
        ps.append(psnr(data[t], dec))
        errs.append(max_abs_error(data[t], dec))
    _log("  series per step: " + " ".join(f"{p:.2f}" for p in ps))
    reopened = neurvol.NeuralSeries(neurvol.container.NvolReader(raw))
    last = data.shape[0] - 1
    reopened.step(last).decode()
    stats = reopened.stats
    return {"psnr_mean": float(np.mean(ps)), "psnr_min": float(np.min(ps)),
            "max_abs_error": float(max(errs)), "bytes": len(raw), "seconds": float(seconds),
            "psnr_steps": [round(float(p), 3) for p in ps],
            "one_step": {"step": last, "members_decoded": stats["members_decoded"],
                         "members": data.shape[0], "bytes_read": stats["bytes_read"],
                         "file_bytes": len(raw)}}


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="4 steps, 200 fit steps: a smoke test")
    ap.add_argument("--baseline-every", type=int, default=1,
                    help="independent encodes of every k-th step only (time scaled up)")
    ap.add_argument("--only", default="", help="'viscous' or 'isabel': one series only")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--baseline-log", default=None,
                    help="take the independent encodes from an earlier run's stderr log "
                         "instead of encoding them again (with --only)")
    args = ap.parse_args(argv)
    fit_steps = 200 if args.small else None
    rows = []
    for label, path, count, group in SERIES:
        if args.only and args.only not in label.lower():
            continue
        data = np.load(os.path.join(DATA, path))[: 4 if args.small else count]
        data = np.ascontiguousarray(data)
        _log(f"{label}: {data.shape}")
        base = (baseline_from_log(args.baseline_log, data.shape[0]) if args.baseline_log
                else baseline(data, args.baseline_every, fit_steps))
        ours = series(data, min(group, data.shape[0]), fit_steps)
        gain = ours["psnr_mean"] - base["psnr_mean"]
        frac = ours["seconds"] / base["seconds"]
        rows.append({"series": label, "group": group, "baseline": base, "series_encode": ours,
                     "gain_db": gain, "time_fraction": frac,
                     "accepted": bool(gain >= GAIN_DB and frac <= TIME_FRACTION)})
        _log(f"  gain {gain:+.2f} dB, time x{frac:.2f}")
    out = {"machine": {"python": sys.version.split()[0], "platform": platform.platform(),
                       "cpus": os.cpu_count()},
           "ratio": RATIO, "small": args.small, "baseline_every": args.baseline_every,
           "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    print(render(out))
    return 0 if all(r["accepted"] for r in rows) else 1


def render(out: Dict[str, Any]) -> str:
    """The markdown table of a run."""
    lines = [f"Total ratio {out['ratio']:g}; independent = one encode per step at that ratio.",
             "",
             "| series | method | mean PSNR | min PSNR | max abs error | bytes | encode s | "
             "one step: members decoded / bytes read |",
             "|---|---|---|---|---|---|---|---|"]
    for r in out["rows"]:
        b, s = r["baseline"], r["series_encode"]
        one = s["one_step"]
        err = "–" if b["max_abs_error"] is None else f"{b['max_abs_error']:.3g}"
        steps = len(s["psnr_steps"])
        method = "independent" if b["steps_encoded"] == steps else (
            f"independent ({b['steps_encoded']} of {steps} steps; bytes, s scaled)")
        lines.append(f"| {r['series']} | {method} | {b['psnr_mean']:.2f} | {b['psnr_min']:.2f} "
                     f"| {err} | {b['bytes']:,} | {b['seconds']:.0f} | 1 / one file |")
        lines.append(f"| {r['series']} | series (groups of {r['group']}) | {s['psnr_mean']:.2f} "
                     f"| {s['psnr_min']:.2f} | {s['max_abs_error']:.3g} | {s['bytes']:,} "
                     f"| {s['seconds']:.0f} | {one['members_decoded']} of {one['members']} / "
                     f"{one['bytes_read']:,} of {one['file_bytes']:,} |")
        lines.append(f"| {r['series']} | gain | {r['gain_db']:+.2f} dB | | | | x{r['time_fraction']:.2f} "
                     f"| {'accepted' if r['accepted'] else 'NOT accepted'} (>= +{GAIN_DB} dB, "
                     f"<= x{TIME_FRACTION}) |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
