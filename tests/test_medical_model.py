"""Medical app, model side: image tokens at placeholders, KV-cache decoding, resumable training, LoRA."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from duomind.apps.medical import synth
from duomind.apps.medical.data import load_items
from duomind.apps.medical.model import Encoded, collate, encode, generate, load_vlm, pixels_of
from duomind.apps.medical.train import MedTrainConfig, train_vlm

TINY = dict(decoder_preset="tiny", decoder={"max_position_embeddings": 160}, vision_hidden=16, batch_size=4,
            warmup_steps=1, progress=False, threads=1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synth.write_dataset(tmp_path_factory.mktemp("med_model"), n_per_ability=4, captions=6)


@pytest.fixture(scope="module")
def ckpt(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("med_run") / "run"
    return train_vlm(MedTrainConfig(data=[str(data["medmim"]), str(data["medhall"])], out_dir=str(out), max_steps=3,
                                    save_every=3, **TINY))


def _enc(model, tok, item):
    ids, labels = encode(tok, model.config, item, with_answer=False)
    return Encoded(ids, labels, pixels_of(item, model.config.image_size))


def test_images_go_where_the_placeholders_are(ckpt, data):
    model, tok = load_vlm(ckpt)
    item = next(it for it in load_items(data["medmim"]) if len(it.images) == 3)
    e = _enc(model, tok, item)
    assert sum(t == model.config.image_token_id for t in e.ids) == 3 * model.config.n_patches
    ids, _, mask, pixels, index = collate([e], tok.pad_token_id)
    base = model(ids, pixels, index).logits[0, -1]
    # another picture changes the answer's logits; swapping two images (the index embedding) does too
    assert not torch.allclose(model(ids, pixels.flip(-1), index).logits[0, -1], base)
    assert not torch.allclose(model(ids, pixels[[1, 0, 2]], index).logits[0, -1], base)
    with pytest.raises(ValueError, match="image-token slots"):
        model(ids, pixels[:2], index[:2])
    item.prompt = item.prompt.replace("<image>", "", 1)
    with pytest.raises(ValueError, match="2 <image> placeholder"):
        encode(tok, model.config, item, with_answer=False)


def test_cached_greedy_decoding_equals_full_forward_and_ignores_padding(ckpt, data):
    model, tok = load_vlm(ckpt)
    items = load_items(data["medmim"])[:3]
    batch = [_enc(model, tok, it) for it in items]
    out = generate(model, batch, max_new_tokens=6, stop_tokens=[], pad_id=tok.pad_token_id)
    for e, new in zip(batch, out):
        ids = list(e.ids)
        for _ in range(6):  # no cache, no padding: the plain forward
            x, _, _, pixels, index = collate([Encoded(ids, ids, e.pixels)], tok.pad_token_id)
            with torch.no_grad():
                ids.append(int(model(x, pixels, index).logits[0, -1].argmax()))
        assert ids[len(e.ids):] == new
        assert generate(model, [e], 6, [], tok.pad_token_id)[0] == new  # alone == in a left-padded batch


def test_resumed_training_equals_uninterrupted(data, tmp_path):
    cfg = dict(data=[str(data["captions"])], max_steps=4, save_every=2, **TINY)
    whole = train_vlm(MedTrainConfig(out_dir=str(tmp_path / "a"), **cfg))
    train_vlm(MedTrainConfig(out_dir=str(tmp_path / "b"), stop_at=2, **cfg))
    resumed = train_vlm(MedTrainConfig(out_dir=str(tmp_path / "b"), **cfg))
    # time-boxed chunks: each run stops after its first step (with a checkpoint), the next one continues
    chunks = [train_vlm(MedTrainConfig(out_dir=str(tmp_path / "c"), time_limit_s=1e-9, **cfg)).name for _ in range(4)]
    assert chunks == ["step-000001", "step-000002", "step-000003", "step-000004"]
    a = load_file(whole / "model.safetensors")
    for run in (resumed, tmp_path / "c" / chunks[-1]):
        b = load_file(run / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a" / "loss.png").is_file()


def test_lora_stage_trains_adapters_and_vision_only(ckpt, data, tmp_path):
    base = load_file(ckpt / "model.safetensors")
    out = train_vlm(MedTrainConfig(data=[str(data["medmim"])], out_dir=str(tmp_path / "lora"), init_from=str(ckpt),
                                   lora_rank=2, max_steps=2, save_every=2, **TINY))
    tuned = load_file(out / "model.safetensors")
    lora = [k for k in tuned if "lora_" in k]
    assert lora and any(not torch.equal(tuned[k], torch.zeros_like(tuned[k])) for k in lora if "lora_B" in k)
    for k, v in base.items():
        k2 = k.replace("_proj.weight", "_proj.base_layer.weight") if k.startswith("decoder.layers") and "_proj" in k else k
        if k.startswith("decoder."):
            assert torch.equal(tuned[k2], v), k  # the decoder's own weights are frozen
    assert not torch.equal(tuned["projector.0.weight"], base["projector.0.weight"])  # the vision side trains
    model, tok = load_vlm(out)  # reloads with its adapters: same outputs as the saved weights imply
    assert model.config.lora["r"] == 2
    e = _enc(model, tok, load_items(data["medmim"])[0])
    ids, _, _, pixels, index = collate([e], tok.pad_token_id)
    again, _ = load_vlm(out)
    assert torch.equal(model(ids, pixels, index).logits, again(ids, pixels, index).logits)


def test_bad_training_input_is_refused(data, tmp_path):
    with pytest.raises(ValueError, match="no training data"):
        train_vlm(MedTrainConfig(out_dir=str(tmp_path / "x"), **TINY))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        train_vlm(MedTrainConfig(data=[str(data["medmim"])], out_dir=str(tmp_path / "y"), max_steps=1,
                                 **{**TINY, "decoder": {"max_position_embeddings": 24}}))
    (tmp_path / "z").mkdir()
    (tmp_path / "z" / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ValueError, match="not a DuoMind VLM"):
        load_vlm(tmp_path / "z")
