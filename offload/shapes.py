"""A decoder's tensors (Llama family, Gemma 2/3, Phi-3, the mixture-of-experts families): names, shapes and parameter counts, in one place.

The weight checks (specdec/weights.py), the packer's size estimate (pack.py), the memory
plan (specdec/session.py) and the synthetic model maker (specdec/bench/synthetic.py) all
take them from here, so they cannot disagree. Plain integers in, no torch, no specdec:
`ModelShape.from_config` reads a Hugging Face config dict leniently (the strict parse with
clear errors is specdec.config.ModelArgs; specdec builds a ModelShape from that).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .expert_names import EXPERT_PARTS, ROUTER, SHARED_GATE, SHARED_PARTS, expert_tensor_name
from .hf_config import text_decoder_config

# "model.layers.12.self_attn.q_proj.weight" -> (12, "self_attn.q_proj.weight")
LAYER_NAME = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
EMBED, FINAL_NORM, LM_HEAD = "model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"
SANDWICH_NORM_TYPES = ("gemma2", "gemma3_text")
FUSED_PROJECTION_TYPES = ("phi3",)
MOE_TYPES = ("qwen3_moe", "qwen2_moe", "mixtral", "olmoe")
QK_NORM_TYPES = ("qwen3", "gemma3_text", "qwen3_moe")


def split_layer_name(name: str) -> tuple[int, str] | None:
    """(layer index, layer-relative name) of a decoder-layer tensor, else None."""
    m = LAYER_NAME.match(name)
    return (int(m.group(1)), m.group(2)) if m else None


def layer_tensor_name(index: int, name: str) -> str:
    return f"model.layers.{index}.{name}"


def moe_sizes(cfg: dict) -> dict:
    """ModelShape's mixture-of-experts fields from an HF config (none for a dense model)."""
    model_type = cfg.get("model_type")
    if model_type not in MOE_TYPES:
        return {}
    experts = cfg.get("num_experts") or cfg.get("num_local_experts") or 0
    inter = cfg.get("moe_intermediate_size") or cfg["intermediate_size"]
    shared = cfg.get("shared_expert_intermediate_size") or 0 if model_type == "qwen2_moe" else 0
    return dict(num_experts=experts, expert_intermediate_size=inter,
                shared_expert_intermediate_size=shared, whole_qk_norm=model_type == "olmoe")


