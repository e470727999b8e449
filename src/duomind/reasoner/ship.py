"""Package a trained reasoner as a self-contained model directory (the embedded default model).

The directory holds what serving and the demo need and nothing else: weights (safetensors, no optimizer
state), config, tokenizer and chat template, FIRP predictors in `predictors/`, auto mode's calibrated think
threshold in `router.json` (duomind.reasoner.router), the held-back problems in
`heldout.jsonl` (never trained on; `duomind demo` answers them) and a model card (`README.md`) with the data,
the recipe and the numbers measured on it. It is written to a temporary directory, sealed with a COMPLETE
marker and swapped in by rename, so a failed ship never leaves half a model where the previous one was.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from duomind.train.checkpoint import MARKER, _fsync_dir, seal


def ship(checkpoint: str | Path, dest: str | Path, report: dict[str, Any], predictors: Path | None = None,
         heldout: Path | None = None, router: Path | None = None) -> Path:
    """Write `checkpoint` (+ predictors, held-back problems, router, model card from `report`) to `dest` atomically."""
    from duomind.tokenizer import load_tokenizer
    from duomind.train.checkpoint import load_model

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    model, tok = load_model(checkpoint), load_tokenizer(checkpoint)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".tmp-{dest.name}-"))
    try:
        os.chmod(tmp, 0o755)  # a model directory others may read, not mkdtemp's private 0700
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        if predictors is not None:
            shutil.copytree(predictors, tmp / "predictors")
        if heldout is not None:
            shutil.copyfile(heldout, tmp / "heldout.jsonl")
        if router is not None:
            shutil.copyfile(router, tmp / "router.json")
        (tmp / "README.md").write_text(model_card(model, report))
        for f in tmp.rglob("*"):
            os.chmod(f, 0o755 if f.is_dir() else 0o644)
        seal(tmp, {"source": str(checkpoint)})
        old = None
        if dest.exists():
            old = dest.with_name(f".old-{dest.name}-{tmp.name[-8:]}")
            dest.rename(old)
        tmp.rename(dest)
        _fsync_dir(dest.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def is_shipped(path: str | Path) -> bool:
    """True for a complete shipped model directory."""
    return (Path(path) / MARKER).is_file() and (Path(path) / "config.json").is_file()


def _pct(x: float) -> str:
    return f"{x:.0%}"


def model_card(model, report: dict[str, Any]) -> str:
    """The model card: what the model is, its data and recipe, and the numbers measured on held-back problems."""
    cfg, c = model.config, report["config"]
    params = sum(p.numel() for p in model.parameters())
    ev = report["eval"]
    levels = sorted(ev["slow"]["by_difficulty"], key=int)
    rows = [f"| {m} | {_pct(ev[m]['accuracy'])} | {ev[m]['mean_tokens']:.1f} | "
            + " | ".join(f"{_pct(ev[m]['by_difficulty'][k])} / {ev[m]['tokens_by_difficulty'][k]:.0f}" for k in levels)
            + f" | {_pct(ev[m]['think_share'])} |" for m in ev]
    head = "| mode | accuracy | tokens | " + " | ".join(f"level {k} (acc / tokens)" for k in levels) + " | thinks |"
    lines = [
        "# duomind-reasoner (embedded default model)",
        "",
        "A dual-system reasoner in the Pangu Embedded style (arXiv 2505.22375, "
        + ("Stages 1 and 2" if report.get("stage1") else "Stage 2") + "): one model that answers",
        "directly (`fast`), thinks first (`slow`), or decides with its first token (`auto`). It is tiny and trained",
        "only on DuoMind's synthetic verifiable tasks, on a 2-core CPU: it exists so that `make demo`, `duomind serve`",
        "and `duomind chat` work out of the box and so every technique has a real model to run on. It is not a",
        "general assistant.",
        "",
        "## Model",
        f"- DuoMind decoder, {params / 1e6:.2f}M parameters: {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
        f"{cfg.num_attention_heads} query / {cfg.num_key_value_heads} KV heads, vocabulary {cfg.vocab_size}, "
        f"context {cfg.max_position_embeddings}, norm style `{cfg.norm_style}`.",
        "- FIRP predictors in `predictors/` (speculative decoding from predicted future hidden states); the serving",
        "  engine uses them when a single greedy request runs." if "firp" in report else "- No FIRP predictors.",
        "",
        "## Data",
        f"- {c['n']} synthetic problems (`duomind data make`): tasks {', '.join(c['tasks'])}; difficulty levels "
        f"{', '.join(map(str, c['difficulty']))}; {c['heldout_fraction']:.0%} held back (`heldout.jsonl`, never "
        "trained on).",
        "- Every problem as a fast chat (the answer) and a slow chat (`<think>` steps `</think>` answer).",
        f"- Auto labels: {_label_rule(c)} "
        f"Fast share: {_pct(report['labels']['fast_share'])} "
        f"(by level: {', '.join(f'{k}: {_pct(v)}' for k, v in report['labels']['fast_share_by_difficulty'].items())}).",
        "",
        "## Recipe",
        "`duomind reasoner train` (duomind.reasoner.dual): "
        + " -> ".join(_steps(c, report.get("stage1") or {}, report.get("router")))
        + ". Full settings:",
        "",
        "```yaml",
        yaml.safe_dump({k: v for k, v in c.items() if k not in ("out_dir", "ship_to", "progress", "threads")},
                       sort_keys=False, default_flow_style=None, width=100).strip(),
        "```",
        "",
        f"## Measured on {ev['slow']['n']} held-back problems (greedy)",
        "",
        head,
        "|" + "---|" * (4 + len(levels)),
        *rows,
    ]
    if report.get("router") and "auto_argmax" in report:
        a, r = report["auto_argmax"], report["router"]
        lines += ["", f"Auto thinks when P(`<think>`) >= {r['think_threshold']:.3f} (`router.json`); deciding by its "
                      f"argmax instead it scores {_pct(a['accuracy'])} with {a['mean_tokens']:.1f} tokens, thinking on "
                      f"{_pct(a['think_share'])}."]
    if "firp" in report:
        f = report["firp"]
        lines += ["", f"FIRP, slow mode, batch 1, greedy, {f['prompts']} held-back prompts: {f['firp_tokens_per_s']:.0f} "
                      f"tokens/s vs {f['plain_tokens_per_s']:.0f} plain ({f['speedup']:.2f}x), mean accepted length "
                      f"{f['mean_accepted_length']:.2f}, outputs identical to plain greedy: "
                      f"{'yes' if f['equal_outputs'] else 'NO'}."]
        if f["speedup"] < 1.0:
            lines += ["", "At this size a decoding step costs little more than the loop's fixed per-step overhead, so",
                      "verifying drafts costs about what accepting them saves; FIRP pays on larger models",
                      "(docs/speculative.md). `duomind serve --predictors none` serves without them."]
    lines += ["", "## Use", "", "```", "make demo                       # answers held-back problems in every mode",
              "duomind chat                    # terminal chat (/fast, /slow, /auto)",
              "duomind serve --port 8000       # OpenAI-compatible API; field `mode` or `reasoning_effort`", "```",
              "", "## Limits", "",
              "Synthetic arithmetic, sequence and word problems only; anything else gets confident nonsense. Numbers",
              "above are on held-back problems of the same generator, not on public benchmarks.", ""]
    return "\n".join(lines)


def _steps(c: dict, stage1: dict, router: dict | None = None) -> list[str]:
    """The recipe's steps in order, with the Stage-1 numbers measured on held-out problems (slow mode)."""
    acc = lambda xs: " -> ".join(_pct(x) for x in xs if x is not None)  # noqa: E731
    steps = []
    if c.get("pretrain_steps"):
        lines = " (worked steps one a line)" if c.get("pretrain_work_lines") else ""
        steps.append(f"pre-training {c['pretrain_steps']} steps on the task corpus{lines}")
    steps.append(f"dual SFT {c['sft_steps']} steps (batch {c['batch_size']}, sequence {c['seq_len']}, peak LR "
                 f"{c['sft_lr']})")
    if "distill" in stage1:
        d = stage1["distill"]
        steps.append(f"iterative distillation with merging, {len(d['accuracy_by_iteration']) - 1} iterations "
                     f"(held-out slow-mode accuracy {acc(d['accuracy_by_iteration'])})")
    if "rl" in stage1:
        r = stage1["rl"]
        steps.append(f"GRPO {r['steps']} steps, staleness {r['staleness']} (held-out slow-mode accuracy "
                     f"{acc([r['accuracy_before'], r['accuracy_after']])})")
    steps += ["auto labels", f"fusion SFT {c['fusion_steps']} steps (peak LR {c['fusion_lr']})"]
    if c.get("rl_steps"):
        steps.append(f"AdaptThink RL {c['rl_steps']} steps")
    if router:
        steps.append(f"auto's think threshold calibrated on {router['n']} new problems to keep {router['keep']:.0%} of "
                     f"slow mode's accuracy (P(<think>) >= {router['think_threshold']:.3f})")
    if c.get("firp_steps"):
        steps.append(f"FIRP predictors {c['firp_steps']} steps")
    return steps


def _label_rule(c: dict) -> str:
    """How the auto labels were made, in a sentence."""
    rates = (f"over {c['label_samples']} samples at temperature {c['label_temperature']} on {c['label_pool']} "
             "training problems")
    if c.get("auto_rule", "pass_rate") == "gain":
        return (f"the dual model's own fast- and slow-mode pass rates {rates}; slow where thinking raises the pass "
                f"rate by {c['min_gain']} or more, else fast.")
    return f"the dual model's own fast-mode pass rate {rates}; fast when it reaches {c['fast_threshold']}."
