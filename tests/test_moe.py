"""MoE / MoGE layers: dispatch against a per-token loop, routing invariants, metrics, upcycling, save/load."""

from __future__ import annotations

import pytest
import torch

from duomind.config import ModelConfig
from duomind.model import DuoMind
from duomind.moe import (
    Experts,
    GroupedRouter,
    LoadMeter,
    MoELayer,
    TopKRouter,
    balance_loss,
    device_loads,
    dropless_dispatch,
    imbalance_score,
    upcycle_state,
    update_router_bias,
)


def randomise(module: torch.nn.Module, seed: int = 0, std: float = 0.3) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


def per_token_reference(x, routing, experts: Experts) -> torch.Tensor:
    """The definition: each token's output is the weighted sum of its chosen experts, one token at a time."""
    rows = []
    for t in range(x.shape[0]):
        y = torch.zeros_like(x[t])
        for k in range(routing.experts.shape[1]):
            y = y + routing.weights[t, k] * experts.expert(x[t], int(routing.experts[t, k]))
        rows.append(y)
    return torch.stack(rows)


def skewed(T: int, d: int = 16, seed: int = 1) -> torch.Tensor:
    # A shared offset makes the router favour a few experts, so some experts get no tokens at all.
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, d, generator=g) + 2.0 * torch.randn(1, d, generator=g)


