"""The Train tab's training health: every measured snapshot as a table with the recommended one marked, and a
warning when training has gone past it.

``hypernet.train.health`` measures and judges; this only presents what the run reports in its live progress (the
``training`` object of ``/progress``: ``health`` rows, ``recommended_step``, ``overcooked``, ``health_verdict``).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import Any

HEADERS = ("", "step", "snapshot", "validation loss", "style effect", "fidelity", "saturation", "high-frequency",
           "clipping", "distorted")
FIGURES = (("validation_loss", 5), ("style", 3), ("fidelity", 3), ("saturation", 3), ("high_frequency", 3),
           ("clipping", 3))  # the row's key, significant digits shown
RECOMMENDED = "★ recommended"
STYLE = ("<style>#train_health table{border-collapse:collapse;width:100%;font-size:0.9em}"
         "#train_health th,#train_health td{padding:2px 8px;text-align:right;border-bottom:1px solid #8884}"
         "#train_health td:first-child,#train_health td:nth-child(3),#train_health td:last-child,"
         "#train_health th:first-child,#train_health th:nth-child(3),#train_health th:last-child{text-align:left}"
         "#train_health td:first-child{white-space:nowrap}"
         "#train_health tr.hn-best{font-weight:bold;background:#f9731633}"
         "#train_health tr.hn-cooked td:last-child{color:#dc2626}</style>")


def _figure(value: Any, digits: int) -> str:
    if value in (None, ""):
        return ""
    try:
        return f"{float(value):.{digits}g}"
    except (TypeError, ValueError):
        return str(value)


def health_table(rows: Sequence[Mapping[str, Any]], recommended_step: int | None) -> str:
    """An HTML table of the measurements (``SnapshotHealth.row()``s, the start first) with the recommended
    snapshot's row marked; empty when nothing has been measured."""
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in HEADERS)
    body = []
    for row in rows:
        snapshot = str(row.get("snapshot") or "")
        best = bool(snapshot) and row.get("step") == recommended_step
        cells = [RECOMMENDED if best else "", str(row.get("step", "")),
                 PurePath(snapshot).name if snapshot else "start (the network before this run)",
                 *(_figure(row.get(key), digits) for key, digits in FIGURES), str(row.get("distorted") or "")]
        kind = "hn-best" if best else "hn-cooked" if row.get("distorted") else ""
        body.append(f'<tr class="{kind}">' + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return f"{STYLE}<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def health_note(live: Mapping[str, Any], stopped: str | None) -> str:
    """What the figures mean for the user, as Markdown: the recommendation, and a warning when training went past
    it (``stopped``: how the run ended, None while it runs). Empty before the first snapshot is measured."""
    rows = live.get("health") or []
    verdict = str(live.get("health_verdict") or "")
    if len(rows) < 2 or not verdict:  # only the start so far: nothing to recommend or warn about
        return ""
    step = live.get("recommended_step")
    sentence = verdict[:1].upper() + verdict[1:]
    if stopped == "overcooked":
        if step is None:
            return (f"**⚠ Over-cooked from the first snapshot: training stopped** (Stop when over-cooked), and the "
                    f"network keeps the weights training started from; train again with a lower learning rate. "
                    f"{sentence}")
        return (f"**⚠ Over-cooked: training stopped** (Stop when over-cooked) and restored the recommended snapshot, "
                f"step {step}, as the final network. {sentence}")
    if not live.get("overcooked"):
        return sentence
    if step is None:
        return (f"**⚠ Over-cooked from the first snapshot:** no snapshot of this run is worth keeping; train again "
                f"with a lower learning rate. {sentence}")
    path = next((str(r.get("snapshot")) for r in rows if r.get("step") == step and r.get("snapshot")), "")
    where = f" (`{PurePath(path).name}` in the run's log folder)" if path else ""
    running = " Training goes on until it ends or you interrupt it." if stopped is None else ""
    return (f"**⚠ Over-cooked: training has gone past its best snapshot.** Keep the step {step} snapshot{where} "
            f"rather than the final network, or train again with a lower learning rate (turn on Stop when "
            f"over-cooked to stop and keep it automatically).{running} {sentence}")
