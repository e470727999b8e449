"""`spatial ask` / `spatial bench` against real backends: an OpenAI-compatible HTTP endpoint and a local
DuoMind checkpoint (tiny, random: the test checks the plumbing, not the answers)."""

from __future__ import annotations

import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from duomind.apps.spatial.cli import ask_cli, bench_cli, describe_cli


@pytest.fixture(scope="module")
def ssd_path(tmp_path_factory):
    d = tmp_path_factory.mktemp("spatial_backends")
    describe_cli(str(d / "city"), out=str(d / "ssd.json"), synthetic=True)
    return d / "ssd.json"


class _Endpoint(BaseHTTPRequestHandler):
    prompts: list[str] = []

    def do_POST(self):  # noqa: N802 - the stdlib's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Endpoint.prompts.append(body["messages"][0]["content"])
        reply = {"choices": [{"message": {"role": "assistant", "content": "The answer is B."}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_bench_against_an_openai_compatible_endpoint(ssd_path, tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Endpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        out = tmp_path / "bench.json"
        result = bench_cli(str(ssd_path), llm=url, model="stub", per_category=4, budget=600, out=str(out))
        rows = json.loads(out.read_text())["rows"]
        # every reply parsed to "B"; accuracy is exactly the share of questions whose answer is B
        assert all(r["choice"] == "B" for r in rows)
        assert result["accuracy"] == pytest.approx(sum(r["answer"] == "B" for r in rows) / len(rows))
        assert len(_Endpoint.prompts) == len(rows)
        assert all("SCENE DESCRIPTION:" in p and "TASK:" in p for p in _Endpoint.prompts)
        reply = ask_cli(str(ssd_path), "Where would a new school fit best?", llm=url, task="site_selection")
        assert reply == "The answer is B." and "site" in _Endpoint.prompts[-1]
    finally:
        server.shutdown()


def test_ask_with_a_local_duomind_checkpoint(ssd_path, tmp_path, tiny_tokenizer_dir):
    import torch

    from duomind.config import ModelConfig
    from duomind.model import DuoMind
    from duomind.tokenizer import load_tokenizer

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_tokenizer_dir, ckpt)
    torch.manual_seed(0)
    DuoMind(ModelConfig(vocab_size=len(load_tokenizer(ckpt)), num_hidden_layers=2, hidden_size=64,
                        intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                        max_position_embeddings=4096)).eval().save_pretrained(ckpt)
    q = "How far is the park from the school?"
    reply = ask_cli(str(ssd_path), q, llm=str(ckpt), budget=150, max_tokens=4)
    assert isinstance(reply, str) and reply == ask_cli(str(ssd_path), q, llm=str(ckpt), budget=150, max_tokens=4)
    # a description longer than the model's window is refused with the fix named, not truncated silently
    small = tmp_path / "small"
    shutil.copytree(ckpt, small)
    cfg = json.loads((small / "config.json").read_text())
    (small / "config.json").write_text(json.dumps({**cfg, "max_position_embeddings": 64}))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        ask_cli(str(ssd_path), q, llm=str(small), budget=150, max_tokens=4)
