"""Regenerate the *current results* section at the top of BENCHMARKS.md (one command).

Each part is measured by a script of its own and stored as JSON in ``benchmarks/results/``
with its date, machine and commit; this script runs the parts asked for, then rewrites the
block between the ``current-results`` markers of BENCHMARKS.md from every stored part, and
draws ``docs/rate_distortion.png``. Parts not re-run keep their stored numbers (and their
own date and commit in their heading), so a table never claims a run it did not have.

    python benchmarks/current.py --run rd,speed,bricks,reader   # everything (~45 min, 2 cores)
    python benchmarks/current.py --run rd --volumes sim_neghip  # one part, one volume
    python benchmarks/current.py                                # re-render only

Parts:
    rd      rate-distortion on the 7 dev volumes: neurvol's default against SZ3, ZFP,
            SPERR and downsampling at the same bytes (PSNR and max abs error)
    speed   ``benchmarks/run_speed.py``: encode s, query Mpts/s, decode s, open + 1k ms, RSS
    bricks  ``benchmarks/run_bricks.py --acceptance``: 256^3 bricked vs one model
    reader  ``benchmarks/run_numpy_reader.py``: numpy (torch-free) reader vs torch
    bquery  ``benchmarks/run_bricked_query.py``: 64-brick 512^3 vs one 256^3 model: warm
            query, cold open + 1k points, decode (issue 26)
    rd_hybrid ``benchmarks/run_rd_hybrid.py``: the default encode (model or pure predictor,
            issue 22) vs SZ3 and SPERR at ratios 10-800, the predictor's PSNR beside it
    bounded ``benchmarks/run_bounded.py``: ratio at fixed error bounds vs SZ3/ZFP/SPERR
    bounded_access ``benchmarks/run_bounded_access.py``: cold open + 1k points and warm
            queries on error-bounded files against model-only ones
    series  ``benchmarks/run_series.py``: time series at a total ratio vs independent steps
    masked  ``benchmarks/run_masked.py``: a NaN-masked CT volume against the unmasked one
    fit_seeds ``benchmarks/run_fit_seeds.py``: the default encode of the three 128^3
            volumes over seeds 0-2: mean / min / max PSNR and seconds (issue 26's fit line)
    large   ``benchmarks/run_large.py``: 512^3 float32 out of core (its 4 hardest bricks): peak
            memory of the process tree, PSNR, brick PSNR spread, 1 -> 2 workers, Dask
    large1024 the same on the 1024^3 volume's 4 largest bricks (a full encode takes hours)
    large1024_full the full 1024^3 encode, 2 local workers (hours on 2 cores): total time,
            PSNR and max abs error over every voxel, peak memory, brick PSNR spread

Run it alone on the machine: two torch processes on two cores slow each other many times.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
BENCHMARKS_MD = os.path.join(ROOT, "BENCHMARKS.md")
RD_PLOT = os.path.join(ROOT, "docs", "rate_distortion.png")
BEGIN, END = "<!-- current-results:begin -->", "<!-- current-results:end -->"
sys.path.insert(0, HERE)
from dev_volumes import DEFAULT_DATA, DEV_VOLUMES  # noqa: E402  (benchmarks/ is not a package)
RD_RATIOS = (50.0, 100.0, 200.0, 400.0)
RD_BASELINES = ("sz3", "zfp", "sperr", "downsample")
# Query throughput is a speed figure (the speed part measures it properly); the rd part
# only needs a short query to fill its column.
RD_QUERY_POINTS = 100_000


def machine() -> Dict[str, Any]:
    """Date, CPU, cores, library versions and commit of this run."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "neurvol"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    versions = {}
    for mod in ("numpy", "torch", "pysz", "zfpy", "hdf5plugin"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # a missing baseline library is reported, not fatal
            versions[mod] = None
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu,
            "cores": os.cpu_count(), "python": platform.python_version(),
            "commit": commit + ("+dirty" if dirty else ""), "versions": versions}


def save_part(name: str, data: Dict[str, Any]) -> None:
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, f"{name}.json"), "w") as f:
        json.dump(data, f, indent=1, default=str)


