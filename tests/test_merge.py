"""Model merging: identities of every method, hand-checked TIES/DARE/SLERP/Model Stock, validation, memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from duomind.config import ConfigError, ModelConfig
from duomind.merge import (
    METHODS,
    MergeConfig,
    MergeError,
    dare,
    linear,
    merge,
    model_stock,
    resolve,
    slerp,
    task_arithmetic,
    ties,
    ties_combine,
    trim,
)


def make_ckpt(path, tok, seed, **overrides):
    from duomind.model import DuoMind

    torch.manual_seed(seed)
    fields = dict(vocab_size=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = DuoMind(ModelConfig(**{**fields, **overrides}))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("merge")
    return {k: make_ckpt(root / k, tiny_tokenizer, seed) for k, seed in (("a", 0), ("b", 1), ("c", 2))}


def weights(path):
    return load_file(str(path / "model.safetensors"))


def run(tmp_path, name, **cfg):
    return weights(merge(MergeConfig.from_dict(cfg), tmp_path / name, progress=False))


def close(a, b, atol=1e-6):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=atol), k


SELF_PARAMS = {"linear": {"weight": 2.0}, "task_arithmetic": {"weight": 0.7}, "ties": {"density": 0.3},
               "dare_linear": {"density": 0.3}, "dare_ties": {"density": 0.3}}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_merging_a_model_with_itself_is_the_identity(method, ckpts, tmp_path):
    m = METHODS[method]
    n = m.max_models or 2
    models = [{"model": str(ckpts["a"]), "parameters": SELF_PARAMS.get(method, {})} for _ in range(n)]
    cfg = {"merge_method": method, "models": models}
    if m.needs_base:
        cfg["base_model"] = str(ckpts["a"])
    if method == "slerp":
        cfg["parameters"] = {"t": 0.3}
    close(run(tmp_path, method, **cfg), weights(ckpts["a"]))


def test_linear_weights_are_averages(ckpts, tmp_path):
    a, b = weights(ckpts["a"]), weights(ckpts["b"])
    models = [{"model": str(ckpts["a"]), "parameters": {"weight": 1.0}},
              {"model": str(ckpts["b"]), "parameters": {"weight": 3.0}}]
    avg = run(tmp_path, "avg", merge_method="linear", models=models)
    close(avg, {k: (a[k] + 3 * b[k]) / 4 for k in a}, atol=1e-6)
    total = run(tmp_path, "sum", merge_method="linear", models=models, parameters={"normalize": False})
    close(total, {k: a[k] + 3 * b[k] for k in a}, atol=1e-5)
    # equal weights: the plain mean, whatever the common weight
    x, y = torch.randn(5), torch.randn(5)
    assert torch.allclose(linear([x, y], [0.2, 0.2]), (x + y) / 2)


def test_task_arithmetic_mean_of_task_vectors(ckpts, tmp_path):
    base, b, c = weights(ckpts["a"]), weights(ckpts["b"]), weights(ckpts["c"])
    out = run(tmp_path, "ta", merge_method="task_arithmetic", base_model=str(ckpts["a"]),
              models=[str(ckpts["b"]), str(ckpts["c"])], parameters={"lambda": 0.5, "normalize": True})
    close(out, {k: base[k] + 0.5 * ((b[k] - base[k]) + (c[k] - base[k])) / 2 for k in base}, atol=1e-6)


def test_ties_trims_elects_signs_and_merges_disjointly():
    base = torch.zeros(4)
    t1, t2, t3 = torch.tensor([3.0, -1, 0.5, -2]), torch.tensor([-1.0, -2, 1, 4]), torch.tensor([2.0, 1, -0.1, 0.2])
    assert torch.equal(trim(t1, 0.5), torch.tensor([3.0, 0, 0, -2]))
    # trimmed: t1 -> [3,0,0,-2], t2 -> [0,-2,0,4], t3 -> [2,1,0,0]; elected signs of the sum [5,-1,0,2]: + - 0 +
    merged = ties(base, [t1, t2, t3], [1, 1, 1], [0.5, 0.5, 0.5])
    assert torch.allclose(merged, torch.tensor([2.5, -2.0, 0.0, 4.0]))  # mean over the agreeing models only
    summed = ties(base, [t1, t2, t3], [1, 1, 1], [0.5] * 3, normalize=False)
    assert torch.allclose(summed, torch.tensor([5.0, -2.0, 0.0, 4.0]))
    shifted = ties(torch.ones(4), [t + 1 for t in (t1, t2, t3)], [1, 1, 1], [0.5] * 3, lam=0.5)
    assert torch.allclose(shifted, 1 + 0.5 * torch.tensor([2.5, -2.0, 0.0, 4.0]))
    # a heavy weight wins the election: t2 with weight 10 flips entry 0 to its sign
    assert ties_combine([trim(t1, 0.5), t2], [1, 10])[0] == -1.0


def test_dare_with_drop_rate_zero_equals_task_arithmetic(ckpts, tmp_path):
    models = [{"model": str(ckpts["b"]), "parameters": {"weight": 0.6, "density": 1.0}},
              {"model": str(ckpts["c"]), "parameters": {"weight": 0.3, "density": 1.0}}]
    common = dict(base_model=str(ckpts["a"]), models=models, parameters={"lambda": 1.5})
    close(run(tmp_path, "dare", merge_method="dare_linear", **common),
          run(tmp_path, "ta", merge_method="task_arithmetic",
              **{**common, "models": [{"model": m["model"], "parameters": {"weight": m["parameters"]["weight"]}}
                                      for m in models]}), atol=1e-6)
    close(run(tmp_path, "dare_ties", merge_method="dare_ties", **common),
          run(tmp_path, "ties", merge_method="ties", **common), atol=1e-6)


def test_dare_drops_and_rescales_reproducibly():
    delta = torch.randn(10_000)
    out = dare(delta, 0.25, torch.Generator().manual_seed(0))
    kept = out != 0
    assert torch.allclose(out[kept], delta[kept] / 0.25)  # survivors are rescaled by 1 / density
    assert 0.2 < kept.float().mean() < 0.3
    assert torch.equal(out, dare(delta, 0.25, torch.Generator().manual_seed(0)))
    assert torch.equal(dare(delta, 1.0, torch.Generator()), delta)


def test_slerp_endpoints_and_arc(ckpts, tmp_path):
    v0, v1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert torch.allclose(slerp(0.0, v0, v1), v0) and torch.allclose(slerp(1.0, v0, v1), v1)
    mid = slerp(0.5, v0, v1)
    assert torch.allclose(mid, torch.tensor([0.5**0.5, 0.5**0.5]))  # on the arc, not the chord
    assert torch.allclose(slerp(0.3, v0, 2 * v0), 1.3 * v0)  # parallel: linear interpolation
    for t, expect in ((0.0, "a"), (1.0, "b")):
        out = run(tmp_path, f"slerp{t}", merge_method="slerp", base_model=str(ckpts["a"]), models=[str(ckpts["b"])],
                  parameters={"t": t})
        close(out, weights(ckpts[expect]), atol=1e-5)


def test_model_stock_interpolation_ratio():
    base = torch.zeros(2)
    orth = model_stock(base, [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])])
    assert torch.allclose(orth, base)  # cos 0: t = 0, the base
    same = model_stock(base, [torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0])])
    assert torch.allclose(same, torch.tensor([1.0, 2.0]))  # cos 1: t = 1, the average
    # cos 0.5 with two models: t = 2 * 0.5 / 1.5 = 2/3 of the way from the base to the average
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.5, 3**0.5 / 2])
    assert torch.allclose(model_stock(base, [a, b]), (2 / 3) * (a + b) / 2, atol=1e-6)


def test_task_arithmetic_function_matches_definition():
    base, x, y = torch.randn(3), torch.randn(3), torch.randn(3)
    out = task_arithmetic(base, [x, y], [1.0, 2.0], lam=0.5)
    assert torch.allclose(out, base + 0.5 * ((x - base) + 2 * (y - base)))


def test_parameter_gradients_and_filters():
    grad = [0.0, 1.0]
    assert resolve(grad, "embed.weight", 3) == 0.0
    assert resolve(grad, "layers.1.attn.q_proj.weight", 3) == 0.5
    assert resolve(grad, "lm_head.weight", 3) == 1.0
    assert resolve([0.0, 0.5, 1.0], "layers.1.mlp.up.weight", 5) == pytest.approx(0.25)
    filt = [{"filter": "attn", "value": 0.2}, {"filter": "mlp", "value": [0.0, 1.0]}, {"value": 0.9}]
    assert resolve(filt, "layers.0.attn.q_proj.weight", 2) == 0.2
    assert resolve(filt, "layers.1.mlp.up.weight", 2) == 1.0
    assert resolve(filt, "norm.weight", 2) == 0.9


@pytest.mark.parametrize("cfg, message", [
    ({"merge_method": "ties", "models": ["x"]}, "needs base_model"),
    ({"merge_method": "slerp", "base_model": "x", "models": ["y", "z"], "parameters": {"t": 0.5}}, "exactly 1"),
    ({"merge_method": "slerp", "base_model": "x", "models": ["y"]}, "needs parameters: {t"),
    ({"merge_method": "model_stock", "base_model": "x", "models": ["y"]}, "at least 2"),
    ({"merge_method": "ties", "base_model": "x", "models": [{"model": "y", "parameters": {"density": 1.5}}]},
     "must lie in [0, 1]"),
    ({"merge_method": "linear", "models": [{"model": "y", "parameters": {"densty": 0.5}}]}, "does not apply"),
    ({"merge_method": "lerp", "models": ["y"]}, "unknown merge_method"),
    ({"merge_method": "linear", "models": []}, "non-empty list"),
    ({"merge_method": "linear", "models": ["y"], "dtype": "int8"}, "dtype"),
    ({"merge_method": "linear", "models": ["y"], "parameters": {"normalize": "yes"}}, "boolean"),
    ({"merge_method": "linear", "models": ["y"], "slices": []}, "unknown key"),
])
def test_bad_configs_are_refused_with_the_fix(cfg, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("{", r"\{")):
        MergeConfig.from_dict(cfg)


def test_mismatched_models_are_refused(ckpts, tmp_path, tiny_tokenizer):
    wide = make_ckpt(tmp_path / "wide", tiny_tokenizer, 0, hidden_size=96, num_attention_heads=4)
    with pytest.raises(MergeError, match="shape mismatch"):
        merge(MergeConfig.from_dict({"merge_method": "linear", "models": [str(ckpts["a"]), str(wide)]}),
              tmp_path / "o1", progress=False)
    vocab = make_ckpt(tmp_path / "vocab", tiny_tokenizer, 0, vocab_size=len(tiny_tokenizer) + 8)
    with pytest.raises(MergeError, match="vocabulary mismatch"):
        merge(MergeConfig.from_dict({"merge_method": "linear", "models": [str(ckpts["a"]), str(vocab)]}),
              tmp_path / "o2", progress=False)
    # same shapes, different tokens: caught through the tokenizers
    swapped = tmp_path / "swapped"
    make_ckpt(swapped, tiny_tokenizer, 0)
    tok = json.loads((swapped / "tokenizer.json").read_text())
    vocab_map = tok["model"]["vocab"]
    first, second = sorted(vocab_map, key=vocab_map.get)[260:262]
    vocab_map[first], vocab_map[second] = vocab_map[second], vocab_map[first]
    (swapped / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(MergeError, match="tokenizers .* differ"):
        merge(MergeConfig.from_dict({"merge_method": "linear", "models": [str(ckpts["a"]), str(swapped)]}),
              tmp_path / "o3", progress=False)
    with pytest.raises(MergeError, match="no such|does not exist|not a checkpoint"):
        merge(MergeConfig.from_dict({"merge_method": "linear", "models": [str(tmp_path / "missing")]}),
              tmp_path / "o4", progress=False)


def test_existing_output_is_kept_unless_overwrite(ckpts, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    cfg = MergeConfig.from_dict({"merge_method": "linear", "models": [str(ckpts["a"]), str(ckpts["b"])]})
    with pytest.raises(MergeError, match="--overwrite"):
        merge(cfg, out, progress=False)
    assert (out / "precious.txt").read_text() == "keep me"
    with pytest.raises(MergeError, match="input models"):
        merge(cfg, ckpts["a"], overwrite=True, progress=False)
    merge(cfg, out, overwrite=True, progress=False)
    assert not (out / "precious.txt").exists() and (out / "COMPLETE").is_file()
    assert not list(tmp_path.glob(".tmp-*")) and not list(tmp_path.glob(".old-*"))


def test_merged_checkpoint_reloads_and_generates(ckpts, tmp_path, tiny_tokenizer):
    from duomind.generate import generate
    from duomind.train.checkpoint import load_model, verify_checkpoint

    out = merge(MergeConfig.from_dict({"merge_method": "ties", "base_model": str(ckpts["a"]),
                                       "models": [str(ckpts["b"]), str(ckpts["c"])], "parameters": {"density": 0.5},
                                       "dtype": "bfloat16"}), tmp_path / "m", progress=False)
    verify_checkpoint(out)
    assert yaml.safe_load((out / "merge_config.yaml").read_text())["merge_method"] == "ties"
    assert all(t.dtype == torch.bfloat16 for t in weights(out).values())
    model = load_model(out)
    ids = tiny_tokenizer.encode("Q: What is 1 + 2?")
    tokens = generate(model, [ids], max_new_tokens=5)[0]
    assert len(tokens) == 5 and all(0 <= t < len(tiny_tokenizer) for t in tokens)
    # the reloaded weights are the merged ones
    assert torch.equal(model.embed.weight.detach().to(torch.bfloat16), weights(out)["embed.weight"])


def test_cli_merge(ckpts, tmp_path):
    from duomind.cli import main

    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"merge_method": "task_arithmetic", "base_model": str(ckpts["a"]),
                                    "models": [{"model": str(ckpts["b"]), "parameters": {"weight": 0.5}}]}))
    assert main(["merge", str(path), str(tmp_path / "out"), "--progress", "false"]) == 0
    a, b, out = weights(ckpts["a"]), weights(ckpts["b"]), weights(tmp_path / "out")
    close(out, {k: a[k] + 0.5 * (b[k] - a[k]) for k in a}, atol=1e-6)
    with pytest.raises(SystemExit, match="needs base_model"):
        path.write_text(yaml.safe_dump({"merge_method": "ties", "models": [str(ckpts["b"])]}))
        main(["merge", str(path), str(tmp_path / "out2")])


MEMORY_PROBE = textwrap.dedent("""
    import json, re, sys
    import torch
    torch.set_num_threads(1)
    from duomind.merge import MergeConfig, merge

    def status(key):
        return int(re.search(key + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024

    cfg = MergeConfig.from_dict(json.loads(sys.argv[1]))
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak-RSS mark to the current RSS
    before = status("VmRSS")
    merge(cfg, sys.argv[2], progress=False)
    print(status("VmHWM") - before)
""")


def test_peak_memory_is_one_model_plus_one_tensor_set(tmp_path):
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pytest.skip("peak RSS cannot be reset here (needs Linux /proc/self/clear_refs)")
    n_tensors, numel = 24, 1 << 19  # 2 MiB float32 tensors, 48 MiB per model
    paths = []
    for i in range(4):
        g = torch.Generator().manual_seed(i)
        path = tmp_path / f"m{i}"
        path.mkdir()
        save_file({f"layers.{j}.w": torch.randn(numel, generator=g) for j in range(n_tensors)},
                  str(path / "model.safetensors"), metadata={"format": "pt"})
        (path / "config.json").write_text("{}")
        paths.append(str(path))
    model_bytes, tensor_bytes = n_tensors * numel * 4, numel * 4
    cfg = {"merge_method": "ties", "base_model": paths[0], "parameters": {"density": 0.5},
           "models": [{"model": p} for p in paths[1:]]}
    # a fixed mmap threshold makes glibc hand freed tensors back at once, so RSS tracks live memory rather
    # than the allocator's cache of freed chunks
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    proc = subprocess.run([sys.executable, "-c", MEMORY_PROBE, json.dumps(cfg), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300, check=True, env=env)
    peak = int(proc.stdout.split()[-1])
    # the output model, plus one tensor of each of the 4 inputs and the method's temporaries (TIES keeps
    # task vectors, trimmed copies, sign and count tensors: about 5 tensors per input);
    # reading all inputs at once would need 4 models (192 MiB) on top of the output
    assert peak < model_bytes + 20 * tensor_bytes + (16 << 20), (peak / 2**20, model_bytes / 2**20)
    assert peak < 4 * model_bytes
    out = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert len(out) == n_tensors
