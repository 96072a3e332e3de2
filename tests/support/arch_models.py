"""The model each architecture exllamav2 0.3.2 recognises is tested with (a catalog entry or one of
tests/support/model_dirs.py's FIXTURE_CONFIGS): the real-wheel memory tests, tools/arch_table.py and
bench/bench_plan.py all use this one table."""

from __future__ import annotations

# One full-size model per architecture exllamav2 0.3.2 recognises (catalog or FIXTURE_CONFIGS), and what
# each adds. Layer counts are the published ones except where the override says (a layer repeats).
ARCHITECTURES: dict[str, tuple[str, dict]] = {
    "LlamaForCausalLM": ("llama3-8b", {}),  # GQA 4:1, 128k vocab (lm_head dq capped)
    "MistralForCausalLM": ("mistral-7b", {}),  # config sliding_window, no SWA layer
    "MixtralForCausalLM": ("mixtral-8x7b", {}),  # MoE, block_sparse_moe
    "LlavaForConditionalGeneration": ("pixtral-12b", {}),  # language_model. prefix, text_config
    "Mistral3ForConditionalGeneration": ("mistral-small-3.1-24b", {}),  # prefix, text_config, 1e9 theta
    "YiForCausalLM": ("yi-6b", {}),  # ln1/ln2 norm keys
    "OrionForCausalLM": ("orion-14b", {}),  # LayerNorm (with bias tensors)
    "Qwen2ForCausalLM": ("qwen2.5-7b", {}),  # q/k/v bias
    "Qwen3ForCausalLM": ("qwen3-8b", {}),  # q/k head norms
    "Qwen3MoeForCausalLM": ("qwen3-30b-a3b", {"num_hidden_layers": 4}),  # 128 experts, mlp.experts.N
    "Qwen2VLForConditionalGeneration": ("qwen2-vl-7b", {}),  # M-RoPE, bias
    "Qwen2_5_VLForConditionalGeneration": ("qwen2.5-vl-7b", {}),  # M-RoPE, vision tower
    "GemmaForCausalLM": ("gemma-7b", {}),  # head_dim 256 != h/H, tied head
    "Gemma2ForCausalLM": ("gemma2-9b", {}),  # softcap, alternating SWA, 4 norms/layer
    "Gemma3ForConditionalGeneration": ("gemma3-27b", {}),  # defaults, SWA pattern 6, two RoPE tables
    "Starcoder2ForCausalLM": ("starcoder2-15b", {}),  # LayerNorm, ungated MLP, biases, tied head
    "GemmoeForCausalLM": ("gemmoe", {}),  # MoE on Gemma
    "CohereForCausalLM": ("command-r-35b", {}),  # parallel decoder, tied head
    "Cohere2ForCausalLM": ("command-a", {}),  # parallel decoder + SWA pattern 4
    "DbrxForCausalLM": ("dbrx", {}),  # keymap, fused Wqkv, 16 experts, nested config keys
    "Phi3ForCausalLM": ("phi3-mini", {}),  # MHA, head_dim 96
    "GPTBigCodeForCausalLM": ("starcoder", {}),  # keymap, MQA, learned positions, no RoPE
    "GPT2LMHeadModel": ("gpt2", {}),  # keymap, 4h MLP default, learned positions, vocab 50257
    "MiniCPMForCausalLM": ("minicpm-2b", {}),  # tied head, odd vocab
    "InternLM2ForCausalLM": ("internlm2-7b", {}),  # keymap, fused wqkv (alternate packing)
    "IndexForCausalLM": ("index-1.9b", {}),  # vocab 65029
    "GraniteForCausalLM": ("granite-3-8b", {}),  # multipliers, tied head
    "Glm4ForCausalLM": ("glm4-32b-0414", {}),  # 4 norms, fused gate_up, GPT-J RoPE, partial rotary
}
