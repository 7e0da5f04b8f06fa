"""The big workloads of `specdec bench offload` (issue 19): INFLATED models.

THESE ARE INFLATED MODELS (specdec/bench/inflate.py): SmolLM2-135M-Instruct embedded exactly
into a Llama-2-7B or -13B shape, so a pass costs the real I/O and compute of the big shape
while the answers are SmolLM2-135M's, and the (inflated) demo draft agrees with it as it does
with SmolLM2. The draft is the demo draft inflated to a Qwen2.5-0.5B-class cost
(`inflated-draft`: hidden 896, 24 layers).

* inflated-7b-bf16: Llama-2-7B-sized, bf16 store, 4 GB cap.
* inflated-7b-q4: the same as Q4_1 (SmolLM2's own Q4_1 blocks), store packed from the GGUF
  (store format v2), 2 GB cap.
* seed-13b: Llama-2-13B-sized Q4_1 (~8.5 GB), 3.5 GB cap: the seed's own scenario.

`--workloads inflated-7b` runs both 7B variants; each can be named alone. Everything is built
once into <cache>/bench/ on first use (disk-space check, progress bars):

    inflated-7b-bf16/            HF dir (13.8 GB)         inflated-7b-bf16-store/   (13.8 GB)
    inflated-7b.q4_1.gguf        (4.5 GB)                 inflated-7b-q4-store/     (5.7 GB)
    seed-13b.q4_1.gguf           (8.5 GB)                 seed-13b-q4-store/        (10.7 GB)
    inflated-draft-bf16/         HF dir (0.86 GB)         inflated-draft.f16.gguf   (0.92 GB)
    inflated-draft-q8-store/     (0.50 GB: the draft of the q4 workloads; bf16 does not fit in 2 GB)

No seed-13b bf16 HF dir is built (33 GB): transformers + accelerate do not run on seed-13b.
The 7B HF dir is needed only to pack its store and by transformers (--with-hf): once the store
exists it may be deleted to make room, and is written again when --with-hf asks for it.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from .workloads import Workload, chat_prompt_ids, load_prompt_config

KEEP_FREE = 20 * 10**9  # never fill the disk below this: other jobs share it
BIG = {"inflated-7b-bf16": ("inflated-7b", "bf16", "4GB"),
       "inflated-7b-q4": ("inflated-7b", "q4", "2GB"),
       "seed-13b": ("seed-13b", "q4", "3.5GB")}
ALIASES = {"inflated-7b": ["inflated-7b-bf16", "inflated-7b-q4"]}
HF_SLOW = ("transformers + accelerate disk offload of a {size} target reads the offloaded "
           "weights through safetensors memory maps on every token (minutes per token here); "
           "pass --with-hf to run it anyway")
DRAFT_NOTE = ("the inflated demo draft (hidden 896, 24 layers: a 0.5B-class draft cost, answers "
              "of the 8-layer demo draft)")


def names(wanted: list[str]) -> list[str]:
    """The big workload names among `wanted` (aliases expanded), in order."""
    out = []
    for w in wanted:
        for n in ALIASES.get(w, [w]):
            if n in BIG and n not in out:
                out.append(n)
    return out


def quantized_stores() -> bool:
    """Whether this specdec packs a GGUF keeping its Q4 blocks (store format v2)."""
    from offload.format import FORMAT_VERSION

    return FORMAT_VERSION >= 2


def big_workload(name: str, cache: Path, n_prompts: int = 4, max_new_tokens: int = 48,
                 with_hf: bool = False, ram: str | None = None, progress: bool = True,
                 context: int | None = None) -> Workload:
    """One inflated workload, building what it lacks. `context`: the KV to plan for (default:
    what the prompts and replies need; a chat plans 2048-4096)."""
    from offload.budget import parse_size

    shape, quant, default_ram = BIG[name]
    cache.mkdir(parents=True, exist_ok=True)
    draft = inflated_draft(cache, progress)
    draft_gguf = inflated_draft_gguf(cache, draft)
    gguf = target_gguf(cache, shape, progress) if quant == "q4" else None
    skip, hf_dir, store, spec_draft = {}, "", "", draft
    if quant == "bf16":
        from offload.format import is_store

        # the HF dir (13.8 GB) is needed to pack the store and by transformers only: once the
        # store exists it may be deleted to make room (--with-hf writes it again)
        hf, store = cache / f"{shape}-bf16", cache / f"{shape}-bf16-store"
        if with_hf or not is_store(store):
            target_hf(cache, shape, progress)
        store = str(packed(hf, store, progress))
        hf_dir = str(hf) if (hf / "config.json").exists() else ""
        why = (f"llama.cpp runs the Q4_1 GGUF (workload {shape}-q4); a bf16 GGUF would be "
               "another 13.8 GB of disk")
        skip.update(llamacpp=why, llamacpp_spec=why)
    elif quantized_stores():
        store = str(packed(Path(gguf), cache / f"{shape}-q4-store", progress))
        # the q4 targets get the draft in 8 bits (503 MB instead of 861): a bf16 0.5B-class
        # draft and its KV do not fit beside a 7B's stream buffers in 2 GB
        spec_draft = packed(draft, cache / "inflated-draft-q8-store", progress, quant="q8")
    else:
        why = ("this specdec has no quantized stores (format v2, `specdec pack X.gguf` keeping "
               "Q4 blocks): specdec and the floor skip this q4 workload")
        skip.update({c: why for c in ("floor", "plain", "chain", "tree", "overlap", "self_draft")})
    if quant == "q4":
        skip.setdefault("self_draft", "a self-draft is made of 4-bit substitutes of a bf16 target's "
                                      "layers; specdec refuses it on a quantized target")
    if not hf_dir:
        why = ("no bf16 HF dir of this q4 target (transformers runs on inflated-7b-bf16 only)"
               if quant == "q4" else "its HF dir was deleted to save disk (--with-hf writes it again)")
        skip.update(hf=why, hf_assisted=why)
    elif not with_hf:
        why = HF_SLOW.format(size=f"{_dir_bytes(Path(hf_dir)) / 1e9:.1f} GB")
        skip.update(hf=why, hf_assisted=why)
    prompts = load_prompt_config()["demo"]["prompts"][:n_prompts]
    ids, eos = chat_prompt_ids(draft, prompts)
    # KV for what the runs need, not 1024 positions: at 7B/13B size each position costs
    # 0.5-0.8 MB of target KV that the stream would otherwise not have under the cap
    needed = -(-(max(map(len, ids)) + max_new_tokens + 128) // 128) * 128  # + a draft tree
    if context is not None and context < needed:
        raise ValueError(f"--context {context} is too short for {name}: its prompts and replies "
                         f"need {needed} tokens")
    context = context or needed
    desc = (f"INFLATED {shape} ({quant}: real I/O and compute of a Llama-2-"
            f"{'13B' if shape == 'seed-13b' else '7B'}-sized model, answers of SmolLM2-135M-Instruct)"
            f" + {DRAFT_NOTE}{' in q8' if spec_draft != draft else ''}; {len(prompts)} chat prompts,"
            f" max context {context}")
    return Workload(name, store, hf_dir, str(spec_draft), str(draft), parse_size(ram or default_ram),
                    context,
                    ids, [0.0], max_new_tokens, str(cache / f"offload-{name}"), str(draft), eos,
                    desc, gguf=str(gguf) if gguf else None, draft_gguf=str(draft_gguf), skip=skip,
                    goals=shape)


def _dir_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in d.iterdir() if f.is_file())


def inflated_draft(cache: Path, progress: bool = True) -> Path:
    out = cache / "inflated-draft-bf16"
    if not (out / "config.json").exists():
        from ..demo import DEMO_DRAFT_DIR
        from .inflate import SHAPES, draft_source, target_source, write_hf

        write_hf(draft_source(DEMO_DRAFT_DIR, target_source()), SHAPES["inflated-draft"], out,
                 keep_free=KEEP_FREE, progress=progress)
    return out


def inflated_draft_gguf(cache: Path, draft: Path) -> Path:
    out = cache / "inflated-draft.f16.gguf"
    if not out.exists():
        from ..demo import smollm2_gguf_path
        from .draft_gguf import write_draft_gguf

        _check_space(cache, 10**9)
        write_draft_gguf(draft, out, smollm2_gguf_path())
    return out


def target_hf(cache: Path, shape: str, progress: bool = True) -> Path:
    out = cache / f"{shape}-bf16"
    if not (out / "config.json").exists():
        import torch

        from .inflate import SHAPES, target_source, write_hf

        write_hf(target_source(), SHAPES[shape], out, torch.bfloat16, keep_free=KEEP_FREE,
                 progress=progress)
    return out


def target_gguf(cache: Path, shape: str, progress: bool = True) -> Path:
    out = cache / f"{shape}.q4_1.gguf"
    if not out.exists():
        from .inflate import SHAPES, write_gguf

        write_gguf(None, SHAPES[shape], out, keep_free=KEEP_FREE, progress=progress)
    return out


def packed(src: Path, out: Path, progress: bool = True, quant: str | None = None) -> Path:
    """`src` (HF dir, or GGUF kept in its own quantization; `quant` as `specdec pack --quant`)
    packed into the store `out`."""
    from offload.format import is_store
    from offload.pack import pack

    if not is_store(out):
        extra = {"quant": quant} if quant else {}
        # a q4 store is ~1.26x its Q4_1 GGUF (Q8_0 embeddings and scales widened; measured)
        size = _dir_bytes(src) if src.is_dir() else int(src.stat().st_size * 1.3)
        _check_space(out.parent, size)
        pack(src, out, dtype="bfloat16", progress=progress, overwrite=True, **extra)
    return out


def _check_space(directory: Path, need: int) -> None:
    from .inflate import InflateError

    free = shutil.disk_usage(directory).free
    if free - need < KEEP_FREE:
        raise InflateError(f"{directory}: writing {need / 1e9:.1f} GB would leave "
                           f"{(free - need) / 1e9:.1f} GB free (the bench keeps "
                           f"{KEEP_FREE / 1e9:.0f} GB free). Free some space or pass another --cache-dir.")
