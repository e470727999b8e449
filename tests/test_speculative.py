"""Speculative decoding: greedy exactness for every drafter and model, sampling keeps the distribution,
FIRP's training forward equals its decode forward, predictors save/load, bad input fails clearly."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from duomind.config import ModelConfig
from duomind.generate import generate
from duomind.generate.drafters import DraftModel, FIRPDrafter, MedusaDrafter, PromptLookup, predictor_drafter
from duomind.generate.predictors import build, load_predictors, save_predictors
from duomind.generate.spec_train import base_pass, pseudo_logits, train_predictors
from duomind.generate.speculative import (
    Draft,
    Pseudo,
    Stats,
    ancestors,
    speculative_generate,
    tree_forward,
)
from duomind.model import DuoMind, KVCache

V = 48


def _noisy(module, scale: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() == 2:
                p.add_(scale * torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))
    return module.eval()


def _models():
    torch.manual_seed(0)
    yield "dssn-qknorm", DuoMind(ModelConfig(vocab_size=V, num_hidden_layers=3, norm_style="dssn", qk_norm=True))
    torch.manual_seed(1)
    yield "gemma-like", DuoMind(ModelConfig(vocab_size=V, num_hidden_layers=3, norm_style="sandwich",
                                            attn_softcap=5.0, final_softcap=3.0, attention_window=4,
                                            window_layers=[0, 2], tie_word_embeddings=True))
    torch.manual_seed(2)
    yield "moge", DuoMind(ModelConfig.from_preset("tiny-moge", vocab_size=V, num_hidden_layers=3))


@pytest.fixture(scope="module")
def hf_llama(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    from duomind.convert import load_hf_model_as_duomind

    torch.manual_seed(3)
    hf = LlamaForCausalLM(LlamaConfig(vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                      num_attention_heads=4, num_key_value_heads=2, initializer_range=0.1))
    path = tmp_path_factory.mktemp("llama")
    hf.save_pretrained(path)
    return load_hf_model_as_duomind(path).eval()


def _drafters(model, draft):
    firp = _noisy(build(model, "firp", 3, 2), 0.3, 0)
    medusa = _noisy(build(model, "medusa", 3), 2.0, 1)
    return {
        "firp-chain": lambda: FIRPDrafter(model, firp),
        "firp-tree": lambda: FIRPDrafter(model, firp, width=3, budget=9),
        "medusa-tree": lambda: MedusaDrafter(model, medusa, width=2, budget=6),
        "lookup": lambda: PromptLookup(k=4),
        "draft-model": lambda: DraftModel(draft, k=3),
        "self-draft": lambda: DraftModel(model, k=4),  # accepts everything: long accepted runs
    }


def _prompts(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(1, 10, (1,), generator=g))
        out.append(torch.randint(0, V, (length,), generator=g).tolist())
    out.append([5, 6, 7, 5, 6, 7, 5, 6])  # repeats: prompt lookup drafts from it
    return out


def test_greedy_speculative_equals_plain_greedy_for_every_drafter_and_model(hf_llama):
    torch.manual_seed(9)
    draft = DuoMind(ModelConfig(vocab_size=V, num_hidden_layers=1)).eval()
    for (name, model), prompt_seed in zip([*_models(), ("hf-llama", hf_llama)], itertools.count()):
        model.eval()
        prompts = _prompts(5, prompt_seed)
        reference = [generate(model, [p], max_new_tokens=16)[0] for p in prompts]
        for dname, make in _drafters(model, draft).items():
            stats = Stats()
            got = [speculative_generate(model, p, make(), max_new_tokens=16, stats=stats) for p in prompts]
            assert got == reference, f"{name} / {dname}"
            assert stats.new_tokens == 16 * len(prompts)
            if dname == "self-draft":
                assert stats.accepted == stats.drafted > 0 and stats.acceptance_per_position[0] == 1.0


class Oracle:
    """Drafts a tree whose first branch is wrong and whose second branch is the true continuation."""

    pseudo = None
    max_nodes = 6

    def __init__(self, truth: list[int]) -> None:
        self.truth = truth

    def start(self, prompt, sampling):
        self.prompt_len = len(prompt)

    def observe(self, out, row):
        pass

    def propose(self, history):
        done = len(history) - self.prompt_len
        nxt = self.truth[done:done + 3]
        if len(nxt) < 3:
            return Draft([], [])
        wrong = [(t + 1) % V for t in nxt]
        # wrong chain first (nodes 0-2), then the right one (3-5): acceptance must move cache rows 3..5
        return Draft(wrong + nxt, [-1, 0, 1, -1, 3, 4])


def test_tree_acceptance_off_the_first_branch_compacts_the_cache():
    model = next(_models())[1].eval()
    prompt = [3, 1, 4, 1, 5]
    truth = generate(model, [prompt], max_new_tokens=24)[0]
    stats = Stats()
    assert speculative_generate(model, prompt, Oracle(truth), max_new_tokens=24, stats=stats) == truth
    assert stats.accepted >= 3 * (stats.steps - 1) and stats.steps <= 8


def test_stop_tokens_and_budget():
    model = next(_models())[1].eval()
    free = generate(model, [[1, 2, 3]], max_new_tokens=12)[0]
    stop = free[5]
    expect = generate(model, [[1, 2, 3]], max_new_tokens=12, stop_tokens=[stop])[0]
    got = speculative_generate(model, [1, 2, 3], DraftModel(model, k=4), max_new_tokens=12, stop_tokens=[stop])
    assert got == expect
    assert speculative_generate(model, [1, 2, 3], DraftModel(model, k=4), max_new_tokens=3) == free[:3]


@pytest.mark.parametrize("index", range(3))
def test_firp_training_forward_equals_decode_forward(index):
    """Training runs only the pseudo positions over the base pass's keys/values; decoding runs them beside the
    real nodes over a KV cache. Same logits (sliding windows and soft-capping included)."""
    model = list(_models())[index][1].eval()
    firp = _noisy(build(model, "firp", 3, 2), 0.3, 0)
    x = torch.randint(0, V, (1, 10), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        out, kv = base_pass(model, x)
        ref = pseudo_logits(model, firp, out.hidden_states[2], kv)[0]  # (T, k, V)
        cache = KVCache(model.config, 1, 64)
        ps = Pseudo(2, 3, lambda h: firp(h, 3))
        out = tree_forward(model, cache, x[0, :6], torch.arange(6), torch.ones(6, 6, dtype=torch.bool).tril(),
                           ps, [5], keep=[5])
        assert torch.allclose(out.pseudo_logits[0], ref[5], atol=1e-5)
        cache.advance(6)
        out = tree_forward(model, cache, x[0, 6:9], torch.arange(6, 9), ancestors([-1, 0, 1]), ps, [0, 1, 2])
        assert torch.allclose(out.pseudo_logits, ref[6:9], atol=1e-5)
        assert torch.allclose(out.logits, model(x).logits[0, 6:9], atol=1e-5)


def test_speculative_sampling_keeps_the_distribution():
    """A DuoMind model with its attention outputs zeroed is a bigram model: p(next | last token) exactly.

    So one long sampled sequence gives many independent draws of each row p(. | a), to compare with the
    exact rows, while drafts are accepted and rejected in every pattern along the way.
    """
    torch.manual_seed(5)
    cfg = dict(vocab_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
               init_std=0.3, max_position_embeddings=4096)
    model = DuoMind(ModelConfig(**cfg)).eval()
    with torch.no_grad():
        for block in model.layers:
            block.attn.o_proj.weight.zero_()
        exact = torch.softmax(model(torch.arange(4)[:, None]).logits[:, 0].float(), -1)  # (a, next)
    torch.manual_seed(6)
    draft = DuoMind(ModelConfig(**cfg)).eval()
    firp = _noisy(build(model, "firp", 2, 1), 1.0, 2)
    n = 1500
    for make in (lambda: FIRPDrafter(model, firp, width=2, budget=4), lambda: DraftModel(draft, k=3)):
        stats = Stats()
        seq = [0] + speculative_generate(model, [0], make(), max_new_tokens=n, temperature=1.0, seed=1, stats=stats)
        counts = torch.zeros(4, 4)
        for a, b in zip(seq, seq[1:]):
            counts[a, b] += 1
        rows = counts.sum(1)
        # TV of each row <= sqrt(K / n_a) / 2 in expectation, plus a deviation bound at failure odds 1e-4
        tol = 0.5 * math.sqrt(4 / rows.min()) + math.sqrt(math.log(1e4) / (2 * rows.min()))
        tv = 0.5 * (counts / rows[:, None] - exact).abs().sum(1)
        assert (tv < tol).all(), (tv, tol)
        assert 0 < stats.accepted < stats.drafted  # both accept and reject branches ran


def test_training_lowers_the_loss_and_predictors_round_trip(tmp_path):
    model = next(_models())[1].eval()
    windows = torch.randint(0, V, (16, 24), generator=torch.Generator().manual_seed(0))
    # the model's own greedy text: its future hidden states are predictable, so there is something to learn
    windows = torch.tensor([w[:2].tolist() + generate(model, [w[:2].tolist()], max_new_tokens=22)[0] for w in windows])
    firp, medusa = build(model, "firp", 2, 2), build(model, "medusa", 2)
    first = train_predictors(model, [firp, medusa], windows, steps=1, batch_size=4, sources=8, lr=0.0, progress=False)
    last = train_predictors(model, [firp, medusa], windows, steps=40, batch_size=4, sources=8, lr=3e-3,
                            progress=False)
    assert last[0]["ce"] < first[0]["ce"] and last[1]["ce"] < first[1]["ce"]
    save_predictors(firp, model, tmp_path / "firp")
    loaded, meta = load_predictors(tmp_path / "firp", model)
    assert meta["kind"] == "firp" and meta["layer"] == 2 and meta["k"] == 2
    h = torch.randn(3, model.config.hidden_size)
    assert torch.equal(loaded(h), firp(h))
    drafter = predictor_drafter(model, tmp_path / "firp", k=1)
    assert drafter.pseudo.k == 1 and drafter.pseudo.layer == 2


def test_bad_input_is_refused_clearly(tmp_path):
    model = next(_models())[1].eval()
    for layer in (0, 3, None):
        with pytest.raises(ValueError, match="out of range"):
            build(model, "firp", 2, layer)
    with pytest.raises(ValueError, match="k \\(draft positions\\)"):
        build(model, "firp", 0, 1)
    firp = build(model, "firp", 2, 1)
    save_predictors(firp, model, tmp_path / "p")
    with pytest.raises(ValueError, match="k=3 is out of range"):
        predictor_drafter(model, tmp_path / "p", k=3)
    torch.manual_seed(11)
    twin = DuoMind(model.config)  # same shapes, other weights
    with pytest.raises(ValueError, match="trained for another model"):
        load_predictors(tmp_path / "p", twin)
    wider = DuoMind(ModelConfig(vocab_size=V, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                                num_key_value_heads=1))
    with pytest.raises(ValueError, match="hidden_size=64.*hidden_size=32"):
        load_predictors(tmp_path / "p", wider)
    with pytest.raises(FileNotFoundError, match="speculate train"):
        load_predictors(tmp_path / "missing", model)
    with pytest.raises(ValueError, match="empty prompt"):
        speculative_generate(model, [], None)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        speculative_generate(model, [1], None, max_new_tokens=10**6)
    with pytest.raises(ValueError, match="parent must come before"):
        ancestors([-1, 2, 0])


def test_cli_train_generate_and_bench(tmp_path, tiny_tokenizer_dir, corpus_file, capsys):
    from duomind.cli import main
    from duomind.config import TrainConfig
    from duomind.generate.cli import generate_cli
    from duomind.generate.speculate_cli import bench_cli
    from duomind.train import train

    run = train(TrainConfig(out_dir=str(tmp_path / "run"), data=str(corpus_file), tokenizer=str(tiny_tokenizer_dir),
                            seq_len=32, global_batch_size=8, micro_batch_size=8, max_steps=4, save_every=4,
                            progress=False, model_preset="tiny"))
    main(["speculate", "train", str(run), str(run / "predictors"), "--data", str(corpus_file), "--layer", "1", "--k", "2",
          "--steps", "2", "--seq_len", "32", "--sources", "8"])
    assert (run / "predictors" / "drafter.json").is_file()  # beside the checkpoint: found by default
    plain = generate_cli(str(run), "Q: What is 2 + 3?\nA:", max_new_tokens=8, chat=False)
    for method in ("firp", "lookup"):
        assert generate_cli(str(run), "Q: What is 2 + 3?\nA:", max_new_tokens=8, chat=False, speculative=method,
                            tree_width=2) == plain
    main(["speculate", "bench", str(run), "--predictors", f"[{run / 'predictors'}]", "--n_prompts", "1",
          "--max_new_tokens", "6", "--repeats", "1"])
    assert "tokens/s" in capsys.readouterr().out
    result = bench_cli(str(run), predictors=[str(run / "predictors")], n_prompts=2, max_new_tokens=6, repeats=1)
    assert set(result) == {"plain", "lookup", "firp:predictors chain", "firp:predictors tree"}
    assert all(row["equal_to_plain"] and row["tokens_per_s"] > 0 for row in result.values())
    with pytest.raises(SystemExit, match="out of range"):
        main(["speculate", "train", str(run), str(tmp_path / "bad"), "--data", str(corpus_file), "--layer", "2"])
    with pytest.raises(SystemExit, match="needs --draft"):
        main(["generate", str(run), "hi", "--speculative", "draft"])
