"""One progress bar for all long work in DuoMind: count, rate, status text, elapsed time and ETA (rich)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

Advance = Callable[..., None]


@contextmanager
def progress_bar(label: str, total: int, enabled: bool = True, completed: int = 0, unit: str = "it",
                 transient: bool = False) -> Iterator[Advance]:
    """Yield `advance(n=1, info=None)`: move the bar n steps; `info` replaces the status text.

    Args:
        label: Shown at the left of the bar.
        total: Steps in all.
        enabled: False (or total 0) gives a no-op `advance`, for quiet runs and non-zero ranks.
        completed: Steps already done (a resumed run).
        unit: What a step is, for the rate column ("tok", "rec", ...).
        transient: Remove the bar when done.
    """
    if not enabled or total <= 0:
        yield lambda n=1, info=None: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    rate = TextColumn("{task.fields[rate]}", style="progress.data.speed")
    with Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), rate,
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                  transient=transient) as bar:
        task = bar.add_task(label, total=total, completed=completed, info="", rate="")

        def advance(n: int = 1, info: str | None = None) -> None:
            bar.update(task, advance=n)
            speed = bar.tasks[0].speed  # rich's windowed estimate; None until it has two samples
            fields = {"rate": f"{speed:,.1f} {unit}/s" if speed else ""}
            if info is not None:
                fields["info"] = info
            bar.update(task, **fields)

        yield advance
