"""`duomind prune`, `duomind prune plan`, `duomind prune recover`: thin wrappers over `duomind.prune.pipeline`."""

from __future__ import annotations

from duomind.prune.plan import Targets


def _targets(hidden, ffn, heads, kv_heads, layers, experts, expert_ffn, target_params) -> Targets:
    return Targets(hidden=hidden, ffn=ffn, heads=heads, kv_heads=kv_heads, layers=layers, experts=experts,
                   expert_ffn=expert_ffn, target_params=target_params)


def prune_cli(src: str, dst: str, method: str = "pangu-light", target_params: float | None = None,
              hidden: int | None = None, ffn: int | None = None, heads: int | None = None,
              kv_heads: int | None = None, layers: int | None = None, experts: int | None = None,
              expert_ffn: int | None = None, calibration: str | None = None, calibration_samples: int = 32,
              calibration_seq_len: int = 256, clap: bool | None = None, slnp: bool | None = None,
              absorb: bool | None = None, layer_metric: str | None = None, overwrite: bool = False) -> None:
    """Prune checkpoint SRC into DST: pangu-light, minitron, minitron+clap, minitron+slnp or shortgpt.

    Args:
        src: Checkpoint directory (or run directory) of a DuoMind model; convert HF models first.
        dst: Output checkpoint directory.
        method: pangu-light (CLAP + SLNP + post-norm absorption), minitron, minitron+clap, minitron+slnp, shortgpt.
        target_params: Parameter budget: a fraction (e.g. 0.5) or a count; unset sizes are solved from it.
        hidden: Residual width to keep.
        ffn: Dense MLP width to keep.
        heads: Query heads to keep (a multiple of kv_heads).
        kv_heads: KV heads (GQA groups) to keep.
        layers: Layers to keep.
        experts: Routed experts to keep per MoE layer.
        expert_ffn: Width of each expert.
        calibration: Text (.txt) or JSONL file for importance; default: the synthetic task corpus.
        calibration_samples: Calibration windows.
        calibration_seq_len: Tokens per calibration window.
        clap: Override the method's CLAP switch (true/false).
        slnp: Override the method's SLNP switch.
        absorb: Override post-norm absorption (sandwich / dssn models).
        layer_metric: Layer score: "loss" (loss increase when skipped) or "bi" (block influence).
        overwrite: Replace a non-empty DST.
    """
    from duomind.prune.pipeline import prune

    prune(src, dst, method, _targets(hidden, ffn, heads, kv_heads, layers, experts, expert_ffn, target_params),
          calibration, calibration_samples, calibration_seq_len, clap, slnp, absorb, layer_metric, overwrite)


def plan_cli(src: str, method: str = "pangu-light", target_params: float | None = None, hidden: int | None = None,
             ffn: int | None = None, heads: int | None = None, kv_heads: int | None = None,
             layers: int | None = None, experts: int | None = None, expert_ffn: int | None = None) -> None:
    """Print the pruning plan (sizes and parameter counts per part) without touching any weights.

    Args:
        src: Checkpoint directory (only config.json is read).
        method: Pruning method (shortgpt plans depth only).
        target_params: Parameter budget: a fraction (e.g. 0.5) or a count.
        hidden: Residual width to keep.
        ffn: Dense MLP width to keep.
        heads: Query heads to keep.
        kv_heads: KV heads to keep.
        layers: Layers to keep.
        experts: Routed experts to keep per MoE layer.
        expert_ffn: Width of each expert.
    """
    import json

    from duomind.config import ModelConfig
    from duomind.prune.pipeline import plan
    from duomind.prune.plan import format_plan
    from duomind.train.checkpoint import resolve_checkpoint

    path = resolve_checkpoint(src)
    raw = json.loads((path / "config.json").read_text())
    if raw.get("model_type") != "duomind":
        raise ValueError(f"{path} holds a {raw.get('model_type')!r} model; convert it first with `duomind convert`.")
    cfg = ModelConfig.from_dict({k: v for k, v in raw.items() if k in ModelConfig.__dataclass_fields__})
    new = plan(cfg, method, _targets(hidden, ffn, heads, kv_heads, layers, experts, expert_ffn, target_params))
    print(format_plan(cfg, new, method))


def recover_cli(pruned: str, out_dir: str, data: str, teacher: str | None = None, steps: int = 100,
                lr: float = 5e-4, seq_len: int = 256, global_batch_size: int = 16, micro_batch_size: int = 8,
                kd_temperature: float = 1.0, eval_data: str | None = None, threads: int | None = None) -> None:
    """Recover a pruned model by knowledge distillation from its unpruned source (the trainer, mode kd).

    Args:
        pruned: Pruned checkpoint (its prune.json names the teacher).
        out_dir: Run directory of the recovery (resumable).
        data: Training text (.txt) or chats (.jsonl).
        teacher: Unpruned checkpoint; default: the source recorded in prune.json.
        steps: Optimizer steps.
        lr: Peak learning rate.
        seq_len: Tokens per sequence.
        global_batch_size: Sequences per step.
        micro_batch_size: Sequences per forward.
        kd_temperature: Softmax temperature of the KL.
        eval_data: Held-out data for eval loss.
        threads: torch threads.
    """
    from duomind.prune.pipeline import recover

    final = recover(pruned, out_dir, data, teacher, steps, lr=lr, min_lr=lr / 10, seq_len=seq_len,
                    global_batch_size=global_batch_size, micro_batch_size=micro_batch_size,
                    kd_temperature=kd_temperature, eval_data=eval_data, threads=threads)
    print(f"recovered model: {final}")
