"""Named model shapes used by the examples, the search defaults and the published-figure validation."""

from __future__ import annotations

from duomind.sim.arch import Arch

MODELS: dict[str, Arch] = {}


def _add(arch: Arch) -> None:
    if arch.name in MODELS:
        raise ValueError(f"model preset {arch.name!r} is already registered")
    MODELS[arch.name] = arch


# Pangu Ultra, arXiv 2504.07866: 94 layers, d 12288, SwiGLU 28672, GQA 96 q / 8 kv, vocab 153,376.
_add(Arch(name="pangu-ultra-135b", vocab_size=153376, hidden_size=12288, num_layers=94, num_heads=96,
          num_kv_heads=8, head_dim=128, intermediate_size=28672))

# Pangu Ultra MoE, arXiv 2505.04519: 61 layers (first 3 dense) + 1 MTP layer, d 7680, MLA with 128 heads,
# 256 routed experts + 1 shared, top-8. The MLA ranks, expert width 2048 and dense width 18432 are the
# released config's (they reproduce the paper's 718B total / 39B active).
_add(Arch(name="pangu-ultra-moe-718b", vocab_size=153376, hidden_size=7680, num_layers=61, num_heads=128,
          attention="mla", q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64,
          v_head_dim=128, intermediate_size=18432, mlp="moe", num_experts=256, top_k=8, expert_size=2048,
          num_shared_experts=1, first_dense_layers=3, mtp_layers=1))

# Pangu Pro MoE, arXiv 2505.21411: MoGE with 64 experts in 8 groups, K' = 1 (K = 8), 4 shared experts,
# expert width 1344, 48 layers, d 5120, GQA 40 q / 8 kv, vocab 153,376 (72B total / 16B active).
_add(Arch(name="pangu-pro-moe-72b", vocab_size=153376, hidden_size=5120, num_layers=48, num_heads=40,
          num_kv_heads=8, head_dim=128, intermediate_size=1344, mlp="moge", num_experts=64, top_k=8, num_groups=8,
          expert_size=1344, num_shared_experts=4))

# The same shapes with plain top-8 routing: the MoE baseline of the MoGE comparison.
_add(MODELS["pangu-pro-moe-72b"].replace(name="pro-moe-72b-topk", mlp="moe", num_groups=1))

# GPT-3-style models of Korthikanti et al. 2022 (arXiv 2205.05198, Megatron-LM), vocab 51,200, seq 2048.
for _name, _heads, _d, _layers in (("gpt-22b", 64, 6144, 48), ("gpt3-175b", 96, 12288, 96),
                                   ("gpt-530b", 128, 20480, 105), ("gpt-1t", 160, 25600, 128)):
    _add(Arch(name=_name, vocab_size=51200, hidden_size=_d, num_layers=_layers, num_heads=_heads,
              num_kv_heads=_heads, intermediate_size=4 * _d, gated_mlp=False))

# Megatron-LM README H100 runs use GPT-3 175B with a 131,072 vocabulary and 4096 tokens.
_add(MODELS["gpt3-175b"].replace(name="gpt3-175b-v131k", vocab_size=131072))

# Common open models (Hugging Face configs), for examples.
_add(Arch(name="llama3-8b", vocab_size=128256, hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=8,
          intermediate_size=14336))
_add(Arch(name="llama3-70b", vocab_size=128256, hidden_size=8192, num_layers=80, num_heads=64, num_kv_heads=8,
          intermediate_size=28672))
_add(Arch(name="qwen3-30b-a3b", vocab_size=151936, hidden_size=2048, num_layers=48, num_heads=32, num_kv_heads=4,
          head_dim=128, intermediate_size=6144, tie_embeddings=False, mlp="moe", num_experts=128, top_k=8,
          expert_size=768))
