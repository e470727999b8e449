"""Medical app backends: OpenAI-compatible endpoint (images as data URLs, served by a local test server),
a tiny random LLaVA through Hugging Face, and the local DuoMind VLM; per-item failures never stop a run."""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch

from duomind.apps.medical import synth
from duomind.apps.medical.backends import hf_backend, local_backend, openai_backend
from duomind.apps.medical.data import Item, load_image, load_items
from duomind.apps.medical.eval import judge_items, make_judge


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synth.write_dataset(tmp_path_factory.mktemp("med_backends"), n_per_ability=3, captions=4)


class _VLMEndpoint(BaseHTTPRequestHandler):
    """Replies with what it saw: the order of text and image parts and each image's mean pixel value.

    A user text containing "SLOW" is answered after 2 s; "FAIL" gets HTTP 500; "JUNK" gets a body that is
    not a chat completion."""

    calls: list[dict] = []

    def do_POST(self):  # noqa: N802 - the stdlib's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _VLMEndpoint.calls.append(body)
        parts = body["messages"][0]["content"]
        if isinstance(parts, str):  # a judge prompt
            answer = parts.rsplit("Answer:", 1)[1]
            if "slow" in answer:
                time.sleep(2)
            scores = "Scores: 8 7 6 9" if "dark" in answer else "Looks fine to me."
            self._send(200, json.dumps({"choices": [{"message": {"content": scores}}]}).encode())
            return
        text = " ".join(p["text"] for p in parts if p["type"] == "text")
        seen = []
        for p in parts:
            if p["type"] == "image_url":
                url = p["image_url"]["url"]
                assert url.startswith("data:image/png;base64,")
                img = load_image(base64.b64decode(url.split(",", 1)[1]), "L")
                seen.append(f"img{np.asarray(img).mean():.2f}")
            else:
                seen.append("text")
        if "SLOW" in text:
            time.sleep(2)
        if "FAIL" in text:
            self._send(500, b"{}")
            return
        reply = {"choices": [{"message": {"role": "assistant", "content": " ".join(seen)}}]}
        self._send(200, b"not json" if "JUNK" in text else json.dumps(reply).encode())

    def _send(self, code, data):
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def endpoint():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _VLMEndpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_openai_backend_sends_images_as_data_urls_in_place(endpoint, data):
    items = load_items(data["medmim"])[:4]
    replies = openai_backend(endpoint, "m", timeout_s=10)(items)
    for it, r in zip(items, replies):
        means = [f"img{np.asarray(load_image(ref)).mean():.2f}" for ref in it.images]
        assert r.error is None and r.text == " ".join(means + ["text"])  # images first, as in the prompt


def test_openai_backend_records_per_item_failures(endpoint, data, tmp_path):
    good = load_items(data["medhall"])[0]
    (tmp_path / "broken.png").write_bytes(b"garbage")

    def item(i, prompt, images):
        return Item(id=str(i), images=images, prompt=prompt, answer="x")

    items = [item(0, "<image>SLOW", good.images), item(1, "<image>FAIL", good.images),
             item(2, "<image>JUNK", good.images), item(3, "<image><image>two?", good.images),
             item(4, "<image>x", [str(tmp_path / "broken.png")]), item(5, "<image>fine", good.images)]
    replies = openai_backend(endpoint, "m", timeout_s=0.5, retries=1)(items)
    assert "timed out" in replies[0].error
    assert replies[1].error == "HTTP 500"
    assert "malformed reply" in replies[2].error
    assert "2 <image> placeholder(s) for 1 image(s)" in replies[3].error
    assert "cannot be read" in replies[4].error
    assert replies[5].error is None and replies[5].text.endswith("text")
    assert all(r.text is None for r in replies[:5])


def test_judge_over_http_times_out_per_item(endpoint, data):
    # the rewards judge client: a reply that is not four scores, and a timeout, are both per-item failures
    items = load_items(data["medhall"])[:4]
    complete = make_judge(endpoint, timeout_s=0.5, retries=0)
    res = judge_items(items, ["It is dark.", "It is bright.", "slow", None], complete)
    assert res[0] == {"scores": {"clinical_accuracy": 8, "clinical_relevance": 7, "detail_level": 6, "risk_level": 9}}
    assert "no four 1-10 scores" in res[1]["error"]
    assert "timeout" in res[2]["error"]
    assert res[3]["error"] == "no answer to judge"


TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
            "{{ message['content'] }}{% else %}{% for part in message['content'] %}{% if part['type'] == 'image' %}"
            "<image>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory, data):
    """A tiny random LLaVA (CLIP vision + Llama text) with its processor, saved like a hub model."""
    transformers = pytest.importorskip("transformers")
    from duomind.apps.medical.model import build_tokenizer

    tok = build_tokenizer([it.prompt for it in load_items(data["medmim"])], vocab_size=300)
    vision = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=2, image_size=32, patch_size=16, projection_dim=32)
    text = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                                    pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    cfg = transformers.LlavaConfig(vision_config=vision, text_config=text, image_token_id=tok.convert_tokens_to_ids("<image>"),
                                   vision_feature_layer=-1, vision_feature_select_strategy="full")
    torch.manual_seed(0)
    model = transformers.LlavaForConditionalGeneration(cfg)
    proc = transformers.LlavaProcessor(
        image_processor=transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tok, patch_size=16, vision_feature_select_strategy="full", chat_template=TEMPLATE,
        image_token="<image>", num_additional_image_tokens=1)
    path = tmp_path_factory.mktemp("tiny_llava")
    model.save_pretrained(path)
    proc.save_pretrained(path)
    return path


def test_hf_backend_matches_a_manual_generate(tiny_llava, data):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    items = load_items(data["medmim"])[:2]
    replies = hf_backend(str(tiny_llava), max_new_tokens=5)(items)
    proc = AutoProcessor.from_pretrained(tiny_llava, local_files_only=True)
    model = AutoModelForImageTextToText.from_pretrained(tiny_llava, local_files_only=True).eval()
    for it, r in zip(items, replies):
        text = "<|im_start|>user\n" + it.prompt + "<|im_end|>\n<|im_start|>assistant\n"
        inputs = proc(text=text, images=[load_image(x, "RGB") for x in it.images], return_tensors="pt")
        out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
        assert r.error is None
        assert r.text == proc.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    bad = Item(id="b", images=items[0].images[:1], prompt="<image><image>two?", answer=None)
    (reply,) = hf_backend(str(tiny_llava))([bad])
    assert reply.text is None and "placeholder" in reply.error


def test_local_backend_fails_only_the_bad_item(data, tmp_path):
    from duomind.apps.medical.train import MedTrainConfig, train_vlm

    ckpt = train_vlm(MedTrainConfig(data=[str(data["medmim"])], out_dir=str(tmp_path / "r"), max_steps=1,
                                    decoder_preset="tiny", decoder={"max_position_embeddings": 192}, vision_hidden=16,
                                    batch_size=2, progress=False, save_every=1))
    items = load_items(data["medmim"])[:3]
    items[1] = Item(id="missing", images=["/nonexistent.png"], prompt="<image>Q", answer="A")
    items.append(Item(id="long", images=items[0].images[:1], prompt="<image>" + "lesion " * 300, answer="A"))
    replies = local_backend(str(ckpt), max_new_tokens=4)(items)
    assert replies[1].text is None and "does not exist" in replies[1].error
    assert replies[3].text is None and "exceeds the model's 192 positions" in replies[3].error
    assert replies[0].error is None and isinstance(replies[0].text, str)
    assert replies[2].error is None