@pytest.mark.parametrize("impl", ["loop", "grouped"])
@pytest.mark.parametrize("T", [1, 7, 40])
def test_dropless_dispatch_equals_per_token_loop(impl, T):
    torch.manual_seed(0)
    router = randomise(TopKRouter(16, 8, 3, renormalize=True), seed=1)
    experts = randomise(Experts(8, 16, 12, impl=impl), seed=2)
    x = skewed(T).requires_grad_()
    routing = router(x)
    assert T == 1 or (torch.bincount(routing.experts.flatten(), minlength=8) == 0).any() or T > 7
    out = dropless_dispatch(x, routing, experts)
    ref_x = x.detach().clone().requires_grad_()
    ref_experts = randomise(Experts(8, 16, 12), seed=2)
    ref = per_token_reference(ref_x, router(ref_x), ref_experts)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(out)
    (out * g).sum().backward()
    (ref * g).sum().backward()
    torch.testing.assert_close(x.grad, ref_x.grad, atol=1e-5, rtol=1e-5)
    for name in ("gate_up_proj", "down_proj"):
        torch.testing.assert_close(getattr(experts, name).grad, getattr(ref_experts, name).grad, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # the inference paths (T = 1 has its own) agree too
        torch.testing.assert_close(dropless_dispatch(x, router(x), experts), ref, atol=1e-5, rtol=1e-5)


def test_experts_with_no_tokens_get_zero_gradient():
    experts = randomise(Experts(4, 8, 6))
    x = torch.randn(5, 8, requires_grad=True)
    counts = torch.tensor([0, 5, 0, 0])
    experts(x, counts).sum().backward()
    assert experts.gate_up_proj.grad[[0, 2, 3]].abs().sum() == 0
    assert experts.gate_up_proj.grad[1].abs().sum() > 0


def test_moge_with_one_group_is_topk_without_renormalisation():
    x = torch.randn(30, 16)
    moe = randomise(MoELayer(16, 8, 2, 12, groups=1, grouped_routing=False, renormalize=False))
    moge = MoELayer(16, 8, 2, 12, groups=1, grouped_routing=True)
    moge.load_state_dict(moe.state_dict())
    assert isinstance(moge.router, GroupedRouter)
    a, b = moe.router(x), moge.router(x)
    assert torch.equal(a.experts.sort(-1).values, b.experts.sort(-1).values)
    torch.testing.assert_close(moe(x), moge(x), atol=1e-6, rtol=0)


def test_moge_takes_k_prime_from_every_group_with_raw_softmax_weights():
    router = randomise(GroupedRouter(16, 12, 6, groups=3))  # groups of 4, K' = 2
    x = skewed(50)
    r = router(x)
    groups = r.experts // 4  # (T, K) group of each chosen expert
    for g in range(3):
        assert ((groups == g).sum(-1) == 2).all()
        inside = r.probs[:, 4 * g:4 * g + 4]
        best2 = inside.topk(2, -1).values.sum(-1)
        chosen = (r.weights * (groups == g)).sum(-1)
        torch.testing.assert_close(chosen, best2)  # the top-2 inside the group, weights = softmax scores
    assert (r.weights.sum(-1) < 1).all()  # not renormalised
    torch.testing.assert_close(r.probs.sum(-1), torch.ones(50))  # one softmax over all experts


def test_moge_is_balanced_by_construction_and_moe_is_not():
    moe = randomise(MoELayer(16, 8, 4, 12, groups=4, grouped_routing=False), seed=3)
    moge = MoELayer(16, 8, 4, 12, groups=4, grouped_routing=True)
    moge.load_state_dict(moe.state_dict())
    x = skewed(64)
    for layer, balanced in ((moge, True), (moe, False)):
        counts = torch.bincount(layer.router(x).experts.flatten(), minlength=8)
        loads = device_loads(counts, 4)
        assert loads.sum() == 64 * 4
        if balanced:
            assert torch.equal(loads, torch.full((4,), 64)) and imbalance_score(counts, 4, 64) == 0.0
        else:
            assert imbalance_score(counts, 4, 64) > 0.1


def test_router_options_renormalise_and_scale():
    x = torch.randn(10, 16)
    plain = randomise(TopKRouter(16, 6, 2))
    renorm = TopKRouter(16, 6, 2, renormalize=True)
    scaled = TopKRouter(16, 6, 2, scale=True)
    renorm.load_state_dict(plain.state_dict())
    scaled.load_state_dict(plain.state_dict(), strict=False)
    with torch.no_grad():
        scaled.expert_scale.copy_(torch.arange(1.0, 7.0))
    p, r, s = plain(x), renorm(x), scaled(x)
    torch.testing.assert_close(r.weights, p.weights / p.weights.sum(-1, keepdim=True))
    torch.testing.assert_close(s.weights, p.weights * (p.experts + 1).float())


def test_balance_loss_is_one_when_uniform_and_grows_with_concentration():
    T, N, K = 32, 8, 2
    uniform = torch.full((T, N), 1 / N)
    counts = torch.full((N,), T * K // N)
    assert balance_loss(uniform, counts, K).item() == pytest.approx(1.0)
    peaked = torch.zeros(T, N)
    peaked[:, :K] = 1 / K  # every token sends everything to the same K experts
    counts = torch.zeros(N)
    counts[:K] = T
    assert balance_loss(peaked, counts, K).item() == pytest.approx(N / K)


def test_imbalance_score_follows_the_paper_definition():
    counts = torch.tensor([5, 1, 2, 0, 3, 3])  # 3 devices of 2 experts: loads 6, 2, 6
    assert device_loads(counts, 3).tolist() == [6, 2, 6]
    assert imbalance_score(counts, 3, tokens=4) == (6 - 2) / 4


def test_bias_update_moves_load_towards_balance():
    torch.manual_seed(0)
    model = DuoMind(ModelConfig.from_preset("tiny-moge", mlp_type="moe", router_bias_update_rate=1e-3))
    meter = LoadMeter(model)
    x = torch.randint(0, 320, (4, 16))
    spread = []  # std of the per-expert loads, mean over layers
    for _ in range(20):
        meter.reset()
        model(x)
        meter.update()
        spread.append(float(meter.counts.std(-1).mean()))
        update_router_bias(model, meter, rate=1e-3)
    assert model.layers[0].mlp.router.expert_bias.abs().sum() > 0
    assert max(spread[-5:]) < spread[0] / 2
    # the bias only steers selection: the combine weights stay softmax scores
    layer = model.layers[0].mlp
    r = layer.router(torch.randn(3, 64))
    torch.testing.assert_close(r.weights, r.probs.gather(-1, r.experts))


def test_load_meter_metrics_over_micro_batches():
    torch.manual_seed(0)
    model = DuoMind(ModelConfig.from_preset("tiny-moge"))
    meter = LoadMeter(model)
    for _ in range(3):
        model(torch.randint(0, 320, (2, 8)))
        meter.update()
    m = meter.metrics()
    assert meter.tokens == 48 and meter.counts.sum() == 2 * 48 * 4
    assert m["moe_is"] == 0.0 and m["moe_is_max"] == 0.0 and m["moe_load_max_over_mean"] == 1.0
    assert len(m["moe_is_layers"]) == 2


def test_pangu_pro_moe_preset_has_the_published_sizes():
    cfg = ModelConfig.from_preset("pangu-pro-moe")
    assert cfg.experts_per_group == 1 and cfg.num_experts_per_tok == 8
    assert 71.5e9 < cfg.num_parameters() < 72.5e9  # "72 billion total parameters"
    assert 16e9 < cfg.num_active_parameters() < 17e9  # "16 billion ... activated for each token"
    with torch.device("meta"):
        model = DuoMind(ModelConfig.from_preset("pangu-pro-moe", num_hidden_layers=2, vocab_size=128))
    assert sum(p.numel() for p in model.parameters()) == model.model_config.num_parameters()


# --- upcycling ---

def dense_model(seed: int = 0, **kw) -> DuoMind:
    torch.manual_seed(seed)
    return DuoMind(ModelConfig(vocab_size=128, num_hidden_layers=3, **kw)).eval()


@pytest.mark.parametrize("target", [
    dict(mlp_type="moe", num_experts=4, num_experts_per_tok=2, norm_topk_prob=True),
    dict(mlp_type="moge", num_experts=8, num_experts_per_tok=4, expert_groups=4, router_scale=True),
    dict(mlp_type="moge", num_experts=8, num_experts_per_tok=4, expert_groups=2, router_scale=True,
         first_dense_layers=1, num_shared_experts=1),
])
def test_upcycled_model_with_identical_experts_equals_the_dense_model(target):
    dense = dense_model()
    cfg = dense.model_config
    moe_cfg = ModelConfig(**{**cfg.to_dict(), **target, "moe_intermediate_size": cfg.intermediate_size})
    state = upcycle_state(cfg, dense.state_dict(), moe_cfg)
    moe = DuoMind(moe_cfg).eval()
    moe.load_state_dict(state)
    x = torch.randint(0, 128, (2, 9))
    torch.testing.assert_close(moe(x).logits, dense(x).logits, atol=1e-5, rtol=0)
    noisy = DuoMind(moe_cfg).eval()
    noisy.load_state_dict(upcycle_state(cfg, dense.state_dict(), moe_cfg, noise=0.1, router_std=0.1))
    assert (noisy(x).logits - dense(x).logits).abs().max() > 1e-3  # noise really breaks the symmetry


# --- whole model ---

def test_save_load_and_hf_generate_with_moge(tmp_path):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = DuoMind(ModelConfig.from_preset("tiny-moge", router_scale=True, router_bias_update_rate=0.1)).eval()
    with torch.no_grad():
        model.layers[1].mlp.router.expert_bias.copy_(torch.linspace(-0.2, 0.2, 8))
        model.layers[1].mlp.router.expert_scale.uniform_(0.5, 1.5)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.equal(loaded.layers[1].mlp.router.expert_bias, model.layers[1].mlp.router.expert_bias)
    x = torch.randint(0, 320, (2, 6))
    assert torch.equal(loaded(x).logits, model(x).logits)
    out = loaded.generate(x, max_new_tokens=4, do_sample=False)
    seq = x.clone()
    for _ in range(4):
        seq = torch.cat([seq, model(seq).logits[:, -1:].argmax(-1)], 1)
    assert torch.equal(out, seq)


def test_training_forward_returns_the_balance_loss():
    torch.manual_seed(0)
    model = DuoMind(ModelConfig.from_preset("tiny-moge", router_aux_loss_coef=0.5)).train()
    x = torch.randint(0, 320, (2, 8))
    out = model(x, labels=x)
    assert out.aux_loss is not None and out.aux_loss.item() >= 2 * 0.99  # two layers, each >= ~1
    ce = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 320), x[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, ce + 0.5 * out.aux_loss)
    out.loss.backward()
    assert model.layers[0].mlp.router.weight.grad.abs().sum() > 0
    assert model.eval()(x).aux_loss is None


# --- training ---

def train_cfg(tmp_path, tok, data, **kw):
    from duomind.config import TrainConfig

    base = dict(out_dir=str(tmp_path / "run"), data=str(data), tokenizer=str(tok), seq_len=32, global_batch_size=8,
                micro_batch_size=4, max_steps=4, save_every=2, lr=1e-2, warmup_steps=1, progress=False, log_every=1,
                model_preset="tiny-moge")
    return TrainConfig(**{**base, **kw})


def rows(run) -> list[dict]:
    import json

    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


def test_trainer_logs_imbalance_per_step_moge_zero_moe_positive(tmp_path, tiny_tokenizer_dir, corpus_file):
    from duomind.train import load_model, train

    for kind in ("moge", "moe"):
        out = train(train_cfg(tmp_path / kind, tiny_tokenizer_dir, corpus_file, model={"mlp_type": kind}))
        logged = rows(tmp_path / kind / "run")
        assert [r["step"] for r in logged] == [1, 2, 3, 4]
        for r in logged:
            assert len(r["moe_is_layers"]) == 2 and r["moe_aux_loss"] > 1.0  # two layers, each >= ~1
            if kind == "moge":
                assert r["moe_is"] == 0.0 and r["moe_is_max"] == 0.0 and r["moe_load_max_over_mean"] == 1.0
        if kind == "moe":
            assert all(r["moe_is_max"] > 0 for r in logged)
        model = load_model(out)
        assert model.config.mlp_type == kind and type(model.layers[1].mlp).__name__ == "MoELayer"


def test_moe_resume_is_exact_with_router_bias(tmp_path, tiny_tokenizer_dir, corpus_file):
    from duomind.train import train

    moe = {"mlp_type": "moe", "router_bias_update_rate": 0.01}
    straight = train(train_cfg(tmp_path / "a", tiny_tokenizer_dir, corpus_file, model=moe))
    c = train_cfg(tmp_path / "b", tiny_tokenizer_dir, corpus_file, model=moe, stop_at=2)
    train(c)
    c.stop_at = None
    resumed = train(c)
    from safetensors.torch import load_file

    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a["layers.0.mlp.router.expert_bias"].abs().sum() > 0  # the bias really moved
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)


