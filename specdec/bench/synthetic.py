"""Write a random-weight checkpoint with a real model's shapes, for I/O benchmarks.

    python -m specdec.bench.synthetic llama-1b OUT_DIR           # HF dir: config.json + bf16 shards
    python -m specdec.bench.synthetic llama2-7b OUT --store      # straight to a packed store
    python -m specdec.bench.synthetic llama-1b OUT --layers 4    # fewer layers, same layer size

(scripts/make_synthetic.py is the same command.) Names and shapes come from offload/shapes.py.

Tensors are generated and written one at a time (large ones in row chunks), so RAM use
stays around one tensor whatever the model size. The safetensors files are written by
hand (8-byte header length, JSON header, raw data) because safetensors' own writer
needs every tensor of a shard in memory at once. Weights are N(0, 0.02); norms are
1 + N(0, 0.02); the output is gibberish but every byte is real work for the disk.
"""
from __future__ import annotations

import argparse
import json
import math
import struct
import sys
from pathlib import Path

import torch

from offload.atomic import replacing
from offload.shapes import ModelShape

PRESETS = {
    "llama2-7b": dict(model_type="llama", hidden_size=4096, intermediate_size=11008,
                      num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                      vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5,
                      rope_theta=10000.0),
    "qwen2.5-7b": dict(model_type="qwen2", hidden_size=3584, intermediate_size=18944,
                       num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                       vocab_size=152064, max_position_embeddings=32768, rms_norm_eps=1e-6,
                       rope_theta=1000000.0),
    "llama-1b": dict(model_type="llama", hidden_size=2048, intermediate_size=5632,
                     num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=4,
                     vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-5,
                     rope_theta=10000.0),
    "tiny": dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=96,
                 max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0),
}
CHUNK_ELEMS = 32 << 20  # generate at most this many values at once (128 MB of float32)


def make_config(preset: str, layers: int | None = None) -> dict:
    cfg = dict(PRESETS[preset])
    if layers is not None:
        cfg["num_hidden_layers"] = layers
    cfg.update(hidden_act="silu", tie_word_embeddings=False, torch_dtype="bfloat16",
               architectures=["Qwen2ForCausalLM" if cfg["model_type"] == "qwen2" else "LlamaForCausalLM"],
               bos_token_id=1, eos_token_id=2)
    return cfg


def tensor_shapes(cfg: dict) -> list[tuple[str, tuple[int, ...]]]:
    """(HF name, shape) in checkpoint order: embeddings, layers, final norm, lm_head."""
    return ModelShape.from_config(cfg).checkpoint_tensors()


def random_chunks(name: str, shape: tuple[int, ...], gen: torch.Generator):
    """The tensor's bf16 values as a sequence of flat chunks (bounded RAM)."""
    total = math.prod(shape)
    for start in range(0, total, CHUNK_ELEMS):
        n = min(CHUNK_ELEMS, total - start)
        x = torch.randn(n, generator=gen) * 0.02
        if name.endswith("norm.weight"):
            x += 1.0
        yield x.to(torch.bfloat16)


def random_tensor(name: str, shape, gen) -> torch.Tensor:
    return torch.cat(list(random_chunks(name, shape, gen))).reshape(shape)


def write_safetensors_dir(cfg: dict, out: Path, shard_bytes: int, seed: int) -> None:
    out.mkdir(parents=True, exist_ok=False)
    shapes = tensor_shapes(cfg)
    shards, current, size = [], [], 0
    for name, shape in shapes:  # group into shards of about shard_bytes
        nbytes = 2 * math.prod(shape)
        if current and size + nbytes > shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append((name, shape))
        size += nbytes
    shards.append(current)
    gen = torch.Generator().manual_seed(seed)
    weight_map = {}
    for k, shard in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        _write_shard(out / fname, shard, gen)
        weight_map.update({name: fname for name, _ in shard})
        print(f"wrote {fname}", file=sys.stderr)
    total = sum(2 * math.prod(s) for _, s in shapes)
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    (out / "config.json").write_text(json.dumps(cfg, indent=1))


def _write_shard(path: Path, shard, gen) -> None:
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in shard:
        nbytes = 2 * math.prod(shape)
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format wants the data 8-byte aligned
    with replacing(path) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, shape in shard:
            for chunk in random_chunks(name, shape, gen):
                f.write(memoryview(chunk.view(torch.uint8).numpy()))


def write_store_direct(cfg: dict, out: Path, seed: int, overwrite: bool,
                       quant: str | None = None) -> None:
    from offload.pack import normalize_quant, quantize_tensor, write_store

    quant = normalize_quant(quant)
    gen = torch.Generator().manual_seed(seed)
    tensors = ((name, quantize_tensor(name, random_tensor(name, shape, gen), quant))
               for name, shape in tensor_shapes(cfg))
    total = sum(2 * math.prod(s) for _, s in tensor_shapes(cfg))
    write_store(cfg, {"bos_token_id": 1, "eos_token_id": 2}, tensors, out, "bfloat16",
                estimate=total, overwrite=overwrite, source=f"synthetic seed={seed}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="make_synthetic", description=__doc__.splitlines()[0])
    p.add_argument("preset", choices=sorted(PRESETS))
    p.add_argument("out", type=Path)
    p.add_argument("--store", action="store_true", help="write a packed layer store instead of an HF dir")
    p.add_argument("--layers", type=int, help="override the number of decoder layers")
    p.add_argument("--quant", choices=["q4", "q8", "bf16"], help="--store: quantize the linear weights")
    p.add_argument("--shard-size", type=float, default=2.0, help="GB per safetensors shard (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    cfg = make_config(a.preset, a.layers)
    if a.store:
        write_store_direct(cfg, a.out, a.seed, a.overwrite, a.quant)
    else:
        if a.out.exists():
            p.error(f"{a.out} exists; choose another OUT_DIR")
        write_safetensors_dir(cfg, a.out, int(a.shard_size * 1e9), a.seed)
    print(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
