"""Plain-text tables of benchmark rows (``neurvol bench``, ``benchmarks/run_codec.py``)."""
from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

from .runner import _fmt

#: (row key, column header) of the short table ``neurvol bench`` prints.
TABLE_COLUMNS: Tuple[Tuple[str, str], ...] = (
    ("method", "method"), ("ratio_requested", "ratio asked"), ("ratio_achieved", "ratio"),
    ("psnr_db", "PSNR dB"), ("max_abs_error", "max error"), ("encode_s", "encode s"),
    ("decode_s", "decode s"),
)


def format_table(rows: Sequence[Dict[str, Any]],
                 columns: Sequence[Tuple[str, str]] = TABLE_COLUMNS) -> str:
    """Aligned text table of ``rows`` (numbers right-aligned); notes follow as footnotes."""
    head = [h for _, h in columns] + ["note"]
    body: List[List[str]] = []
    notes: List[str] = []
    for r in rows:
        cells = [_fmt(k, r.get(k)) for k, _ in columns]
        mark = ""
        if r.get("note"):
            notes.append(str(r["note"]))
            mark = f"[{len(notes)}]"
        body.append(cells + [mark])
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    lines = []
    for i, cells in enumerate([head] + body):
        lines.append("  ".join(c.ljust(w) if j == 0 or j == len(cells) - 1 else c.rjust(w)
                               for j, (c, w) in enumerate(zip(cells, widths))).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.extend(f"[{i}] {n}" for i, n in enumerate(notes, 1))
    return "\n".join(lines)
