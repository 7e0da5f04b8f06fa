"""The big workloads of `specdec bench offload`: INFLATED models.

THESE ARE INFLATED MODELS (tools/inflate): SmolLM2-135M-Instruct embedded exactly
into a Llama-2-7B or -13B shape, so a pass costs the real I/O and compute of the big shape
while the answers are SmolLM2-135M's, and the (inflated) demo draft agrees with it as it does
with SmolLM2. The draft is the demo draft inflated to a Qwen2.5-0.5B-class cost
(`inflated-draft`: hidden 896, 24 layers).

* inflated-7b-bf16: Llama-2-7B-sized, bf16 store, 4 GB cap.
* inflated-7b-q4: the same as Q4_1 (SmolLM2's own Q4_1 blocks), store packed from the GGUF
  (store format v2), 2 GB cap.
* seed-13b: Llama-2-13B-sized Q4_1 (~8.5 GB), 3.5 GB cap: the seed's own scenario.

`--workloads inflated-7b` runs both 7B variants; each can be named alone. The inflated models
are built once into <cache>/bench/ by the tooling, from a checkout (disk-space check, progress
bars): `python -m tools.inflate workload NAME`; the bench packs their stores and writes the
draft's GGUF on first use:

    inflated-7b-bf16/            HF dir (13.8 GB)         inflated-7b-bf16-store/   (13.8 GB)
    inflated-7b.q4_1.gguf        (4.5 GB)                 inflated-7b-q4-store/     (5.7 GB)
    seed-13b.q4_1.gguf           (8.5 GB)                 seed-13b-q4-store/        (8.6 GB, 2026-12-06)
    inflated-draft-bf16/         HF dir (0.86 GB)         inflated-draft.f16.gguf   (0.92 GB)
    inflated-draft-q8-store/     (0.50 GB: the draft of the q4 workloads; bf16 does not fit in 2 GB)
    inflated-strong-draft-bf16/  HF dir (0.86 GB)         inflated-strong-draft-q8-store/ (~0.5 GB)
                                 the STRONG-PAIR draft (strong_pair.py): rows "chain (strong pair)"
                                 and "tree (strong pair)"; optional (without it those rows skip)

No seed-13b bf16 HF dir is built (33 GB): transformers + accelerate do not run on seed-13b.
The 7B HF dir is needed only to pack its store and by transformers (--with-hf): once the store
exists it may be deleted to make room (`python -m tools.inflate workload inflated-7b-bf16
--with-hf` writes it again).
"""
from __future__ import annotations

import shutil
from pathlib import Path

from .strong_pair import CONTENDERS as STRONG_ROWS, HF_DIR as STRONG_HF_DIR, NOTE as STRONG_NOTE, Q8_STORE as STRONG_Q8_STORE, SOURCE as STRONG
from .workloads import Workload, chat_prompt_ids, load_prompt_config

KEEP_FREE = 20 * 10**9  # never fill the disk below this: other jobs share it
BIG = {"inflated-7b-bf16": ("inflated-7b", "bf16", "4GB"),
       "inflated-7b-q4": ("inflated-7b", "q4", "2GB"),
       "seed-13b": ("seed-13b", "q4", "3.5GB")}
ALIASES = {"inflated-7b": ["inflated-7b-bf16", "inflated-7b-q4"]}
HF_SLOW = ("transformers + accelerate disk offload of a {size} target reads the offloaded "
           "weights through safetensors memory maps on every token (minutes per token here); "
           "pass --with-hf to run it anyway")
