"""Dolphin's network (arXiv 2503.20212): E-Branchformer encoder, Transformer decoder, CTC head.

::

    log-mel (B, T, 80) -> Conv2d x2, stride 2 each (4x fewer frames) -> Linear -> (B, T/4, d)
      -> N x E-Branchformer block (arXiv 2210.00077):
           x += 1/2 FFN(LN x)                                  (macaron half-step)
           g  = RelPosMHSA(LN x)   |   l = cgMLP(LN x)          (global and local branches in parallel)
           x += Linear([g; l] + DepthwiseConv([g; l]))          (merge)
           x += 1/2 FFN(LN x);  x = LN x
      -> LN -> encoder states ---------------------------> CTC head: Linear(d, V)
                                   |
    <sos><lang><region><asr>... -> Transformer decoder (self-attn, cross-attn, FFN; pre-norm) -> Linear(d, V)

Relative-position attention follows Transformer-XL (arXiv 1901.02860): scores are (q + u)·k + (q + v)·p(i-j)
with sinusoidal p over relative distances and learned biases u, v per head.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class AsrModelConfig:
    """Sizes of the encoder-decoder; `PRESETS` holds the named ones.

    Attributes:
        vocab_size: Tokenizer size (specials + time tokens + subwords); the CTC blank is id 0.
        d_model: Width of encoder and decoder.
        heads: Attention heads (encoder and decoder).
        encoder_layers / decoder_layers: Block counts.
        ffn_dim: Hidden width of each feed-forward (two per encoder block, macaron style).
        cgmlp_dim: Hidden width of the cgMLP branch (its gate halves it).
        cgmlp_kernel: Depthwise conv kernel in the cgMLP gating unit.
        merge_kernel: Depthwise conv kernel that fuses the two branches.
        subsample_channels: Channels of the conv2d subsampling front end.
        n_mels: Input feature bins.
        dropout: Dropout everywhere in training.
    """

    vocab_size: int = 2000
    d_model: int = 144
    heads: int = 4
    encoder_layers: int = 4
    decoder_layers: int = 2
    ffn_dim: int = 576
    cgmlp_dim: int = 576
    cgmlp_kernel: int = 15
    merge_kernel: int = 3
    subsample_channels: int = 32
    n_mels: int = 80
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.d_model % self.heads:
            raise ValueError(f"d_model {self.d_model} must be divisible by heads {self.heads}.")
        if self.cgmlp_dim % 2:
            raise ValueError(f"cgmlp_dim {self.cgmlp_dim} must be even (the gate splits it in halves).")


PRESETS: dict[str, dict] = {
    "tiny": dict(d_model=144, heads=4, encoder_layers=4, decoder_layers=2, ffn_dim=576, cgmlp_dim=576),
    "base": dict(d_model=512, heads=8, encoder_layers=6, decoder_layers=6, ffn_dim=2048, cgmlp_dim=3072,
                 cgmlp_kernel=31, merge_kernel=31, subsample_channels=512),
    "small": dict(d_model=768, heads=12, encoder_layers=12, decoder_layers=12, ffn_dim=3072, cgmlp_dim=3072,
                  cgmlp_kernel=31, merge_kernel=31, subsample_channels=768),
}


def preset(name: str, **overrides) -> AsrModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown ASR model preset {name!r}; choose one of {', '.join(PRESETS)}.")
    return AsrModelConfig(**{**PRESETS[name], **overrides})


def sinusoids(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embeddings of (possibly negative) positions, shape (len(positions), dim)."""
    inv = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    ang = positions.float()[:, None] * inv[None]
    return torch.stack([ang.sin(), ang.cos()], dim=-1).flatten(1)


