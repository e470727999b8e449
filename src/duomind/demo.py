"""`duomind demo`: the whole pipeline in a few minutes on a laptop CPU.

synthetic task data -> BPE tokenizer -> SFT on fast and slow chats (optionally after pre-training on the
task corpus) -> answers to held-back problems, shown in a table. A second run reuses everything already
built and only shows the table. Within a few CPU minutes, fine-tuning from scratch beats spending part of
the budget on pre-training: the corpus's prompts are random numbers, unlearnable text that costs steps.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

DEMO_TASKS = ["add", "arith", "sequence", "word"]


def _answer(text: str) -> str:
    """The final answer of a reply: after </think> if the model reasoned, up to the end of the turn."""
    text = text.split("</think>")[-1]
    text = text.split("<|im_end|>")[0]
    return re.sub(r"\s+", " ", text).strip()


def build(out_dir: Path, pretrain_steps: int, sft_steps: int, n: int, threads: int | None) -> Path:
    """Make data, tokenizer and the trained model under out_dir; returns the final checkpoint."""
    from duomind.config import TrainConfig
    from duomind.tasks.cli import make
    from duomind.tokenizer import train_cli
    from duomind.train.loop import train

    data = out_dir / "data"
    if not (data / "sft.jsonl").is_file():
        make(out_dir=str(data), n=n, seed=0, tasks=DEMO_TASKS, difficulty=[1], heldout_fraction=0.02)
    tok = out_dir / "tokenizer"
    if not (tok / "tokenizer.json").is_file():
        train_cli(str(data / "corpus.txt"), out=str(tok), vocab_size=512)
    common = dict(model_preset="demo", seq_len=128, global_batch_size=32, micro_batch_size=32, save_every=10**6,
                  log_every=20, threads=threads, weight_decay=0.0)
    start = {"tokenizer": str(tok)}  # pretrain_steps=0: fine-tune a fresh model directly
    if pretrain_steps > 0:
        pre = train(TrainConfig(out_dir=str(out_dir / "pretrain"), mode="pretrain", data=str(data / "corpus.txt"),
                                tokenizer=str(tok), max_steps=pretrain_steps, lr=3e-3, min_lr=3e-4, warmup_steps=30,
                                **common))
        start = {"init_from": str(pre)}
    return train(TrainConfig(out_dir=str(out_dir / "sft"), mode="sft", data=str(data / "sft.jsonl"),
                             max_steps=sft_steps, lr=2e-3, min_lr=2e-4, warmup_steps=10, **start, **common))


def demo(out_dir: str = "runs/demo", pretrain_steps: int = 0, sft_steps: int = 1800, n: int = 12000,
         show: int = 12, threads: int | None = None) -> dict[str, float]:
    """Train a small model on the synthetic tasks and show it answering held-back problems.

    Args:
        out_dir: Where data, tokenizer, checkpoints and plots go; an existing demo there is reused.
        pretrain_steps: Pre-training steps on the task corpus (0: fine-tune a fresh model directly).
        sft_steps: Supervised fine-tuning steps on fast and slow chats.
        n: Synthetic records to generate.
        show: Held-back problems to show in the table (accuracy is over all of them).
        threads: torch threads (default: all cores).
    """
    from rich.console import Console
    from rich.table import Table

    from duomind.generate import generate
    from duomind.generate.cli import stop_ids
    from duomind.tasks import check_answer, read_tasks
    from duomind.tokenizer import chat_prompt, load_tokenizer
    from duomind.train.checkpoint import load_model

    start = time.perf_counter()
    out = Path(out_dir)
    final = build(out, pretrain_steps, sft_steps, n, threads)
    model, tok = load_model(final), load_tokenizer(final)
    heldout = read_tasks(out / "data" / "heldout.jsonl")
    results = {}
    for mode in ("fast", "slow"):
        prompts = [chat_prompt(tok, [{"role": "user", "content": t.prompt}], mode=mode) for t in heldout]
        replies = []
        for i in range(0, len(prompts), 32):
            replies += generate(model, prompts[i:i + 32], max_new_tokens=96, stop_tokens=stop_ids(tok))
        results[mode] = [_answer(tok.decode(r)) for r in replies]
    console = Console()
    table = Table(title=f"held-back problems ({final})", show_lines=False)
    for col in ("task", "lvl", "problem", "expected", "fast", "slow"):
        table.add_column(col, overflow="fold")
    for i, t in enumerate(heldout[:show]):
        marks = [("[green]" if check_answer(t, results[m][i]) else "[red]") + results[m][i] for m in ("fast", "slow")]
        table.add_row(t.task, str(t.difficulty), t.prompt, t.answer, *marks)
    console.print(table)
    acc = {m: sum(check_answer(t, a) for t, a in zip(heldout, results[m])) / len(heldout) for m in results}
    console.print(f"accuracy on {len(heldout)} held-back problems: fast {acc['fast']:.1%} · slow {acc['slow']:.1%}"
                  f"   (loss curves: {', '.join(str(p) for p in sorted(out.glob('*/loss.png')))}; "
                  f"{time.perf_counter() - start:.0f} s)")
    console.print("A ~1M-parameter model after a few minutes on a CPU: more steps (--pretrain_steps, --sft_steps) "
                  "trade time for accuracy; slow mode shows what thinking out loud buys.")
    return acc