OPTIONAL = ("strong-draft-hf",)  # a workload runs without it (its rows skip, saying why)
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
    require_built(name, cache, with_hf)
    draft = inflated_files(name, cache, with_hf)["draft-hf"]
    draft_gguf = inflated_draft_gguf(cache, draft)
    gguf = cache / f"{shape}.q4_1.gguf" if quant == "q4" else None
    skip, hf_dir, store, spec_draft = {}, "", "", draft
    strong, why = strong_draft(name, cache, quant == "q4" and quantized_stores(), progress)
    skip.update({c: why for c in STRONG_ROWS} if why else {})
    if quant == "bf16":
        # the HF dir (13.8 GB) is needed to pack the store and by transformers only: once the
        # store exists it may be deleted to make room (--with-hf needs it again)
        hf, store = cache / f"{shape}-bf16", cache / f"{shape}-bf16-store"
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
            f" max context {context}" + (f"; {STRONG_NOTE}" if strong else ""))
    return Workload(name, store, hf_dir, str(spec_draft), str(draft), parse_size(ram or default_ram),
                    context,
                    ids, [0.0], max_new_tokens, str(cache / f"offload-{name}"), str(draft), eos,
                    desc, gguf=str(gguf) if gguf else None, draft_gguf=str(draft_gguf), skip=skip,
                    goals=shape, drafts={STRONG: strong} if strong else {})


def _dir_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in d.iterdir() if f.is_file())


class WorkloadError(ValueError):
    """An inflated workload cannot be prepared (not built, or no room on the disk)."""


def inflated_files(name: str, cache: Path, with_hf: bool = False) -> dict[str, Path]:
    """The inflated models workload `name` reads from `cache`, by kind: "draft-hf" (the
    inflated demo draft), "target-hf" (a bf16 target's HF dir: to pack its store, and for
    transformers under --with-hf), "target-gguf" (a q4 target), "strong-draft-hf" (the
    strong-pair draft: optional, its rows skip without it). tools/inflate writes them."""
    from offload.format import is_store

    shape, quant, _ = BIG[name]
    files = {"draft-hf": cache / "inflated-draft-bf16", "strong-draft-hf": cache / STRONG_HF_DIR}
    if quant == "q4":
        files["target-gguf"] = cache / f"{shape}.q4_1.gguf"
    elif with_hf or not is_store(cache / f"{shape}-bf16-store"):
        files["target-hf"] = cache / f"{shape}-bf16"
    return files


def is_built(path: Path) -> bool:
    return (path / "config.json").exists() if path.suffix != ".gguf" else path.exists()


def require_built(name: str, cache: Path, with_hf: bool = False) -> None:
    """Raise WorkloadError naming the command that builds what `name` lacks."""
    missing = [p for k, p in inflated_files(name, cache, with_hf).items()
               if not is_built(p) and k not in OPTIONAL]
    if missing:
        hf = " --with-hf" if with_hf else ""
        raise WorkloadError(
            f"workload {name}: the inflated models are not built yet ({', '.join(map(str, missing))}). "
            f"Build them once from a checkout of specdec (tens of GB of disk, see docs/benchmarks.md): "
            f"python -m tools.inflate workload {name} --cache-dir {cache.parent}{hf}")


def inflated_draft_gguf(cache: Path, draft: Path) -> Path:
    out = cache / "inflated-draft.f16.gguf"
    if not out.exists():
        from ..demo_model import find_demo_gguf
        from .draft_gguf import write_draft_gguf

        _check_space(cache, 10**9)
        write_draft_gguf(draft, out, find_demo_gguf())
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
    free = shutil.disk_usage(directory).free
    if free - need < KEEP_FREE:
        raise WorkloadError(f"{directory}: writing {need / 1e9:.1f} GB would leave "
                           f"{(free - need) / 1e9:.1f} GB free (the bench keeps "
                           f"{KEEP_FREE / 1e9:.0f} GB free). Free some space or pass another --cache-dir.")


def strong_draft(name: str, cache: Path, q8: bool, progress: bool = True) -> tuple[str | None, str]:
    """(the strong draft for workload `name` as the specdec runs take it, "") or (None, why
    not): the bf16 HF dir, packed to 8 bits for the q4 targets (`q8`)."""
    hf = cache / STRONG_HF_DIR
    if not is_built(hf):
        return None, (f"the strong-pair draft is not built ({hf}); python -m tools.inflate "
                      f"workload {name} --cache-dir {cache.parent} builds it")
    return str(packed(hf, cache / STRONG_Q8_STORE, progress, quant="q8") if q8 else hf), ""