def subsampled_lengths(lengths: torch.Tensor) -> torch.Tensor:
    """Frames after two stride-2 kernel-3 convolutions."""
    return ((lengths - 1) // 2 - 1) // 2


class Conv2dSubsampling(nn.Module):
    """Two 3x3 stride-2 convolutions over (time, mel), then a projection: 4x fewer frames."""

    def __init__(self, cfg: AsrModelConfig) -> None:
        super().__init__()
        c = cfg.subsample_channels
        self.conv = nn.Sequential(nn.Conv2d(1, c, 3, 2), nn.ReLU(), nn.Conv2d(c, c, 3, 2), nn.ReLU())
        freq = ((cfg.n_mels - 1) // 2 - 1) // 2
        self.out = nn.Linear(c * freq, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x.unsqueeze(1))  # (B, C, T/4, F/4)
        b, c, t, f = x.shape
        return self.out(x.transpose(1, 2).reshape(b, t, c * f))


class RelPosAttention(nn.Module):
    """Multi-head self-attention with Transformer-XL relative positions (arXiv 1901.02860)."""

    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.h, self.dk = heads, d // heads
        self.qkv = nn.Linear(d, 3 * d)
        self.pos = nn.Linear(d, d, bias=False)
        self.u = nn.Parameter(torch.zeros(heads, self.dk))
        self.v = nn.Parameter(torch.zeros(heads, self.dk))
        self.proj = nn.Linear(d, d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, key_pad: torch.Tensor) -> torch.Tensor:
        """x (B, T, d); pos (2T-1, d) for distances T-1 .. -(T-1); key_pad (B, T) True at padding."""
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.h, self.dk).permute(2, 0, 3, 1, 4)  # each (B, H, T, dk)
        p = self.pos(pos).view(-1, self.h, self.dk).transpose(0, 1)  # (H, 2T-1, dk)
        ac = (q + self.u[None, :, None]) @ k.transpose(-1, -2)  # (B, H, T, T)
        bd = (q + self.v[None, :, None]) @ p.transpose(-1, -2)[None]  # (B, H, T, 2T-1)
        # query i, key j sits at relative index (T-1) - i + j
        ar = torch.arange(t, device=x.device)
        idx = (t - 1 - ar[:, None] + ar[None, :]).expand(b, self.h, t, t)
        scores = (ac + bd.gather(-1, idx)) / math.sqrt(self.dk)
        scores = scores.masked_fill(key_pad[:, None, None, :], torch.finfo(scores.dtype).min)
        attn = self.drop(scores.softmax(-1))
        return self.proj((attn @ v).transpose(1, 2).reshape(b, t, -1))


class ConvGatingMLP(nn.Module):
    """cgMLP (arXiv 2203.16691): Linear up, GELU, gate = depthwise conv of half the channels, Linear down."""

    def __init__(self, d: int, hidden: int, kernel: int, dropout: float) -> None:
        super().__init__()
        self.up = nn.Linear(d, hidden)
        self.norm = nn.LayerNorm(hidden // 2)
        self.conv = nn.Conv1d(hidden // 2, hidden // 2, kernel, padding=kernel // 2, groups=hidden // 2)
        self.down = nn.Linear(hidden // 2, d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        r, g = F.gelu(self.up(x)).chunk(2, dim=-1)
        g = self.norm(g) * keep  # zero padding so the conv does not read it
        g = self.conv(g.transpose(1, 2)).transpose(1, 2)
        return self.down(self.drop(r * g))


def feed_forward(d: int, hidden: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(d), nn.Linear(d, hidden), nn.SiLU(), nn.Dropout(dropout), nn.Linear(hidden, d))


class EBranchformerBlock(nn.Module):
    """One E-Branchformer block (arXiv 2210.00077): macaron FFNs around parallel attention and cgMLP."""

    def __init__(self, cfg: AsrModelConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.ff1, self.ff2 = (feed_forward(d, cfg.ffn_dim, cfg.dropout) for _ in range(2))
        self.norm_att, self.norm_mlp, self.norm_out = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.att = RelPosAttention(d, cfg.heads, cfg.dropout)
        self.mlp = ConvGatingMLP(d, cfg.cgmlp_dim, cfg.cgmlp_kernel, cfg.dropout)
        self.fuse = nn.Conv1d(2 * d, 2 * d, cfg.merge_kernel, padding=cfg.merge_kernel // 2, groups=2 * d)
        self.merge = nn.Linear(2 * d, d)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, key_pad: torch.Tensor) -> torch.Tensor:
        keep = (~key_pad).unsqueeze(-1).to(x.dtype)
        x = x + 0.5 * self.drop(self.ff1(x))
        both = torch.cat([self.att(self.norm_att(x), pos, key_pad), self.mlp(self.norm_mlp(x), keep)], dim=-1)
        both = both * keep
        both = both + self.fuse(both.transpose(1, 2)).transpose(1, 2)
        x = x + self.drop(self.merge(both))
        x = x + 0.5 * self.drop(self.ff2(x))
        return self.norm_out(x)


class DecoderBlock(nn.Module):
    """Pre-norm Transformer decoder block: causal self-attention, cross-attention, FFN."""

    def __init__(self, cfg: AsrModelConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.h = cfg.heads
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.self_out = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.q, self.kv, self.cross_out = nn.Linear(d, d), nn.Linear(d, 2 * d), nn.Linear(d, d)
        self.ff = feed_forward(d, cfg.ffn_dim, cfg.dropout)
        self.drop = nn.Dropout(cfg.dropout)
        self.p = cfg.dropout

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        return x.view(b, t, self.h, d // self.h).transpose(1, 2)  # (B, H, T, dk)

    def forward(self, x, memory, self_mask, cross_mask) -> torch.Tensor:
        b, t, d = x.shape
        p = self.p if self.training else 0.0
        q, k, v = (self._heads(z) for z in self.qkv(self.norm1(x)).chunk(3, dim=-1))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=self_mask, dropout_p=p)
        x = x + self.drop(self.self_out(a.transpose(1, 2).reshape(b, t, d)))
        q = self._heads(self.q(self.norm2(x)))
        k, v = (self._heads(z) for z in self.kv(memory).chunk(2, dim=-1))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=cross_mask, dropout_p=p)
        x = x + self.drop(self.cross_out(a.transpose(1, 2).reshape(b, t, d)))
        return x + self.drop(self.ff(x))


class Dolphin(nn.Module):
    """E-Branchformer encoder + Transformer decoder + CTC head (joint CTC-attention, arXiv 2503.20212)."""

    def __init__(self, cfg: AsrModelConfig) -> None:
        super().__init__()
        self.config = cfg
        d = cfg.d_model
        self.subsample = Conv2dSubsampling(cfg)
        self.encoder = nn.ModuleList(EBranchformerBlock(cfg) for _ in range(cfg.encoder_layers))
        self.encoder_norm = nn.LayerNorm(d)
        self.ctc_head = nn.Linear(d, cfg.vocab_size)
        self.embed = nn.Embedding(cfg.vocab_size, d)
        nn.init.normal_(self.embed.weight, std=d**-0.5)  # tied output: keeps initial logits near unit scale
        self.decoder = nn.ModuleList(DecoderBlock(cfg) for _ in range(cfg.decoder_layers))
        self.decoder_norm = nn.LayerNorm(d)
        self.drop = nn.Dropout(cfg.dropout)

    def encode(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, 80) normalised features -> (B, T', d) states and their lengths (B,)."""
        x = self.subsample(feats) * math.sqrt(self.config.d_model)
        t = x.shape[1]
        out_len = subsampled_lengths(lengths).clamp(min=1, max=t)
        key_pad = torch.arange(t, device=x.device)[None] >= out_len[:, None]
        pos = sinusoids(torch.arange(t - 1, -t, -1, device=x.device), self.config.d_model).to(x.dtype)
        x = self.drop(x)
        for block in self.encoder:
            x = block(x, pos, key_pad)
        return self.encoder_norm(x), out_len

    def ctc_log_probs(self, enc: torch.Tensor) -> torch.Tensor:
        return self.ctc_head(enc).float().log_softmax(-1)

    def decode(self, tokens: torch.Tensor, enc: torch.Tensor, enc_lengths: torch.Tensor,
               last_only: bool = False) -> torch.Tensor:
        """Decoder logits (B, L, V) for token prefixes (B, L) (right-padded; causal) over encoder states."""
        b, length = tokens.shape
        x = self.embed(tokens) * math.sqrt(self.config.d_model)
        x = self.drop(x + sinusoids(torch.arange(length, device=x.device), self.config.d_model).to(x.dtype))
        causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()[None, None]
        cross = (torch.arange(enc.shape[1], device=x.device)[None] < enc_lengths[:, None])[:, None, None]
        for block in self.decoder:
            x = block(x, enc, causal, cross)
        x = self.decoder_norm(x[:, -1:] if last_only else x)
        return x @ self.embed.weight.T  # tied output projection

    def forward(self, feats, lengths, tokens):
        enc, enc_len = self.encode(feats, lengths)
        return self.ctc_log_probs(enc), enc_len, self.decode(tokens, enc, enc_len)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def save_model(model: Dolphin, directory: str | Path) -> None:
    """config.json + model.safetensors (no optimizer state); the caller seals the directory."""
    from safetensors.torch import save_file

    directory = Path(directory)
    (directory / "config.json").write_text(json.dumps({"model_type": "duomind-asr", **asdict(model.config)}, indent=1))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / "model.safetensors"))


def load_config(directory: str | Path) -> AsrModelConfig:
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{str(directory)!r} is not an ASR model directory (no config.json).")
    data = json.loads(path.read_text())
    if data.pop("model_type", None) != "duomind-asr":
        raise ValueError(f"{str(path)!r} is not a DuoMind ASR model config (model_type must be 'duomind-asr').")
    known = {f.name for f in fields(AsrModelConfig)}
    return AsrModelConfig(**{k: v for k, v in data.items() if k in known})


def load_weights(model: Dolphin, directory: str | Path) -> None:
    """Load model.safetensors with named errors for missing, unexpected or mis-shaped tensors."""
    from safetensors.torch import load_file

    path = Path(directory) / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"no model.safetensors in {str(directory)!r}; the model directory is incomplete.")
    state = load_file(str(path))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    wrong = [k for k in state if k in expected and state[k].shape != expected[k].shape]
    if missing or wrong or set(state) - set(expected):
        raise ValueError(f"{str(path)!r} does not match its config.json (missing {missing[:3]}, mis-shaped "
                         f"{wrong[:3]}); the weights belong to another model.")
    model.load_state_dict(state)
