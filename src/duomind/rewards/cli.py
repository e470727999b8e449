"""`duomind reward score` and `duomind reward serve`: thin verbs over `duomind.rewards`."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

from duomind.rewards.config import RewardConfig


def score(input: Path, output: Path, rewards: RewardConfig | None = None, workers: int = 2,
          stats: Path | None = None, progress: bool = True) -> None:
    """Score reward records (JSONL) with MARS: math verifier, code in a sandbox, LLM judge, format.

    Each output line is the input record plus reward, components, verdict and detail
    (see docs/rewards.md).

    Args:
        input: JSONL file of records {id, task, prompt, response, answer?, tests?, reference?, mode?}.
        output: JSONL file to write the scored records to.
        rewards: reward configuration (weights per task, normalisation, sandbox, judge).
        workers: worker processes for the verifiers and the sandbox.
        stats: JSON file of MARS running statistics: loaded if it exists, saved after scoring.
        progress: show a progress bar.
    """
    from rich.console import Console
    from rich.table import Table

    from duomind.rewards.batch import Scorer

    records = _read_jsonl(Path(input))
    with Scorer(rewards or RewardConfig(), workers=workers) as scorer:
        if stats is not None and Path(stats).is_file():
            scorer.mars.load_state_dict(json.loads(Path(stats).read_text()))
        results = scorer.score(records, progress=progress)
        if stats is not None:
            Path(stats).write_text(json.dumps(scorer.mars.state_dict(), indent=1))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    with tmp.open("w") as f:
        for r in results:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(output)  # a crash mid-write never leaves a half-written OUT behind

    table = Table(title=f"{len(results)} records -> {output}")
    for col in ("task", "records", "mean reward", "verdicts"):
        table.add_column(col)
    by_task: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        by_task[str(r.get("task"))].append(r)
    for task, rs in sorted(by_task.items()):
        verdicts = Counter(str(r["verdict"]) for r in rs)
        table.add_row(task, str(len(rs)), f"{sum(r['reward'] for r in rs) / len(rs):.3f}",
                      ", ".join(f"{k} {v}" for k, v in verdicts.most_common()))
    Console().print(table)


def serve(host: str = "127.0.0.1", port: int = 8765, rewards: RewardConfig | None = None, workers: int = 2,
          max_request_mb: float = 16.0, max_records: int = 4096) -> None:
    """Serve MARS reward scoring over HTTP (POST /score, GET /health, GET /stats) for remote RL workers.

    Args:
        host: address to bind (default loopback only; bind wider deliberately).
        port: TCP port.
        rewards: reward configuration (weights per task, normalisation, sandbox, judge).
        workers: worker processes for the verifiers and the sandbox.
        max_request_mb: largest request body accepted, in MiB (413 beyond).
        max_records: most records accepted in one request (413 beyond).
    """
    import uvicorn

    from duomind.rewards.batch import Scorer
    from duomind.rewards.service import create_app

    with Scorer(rewards or RewardConfig(), workers=workers) as scorer:
        app = create_app(scorer, int(max_request_mb * (1 << 20)), max_records)
        uvicorn.run(app, host=host, port=port, log_level="info")


def _read_jsonl(path: Path) -> list:
    if not path.is_file():
        raise SystemExit(f"duomind reward score: no such file {str(path)!r}; give a JSONL file of records")
    records = []
    with path.open() as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise SystemExit(f"{path}:{n}: not valid JSON ({e.msg}); every line must be one JSON record") from e
    return records
