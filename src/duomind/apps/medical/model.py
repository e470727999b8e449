"""A small multi-image VLM on the DuoMind decoder: patch encoder -> projector -> image tokens at `<image>`.

    image (1, S, S) -> patches (N, p*p) -> MLP -> + patch position -> projector (MLP) -> + image index -> N tokens
    prompt "<image><image>Q"  ->  [N tokens of image 1][N tokens of image 2] Q    (one DuoMind decoder)

Each `<image>` placeholder of a prompt is expanded to N copies of the image token id, whose embeddings are
replaced by the image's projected patch features before the decoder runs on `inputs_embeds` (the LLaVA
recipe, arXiv 2304.08485, applied to interleaved multi-image prompts as in Mantis / Med-MIM, arXiv
2505.19031). A learned image-index embedding tells the decoder which image a token came from, so "the
second image" can be resolved. Checkpoints are atomic safetensors directories (duomind.train.checkpoint).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from duomind.apps.medical.data import PLACEHOLDER, Item, load_image
from duomind.config import ModelConfig

MODEL_TYPE = "duomind-vlm"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class VLMConfig:
    """Sizes of the vision side; `decoder` holds the DuoMind `ModelConfig` fields."""

    image_size: int = 32
    patch_size: int = 16
    vision_hidden: int = 128
    max_images: int = 4
    image_token_id: int = 0
    decoder: dict = field(default_factory=dict)
    lora: dict | None = None  # {"r", "alpha", "targets"} once LoRA adapters are injected

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def tie_word_embeddings(self) -> bool:  # read by duomind.train.checkpoint
        return bool(self.decoder.get("tie_word_embeddings", False))

    def validate(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}.")
        if self.tie_word_embeddings:
            raise ValueError("the VLM's decoder must not tie embeddings (tie_word_embeddings: false).")


class VLM(nn.Module):
    """Patch encoder + projector + DuoMind decoder (see the module docstring)."""

    def __init__(self, config: VLMConfig) -> None:
        super().__init__()
        from duomind.model import DuoMind

        config.validate()
        self.config = config
        c, d = config, config.decoder["hidden_size"]
        self.patch = nn.Sequential(nn.Linear(c.patch_size**2, c.vision_hidden), nn.GELU(),
                                   nn.Linear(c.vision_hidden, c.vision_hidden))
        self.patch_pos = nn.Parameter(torch.zeros(c.n_patches, c.vision_hidden))
        self.vision_norm = nn.LayerNorm(c.vision_hidden)
        self.projector = nn.Sequential(nn.Linear(c.vision_hidden, d), nn.GELU(), nn.Linear(d, d))
        self.image_index = nn.Embedding(c.max_images, d)
        nn.init.normal_(self.patch_pos, std=0.02)
        nn.init.normal_(self.image_index.weight, std=0.02)
        self.decoder = DuoMind(ModelConfig(**config.decoder))

    def tie_weights(self) -> None:  # the checkpoint loader calls it for tied decoders; ours are untied
        pass

    def encode_images(self, pixels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """(M, S, S) pixels in [0, 1] and (M,) image index within each prompt -> (M, N, d) image tokens."""
        p = self.config.patch_size
        M, S, _ = pixels.shape
        patches = pixels.unfold(1, p, p).unfold(2, p, p).reshape(M, -1, p * p)  # (M, N, p*p) row-major patches
        v = self.vision_norm(self.patch(patches - 0.5) + self.patch_pos)
        return self.projector(v) + self.image_index(index)[:, None]

    def embed(self, ids: torch.Tensor, pixels: torch.Tensor | None, index: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings with every run of image-token ids replaced by that image's tokens, in order."""
        h = self.decoder.get_input_embeddings()(ids)
        slots = ids == self.config.image_token_id
        n_img = 0 if pixels is None else pixels.shape[0]
        if int(slots.sum()) != n_img * self.config.n_patches:
            raise ValueError(f"the batch has {int(slots.sum())} image-token slots but {n_img} image(s) x "
                             f"{self.config.n_patches} tokens; each {PLACEHOLDER} needs exactly one image.")
        if n_img:
            h = h.clone()
            h[slots] = self.encode_images(pixels, index).reshape(-1, h.shape[-1]).to(h.dtype)
        return h

    def forward(self, ids, pixels=None, index=None, attention_mask=None, labels=None):
        return self.decoder(inputs_embeds=self.embed(ids, pixels, index), attention_mask=attention_mask,
                            labels=labels)

    # duck-typed for duomind.train.checkpoint.save_checkpoint / load_weights_into
    def save_pretrained(self, path: str | Path, safe_serialization: bool = True) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps({"model_type": MODEL_TYPE, **asdict(self.config)}, indent=1))
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, path / "model.safetensors")


