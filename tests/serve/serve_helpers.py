"""Serving test helpers: a tiny random model, and a constructed model whose next token is a fixed map."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time

import torch

from duomind.config import ModelConfig
from duomind.model import DuoMind


def tiny_model(vocab: int, seed: int = 0, context: int = 256) -> DuoMind:
    torch.manual_seed(seed)
    return DuoMind(ModelConfig(vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=2, max_position_embeddings=context)).eval()



def map_model(vocab: int, table: dict[int, list[int]]) -> DuoMind:
    """A real DuoMind whose greedy next token depends only on the current one: table[cur] = [1st, 2nd, ...].

    Attention and MLP outputs are zeroed, so the residual stream is the one-hot embedding of the current
    token and the LM head reads the preference list off it (logits 10, 9, 8, ... in order; others 0).
    """
    cfg = ModelConfig(vocab_size=vocab, hidden_size=vocab, num_hidden_layers=1, num_attention_heads=1,
                      num_key_value_heads=1, head_dim=16, max_position_embeddings=512)
    model = DuoMind(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight", "lm_head.weight")):
                p.zero_()
        model.embed.weight.copy_(torch.eye(vocab))
        for cur, prefs in table.items():
            for rank, nxt in enumerate(prefs):
                model.lm_head.weight[nxt, cur] = 10.0 - rank
    return model


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(checkpoint, *args: str, timeout: float = 60.0):
    """`duomind serve CHECKPOINT` in a subprocess on a free port; yields its base URL, stops it after."""
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "duomind.cli", "serve", str(checkpoint), "--port", str(port), "--threads", "1",
           "--model_name", "tiny", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {proc.stdout.read()}")
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not come up")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
