"""The task registry, deterministic generation and the held-out split."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace

from duomind.tasks.arithmetic import add, arith, mul
from duomind.tasks.coding import code
from duomind.tasks.record import LEVELS, Task
from duomind.tasks.sequence import sequence
from duomind.tasks.word import word

Generator = Callable[[random.Random, int], Task]

TASKS: dict[str, Generator] = {}


def register(name: str, generator: Generator) -> Generator:
    """Add a generator `(rng, difficulty) -> Task` under `name`; names are unique."""
    if name in TASKS:
        raise ValueError(
            f"task {name!r} is already registered (by {TASKS[name].__module__}); pick another name"
        )
    TASKS[name] = generator
    return generator


for _name, _fn in (
    ("arith", arith),
    ("add", add),
    ("mul", mul),
    ("word", word),
    ("sequence", sequence),
    ("code", code),
):
    register(_name, _fn)


def resolve_tasks(task: str | Sequence[str] | None) -> list[str]:
    """Task names to generate: one name, a list, or None for all; unknown names list the known ones."""
    if task is None:
        names = list(TASKS)
    else:
        names = [task] if isinstance(task, str) else list(task)
    unknown = [t for t in names if t not in TASKS]
    if unknown or not names:
        what = f"unknown task {', '.join(map(repr, unknown))}" if unknown else "no task given"
        raise ValueError(f"{what}; known tasks: {', '.join(TASKS)}")
    return names


def resolve_levels(difficulty: int | Sequence[int] | None) -> list[int]:
    """Difficulty levels: one level, a list, or None for all five mixed."""
    if difficulty is None:
        levels = list(LEVELS)
    else:
        levels = [difficulty] if isinstance(difficulty, int) else list(difficulty)
    bad = [d for d in levels if isinstance(d, bool) or d not in LEVELS]
    if bad or not levels:
        raise ValueError(f"difficulty must be an integer from 1 to 5 (or none for all), got {bad or levels}")
    return levels


def iter_generate(
    task: str | Sequence[str] | None = None,
    n: int = 100,
    seed: int = 0,
    difficulty: int | Sequence[int] | None = None,
) -> Iterator[Task]:
    """Yield `n` tasks; the same arguments give the same tasks on any machine.

    Tasks and levels cycle in a fixed order (so every task x level cell gets an even share) and all
    randomness comes from one `random.Random(seed)`.

    Args:
        task: A task name, a list of names, or None for every registered task.
        n: Number of records.
        seed: Random seed; ids are `{task}-{seed}-{index}`.
        difficulty: A level 1-5, a list of levels, or None for all five mixed.
    """
    names, levels = resolve_tasks(task), resolve_levels(difficulty)  # checked now, not at first next()
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return _stream(names, n, seed, levels)


def _stream(names: list[str], n: int, seed: int, levels: list[int]) -> Iterator[Task]:
    rng = random.Random(seed)
    for i in range(n):
        name, level = names[i % len(names)], levels[(i // len(names)) % len(levels)]
        yield replace(TASKS[name](rng, level), id=f"{name}-{seed}-{i}")


def generate(
    task: str | Sequence[str] | None = None,
    n: int = 100,
    seed: int = 0,
    difficulty: int | Sequence[int] | None = None,
) -> list[Task]:
    """`n` deterministic tasks as a list; see `iter_generate` for the arguments."""
    return list(iter_generate(task, n, seed, difficulty))


def split_heldout(records: Iterable[Task], fraction: float, seed: int = 0) -> tuple[list[Task], list[Task]]:
    """Split into (train, heldout) with no prompt in both.

    About `fraction` of the distinct prompts are held back, spread evenly over the task x level cells.
    Held-out records are de-duplicated by prompt; train keeps every record whose prompt is not held out.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"heldout fraction must be in [0, 1), got {fraction}")
    records = list(records)
    cells: dict[tuple[str, int], list[str]] = {}
    seen: set[str] = set()
    for r in records:
        if r.prompt not in seen:
            seen.add(r.prompt)
            cells.setdefault((r.task, r.difficulty), []).append(r.prompt)
    rng = random.Random(seed)
    shuffled = [rng.sample(prompts, len(prompts)) for _, prompts in sorted(cells.items())]
    # Deal round-robin over the cells (in a random order each round) so every cell gets its share.
    order = []
    for layer in itertools.zip_longest(*shuffled):
        present = [p for p in layer if p is not None]
        order += rng.sample(present, len(present))
    k = max(1, round(fraction * len(order))) if fraction > 0 and len(order) > 1 else 0
    held = set(order[:k])
    train = [r for r in records if r.prompt not in held]
    heldout, taken = [], set()
    for r in records:
        if r.prompt in held and r.prompt not in taken:
            taken.add(r.prompt)
            heldout.append(r)
    return train, heldout
