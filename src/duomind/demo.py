"""`duomind demo`: the embedded reasoner answers held-back problems in fast, slow and auto mode.

Loads the embedded default model (assets/duomind-reasoner, built by recipes/reasoner/default.yaml), answers
problems it never saw through the serving engine, one request at a time so that FIRP speculative decoding
runs, and shows per problem the answer, its correctness, the mode auto chose and the tokens spent; then
accuracy and tokens per mode, and slow-mode decoding speed with FIRP on and off.
"""

from __future__ import annotations

import queue
import re
import time
from pathlib import Path

from duomind.tokenizer import MODES


def _ask(engine, prompt: str, mode: str, max_tokens: int) -> dict:
    """One greedy request through the engine, waited for: answer, mode run, tokens, seconds, token ids."""
    from duomind.reasoner.control import RepairConfig, ThinkingControl
    from duomind.serve.engine import SamplingParams
    from duomind.tokenizer import chat_prompt, special_ids

    ids = chat_prompt(engine.tok, [{"role": "user", "content": prompt}], mode=mode)
    out: queue.Queue = queue.Queue()
    t0 = time.perf_counter()
    control = ThinkingControl(mode, special_ids(engine.tok), None, RepairConfig(), engine.think_threshold)
    engine.submit(ids, SamplingParams(max_tokens=max_tokens), control, out.put)
    content = []
    while True:
        d = out.get()
        content.append(d.content)
        if d.finish_reason:
            break
    if d.finish_reason == "error":
        raise RuntimeError(f"the engine failed on {prompt!r}: {d.error}")
    return {"answer": re.sub(r"\s+", " ", "".join(content)).strip(), "mode": d.mode, "tokens": d.completion_tokens,
            "seconds": time.perf_counter() - t0, "ids": d.token_ids}


def pick(tasks: list, per_level: int) -> list:
    """The first `per_level` problems of each difficulty level, levels in order."""
    chosen: dict[int, list] = {}
    for t in tasks:
        if len(chosen.setdefault(t.difficulty, [])) < per_level:
            chosen[t.difficulty].append(t)
    return [t for level in sorted(chosen) for t in chosen[level]]


def demo(checkpoint: str | None = None, problems: str | None = None, per_level: int = 4, max_tokens: int = 176,
         threads: int | None = None) -> dict:
    """Answer held-back problems with the embedded reasoner in fast, slow and auto mode (FIRP on).

    Args:
        checkpoint: A reasoner checkpoint (default: the embedded model in assets/duomind-reasoner).
        problems: Task records to answer (JSONL from `duomind data make`; default: the model's heldout.jsonl).
        per_level: Problems shown per difficulty level.
        max_tokens: Most new tokens per answer (thinking included).
        threads: torch threads (default: all cores).
    """
    import torch
    from rich.console import Console
    from rich.table import Table

    from duomind.serve.cli import load_engine
    from duomind.serve.engine import Engine
    from duomind.tasks import check_answer, read_tasks

    if threads:
        torch.set_num_threads(threads)
    console = Console()
    engine, path = load_engine(checkpoint, max_batch=1)
    source = Path(problems) if problems else path / "heldout.jsonl"
    if not source.is_file():
        raise FileNotFoundError(f"no problems to answer: {str(source)!r} does not exist; pass --problems FILE "
                                "(task records from `duomind data make`).")
    tasks = pick(read_tasks(source), per_level)
    firp = engine.speculation is not None
    console.print(f"[bold]{path}[/bold]: {len(tasks)} held-back problems, greedy, one request at a time"
                  f"{', FIRP speculative decoding on' if firp else ' (no FIRP predictors beside the model)'}")
    answers = {m: [_ask(engine, t.prompt, m, max_tokens) for t in tasks] for m in MODES}
    correct = {m: [check_answer(t, a["answer"]) for t, a in zip(tasks, answers[m])] for m in MODES}

    table = Table(title="held-back problems: answer (tokens); auto shows the mode it chose")
    for col in ("lvl", "problem", "expected", "fast", "slow", "auto"):
        table.add_column(col, overflow="fold")
    for i, t in enumerate(tasks):
        cells = []
        for m in MODES:
            a = answers[m][i]
            chose = f" {a['mode']}" if m == "auto" else ""
            cells.append(f"[{'green' if correct[m][i] else 'red'}]{a['answer'] or '-'}[/] ({a['tokens']}{chose})")
        table.add_row(str(t.difficulty), t.prompt, t.answer, *cells)
    console.print(table)

    summary = {m: {"accuracy": sum(correct[m]) / len(tasks), "mean_tokens": sum(a["tokens"] for a in answers[m]) / len(tasks)}
               for m in MODES}
    summary["auto"]["think_share"] = sum(a["mode"] == "slow" for a in answers["auto"]) / len(tasks)
    console.print("  ".join(f"{m}: {s['accuracy']:.0%} correct, {s['mean_tokens']:.0f} tokens" for m, s in summary.items())
                  + f"  (auto thought on {summary['auto']['think_share']:.0%})")
    if firp:
        plain = Engine(engine.model, engine.tok, max_batch=1)
        try:
            again = [_ask(plain, t.prompt, "slow", max_tokens) for t in tasks]
        finally:
            plain.close()
        tokens = sum(a["tokens"] for a in again)
        on = tokens / sum(a["seconds"] for a in answers["slow"])
        off = tokens / sum(a["seconds"] for a in again)
        same = all(a["ids"] == b["ids"] for a, b in zip(answers["slow"], again))
        summary["speed"] = {"firp_tokens_per_s": on, "plain_tokens_per_s": off, "speedup": on / off,
                            "equal_outputs": same}
        console.print(f"slow mode speed: FIRP {on:.0f} tokens/s, plain decoding {off:.0f} tokens/s ({on / off:.2f}x); "
                      f"identical outputs: {'yes' if same else 'NO'}")
    engine.close()
    console.print(f"More: `duomind chat` (terminal chat), `duomind serve` (OpenAI-compatible API), "
                  f"{path / 'README.md'} (model card).")
    return summary