def load_part(name: str) -> Optional[Dict[str, Any]]:
    path = os.path.join(RESULTS, f"{name}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


# ---------------------------------------------------------------------- parts: running
def run_rd(args: argparse.Namespace) -> None:
    import numpy as np

    from neurvol.bench.runner import run_benchmark

    wanted = set(args.volumes.split(",")) if args.volumes else None
    old = load_part("rd") if wanted else None
    rows = [r for r in (old or {}).get("rows", []) if r["source"] not in (wanted or ())]
    meta = machine()
    for name, sub in DEV_VOLUMES:
        if wanted and name not in wanted:
            continue
        vol = np.ascontiguousarray(np.load(os.path.join(args.data_dir, name + ".npy"))[::sub, ::sub, ::sub])
        label = f"{name}[::{sub}]" if sub > 1 else name
        print(f"rd: {label} {vol.shape}", file=sys.stderr, flush=True)
        got = run_benchmark(vol, label, RD_RATIOS, archs=("auto",), baselines=RD_BASELINES,
                            query_points=RD_QUERY_POINTS, progress=_progress)
        for r in got:
            r["source"] = name
            r.pop("params", None)
        rows += got
        save_part("rd", {"machine": meta, "ratios": RD_RATIOS, "rows": rows})


def _progress(row: Dict[str, Any]) -> None:
    psnr = row.get("psnr_db")
    print(f"  {row['method']:>16} @{row['ratio_requested']}: "
          f"{'-' if psnr is None else f'{psnr:.2f} dB'} {row.get('note') or ''}",
          file=sys.stderr, flush=True)


def run_script(part: str, script: str, extra: Sequence[str],
               json_flag: Optional[str] = "--json") -> None:
    """Run ``benchmarks/<script>`` and store its JSON (``json_flag`` names the script's
    option for it) and its markdown on stdout, with this run's machine."""
    out = os.path.join(RESULTS, f"{part}.raw.json")
    os.makedirs(RESULTS, exist_ok=True)
    meta = machine()
    cmd = [sys.executable, os.path.join(HERE, script), *extra]
    if json_flag:
        cmd += [json_flag, out]
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    # A script that measured but whose acceptance failed (run_bricks --acceptance exits 1)
    # still wrote its JSON: that is a result; no JSON is a crash.
    if proc.returncode and not (json_flag and os.path.exists(out)):
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    data = None
    if json_flag:
        with open(out) as f:
            data = json.load(f)
        os.remove(out)
    save_part(part, {"machine": meta, "result": data, "markdown": proc.stdout})


@dataclasses.dataclass(frozen=True)
class ScriptPart:
    """A part whose script prints its own markdown table (stored and shown as printed)."""

    script: str
    args: Tuple[str, ...]
    title: str
    json_flag: Optional[str] = "--json"
    extra_option: Optional[str] = None     # the argparse dest of this part's extra arguments


SCRIPT_PARTS: Dict[str, ScriptPart] = {
    "reader": ScriptPart("run_numpy_reader.py", (), "Torch-free (numpy) reader against torch",
                         None),
    "bounded": ScriptPart("run_bounded.py", (), "Error-bounded mode: ratio at a fixed bound",
                          extra_option="bounded_args"),
    "rd_hybrid": ScriptPart("run_rd_hybrid.py", (),
                            "Hybrid rate allocation: model or pure predictor at each ratio",
                            extra_option="rd_hybrid_args"),
    "bounded_access": ScriptPart("run_bounded_access.py", ("--blocks", "64,16,12,8"),
                                 "Error-bounded random access"),
    "bquery": ScriptPart("run_bricked_query.py", (), "Bricked against single-model reads"),
    # Every 4th step encoded independently as the baseline: all 44 independent encodes
    # take about half an hour on 2 cores; the script scales their bytes and seconds.
    "series": ScriptPart("run_series.py", ("--baseline-every", "4"),
                         "Time series: one series encode against independent steps"),
    "masked": ScriptPart("run_masked.py", (), "Masked volumes: NaN regions as a lossless mask"),
    "fit_seeds": ScriptPart("run_fit_seeds.py", (),
                            "Encode time and PSNR over seeds: 128^3 at ratio 100"),
    # 4 of the 512^3 volume's 64 bricks.
    "large": ScriptPart("run_large.py", ("--size", "512", "--max-bricks", "4", "--largest",
                                         "--workers", "1,2", "--dask"),
                        "Out of core: 512^3 float32, memory of the encoding process tree "
                        "on its hardest bricks"),
    # The 1024^3 volume's 4 largest bricks of 512 (the full encode takes hours here).
    "large1024": ScriptPart("run_large.py", ("--size", "1024", "--max-bricks", "4", "--largest",
                                             "--workers", "1,2", "--dask"),
                            "Out of core: 1024^3 float32, memory of the encoding process tree "
                            "on its largest bricks"),
    "large1024_full": ScriptPart("run_large.py", ("--size", "1024", "--workers", "2",
                                                  "--progress"),
                                 "Out of core: the full 1024^3 float32 encode"),
}


def _run_script_part(name: str, args: argparse.Namespace) -> None:
    sp = SCRIPT_PARTS[name]
    extra = list(sp.args) + (getattr(args, sp.extra_option).split() if sp.extra_option else [])
    run_script(name, sp.script, extra, sp.json_flag)


PARTS: Dict[str, Callable[[argparse.Namespace], None]] = {
    "rd": run_rd,
    "speed": lambda a: run_script("speed", "run_speed.py", [], "--out"),
    "bricks": lambda a: run_script("bricks", "run_bricks.py", ["--acceptance"]),
    **{name: (lambda a, name=name: _run_script_part(name, a)) for name in SCRIPT_PARTS},
}


# ---------------------------------------------------------------------- rendering
def _f(x: Any, fmt: str = ".2f") -> str:
    return "–" if x is None else format(x, fmt)


def _heading(title: str, meta: Dict[str, Any]) -> str:
    return (f"### {title}\n\n{meta['date']}, commit `{meta['commit']}`, {meta['cpu']}, "
            f"{meta['cores']} cores, Python {meta['python']}, torch {meta['versions'].get('torch')}.\n")


def render_rd(part: Dict[str, Any]) -> str:
    rows = part["rows"]
    methods = ["neurvol-auto", "sz3", "sperr", "zfp", "downsample"]
    short = {"neurvol-auto": "neurvol"}
    head = "| volume | ratio | " + " | ".join(
        f"{short.get(m, m)} dB / max err" for m in methods) + " | best classical |"
    lines = [_heading("Rate–distortion: the default codec against the classical coders",
                      part["machine"]) + _note(part),
             "PSNR in dB over the data range / max abs error, at the same bytes (the whole "
             "`.nvol` file for neurvol; the compressed stream for the others). ZFP's fixed-rate "
             "mode cannot go below ~0.16 bits per value (–). **Bold**: the best in the row.\n",
             head, "|---|---" + "|---" * (len(methods) + 1) + "|"]
    by: Dict[Tuple[str, float], Dict[str, Dict[str, Any]]] = {}
    order: List[str] = []
    for r in rows:
        if r["volume"] not in order:
            order.append(r["volume"])
        by.setdefault((r["volume"], r["ratio_requested"]), {})[r["method"]] = r
    for vol in order:
        for ratio in part["ratios"]:
            cell = by.get((vol, ratio), {})
            scores = {m: cell[m]["psnr_db"] for m in methods
                      if m in cell and cell[m]["psnr_db"] is not None}
            best = max(scores, key=scores.get) if scores else None
            out = []
            for m in methods:
                r = cell.get(m)
                if r is None or r["psnr_db"] is None:
                    out.append("–")
                    continue
                txt = f"{r['psnr_db']:.2f} / {_f(r['max_abs_error'], '.3g')}"
                out.append(f"**{txt}**" if m == best else txt)
            classical = {m: s for m, s in scores.items() if m in ("sz3", "sperr", "zfp")}
            gap = ""
            if classical and "neurvol-auto" in scores:
                bm = max(classical, key=classical.get)
                gap = f"{bm} ({scores['neurvol-auto'] - classical[bm]:+.2f} dB)"
            lines.append(f"| {vol} | {ratio:g} | " + " | ".join(out) + f" | {gap} |")
    lines.append("\n`best classical`: the best of SZ3/SPERR/ZFP and neurvol's lead over it. "
                 "Picture: `docs/rate_distortion.png`.")
    return "\n".join(lines)


def render_speed(part: Dict[str, Any]) -> str:
    sys.path.insert(0, HERE)
    import run_speed
    return _heading("Speed and memory (`benchmarks/run_speed.py`)", part["machine"]) + "\n" + \
        run_speed.format_markdown(part["result"])


def render_bricks(part: Dict[str, Any]) -> str:
    sys.path.insert(0, HERE)
    import run_bricks
    data = part["result"]
    table = run_bricks.acceptance_markdown(argparse.Namespace(**data["args"]), data["rows"],
                                         when_and_where=False)
    return _heading("Bricked ensembles against one model at the same bytes "
                    "(`benchmarks/run_bricks.py --acceptance`)", part["machine"]) + \
        _note(part) + "\n" + table


def render_script_part(name: str, part: Dict[str, Any]) -> str:
    sp = SCRIPT_PARTS[name]
    return _heading(f"{sp.title} (`benchmarks/{sp.script}`)", part["machine"]) + _note(part) + \
        "\n" + part["markdown"]


def _note(part: Dict[str, Any]) -> str:
    return f"\n{part['note']}\n" if part.get("note") else ""


RENDERERS: Dict[str, Callable[[Dict[str, Any]], str]] = {
    "rd": render_rd, "speed": render_speed, "bricks": render_bricks,
    **{name: functools.partial(render_script_part, name) for name in SCRIPT_PARTS},
}


def plot_rd(part: Dict[str, Any]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vols: List[str] = []
    for r in part["rows"]:
        if r["volume"] not in vols:
            vols.append(r["volume"])
    cols = 4
    fig, axes = plt.subplots((len(vols) + cols - 1) // cols, cols, figsize=(16, 4 * ((len(vols) + cols - 1) // cols)))
    for ax, vol in zip(axes.flat, vols):
        # one colour per method in every panel, whichever methods a panel has
        for method, style, colour in (("neurvol-auto", "o-", "C0"), ("sz3", "s--", "C1"),
                                      ("sperr", "^--", "C2"), ("zfp", "v:", "C3"),
                                      ("downsample", "x:", "C4")):
            pts = sorted((r["ratio_achieved"], r["psnr_db"]) for r in part["rows"]
                         if r["volume"] == vol and r["method"] == method and r["psnr_db"] is not None)
            if pts:
                ax.plot(*zip(*pts), style, color=colour, label=method.replace("-auto", ""))
        ax.set_xscale("log")
        ax.set_title(vol, fontsize=10)
        ax.set_xlabel("compression ratio")
        ax.set_ylabel("PSNR dB")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(vols):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"neurvol vs classical coders at equal bytes ({part['machine']['date']}, "
                 f"commit {part['machine']['commit']})")
    fig.tight_layout()
    os.makedirs(os.path.dirname(RD_PLOT), exist_ok=True)
    fig.savefig(RD_PLOT, dpi=80)


def render() -> None:
    blocks = [BEGIN, "## Current results", "",
              "Regenerated by `python benchmarks/current.py` (see `benchmarks/README.md`); each "
              "table says when, where and at which commit it was measured. Quality is PSNR "
              "over the original's data range on every voxel, with the max abs error; ratio "
              "is native bytes over the whole file, header included. Everything below "
              "*History* is older and superseded where a table here measures the same thing.",
              ""]
    for name, fn in RENDERERS.items():
        part = load_part(name)
        if part is not None:
            blocks += [fn(part), ""]
        else:
            blocks += [f"### {name}\n\nNot yet measured by this command (`python benchmarks/current.py "
                       f"--run {name}`); the latest run of its script is under *History*.\n"]
    blocks.append(END)
    text = open(BENCHMARKS_MD).read()
    if BEGIN in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + "\n".join(blocks) + tail
    else:
        title, _, body = text.partition("\n")
        text = title + "\n\n" + "\n".join(blocks) + "\n\n# History\n" + body
    with open(BENCHMARKS_MD, "w") as f:
        f.write(text)
    rd = load_part("rd")
    if rd is not None:
        plot_rd(rd)


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="", help=f"parts to measure first, of {','.join(PARTS)}")
    ap.add_argument("--volumes", default="", help="rd: only these dev volumes (comma-separated stems)")
    ap.add_argument("--data-dir", default=DEFAULT_DATA)
    ap.add_argument("--rd-hybrid-args", default="",
                    help="rd_hybrid: arguments for run_rd_hybrid.py, e.g. '--ratios 10,20'")
    ap.add_argument("--bounded-args", default="",
                    help="bounded: options for run_bounded.py, e.g. '--methods pure,sz3,zfp,sperr'")
    ap.add_argument("--note", default="", help="a remark stored with the parts run now "
                    "(e.g. what else ran on the machine)")
    args = ap.parse_args(argv)
    for part in filter(None, args.run.split(",")):
        if part not in PARTS:
            ap.error(f"unknown part {part!r}; known: {', '.join(PARTS)}")
        PARTS[part](args)
        if args.note:
            stored = load_part(part)
            stored["note"] = args.note
            save_part(part, stored)
    render()


if __name__ == "__main__":
    main()