def test_balance_loss_coefficient_reaches_the_router_gradient(tiny_tokenizer, corpus_file):
    from duomind.config import TrainConfig
    from duomind.train.data import build_examples, read_records
    from duomind.train.loop import accumulate

    ex = build_examples(tiny_tokenizer, read_records(corpus_file), "pretrain", 32)
    idx = list(range(8))
    n_target = sum(sum(1 for y in ex.labels[i][1:] if y != -100) for i in idx)
    grads = {}
    for coef in (0.0, 1.0):
        torch.manual_seed(0)
        model = DuoMind(ModelConfig.from_preset("tiny-moge", vocab_size=len(tiny_tokenizer),
                                                router_aux_loss_coef=coef))
        meter = LoadMeter(model)
        loss, _ = accumulate(model, None, ex, idx, n_target, TrainConfig(micro_batch_size=4, global_batch_size=8),
                             tiny_tokenizer.pad_token_id, "cpu", meter=meter)
        grads[coef] = (float(loss), model.layers[0].mlp.router.weight.grad.clone(),
                       model.lm_head.weight.grad.clone(), meter.aux)
    assert grads[0.0][0] == pytest.approx(grads[1.0][0])  # the returned loss is the LM loss alone
    assert grads[1.0][3] > 1.0 and grads[0.0][3] == pytest.approx(grads[1.0][3])
    assert (grads[0.0][1] - grads[1.0][1]).abs().max() > 1e-4  # the balance loss moves the router
    torch.testing.assert_close(grads[0.0][2], grads[1.0][2])  # but not the head, which comes after every router


