"""`duomind speculate train|bench`: train FIRP predictors / Medusa heads beside a checkpoint; compare drafters."""

from __future__ import annotations

import time
from pathlib import Path


def make_drafter(model, method: str, predictors: str | None = None, draft: str | None = None, k: int | None = None,
                 tree_width: int = 1, tree_budget: int | None = None):
    """A drafter by name: firp | medusa (trained predictors), lookup (prompt lookup), draft (a draft model)."""
    from duomind.generate.drafters import DraftModel, PromptLookup, predictor_drafter

    if method in ("firp", "medusa"):
        if predictors is None:
            raise ValueError(f"--speculative {method} needs --predictors DIR (from `duomind speculate train`).")
        drafter = predictor_drafter(model, predictors, k=k, width=tree_width, budget=tree_budget)
        if type(drafter).__name__.lower() != f"{method}drafter":
            raise ValueError(f"{predictors!r} holds {type(drafter).__name__[:-7]} predictors, not {method}; pass "
                             "the matching --speculative or directory.")
        return drafter
    if method == "lookup":
        return PromptLookup(k=k or 8)
    if method == "draft":
        if draft is None:
            raise ValueError("--speculative draft needs --draft CKPT (a small model with the same tokenizer).")
        from duomind.train.checkpoint import load_model

        small = load_model(draft)
        if small.config.vocab_size != model.config.vocab_size:
            raise ValueError(f"the draft model's vocabulary ({small.config.vocab_size}) differs from the model's "
                             f"({model.config.vocab_size}); it must share the tokenizer.")
        return DraftModel(small, k=k or 4)
    raise ValueError(f"unknown speculative method {method!r}; use firp, medusa, lookup or draft.")


def _training_data(ckpt: Path) -> str:
    """The corpus a checkpoint was trained on, from its run's train_config.yaml."""
    import yaml

    for cfg in (ckpt / "train_config.yaml", ckpt.parent / "train_config.yaml"):
        if cfg.is_file():
            data = (yaml.safe_load(cfg.read_text()) or {}).get("data")
            if data and Path(data).is_file():
                return data
    raise ValueError(f"no --data given and no training corpus recorded beside {str(ckpt)!r}; pass --data CORPUS "
                     "(text the model was trained on, .txt or .jsonl).")


