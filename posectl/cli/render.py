"""Rich output: training progress, epoch lines, result tables."""
from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


class TrainProgress:
    """Consumes the orchestrator's events: a progress bar per epoch and one line per finished epoch."""

    def __init__(self, epochs: int, header: str = ""):
        self.epochs, self.header = epochs, header
        self.progress = Progress(TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"),
                                 BarColumn(), MofNCompleteColumn(), TextColumn("steps"), TimeElapsedColumn(),
                                 console=console, transient=True)
        self.task = None

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def __call__(self, ev: dict) -> None:
        if ev["type"] == "connect":      # the header waits for the checks before Ray: a bad input stays one line
            if self.header:
                self.progress.console.print(self.header)
        elif ev["type"] == "step":
            if self.task is None:
                self.task = self.progress.add_task("train", total=ev["total"], epoch=ev["epoch"] + 1,
                                                   epochs=self.epochs)
            self.progress.update(self.task, completed=ev["done"], total=ev["total"], epoch=ev["epoch"] + 1)
        elif ev["type"] == "epoch":
            r = ev["row"]
            star = " [green]*best[/]" if ev["improved"] else ""
            rate = f"  {r['train_samples_per_s']:.0f} samples/s" if "train_samples_per_s" in r else ""
            self.progress.console.print(
                f"epoch {r['epoch']:>3}/{self.epochs}  train loss {r.get('train_loss_mm', float('nan')):7.2f} mm"
                f"  val MPJPE {r['val_mpjpe']:7.2f} mm  P-MPJPE {r['val_p_mpjpe']:7.2f} mm{rate}{star}")
            if self.task is not None:
                self.progress.reset(self.task)


def metrics_table(title: str, results: dict[str, dict[str, Any]]) -> Table:
    """Columns = splits; rows = the headline metrics."""
    t = Table(title=title, title_justify="left")
    t.add_column("metric")
    for split in results:
        t.add_column(split, justify="right")
    rows = [("MPJPE (P#1, per sample) mm", "mpjpe"), ("MPJPE (P#1, action-wise) mm", "mpjpe_action_avg"),
            ("P-MPJPE (P#2, per sample) mm", "p_mpjpe"), ("P-MPJPE (P#2, action-wise) mm", "p_mpjpe_action_avg"),
            ("N-MPJPE mm", "n_mpjpe"), ("PCK@150mm %", "pck150"), ("AUC %", "auc")]
    for label, key in rows:
        if any(key in r for r in results.values()):
            t.add_row(label, *(f"{r[key]:.2f}" if key in r else "-" for r in results.values()))
    return t


def per_action_table(per_action: dict[str, dict[str, float]], title: str) -> Table:
    t = Table(title=title, title_justify="left")
    for c in ("action", "MPJPE mm", "P-MPJPE mm", "frames"):
        t.add_column(c, justify="left" if c == "action" else "right")
    for action, m in per_action.items():
        t.add_row(action, f"{m['mpjpe']:.2f}", f"{m['p_mpjpe']:.2f}", str(m.get("n", "")))
    return t
