"""A tiny llama GGUF with SmolLM2's tensor types (the inflation builders' source in tests)."""
import numpy as np


def tiny_gguf(path, seed=0, merges=False):
    """A tiny llama GGUF with SmolLM2's tensor types: Q4_1 matrices, Q8_0 embedding, F32 norms.
    `merges`: a BPE merge and the tokens it joins, which llama.cpp needs to load a gpt2 vocab."""
    import gguf
    from gguf import GGMLQuantizationType as Q

    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(64); w.add_embedding_length(96); w.add_block_count(2)
    w.add_feed_forward_length(64); w.add_head_count(3); w.add_head_count_kv(1)
    w.add_rope_dimension_count(32); w.add_rope_freq_base(10000.0); w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(160); w.add_tokenizer_model("gpt2")
    w.add_token_list((["a", "b", "ab"] if merges else []) + [f"t{i}" for i in range(3 if merges else 0, 160)])
    if merges:
        w.add_token_merges(["a b"])

    def add(name, shape, qtype):
        data = rng.standard_normal(shape).astype(np.float32) * 0.05
        w.add_tensor(name, gguf.quants.quantize(data, qtype) if qtype != Q.F32 else data + 1,
                     raw_dtype=qtype)

    add("token_embd.weight", (160, 96), Q.Q8_0)
    for i in range(2):
        for name, shape in (("attn_q", (96, 96)), ("attn_k", (32, 96)), ("attn_v", (32, 96)),
                            ("attn_output", (96, 96)), ("ffn_gate", (64, 96)),
                            ("ffn_up", (64, 96)), ("ffn_down", (96, 64))):
            add(f"blk.{i}.{name}.weight", shape, Q.Q4_1)
        add(f"blk.{i}.attn_norm.weight", (96,), Q.F32)
        add(f"blk.{i}.ffn_norm.weight", (96,), Q.F32)
    add("output_norm.weight", (96,), Q.F32)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    return path
