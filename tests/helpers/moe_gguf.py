"""Write a tiny Qwen2-MoE / Qwen3-MoE / Mixtral model as llama.cpp's convert_hf_to_gguf.py does:
its tensor names, each layer's experts merged into one 3-D tensor per part (experts first), the
shared expert's gate as a vector, Mixtral as a llama model (q/k rows permuted), and the metadata
keys it writes."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as GT
from gguf import GGUFWriter
from gguf import quantize as gguf_quantize
from safetensors.numpy import load_file

from offload.expert_names import common_name
from specdec.bench.draft_gguf import permute_rotary

ARCH = {"qwen2_moe": "qwen2moe", "qwen3_moe": "qwen3moe", "mixtral": "llama"}
TOP = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
       "lm_head.weight": "output.weight"}
PARTS = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
         "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
         "post_attention_layernorm": "ffn_norm", "self_attn.q_norm": "attn_q_norm",
         "self_attn.k_norm": "attn_k_norm", "mlp.gate": "ffn_gate_inp",
         "mlp.shared_expert.gate_proj": "ffn_gate_shexp", "mlp.shared_expert.up_proj": "ffn_up_shexp",
         "mlp.shared_expert.down_proj": "ffn_down_shexp", "mlp.shared_expert_gate": "ffn_gate_inp_shexp"}
EXPERT = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate|up|down)_proj\.weight$")


def _add(w: GGUFWriter, name: str, value: np.ndarray, linear_type: str) -> None:
    if linear_type == "Q8_0" and value.ndim >= 2 and name != "token_embd.weight" and "inp" not in name:
        w.add_tensor(name, gguf_quantize(value, GT.Q8_0), raw_dtype=GT.Q8_0)
    else:
        w.add_tensor(name, value)


def write_moe_gguf(hf_dir: Path, out: Path, linear_type: str = "F32") -> Path:
    cfg = json.loads((hf_dir / "config.json").read_text())
    state = {common_name(k): v.astype(np.float32)  # Mixtral's w1/w2/w3: the common spelling
             for k, v in load_file(str(hf_dir / "model.safetensors")).items()}
    arch = ARCH[cfg["model_type"]]
    w = GGUFWriter(str(out), arch)
    _metadata(w, cfg)
    experts: dict[tuple[int, str], dict[int, np.ndarray]] = {}
    for name, value in state.items():
        m = EXPERT.match(name)
        if m:
            experts.setdefault((int(m.group(1)), m.group(3)), {})[int(m.group(2))] = value
        elif name in TOP:
            _add(w, TOP[name], value, linear_type)
        else:
            _, _, index, rest = name.split(".", 3)
            part, kind = rest.rsplit(".", 1)
            if part == "mlp.shared_expert_gate":
                value = value.reshape(-1)
            if arch == "llama" and part in ("self_attn.q_proj", "self_attn.k_proj"):
                heads = cfg["num_attention_heads"] if part.endswith("q_proj") else cfg["num_key_value_heads"]
                value = permute_rotary(value, heads)
            _add(w, f"blk.{index}.{PARTS[part]}.{kind}", value, linear_type)
    for (layer, part), by_expert in sorted(experts.items()):
        merged = np.stack([by_expert[e] for e in range(len(by_expert))])
        _add(w, f"blk.{layer}.ffn_{part}_exps.weight", merged, linear_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def _metadata(w: GGUFWriter, cfg: dict) -> None:
    vocab = cfg["vocab_size"]
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_freq_base(cfg["rope_parameters"]["rope_theta"])
    if cfg["model_type"] == "mixtral":
        w.add_rope_dimension_count(cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])
    w.add_expert_count(cfg.get("num_experts") or cfg["num_local_experts"])
    w.add_expert_used_count(cfg["num_experts_per_tok"])
    if cfg.get("moe_intermediate_size"):
        w.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
    if cfg.get("shared_expert_intermediate_size"):
        w.add_expert_shared_feed_forward_length(cfg["shared_expert_intermediate_size"])
    w.add_vocab_size(vocab)
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_tokenizer_model("llama")
    w.add_token_list([f"t{i}".encode() for i in range(vocab)])
    w.add_token_scores([0.0] * vocab)
    w.add_token_types([1] * vocab)
