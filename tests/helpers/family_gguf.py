"""Write a tiny Gemma 2 / Gemma 3 / Phi-3 model as llama.cpp's convert_hf_to_gguf.py would:
its tensor names, Gemma's norms stored as 1 + w, Phi-3's LongRoPE factors as tensors, the
metadata keys it writes (and none of the values llama.cpp hardcodes instead)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as GT
from gguf import GGUFWriter
from gguf import quantize as gguf_quantize
from safetensors.numpy import load_file

ARCH = {"gemma2": "gemma2", "gemma3_text": "gemma3", "phi3": "phi3"}
TOP = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
       "lm_head.weight": "output.weight"}
COMMON = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
          "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate",
          "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down", "self_attn.q_norm": "attn_q_norm",
          "self_attn.k_norm": "attn_k_norm"}
GEMMA = {**COMMON, "post_attention_layernorm": "post_attention_norm",
         "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm"}
PHI3 = {**COMMON, "post_attention_layernorm": "ffn_norm", "self_attn.qkv_proj": "attn_qkv",
        "mlp.gate_up_proj": "ffn_up"}


def gguf_name(hf: str, arch: str) -> str:
    if hf in TOP:
        return TOP[hf]
    _, _, index, rest = hf.split(".", 3)
    part, kind = rest.rsplit(".", 1)
    return f"blk.{index}.{(PHI3 if arch == 'phi3' else GEMMA)[part]}.{kind}"


def write_family_gguf(hf_dir: Path, out: Path, linear_type: str = "F32") -> Path:
    """`linear_type`: F32 (exact) or Q8_0 for the 2-D weights other than the embedding table."""
    cfg = json.loads((hf_dir / "config.json").read_text())
    state = load_file(str(hf_dir / "model.safetensors"))
    arch = ARCH[cfg["model_type"]]
    w = GGUFWriter(str(out), arch)
    _metadata(w, cfg, arch)
    vocab = cfg["vocab_size"]
    w.add_tokenizer_model("llama")
    w.add_token_list([f"t{i}".encode() for i in range(vocab)])
    w.add_token_scores([0.0] * vocab)
    w.add_token_types([1] * vocab)
    for name, value in state.items():
        if name == "lm_head.weight" and cfg.get("tie_word_embeddings"):
            continue
        value = value.astype(np.float32)
        if arch != "phi3" and name.endswith("norm.weight"):
            value = value + 1  # llama.cpp's Gemma norms multiply by the stored weight alone
        if linear_type == "Q8_0" and value.ndim == 2 and name != "model.embed_tokens.weight":
            w.add_tensor(gguf_name(name, arch), gguf_quantize(value, GT.Q8_0), raw_dtype=GT.Q8_0)
        else:
            w.add_tensor(gguf_name(name, arch), value)
    if arch == "phi3" and cfg.get("rope_parameters", {}).get("rope_type") == "longrope":
        rope = cfg["rope_parameters"]
        w.add_tensor("rope_factors_long.weight", np.array(rope["long_factor"], dtype=np.float32))
        w.add_tensor("rope_factors_short.weight", np.array(rope["short_factor"], dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def _metadata(w: GGUFWriter, cfg: dict, arch: str) -> None:
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_vocab_size(cfg["vocab_size"])
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    if arch == "phi3":
        return _phi3_metadata(w, cfg, head_dim)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_sliding_window(cfg["sliding_window"])
    if arch == "gemma2":
        w.add_attn_logit_softcapping(cfg["attn_logit_softcapping"])
        w.add_final_logit_softcapping(cfg["final_logit_softcapping"])
        return
    full = cfg["rope_parameters"]["full_attention"]
    w.add_rope_freq_base(full["rope_theta"])
    if full["rope_type"] == "linear":
        w.add_rope_scaling_type(__import__("gguf").RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(full["factor"])


def _phi3_metadata(w: GGUFWriter, cfg: dict, head_dim: int) -> None:
    rope = cfg["rope_parameters"]
    w.add_rope_dimension_count(int(head_dim * rope.get("partial_rotary_factor", 1.0)))
    w.add_rope_freq_base(rope["rope_theta"])
    w.add_sliding_window(cfg.get("sliding_window") or 0)
    if rope.get("rope_type") == "longrope":
        original = cfg["original_max_position_embeddings"]
        scale = cfg["max_position_embeddings"] / original
        w.add_rope_scaling_orig_ctx_len(original)
        w.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(original)))
