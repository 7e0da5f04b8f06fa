"""A GGUF file's tensors, one at a time, in the form a store keeps them.

Read with gguf-py's `GGUFReader` (memory-mapped: one tensor's bytes in RAM at a time, so a GGUF
larger than RAM packs), renamed from llama.cpp's names to Hugging Face's, and encoded by
`encodings.gguf_types`: Q4_0/Q4_1/Q4_K stay 4-bit and Q8_0/Q5_* 8-bit exactly, other types are
converted (each conversion's note and error is reported through `note`), norms stay plain.
llama.cpp stores a llama model's attn_q/attn_k rows permuted for its rotary layout; the rows
are put back in Hugging Face's order (a row permutation of codes and scales: exact).
A mixture-of-experts layer's experts come merged, one 3-D tensor per part
(`ffn_{gate,up,down}_exps`, experts first): each expert's slice is its own 2-D tensor here
(a slice of whole rows: its quantization blocks kept as they are), named as Hugging Face names
them; the router (`ffn_gate_inp`) and the shared expert's gate stay as stored, never requantized.

`quant` chooses what to do with the file's quantization: None keeps it (the default: the user
gets the model they chose), "bf16" dequantizes everything (gguf-py's float32 reference, then
bf16), "q4"/"q8" requantize the linear weights from that float32 reference.
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch

from .encodings import gguf_types
from .encodings.from_float import quantize_float
from .expert_names import ROUTER, SHARED_GATE, expert_tensor_name
from .shapes import EMBED, FINAL_NORM, LM_HEAD, layer_tensor_name

TOP_LEVEL = {"token_embd.weight": EMBED, "output_norm.weight": FINAL_NORM, "output.weight": LM_HEAD}
LAYER_PARTS = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj",
               "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
               "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
               "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
               "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"}
# Gemma's extra norms: llama.cpp calls the pre-MLP norm ffn_norm (Llama's post-attention one).
GEMMA_PARTS = {**LAYER_PARTS, "post_attention_norm": "post_attention_layernorm",
               "ffn_norm": "pre_feedforward_layernorm", "post_ffw_norm": "post_feedforward_layernorm"}
# Phi-3's fused weights: attn_qkv, and ffn_up holding gate and up rows (there is no ffn_gate).
PHI3_PARTS = {**LAYER_PARTS, "attn_qkv": "self_attn.qkv_proj", "ffn_up": "mlp.gate_up_proj"}
# Mixture of experts: the router, the shared expert and its gate (the experts: EXPERT_PARTS).
MOE_PARTS = {**LAYER_PARTS, "ffn_gate_inp": "mlp.gate", "ffn_gate_shexp": "mlp.shared_expert.gate_proj",
             "ffn_up_shexp": "mlp.shared_expert.up_proj", "ffn_down_shexp": "mlp.shared_expert.down_proj",
             "ffn_gate_inp_shexp": "mlp.shared_expert_gate"}
EXPERT_PARTS = {"ffn_gate_exps": "gate_proj.weight", "ffn_up_exps": "up_proj.weight",
                "ffn_down_exps": "down_proj.weight"}
# "llama" includes Mixtral, which llama.cpp writes as a llama model with experts.
PARTS_BY_ARCH = {"gemma2": GEMMA_PARTS, "gemma3": GEMMA_PARTS, "phi3": PHI3_PARTS,
                 "qwen2moe": MOE_PARTS, "qwen3moe": MOE_PARTS, "llama": MOE_PARTS}
NOT_REQUANTIZED = (ROUTER, SHARED_GATE)  # routing decisions: kept as the file stores them
# Tensors a GGUF may carry that the model does not read (llama 3's rope_freqs, Phi-3's LongRoPE
# factors: the config's rope parameters give the same frequencies, offload/gguf_config.py).
IGNORED = ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight")
PERMUTED_ARCHS = ("llama",)  # llama.cpp's convert permutes q/k rows for these only
# llama.cpp's convert stores Gemma's RMSNorm weights as 1 + w (its norm multiplies by the weight
# alone); transformers' Gemma norms multiply by (1 + w): the 1 is taken off again on reading.
NORM_OFFSET_ARCHS = ("gemma2", "gemma3")


class GGUFSourceError(ValueError):
    """A GGUF tensor that cannot be mapped onto the model; the message names it."""


def hf_name(gguf_name: str, arch: str = "llama") -> str | None:
    """llama.cpp tensor name -> Hugging Face name (None: a tensor the model does not read)."""
    if gguf_name in IGNORED:
        return None
    if gguf_name in TOP_LEVEL:
        return TOP_LEVEL[gguf_name]
    parts, layer_parts = gguf_name.split("."), PARTS_BY_ARCH.get(arch, LAYER_PARTS)
    if len(parts) == 4 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in layer_parts:
        return layer_tensor_name(int(parts[1]), f"{layer_parts[parts[2]]}.{parts[3]}")
    raise GGUFSourceError(f"GGUF tensor {gguf_name!r} has no place in a {arch or 'llama'} model "
                          f"(known: {', '.join(TOP_LEVEL)}, blk.N.{{{','.join(layer_parts)}}}); "
                          "this architecture is not supported.")


def architecture(reader) -> str:
    field = reader.get_field("general.architecture")
    return field.contents() if field is not None else ""


def gguf_tensors(reader, config: dict, quant: str | None = None,
                 note: Callable[[str], None] = print,
                 scale_dtype: torch.dtype = torch.bfloat16) -> Iterator[tuple[str, object]]:
    """Yield (HF name, plain tensor or encoded weight) for every tensor the model reads, from
    an open gguf-py reader (offload.checkpoint parses the file once and passes it on).
    scale_dtype: bf16 (the kernel's fast path, <= 0.04 of a step off gguf-py's values) or
    float32 (bit-exact against gguf-py's dequantization: what a float32 store uses)."""
    arch = architecture(reader)
    for tensor in reader.tensors:
        if _expert_part(tensor.name):
            yield from expert_tensors(tensor, quant, note, scale_dtype)
            continue
        name = hf_name(tensor.name, arch)
        if name is None:
            continue
        shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))  # ggml order is reversed
        qtype = tensor.tensor_type.name
        order = _row_order(tensor.name, shape, config) if arch in PERMUTED_ARCHS else None
        # The embedding table is read by rows() (float32 arithmetic, no kernel): float32 scales
        # keep lookups exact. With bf16 scales every row block is off by the same factor
        # (f16 -> bf16 drops 3 bits of each block's scale), a correlated error that enters the
        # residual stream directly (SmolLM2: teacher-forced top-1 agreement 0.94 -> see tests).
        # As the output layer a model holds a copy with bf16 scales, made once at load
        # (specdec/compute/head.py; converting per call cost ~16% of a small model's pass).
        row_scales = torch.float32 if name == EMBED else scale_dtype
        kept = quant if not name.endswith(NOT_REQUANTIZED) else (quant and "bf16")
        value, message = encode(np.asarray(tensor.data), qtype, shape, kept, order, row_scales)
        if name.endswith(SHARED_GATE) and isinstance(value, torch.Tensor):
            value = value.reshape(1, -1)  # llama.cpp stores the gate's one row as a vector
        if arch in NORM_OFFSET_ARCHS and name.endswith("norm.weight"):
            value = _without_offset(value, tensor.name)
        if message:
            note(f"{tensor.name} ({name}): {message}")
        yield name, value


