"""`duomind data make`: write a synthetic task data directory."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table

from duomind.progress import progress_bar
from duomind.tasks.formats import corpus_text, sft_records
from duomind.tasks.io import write_jsonl, write_text
from duomind.tasks.record import LEVELS, Task
from duomind.tasks.registry import iter_generate, resolve_levels, resolve_tasks, split_heldout

_PROGRESS_FROM = 20_000  # below this generation takes well under a second: no bar


def _summary(records: list[Task], heldout: list[Task], out: Path) -> Table:
    counts = Counter((r.task, r.difficulty) for r in records)
    held = Counter(r.task for r in heldout)
    table = Table(title=f"{len(records)} records in {out}/ ({len(heldout)} held out)")
    table.add_column("task")
    for d in LEVELS:
        table.add_column(f"level {d}", justify="right")
    table.add_column("total", justify="right", style="bold")
    table.add_column("held out", justify="right")
    for name in dict.fromkeys(r.task for r in records):
        row = [counts[name, d] for d in LEVELS]
        table.add_row(name, *map(str, row), str(sum(row)), str(held[name]))
    return table


def make(
    out_dir: str = "data",
    n: int = 2000,
    seed: int = 0,
    tasks: list[str] | None = None,
    difficulty: list[int] | None = None,
    heldout_fraction: float = 0.05,
) -> None:
    """Write synthetic verifiable task data: all records, a held-out split, a pre-training corpus and SFT chats.

    Files written to OUT_DIR (each atomically): `tasks.jsonl` (all records), `heldout.jsonl` (held-back
    records, no prompt shared with training), `corpus.txt` (training records as plain and with-working
    text), `sft.jsonl` (fast and slow chats for the training records).

    Args:
        out_dir: Directory to write into (created if needed).
        n: Number of records, spread evenly over the tasks and difficulty levels.
        seed: Random seed; the same seed gives the same files on any machine.
        tasks: Tasks to include (default all): arith, add, mul, word, sequence, code.
        difficulty: Difficulty levels 1-5 to include (default all five, mixed).
        heldout_fraction: Fraction of distinct prompts held back for evaluation, in [0, 1).
    """
    names, levels = resolve_tasks(tasks), resolve_levels(difficulty)  # fail fast, before any work
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if not 0 <= heldout_fraction < 1:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    out = Path(out_dir)
    console = Console()
    stream = iter_generate(names, n, seed, levels)
    records = []
    with progress_bar("generating", n, enabled=n >= _PROGRESS_FROM, unit="rec", transient=True) as advance:
        for record in stream:
            records.append(record)
            advance()
    train, heldout = split_heldout(records, heldout_fraction, seed)
    written = [
        write_jsonl(out / "tasks.jsonl", records),
        write_jsonl(out / "heldout.jsonl", heldout),
        write_text(out / "corpus.txt", corpus_text(train, seed)),
        write_jsonl(out / "sft.jsonl", sft_records(train)),
    ]
    console.print(_summary(records, heldout, out))
    console.print("wrote " + ", ".join(str(p) for p in written))