def test_two_process_moe_run_equals_one_process(tmp_path, tiny_tokenizer_dir, corpus_file):
    """Data parallel MoE: the expert loads (for the router bias and the logged IS) are summed over ranks."""
    import json
    import socket
    import subprocess
    import sys

    from safetensors.torch import load_file

    from duomind.train import train

    moe = {"mlp_type": "moe", "expert_groups": 4, "router_bias_update_rate": 0.01, "router_aux_loss_coef": 0.01}
    one = train(train_cfg(tmp_path, tiny_tokenizer_dir, corpus_file, out_dir=str(tmp_path / "one"), model=moe,
                          lr=1e-3, save_every=100))
    args = ["--data", str(corpus_file), "--tokenizer", str(tiny_tokenizer_dir), "--max_steps", "4", "--seq_len", "32",
            "--global_batch_size", "8", "--micro_batch_size", "4", "--progress", "false", "--threads", "1",
            "--model_preset", "tiny-moge", "--model", json.dumps(moe), "--lr", "1e-3", "--warmup_steps", "1",
            "--log_every", "1"]
    with socket.socket() as sock:  # a free port: fixed ones collide when test sessions run side by side
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "duomind.cli", "train", *args, "--out_dir", str(tmp_path / "two")]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    a, b = load_file(one / "model.safetensors"), load_file(tmp_path / "two" / "step-000004" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0)
    for r1, r2 in zip(rows(tmp_path / "one"), rows(tmp_path / "two"), strict=True):
        assert r1["moe_is_layers"] == pytest.approx(r2["moe_is_layers"], abs=1e-6)
        assert r1["moe_aux_loss"] == pytest.approx(r2["moe_aux_loss"], rel=1e-5)


# --- CLI: upcycle and stats ---