def add_lora(model: VLM, r: int, alpha: float | None = None, targets: list[str] | None = None) -> VLM:
    """Inject LoRA adapters (peft) into the decoder's projections and freeze the rest of the decoder.

    The vision encoder and projector stay fully trainable (they are small and new).
    """
    from peft import LoraConfig, inject_adapter_in_model

    targets = targets or LORA_TARGETS
    alpha = alpha if alpha is not None else 2.0 * r
    inject_adapter_in_model(LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0),
                            model.decoder)
    for name, p in model.decoder.named_parameters():
        p.requires_grad = "lora_" in name
    model.config.lora = {"r": r, "alpha": alpha, "targets": targets}
    return model


def read_config(path: str | Path) -> VLMConfig:
    raw = json.loads((Path(path) / "config.json").read_text())
    if raw.pop("model_type", None) != MODEL_TYPE:
        raise ValueError(f"{path} is not a DuoMind VLM checkpoint (config.json model_type is not {MODEL_TYPE!r}); "
                         "train one with `duomind med train`.")
    return VLMConfig(**raw)


def build_from_config(cfg: VLMConfig) -> VLM:
    lora = cfg.lora
    cfg = VLMConfig(**{**asdict(cfg), "lora": None})
    model = VLM(cfg)
    if lora:
        add_lora(model, lora["r"], lora["alpha"], lora["targets"])
    return model


def load_vlm(path: str | Path) -> tuple[VLM, object]:
    """Load a VLM checkpoint (or a run directory's latest one), verified and shape-checked; (model, tokenizer)."""
    from duomind.tokenizer import load_tokenizer
    from duomind.train.checkpoint import load_weights_into, resolve_checkpoint, verify_checkpoint

    path = resolve_checkpoint(path)
    if (path / "COMPLETE").exists() or (path / "trainer_state.json").exists():
        verify_checkpoint(path)
    model = build_from_config(read_config(path))
    load_weights_into(model, path)
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # AutoTokenizer peeks at config.json and warns about the unknown model_type
    try:
        tok = load_tokenizer(path)
    finally:
        hf_logging.set_verbosity(level)
    return model.eval(), tok


# --- tokenizer and batches -----------------------------------------------------------------------------------------

def build_tokenizer(texts: list[str], vocab_size: int = 512):
    """A byte-level BPE over the prompts and answers, with `<image>` as one special token."""
    from duomind.tokenizer import train_tokenizer

    tok = train_tokenizer((t.replace(PLACEHOLDER, " ") for t in texts), vocab_size=vocab_size)
    tok.add_tokens([PLACEHOLDER], special_tokens=True)
    return tok


def image_token_id(tok) -> int:
    tid = tok.get_vocab().get(PLACEHOLDER)
    if tid is None:
        raise ValueError(f"the tokenizer has no {PLACEHOLDER} token; build it with `build_tokenizer` or add it as a "
                         "special token.")
    return tid


