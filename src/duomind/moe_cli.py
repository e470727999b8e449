"""`duomind moe upcycle` and `duomind moe stats`: dense checkpoints into MoE / MoGE ones, and expert loads."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from duomind.config import ConfigError, ModelConfig


class MoEError(ValueError):
    """A checkpoint or option does not fit the MoE command; the message says what to change."""


# --- upcycle ------------------------------------------------------------------------------------------------

def upcycle(src: str | Path, dst: str | Path, experts: int = 8, groups: int = 1, top_k: int = 2,
            kind: str | None = None, first_dense_layers: int = 0, shared_experts: int = 0, noise: float = 0.0,
            router_std: float = 0.0, seed: int = 0, overwrite: bool = False) -> tuple[Path, float]:
    """Write DST, the MoE / MoGE upcycling of the dense DuoMind checkpoint SRC (sparse upcycling, arXiv 2212.05055).

    Returns:
        DST and the largest logit difference between DST and SRC on a random batch (about 0 when
        `noise` and `router_std` are 0: upcycling preserves the function).
    """
    import torch

    from duomind.convert import TOKENIZER_FILES, _atomic_dir, _check_dst
    from duomind.model import DuoMind
    from duomind.moe import upcycle_state
    from duomind.train.checkpoint import load_model, resolve_checkpoint

    src, dst = resolve_checkpoint(src), Path(dst)
    _check_dst(dst, overwrite)
    dense = load_model(src)
    cfg = dense.model_config
    if cfg.mlp_type != "dense":
        raise MoEError(f"{src} is already a {cfg.mlp_type} model (num_experts={cfg.num_experts}); upcycle a dense "
                       "checkpoint.")
    kind = kind or ("moge" if groups > 1 else "moe")
    if kind not in ("moe", "moge"):
        raise MoEError(f"kind={kind!r} is not 'moe' or 'moge'.")
    try:
        # MoE renormalises (Mixtral-style); MoGE never does and gets the learned per-expert scale instead.
        moe_cfg = ModelConfig(**{**cfg.to_dict(), "mlp_type": kind, "num_experts": experts,
                                 "num_experts_per_tok": top_k, "expert_groups": groups,
                                 "moe_intermediate_size": cfg.intermediate_size, "norm_topk_prob": kind == "moe",
                                 "router_scale": kind == "moge", "first_dense_layers": first_dense_layers,
                                 "num_shared_experts": shared_experts})
    except ConfigError as err:
        raise MoEError(f"cannot upcycle to that shape: {err}") from err
    state = upcycle_state(cfg, dense.state_dict(), moe_cfg, noise=noise, router_std=router_std, seed=seed)
    with torch.device("meta"):
        model = DuoMind(moe_cfg)
    model.load_state_dict(state, strict=not cfg.tie_word_embeddings, assign=True)
    if cfg.tie_word_embeddings:
        model.tie_weights()
    model.eval()
    x = torch.randint(0, cfg.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = float((model(x).logits - dense(x).logits).abs().max())
    with _atomic_dir(dst, overwrite) as tmp:
        model.save_pretrained(tmp)
        for name in TOKENIZER_FILES:
            if (src / name).is_file():
                shutil.copy2(src / name, tmp / name)
    return dst, diff


def upcycle_cli(src: str, dst: str, experts: int = 8, groups: int = 1, top_k: int = 2, kind: str | None = None,
                first_dense_layers: int = 0, shared_experts: int = 0, noise: float = 0.0, router_std: float = 0.0,
                seed: int = 0, overwrite: bool = False) -> None:
    """Turn a dense DuoMind checkpoint into a MoE or MoGE one (copy the MLP into every expert, optional noise).

    With no noise and a zero router every expert is the dense MLP and the chosen weights sum to 1 (MoE
    renormalises; MoGE's per-expert scale starts at experts / top_k), so DST computes SRC's function until
    training moves it. Convert Hugging Face models first with `duomind convert`.

    Args:
        src: Dense DuoMind checkpoint (or run directory).
        dst: Output checkpoint directory, written atomically.
        experts: Routed experts N per MoE layer.
        groups: Expert groups M (one per device); MoGE takes top_k / groups experts from each.
        top_k: Experts per token K over all groups.
        kind: "moe" or "moge"; default moge when groups > 1, else moe.
        first_dense_layers: Keep the first n layers dense.
        shared_experts: Shared experts added (they start at zero output).
        noise: Std of the noise added to each expert copy, relative to each weight's std.
        router_std: Std of the initial router weights (0: all experts equally likely).
        seed: Seed for noise and router.
        overwrite: Replace a non-empty DST.
    """
    try:
        path, diff = upcycle(src, dst, experts, groups, top_k, kind, first_dense_layers, shared_experts, noise,
                             router_std, seed, overwrite)
    except (MoEError, ValueError) as err:
        raise SystemExit(f"duomind moe upcycle: error: {err}") from None
    from duomind.config import ModelConfig as _MC
    from duomind.model import DuoMindConfig

    cfg: _MC = DuoMindConfig.from_pretrained(str(path)).to_model_config()
    print(f"wrote {path}/: {cfg.mlp_type}, {cfg.num_experts} experts in {cfg.expert_groups} group(s), top-"
          f"{cfg.num_experts_per_tok}; {cfg.num_parameters():,} parameters ({cfg.num_active_parameters():,} active)")
    print(f"max |logit difference| to the dense model on a random batch: {diff:.2e}")


# --- stats --------------------------------------------------------------------------------------------------

@dataclass
class LoadStats:
    """Expert loads of a checkpoint over some data.

    Attributes:
        counts: (L, N) token copies per expert per MoE layer, over all batches.
        groups: Devices M the experts are placed on (contiguous groups).
        tokens: Tokens routed.
        batch_is: (L, B) imbalance score of every batch in every layer.
        layers: Block index of each MoE layer.
    """

    counts: list[list[int]]
    groups: int
    tokens: int
    batch_is: list[list[float]]
    layers: list[int]

    def device_loads(self) -> list[list[int]]:
        size = len(self.counts[0]) // self.groups
        return [[sum(row[g * size:(g + 1) * size]) for g in range(self.groups)] for row in self.counts]

    def summary(self) -> list[dict]:
        rows = []
        for layer, counts, loads, batch in zip(self.layers, self.counts, self.device_loads(), self.batch_is):
            mean = sum(loads) / len(loads)
            rows.append({"layer": layer, "is_mean": sum(batch) / len(batch), "is_max": max(batch),
                         "is_all": (max(loads) - min(loads)) / max(self.tokens, 1),
                         "device_max_over_mean": max(loads) / mean if mean else 0.0,
                         "expert_max_over_mean": max(counts) / (sum(counts) / len(counts)) if sum(counts) else 0.0,
                         "device_loads": loads})
        return rows


def expert_stats(checkpoint: str | Path, data: str | Path, seq_len: int = 256, batch_size: int = 8,
                 max_batches: int = 50, groups: int | None = None) -> LoadStats:
    """Route `data` through a MoE / MoGE checkpoint and count each expert's token copies per layer."""
    import torch

    from duomind.model import DuoMindConfig
    from duomind.moe import check_expert_count, imbalance_score, moe_layers
    from duomind.tokenizer import load_tokenizer
    from duomind.train.checkpoint import load_model, resolve_checkpoint
    from duomind.train.data import build_examples, read_records

    path = resolve_checkpoint(checkpoint)
    check_expert_count(path, DuoMindConfig.from_pretrained(str(path)))  # a clearer message than a shape mismatch
    model = load_model(path)
    cfg = model.model_config
    if cfg.mlp_type == "dense":
        raise MoEError(f"{path} is a dense model (mlp_type='dense'); it has no experts to count. Upcycle it with "
                       "`duomind moe upcycle` or pass a MoE checkpoint.")
    groups = groups or cfg.expert_groups
    if cfg.num_experts % groups:
        raise MoEError(f"groups={groups} does not divide num_experts={cfg.num_experts}; pick a divisor.")
    ex = build_examples(load_tokenizer(path), read_records(data), "pretrain", seq_len)
    layers = moe_layers(model)
    counts = torch.zeros(len(layers), cfg.num_experts, dtype=torch.long)
    batch_is: list[list[float]] = [[] for _ in layers]
    tokens = 0
    n = min(len(ex), batch_size * max_batches)
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            ids = torch.tensor(ex.inputs[start:min(start + batch_size, n)])
            model(ids)
            tokens += ids.numel()
            for i, (_, layer) in enumerate(layers):
                c = torch.bincount(layer.last_experts.flatten(), minlength=cfg.num_experts)
                counts[i] += c
                batch_is[i].append(imbalance_score(c, groups, ids.numel()))
    index = [int(name.split(".")[1]) for name, _ in layers]
    return LoadStats(counts.tolist(), groups, tokens, batch_is, index)


def plot_stats(stats: LoadStats, out: Path, title: str) -> Path:
    """Heat map of each layer's expert loads (share of the mean), with group boundaries, and device loads."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    counts = np.array(stats.counts, dtype=float)
    share = counts / counts.mean(1, keepdims=True).clip(min=1e-12)
    loads = np.array(stats.device_loads(), dtype=float)
    loads = loads / loads.mean(1, keepdims=True).clip(min=1e-12)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 0.45 * len(stats.layers) + 2.2), dpi=120,
                                 gridspec_kw={"width_ratios": [3, 1]})
    vmax = max(2.0, float(share.max()))
    im = ax.imshow(share, aspect="auto", cmap="magma", vmin=0, vmax=vmax)
    size = counts.shape[1] // stats.groups
    for g in range(1, stats.groups):
        ax.axvline(g * size - 0.5, color="cyan", lw=1)
    ax.set_yticks(range(len(stats.layers)), [f"layer {i}" for i in stats.layers])
    ax.set_xlabel(f"expert (cyan lines: {stats.groups} device groups)")
    ax.set_title("expert load / mean")
    fig.colorbar(im, ax=ax, fraction=0.04)
    im2 = bx.imshow(loads, aspect="auto", cmap="viridis", vmin=0, vmax=max(2.0, float(loads.max())))
    bx.set_yticks([])
    bx.set_xlabel("device")
    bx.set_title("device load / mean")
    fig.colorbar(im2, ax=bx, fraction=0.08)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def stats_cli(checkpoint: str, data: str | None = None, out: str = "moe_stats.png", json_out: str | None = None,
              seq_len: int = 256, batch_size: int = 8, max_batches: int = 50, groups: int | None = None) -> None:
    """Print per-layer expert and device loads and the imbalance score (IS) of a MoE / MoGE checkpoint.

    IS = (max device load - min device load) / tokens per batch (arXiv 2505.21411), with device g holding the
    g-th contiguous group of experts; MoGE makes it 0. Also writes a heat-map PNG of the expert loads.

    Args:
        checkpoint: MoE / MoGE checkpoint or run directory.
        data: Text (.txt) or JSONL data to route (packed into seq_len windows as for pre-training); required.
        out: Heat-map PNG path.
        json_out: Also write the counts and per-layer summary as JSON here.
        seq_len: Tokens per sequence.
        batch_size: Sequences per batch (IS is measured per batch).
        max_batches: Batches to route at most.
        groups: Devices to place the experts on (default: the checkpoint's expert_groups).
    """
    if data is None:
        raise SystemExit("duomind moe stats: error: pass --data FILE (text or JSONL) to route through the model.")
    try:
        stats = expert_stats(checkpoint, data, seq_len, batch_size, max_batches, groups)
    except (MoEError, ValueError) as err:
        raise SystemExit(f"duomind moe stats: error: {err}") from None
    print(f"{stats.tokens:,} tokens in {len(stats.batch_is[0])} batches; experts on {stats.groups} devices")
    print(f"{'layer':>5}  {'IS mean':>8}  {'IS max':>8}  {'dev max/mean':>12}  {'expert max/mean':>15}  device loads")
    for row in stats.summary():
        print(f"{row['layer']:>5}  {row['is_mean']:>8.3f}  {row['is_max']:>8.3f}  {row['device_max_over_mean']:>12.2f}  "
              f"{row['expert_max_over_mean']:>15.2f}  {row['device_loads']}")
    png = plot_stats(stats, Path(out), f"expert loads · {Path(checkpoint).name}")
    print(f"wrote {png}")
    if json_out:
        Path(json_out).write_text(json.dumps({"tokens": stats.tokens, "groups": stats.groups, "layers": stats.layers,
                                              "counts": stats.counts, "summary": stats.summary()}, indent=1))
        print(f"wrote {json_out}")