@pytest.fixture
def dense_ckpt(tmp_path, tiny_tokenizer):
    torch.manual_seed(0)
    model = DuoMind(ModelConfig(vocab_size=len(tiny_tokenizer), num_hidden_layers=3))
    model.save_pretrained(tmp_path / "dense")
    tiny_tokenizer.save_pretrained(tmp_path / "dense")
    return tmp_path / "dense"


def test_cli_upcycle_then_stats(dense_ckpt, corpus_file, tmp_path, capsys):
    import json

    from duomind.cli import main
    from duomind.train import load_model

    main(["moe", "upcycle", str(dense_ckpt), str(tmp_path / "moge"), "--experts", "8", "--groups", "4",
          "--top_k", "4", "--first_dense_layers", "1"])
    out = capsys.readouterr().out
    assert "moge, 8 experts in 4 group(s), top-4" in out
    assert float(out.split("random batch: ")[1].split()[0]) < 1e-5  # the function is preserved
    model = load_model(tmp_path / "moge")
    assert model.config.mlp_type == "moge" and type(model.layers[0].mlp).__name__ == "MLP"
    assert (tmp_path / "moge" / "tokenizer.json").is_file()
    main(["moe", "upcycle", str(dense_ckpt), str(tmp_path / "moe"), "--experts", "8", "--groups", "4",
          "--top_k", "4", "--kind", "moe", "--router_std", "0.5", "--noise", "0.1"])
    for kind in ("moge", "moe"):
        png, js = tmp_path / f"{kind}.png", tmp_path / f"{kind}.json"
        main(["moe", "stats", str(tmp_path / kind), "--data", str(corpus_file), "--out", str(png),
              "--json_out", str(js), "--seq_len", "32", "--batch_size", "4", "--max_batches", "3"])
        printed = capsys.readouterr().out
        data = json.loads(js.read_text())
        assert png.stat().st_size > 1000 and "IS mean" in printed
        assert data["tokens"] == 3 * 4 * 32 and data["layers"] == ([1, 2] if kind == "moge" else [0, 1, 2])
        assert all(sum(row) == data["tokens"] * 4 for row in data["counts"])
        is_max = [row["is_max"] for row in data["summary"]]
        assert (max(is_max) == 0.0) if kind == "moge" else (min(is_max) > 0.0)


@pytest.mark.parametrize("args, message", [
    (["--experts", "6", "--groups", "4", "--top_k", "4"], "num_experts=6 is not divisible by expert_groups=4"),
    (["--experts", "8", "--groups", "4", "--top_k", "12"], r"K'=3 experts per group .* holds only 2"),
    (["--experts", "8", "--groups", "4", "--top_k", "6"], "must be a multiple of expert_groups=4"),
    (["--kind", "soft"], "kind='soft' is not 'moe' or 'moge'"),
])
def test_cli_upcycle_bad_shapes_are_clear_errors(dense_ckpt, tmp_path, args, message):
    from duomind.cli import main

    with pytest.raises(SystemExit, match=f"duomind moe upcycle: error: .*{message}"):
        main(["moe", "upcycle", str(dense_ckpt), str(tmp_path / "out"), *args])
    assert not (tmp_path / "out").exists()


def test_stats_and_upcycle_refuse_wrong_kinds_and_mismatched_checkpoints(dense_ckpt, corpus_file, tmp_path):
    import json

    from duomind.cli import main

    with pytest.raises(SystemExit, match="is a dense model.*duomind moe upcycle"):
        main(["moe", "stats", str(dense_ckpt), "--data", str(corpus_file), "--seq_len", "32"])
    main(["moe", "upcycle", str(dense_ckpt), str(tmp_path / "moe"), "--experts", "4", "--top_k", "2"])
    with pytest.raises(SystemExit, match="already a moe model"):
        main(["moe", "upcycle", str(tmp_path / "moe"), str(tmp_path / "again")])
    config = json.loads((tmp_path / "moe" / "config.json").read_text())
    config["num_experts"] = 8  # the weights hold 4 experts per layer
    (tmp_path / "moe" / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit, match=r"layer 0 holds 4 experts .* but config.json says num_experts=8"):
        main(["moe", "stats", str(tmp_path / "moe"), "--data", str(corpus_file), "--seq_len", "32"])
    from duomind.train import CheckpointError, load_model

    with pytest.raises(CheckpointError, match=r"experts\.\w+_proj.*has shape \[4, .*config.json implies \[8, "):
        load_model(tmp_path / "moe")  # every other loader: the generic shape check names the tensor