def encode(tok, cfg: VLMConfig, item: Item, with_answer: bool) -> tuple[list[int], list[int]]:
    """(ids, labels) of an item in the chat template, each placeholder expanded to N image tokens.

    Labels cover the answer and end of turn only (prompt and images are -100).
    """
    from duomind.tokenizer import chat_prompt
    from duomind.train.data import IGNORE

    prompt = chat_prompt(tok, [{"role": "user", "content": item.prompt}])
    target = tok.encode((item.answer or "") + "<|im_end|>", add_special_tokens=False) if with_answer else []
    n_slots = sum(1 for t in prompt if t == cfg.image_token_id)
    if n_slots != len(item.images):
        raise ValueError(f"item {item.id}: {n_slots} {PLACEHOLDER} placeholder(s) for {len(item.images)} image(s); "
                         f"put exactly one {PLACEHOLDER} where each image goes.")
    if len(item.images) > cfg.max_images:
        raise ValueError(f"item {item.id} has {len(item.images)} images; this model takes at most {cfg.max_images}.")
    ids: list[int] = []
    for t in prompt:
        ids += [t] * cfg.n_patches if t == cfg.image_token_id else [t]
    return ids + target, [IGNORE] * len(ids) + target


def pixels_of(item: Item, size: int) -> torch.Tensor:
    """(n_images, size, size) grayscale pixels in [0, 1]; resized when the file has another size."""
    import numpy as np
    from PIL import Image

    out = []
    for ref in item.images:
        im = load_image(ref, "L")
        if im.size != (size, size):
            im = im.resize((size, size), Image.BILINEAR)
        out.append(torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0))
    return torch.stack(out) if out else torch.zeros(0, size, size)


@dataclass
class Encoded:
    ids: list[int]
    labels: list[int]
    pixels: torch.Tensor  # (n_images, S, S)


def collate(batch: list[Encoded], pad_id: int, left: bool = False):
    """Pad a batch (right for training, left for generation): ids, labels, mask, pixels, image index."""
    from duomind.train.data import IGNORE

    width = max(len(e.ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for r, e in enumerate(batch):
        sl = slice(width - len(e.ids), width) if left else slice(0, len(e.ids))
        ids[r, sl] = torch.tensor(e.ids)
        labels[r, sl] = torch.tensor(e.labels)
        mask[r, sl] = 1
    pix = [e.pixels for e in batch if len(e.pixels)]
    pixels = torch.cat(pix) if pix else None
    index = torch.cat([torch.arange(len(e.pixels)) for e in batch]) if pix else None
    return ids, labels, mask, pixels, index


@torch.inference_mode()
def generate(model: VLM, batch: list[Encoded], max_new_tokens: int, stop_tokens: list[int], pad_id: int) -> list[list[int]]:
    """Greedy decoding with DuoMind's pre-allocated KV cache: prefill on embeddings, then token by token."""
    from duomind.model import KVCache

    model.eval()
    dec = model.decoder
    ids, _, mask, pixels, index = collate(batch, pad_id, left=True)
    B, P = ids.shape
    total = P + max_new_tokens
    if total > dec.config.max_position_embeddings:
        raise ValueError(f"prompt ({P} tokens with image tokens) + {max_new_tokens} new tokens exceeds the decoder's "
                         f"max_position_embeddings={dec.config.max_position_embeddings}.")
    cache = KVCache(dec.config, B, total)
    full = torch.ones((B, total), dtype=torch.long)
    full[:, :P] = mask
    padded = bool((mask == 0).any())
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    logits = dec(inputs_embeds=model.embed(ids, pixels, index), attention_mask=full[:, :P] if padded else None,
                 position_ids=positions, cache=cache, logits_to_keep=1).logits[:, -1]
    nxt = positions[:, -1:] + 1
    stops = torch.tensor(stop_tokens, dtype=torch.long)
    out, done = [], torch.zeros(B, dtype=torch.bool)
    for t in range(max_new_tokens):
        token = logits.argmax(-1)
        out.append(token)
        done |= torch.isin(token, stops)
        if bool(done.all()) or t == max_new_tokens - 1:
            break
        logits = dec(token[:, None], attention_mask=full[:, :P + t + 1] if padded else None, position_ids=nxt,
                     cache=cache).logits[:, -1]
        nxt = nxt + 1
    rows = torch.stack(out, 1).tolist()
    result = []
    for row in rows:
        cut = next((i for i, t in enumerate(row) if t in stop_tokens), None)
        result.append(row[:cut] if cut is not None else row)
    return result

