"""Metrics: one JSON object per line in metrics.jsonl, and a loss-curve PNG."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


class MetricsLog:
    """Append-only JSONL log; a resumed run keeps appending to the same file."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled

    def write(self, **row: Any) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")

    def rows(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def plot_loss(rows: list[dict], out: Path, title: str = "training loss") -> Path | None:
    """Plot train (and eval) loss against step; returns the PNG path, or None without data."""
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r and math.isfinite(r["loss"])]
    if not train:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    last = {}
    for step, loss in train:  # a resumed run may repeat steps: keep the latest value
        last[step] = loss
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(list(last), list(last.values()), label="train", lw=1)
    evals = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval", ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return Path(out)