def _expert_part(gguf_name: str) -> str | None:
    parts = gguf_name.split(".")
    ok = len(parts) == 4 and parts[0] == "blk" and parts[1].isdigit() and parts[3] == "weight"
    return EXPERT_PARTS.get(parts[2]) if ok else None


def expert_tensors(tensor, quant: str | None, note, scale_dtype: torch.dtype
                   ) -> Iterator[tuple[str, object]]:
    """One merged experts tensor [experts, rows, cols] -> each expert's 2-D weight by HF name."""
    layer, part = int(tensor.name.split(".")[1]), _expert_part(tensor.name)
    shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
    if len(shape) != 3:
        raise GGUFSourceError(f"GGUF tensor {tensor.name!r} has shape {shape}; merged experts must be "
                              "[experts, rows, cols]. The GGUF is corrupt.")
    raw = np.asarray(tensor.data).reshape(shape[0], shape[1], -1)
    for e in range(shape[0]):
        value, message = encode(raw[e], tensor.tensor_type.name, shape[1:], quant, None, scale_dtype)
        if message and e == 0:
            note(f"{tensor.name} (experts of layer {layer}): {message}")
        yield layer_tensor_name(layer, expert_tensor_name(e, part)), value


def encode(raw: np.ndarray, qtype: str, shape: tuple[int, ...], quant: str | None,
           row_order: torch.Tensor | None = None,
           scale_dtype: torch.dtype = torch.bfloat16) -> tuple[object, str]:
    """One GGUF tensor -> (stored value, note for the user or "")."""
    if quant is None:
        enc = gguf_types.encode_tensor(raw, qtype, shape, scale_dtype, row_order)
        return enc.value, enc.note
    gguf_types.plan_for(qtype)  # an unsupported type is an error whatever is asked
    if row_order is not None:
        raw = gguf_types.reorder_rows(raw, qtype, shape, row_order)
    value = gguf_types.dequantize_raw(raw, qtype, shape)
    if quant == "bf16" or not is_linear_weight(shape):
        return value, ""
    enc = quantize_float(value, quant, scale_dtype)
    return enc.value, enc.note


def _without_offset(value, gguf_name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise GGUFSourceError(f"GGUF tensor {gguf_name!r} is a quantized norm; llama.cpp writes "
                              "norms as F32. The GGUF is corrupt.")
    return value.float() - 1  # in float32, as transformers' GGUF loader does


def is_linear_weight(shape: tuple[int, ...]) -> bool:
    return len(shape) == 2


def _row_order(gguf_name: str, shape: tuple[int, ...], config: dict) -> torch.Tensor | None:
    kind = gguf_name.split(".")[2] if gguf_name.startswith("blk.") else ""
    if kind not in ("attn_q", "attn_k") or len(shape) != 2:
        return None
    heads = config["num_attention_heads"]
    if kind == "attn_k":
        heads = config.get("num_key_value_heads") or heads
    return gguf_types.unpermute_qk_rows(shape[0], heads)