def train_cli(checkpoint: str, out: str, data: str | None = None, kind: str = "firp", layer: int | None = None, k: int = 4,
              steps: int = 300, batch_size: int = 8, seq_len: int = 128, sources: int = 32, lr: float = 2e-3,
              mse_weight: float = 1.0, seed: int = 0, threads: int | None = None) -> str:
    """Train FIRP predictors (or Medusa-style heads) for a checkpoint, base model frozen.

    Args:
        checkpoint: The base model (a run directory or a checkpoint).
        out: Where to save drafter.safetensors + drafter.json (e.g. beside the checkpoint: CKPT/firp).
        data: Training text (.txt documents or .jsonl with "text"); default: the corpus the checkpoint's run
            was trained on (its train_config.yaml).
        kind: firp or medusa.
        layer: FIRP's intermediate layer l (1 .. L-1; default: three quarters of the depth).
        k: Draft positions (future tokens predicted per step).
        steps: Optimizer steps.
        batch_size: Windows per step.
        seq_len: Tokens per window.
        sources: Positions per window that draft (FIRP's upper-layer pass grows with them).
        lr: Peak learning rate (cosine decay).
        mse_weight: Weight of FIRP's hidden-state MSE next to the draft cross-entropy.
        seed: Data order seed.
        threads: torch threads.
    """
    import torch

    from duomind.generate.predictors import build, save_predictors
    from duomind.generate.spec_train import hit_rates, token_windows, train_predictors
    from duomind.tokenizer import load_tokenizer
    from duomind.train.checkpoint import load_model, resolve_checkpoint

    if threads:
        torch.set_num_threads(threads)
    ckpt = resolve_checkpoint(checkpoint)
    model, tok = load_model(ckpt), load_tokenizer(ckpt)
    data = data or _training_data(ckpt)
    if kind == "firp" and layer is None:
        layer = max(1, (3 * model.config.num_hidden_layers) // 4)
    module = build(model, kind, k, layer)
    windows = token_windows(tok, data, seq_len)
    held = max(1, min(32, len(windows) // 10))
    t0 = time.perf_counter()
    last = train_predictors(model, [module], windows[held:] if len(windows) > held else windows, steps=steps,
                            batch_size=batch_size, sources=sources, lr=lr, mse_weight=mse_weight, seed=seed)[0]
    hit = hit_rates(model, module, windows[:held])
    path = save_predictors(module, model, out, {"hit": hit, "final_loss": last,
                                                "train_seconds": time.perf_counter() - t0, "base": str(ckpt)})
    print(f"saved {kind} predictors (k={k}{f', l={layer}' if kind == 'firp' else ''}) to {path}")
    print("top-1 agreement with the model's greedy token per draft position: "
          + ", ".join(f"{h[0]:.2f}" for h in hit))
    return str(path)


def bench_cli(checkpoint: str, predictors: list[str] | None = None, draft: str | None = None,
              prompt: list[str] | None = None, n_prompts: int = 6, max_new_tokens: int = 64, k: int | None = None,
              tree_width: int = 3, tree_budget: int = 10, repeats: int = 3, threads: int | None = None) -> dict:
    """Compare speculative methods on one model: tokens/s, speedup, mean accepted length, acceptance per position.

    Args:
        checkpoint: The base model.
        predictors: FIRP / Medusa predictor directories (each benchmarked as a chain and as a tree).
        draft: A draft model checkpoint (same tokenizer) for the draft-model method.
        prompt: Prompts (default: math word problems from the task generator, `Q: ...\\nWork:`).
        n_prompts: How many generated prompts when none are given.
        max_new_tokens: Tokens per prompt (batch 1, greedy).
        k: Draft length (default: the predictors' k; 4 for the draft model; 8 for prompt lookup).
        tree_width: Candidates per position in the tree variants.
        tree_budget: Nodes per tree.
        repeats: Timed rounds (methods interleaved, first one rotated).
        threads: torch threads.
    """
    import torch
    from rich.console import Console
    from rich.table import Table

    from duomind.generate import generate
    from duomind.generate.predictors import read_meta
    from duomind.generate.speculative import Stats, speculative_generate
    from duomind.tokenizer import load_tokenizer
    from duomind.train.checkpoint import load_model, resolve_checkpoint

    if threads:
        torch.set_num_threads(threads)
    ckpt = resolve_checkpoint(checkpoint)
    model, tok = load_model(ckpt), load_tokenizer(ckpt)
    if not prompt:
        from duomind.tasks import generate as tasks

        prompt = [f"Q: {t.prompt}\nWork:" for t in tasks("word", n=n_prompts, seed=1234)]
    ids = [tok.encode(p) for p in prompt]
    makers = {"lookup": lambda: make_drafter(model, "lookup", k=k)}
    for d in predictors or []:
        kind = read_meta(d)["kind"]
        name = f"{kind}:{Path(d).name}"
        makers[f"{name} chain"] = lambda d=d, kind=kind: make_drafter(model, kind, d, k=k)
        makers[f"{name} tree"] = lambda d=d, kind=kind: make_drafter(model, kind, d, k=k, tree_width=tree_width,
                                                                      tree_budget=tree_budget)
    if draft:
        makers["draft model"] = lambda: make_drafter(model, "draft", draft=draft, k=k)
    for make in makers.values():
        make()  # bad input fails before any timing
    reference = [generate(model, [p], max_new_tokens=max_new_tokens)[0] for p in ids]
    runs = {"plain": lambda st: [generate(model, [p], max_new_tokens=max_new_tokens)[0] for p in ids]}
    for name, make in makers.items():
        runs[name] = lambda st, make=make: [speculative_generate(model, p, make(), max_new_tokens, stats=st) for p in ids]
    stats = {name: Stats() for name in runs}
    equal = {name: run(stats[name]) == reference for name, run in runs.items()}
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            t0 = time.perf_counter()
            runs[name](Stats())
            times[name].append(time.perf_counter() - t0)
    tokens = sum(len(o) for o in reference)
    median = {name: sorted(t)[len(t) // 2] for name, t in times.items()}
    table = Table(title=f"speculative decoding, batch 1, greedy, {len(ids)} prompts x {max_new_tokens} tokens")
    for col in ("method", "tokens/s", "speedup", "mean accepted", "acceptance per position", "equal"):
        table.add_column(col)
    result = {}
    for name in runs:
        st = stats[name]
        row = {"tokens_per_s": tokens / median[name], "speedup": median["plain"] / median[name],
               "mean_accepted_length": st.mean_accepted_length if st.steps else None,
               "acceptance_per_position": st.acceptance_per_position, "equal_to_plain": equal[name]}
        result[name] = row
        table.add_row(name, f"{row['tokens_per_s']:.1f}", f"{row['speedup']:.2f}x",
                      "-" if row["mean_accepted_length"] is None else f"{row['mean_accepted_length']:.2f}",
                      " ".join(f"{a:.2f}" for a in row["acceptance_per_position"]), "yes" if equal[name] else "NO")
    Console().print(table)
    return result
