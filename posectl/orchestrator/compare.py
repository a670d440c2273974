"""`posectl compare`: one leaderboard of runs of any methods, each row with the protocol it was measured
under; rows measured under another protocol than the first are flagged (and refused with `strict`).

A run directory's test metrics come from its results.json (posectl train); an exported search trial
(`posectl trials best --export`, which never saw the test split) is evaluated here on its run's test
data with its run's frame stride, as the end of `posectl train` would.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from posectl.errors import PosectlError
from posectl.orchestrator.experiment import Experiment

METRICS = ("mpjpe", "p_mpjpe", "n_mpjpe", "pck150", "auc", "mpjpe_action_avg")


@dataclass
class Row:
    name: str
    method: str
    metrics: dict[str, Any]
    protocol: dict[str, Any]          # the protocol string, the test split and the frame stride
    source: str                       # "results.json" or "evaluated" (an exported trial)
    per_action: dict[str, dict] = field(default_factory=dict)
    differs: bool = False             # measured under another protocol than the first row


def find_runs(paths: list[str | Path] | None = None, runs_dir: str | Path | None = None) -> list[Path]:
    """Run directories named, or every run directory under `runs_dir` (newest last)."""
    if paths:
        out = [Path(p) for p in paths]
    elif runs_dir is not None:
        if not Path(runs_dir).is_dir():
            raise PosectlError(f"--runs-dir {runs_dir}: no such folder")
        out = sorted((p.parent for p in Path(runs_dir).glob("*/config.yaml")), key=lambda p: p.stat().st_mtime)
    else:
        raise PosectlError("name run directories, or --runs-dir")
    for p in out:
        if not p.exists():
            raise PosectlError(f"{p}: no such run directory")
        if not Experiment(p).exists():
            raise PosectlError(f"{p}: not a posectl run directory (no config.yaml)")
    if not out:
        raise PosectlError(f"no run directories under {runs_dir}")
    return out


def load_row(path: Path) -> Row:
    exp = Experiment(path)
    doc = exp.read_config()
    method = doc["method"]
    res = exp.results()
    if res and res.get("test"):
        test, source = res["test"], "results.json"
        split, stride = res["split_names"]["test"], res.get("eval_stride", 1)
    elif (exp.checkpoints / "best.pt").is_file():     # an exported trial: test it now, as its run would have
        from posectl.orchestrator.evaluate import evaluate_checkpoint
        stride = int(doc["config"].get("data", {}).get("eval_stride", 1))
        ev = evaluate_checkpoint(exp.checkpoints / "best.pt", stride=stride)
        test, source, split = ev["metrics"], "evaluated", ev["split"]
    else:
        raise PosectlError(f"{path}: no test results and no checkpoints/best.pt to evaluate")
    protocol = {"protocol": test.get("protocol", ""), "split": split, "stride": stride}
    return Row(exp.name, method, {k: test[k] for k in METRICS if isinstance(test.get(k), (int, float))},
               protocol, source, test.get("per_action") or {})


def compare(paths: list[str | Path] | None = None, runs_dir: str | Path | None = None, strict: bool = False,
            sort: str = "mpjpe") -> list[Row]:
    """Rows sorted by `sort` (lower first; pck150 and auc higher first), each flagged when its protocol
    differs from the first row's; with `strict`, such a row is an error."""
    if sort not in METRICS:
        raise PosectlError(f"--sort: one of {', '.join(METRICS)}, got '{sort}'")
    rows = [load_row(p) for p in find_runs(paths, runs_dir)]
    first = rows[0].protocol
    for r in rows:
        r.differs = r.protocol != first
    odd = [r.name for r in rows if r.differs]
    if strict and odd:
        raise PosectlError(f"--strict: {', '.join(odd)} measured under another protocol than {rows[0].name} "
                           f"({first['protocol']}; split {first['split']}, every {first['stride']} frame(s))")
    higher = sort in ("pck150", "auc")
    rows.sort(key=lambda r: (r.metrics.get(sort) is None, -r.metrics.get(sort, 0) if higher else r.metrics.get(sort, 0)))
    return rows


def render(rows: list[Row], fmt: str) -> str:
    """markdown, csv or json text of the leaderboard (the rich table is the CLI's)."""
    cols = [m for m in METRICS if any(m in r.metrics for r in rows)]
    if fmt == "json":
        return json.dumps([{"run": r.name, "method": r.method, **r.metrics, "protocol": r.protocol,
                            "source": r.source, "differs": r.differs} for r in rows], indent=1)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["rank", "run", "method", *cols, "protocol", "split", "stride", "differs"])
        for i, r in enumerate(rows, 1):
            w.writerow([i, r.name, r.method, *(f"{r.metrics[c]:.2f}" if c in r.metrics else "" for c in cols),
                        r.protocol["protocol"], r.protocol["split"], r.protocol["stride"], int(r.differs)])
        return buf.getvalue()
    if fmt == "markdown":
        lines = ["| # | run | method | " + " | ".join(cols) + " | protocol |",
                 "|---|---|---|" + "---|" * len(cols) + "---|"]
        for i, r in enumerate(rows, 1):
            flag = " **(other protocol)**" if r.differs else ""
            lines.append(f"| {i} | {r.name} | {r.method} | "
                         + " | ".join(f"{r.metrics[c]:.2f}" if c in r.metrics else "" for c in cols)
                         + f" | {r.protocol['protocol']}; {r.protocol['split']}{flag} |")
        return "\n".join(lines) + "\n"
    raise PosectlError(f"--format: table, markdown, csv or json, got '{fmt}'")


def plot(rows: list[Row], out: str | Path) -> Path:
    """One bar group per run: MPJPE and P-MPJPE (mm); runs under another protocol hatched."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    names = [r.name for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(rows) + 2), 3.8))
    for k, (metric, label) in enumerate((("mpjpe", "MPJPE"), ("p_mpjpe", "P-MPJPE"))):
        vals = [r.metrics.get(metric, np.nan) for r in rows]
        bars = ax.bar(x + (k - 0.5) * 0.38, vals, 0.38, label=label)
        for b, r in zip(bars, rows):
            if r.differs:
                b.set_hatch("//")
    ax.set_xticks(x, names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("mm (test split)")
    ax.set_title("posectl compare" + (" (hatched: another protocol)" if any(r.differs for r in rows) else ""),
                 fontsize=10)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