@dataclass(frozen=True)
class ModelShape:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # q/k/v biases (qwen2)
    mlp_bias: bool = False
    qk_norm: bool = False  # per-head RMSNorm on q and k (qwen3, gemma3)
    sandwich_norms: bool = False  # gemma: norms after attention and around the MLP too
    fused_projections: bool = False  # phi3: one qkv_proj and one gate_up_proj per layer
    # Mixture of experts (offload/expert_names.py): a router and num_experts MLPs of
    # expert_intermediate_size replace the dense MLP; Qwen2-MoE adds a gated shared expert.
    num_experts: int = 0
    expert_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0
    whole_qk_norm: bool = False  # olmoe: q/k norms over the whole projection, not per head

    @classmethod
    def from_config(cls, cfg: dict) -> "ModelShape":
        """From an HF config dict, with the same defaults as specdec.config.ModelArgs.from_hf
        (no validation: callers that need clear errors parse with ModelArgs first)."""
        cfg = text_decoder_config(cfg)
        heads = cfg["num_attention_heads"]
        model_type = cfg.get("model_type")
        bias = cfg.get("qkv_bias") if model_type == "qwen2_moe" else cfg.get("attention_bias")
        return cls(vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
                   intermediate_size=cfg["intermediate_size"],
                   num_layers=cfg["num_hidden_layers"], num_heads=heads,
                   num_kv_heads=cfg.get("num_key_value_heads") or heads,
                   head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
                   tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                   attention_bias=model_type in ("qwen2", "qwen2_moe") if bias is None else bool(bias),
                   mlp_bias=bool(cfg.get("mlp_bias", False)),
                   qk_norm=model_type in QK_NORM_TYPES or model_type == "olmoe",
                   sandwich_norms=model_type in SANDWICH_NORM_TYPES,
                   fused_projections=model_type in FUSED_PROJECTION_TYPES, **moe_sizes(cfg))

    # -- names and shapes ----------------------------------------------------------------
    def layer_shapes(self) -> dict[str, tuple[int, ...]]:
        """Layer-relative name -> shape for one decoder layer, in checkpoint order."""
        h, inter, hd = self.hidden_size, self.intermediate_size, self.head_dim
        q, kv = self.num_heads * hd, self.num_kv_heads * hd
        if self.fused_projections:
            return self._fused_layer_shapes()
        out = {"input_layernorm.weight": (h,), "self_attn.q_proj.weight": (q, h),
               "self_attn.k_proj.weight": (kv, h), "self_attn.v_proj.weight": (kv, h),
               "self_attn.o_proj.weight": (h, q), "post_attention_layernorm.weight": (h,)}
        out.update(self._moe_shapes() if self.num_experts else
                   {"mlp.gate_proj.weight": (inter, h), "mlp.up_proj.weight": (inter, h),
                    "mlp.down_proj.weight": (h, inter)})
        if self.sandwich_norms:
            out.update({"pre_feedforward_layernorm.weight": (h,),
                        "post_feedforward_layernorm.weight": (h,)})
        if self.attention_bias:
            out.update({"self_attn.q_proj.bias": (q,), "self_attn.k_proj.bias": (kv,),
                        "self_attn.v_proj.bias": (kv,)})
        if self.mlp_bias:
            out.update({"mlp.gate_proj.bias": (inter,), "mlp.up_proj.bias": (inter,),
                        "mlp.down_proj.bias": (h,)})
        if self.qk_norm:
            qn, kn = (q, kv) if self.whole_qk_norm else (hd, hd)
            out.update({"self_attn.q_norm.weight": (qn,), "self_attn.k_norm.weight": (kn,)})
        return out

    def _moe_shapes(self) -> dict[str, tuple[int, ...]]:
        """The router, every expert's MLP and the optional gated shared expert."""
        h, inter, shared = self.hidden_size, self.expert_intermediate_size, self.shared_expert_intermediate_size
        out = {ROUTER: (self.num_experts, h)}
        for e in range(self.num_experts):
            out.update({expert_tensor_name(e, p): s for p, s in
                        zip(EXPERT_PARTS, [(inter, h), (inter, h), (h, inter)])})
        if shared:
            out.update(dict(zip(SHARED_PARTS, [(shared, h), (shared, h), (h, shared)])))
            out[SHARED_GATE] = (1, h)
        return out

    def _fused_layer_shapes(self) -> dict[str, tuple[int, ...]]:
        """Phi-3: q, k, v rows stacked in one weight, gate and up rows in another."""
        h, inter, hd = self.hidden_size, self.intermediate_size, self.head_dim
        q, kv = self.num_heads * hd, self.num_kv_heads * hd
        return {"input_layernorm.weight": (h,), "self_attn.qkv_proj.weight": (q + 2 * kv, h),
                "self_attn.o_proj.weight": (h, q), "post_attention_layernorm.weight": (h,),
                "mlp.gate_up_proj.weight": (2 * inter, h), "mlp.down_proj.weight": (h, inter)}

    def resident_shapes(self, output_rows: int | None = None) -> dict[str, tuple[int, ...]]:
        """HF name -> shape of the tensors outside the layers. lm_head is listed even when
        tied (a checkpoint may carry it); `output_rows` sizes a partial output vocabulary."""
        h, v = self.hidden_size, self.vocab_size
        return {EMBED: (v, h), FINAL_NORM: (h,), LM_HEAD: (output_rows or v, h)}

    def checkpoint_tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        """(HF name, shape) of a full untied-or-tied checkpoint in file order: embeddings,
        layers, final norm, then lm_head unless tied."""
        out = [(EMBED, (self.vocab_size, self.hidden_size))]
        layer = self.layer_shapes()
        for i in range(self.num_layers):
            out += [(layer_tensor_name(i, n), s) for n, s in layer.items()]
        out.append((FINAL_NORM, (self.hidden_size,)))
        if not self.tie_word_embeddings:
            out.append((LM_HEAD, (self.vocab_size, self.hidden_size)))
        return out

    # -- parameter counts ----------------------------------------------------------------
    def layer_params(self) -> int:
        return sum(math.prod(s) for s in self.layer_shapes().values())

    def linear_params(self) -> int:
        """Parameters of the weights a matmul reads, which `--quant` quantizes: every layer's
        *_proj weights and an untied lm_head (a tied table stays plain)."""
        layer = sum(math.prod(s) for n, s in self.layer_shapes().items() if n.endswith("_proj.weight"))
        head = 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size
        return self.num_layers * layer + head

    def stored_bytes(self, linear_bits: float, plain_itemsize: int) -> int:
        """Bytes of the weights when the linear ones take `linear_bits` each (q4: 5, q8: 9,
        bf16: 16) and the rest `plain_itemsize` bytes (no alignment padding)."""
        linear = self.linear_params()
        return int(linear * linear_bits / 8) + (self.params() - linear) * plain_itemsize

    def params(self, output_rows: int | None = None, embeddings: bool = True) -> int:
        """Parameters held in memory: the layers, the final norm, the embedding table (unless
        `embeddings` is False: borrowed from elsewhere) and the output layer: its own rows
        when untied or partial (`output_rows` < vocab_size), none when tied to the table."""
        h, v = self.hidden_size, self.vocab_size
        rows = output_rows if output_rows is not None else v
        total = self.num_layers * self.layer_params() + h
        total += v * h if embeddings else 0
        if not self.tie_word_embeddings or rows < v:
            total += rows * h
        return total
