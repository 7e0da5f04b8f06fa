"""The transformers + accelerate contenders of `specdec bench offload`.

The baseline is what a user gets from the stock stack on the same machine: the target
loaded with device_map="auto", a CPU memory limit and an offload folder (accelerate
keeps what fits in RAM and reads the rest from disk on every forward), then
`generate()`, plain or with assisted generation (the draft in RAM as assistant_model).

transformers needs ordinary HF directories, so the demo target (a GGUF) and a specdec
draft that borrows its embeddings from the target (specdec/loading.py DRAFT_SIDECAR) are
written out as HF directories once (`export_target_hf`, `export_assistant_hf`).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ..loading import wants_target_embeddings
from ..weights import OUTPUT_IDS

TOKENIZER_GLOBS = ("tokenizer*", "special_tokens_map.json", "vocab.json", "merges.txt")


def export_target_hf(src: Path, out: Path) -> Path:
    """An HF directory (bf16 safetensors + tokenizer) for a .gguf target; an HF directory
    is used as it is. Written to a temporary name and renamed, so a crash leaves no half dir."""
    src = Path(src)
    if src.is_dir():
        return src
    if out.exists():
        return out
    from transformers import AutoModelForCausalLM

    from offload.gguf_hf_config import gguf_tokenizer

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name,
                                                 dtype=torch.bfloat16)
    _save_plain(model, tmp)
    # The tokenizer from the config the model's load read (AutoTokenizer would parse the file
    # again only to pick its class).
    gguf_tokenizer(str(src.parent), src.name, model.config.to_dict()).save_pretrained(str(tmp))
    tmp.rename(out)
    return out


def _save_plain(model, out: Path) -> None:
    """save_pretrained refuses a model loaded from GGUF (it counts as quantized), but the
    weights are dequantized by then: write them and the config as a plain checkpoint."""
    from safetensors.torch import save_file

    out.mkdir(parents=True)
    state = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    if config.get("tie_word_embeddings"):
        state.pop("lm_head.weight", None)  # shared with the embeddings; safetensors wants one copy
    config["torch_dtype"] = "bfloat16"
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=1, default=str))
    model.generation_config.save_pretrained(str(out))


def export_assistant_hf(draft: Path, target_hf: Path, out: Path) -> Path:
    """An HF directory transformers can load as assistant_model. A draft that takes its
    embeddings from the target gets the target's table written into it; a complete HF
    draft is used as it is."""
    draft = Path(draft)
    if not wants_target_embeddings(draft):
        return draft
    if out.exists() and out.stat().st_mtime >= (draft / "model.safetensors").stat().st_mtime:
        return out
    from safetensors.torch import load_file, save_file

    config = json.loads((draft / "config.json").read_text())
    state = load_file(str(draft / "model.safetensors"))
    embed = _target_tensor(target_hf, "model.embed_tokens.weight")
    state["model.embed_tokens.weight"] = embed.to(torch.bfloat16)
    ids = state.pop(OUTPUT_IDS, None)
    if not config.get("tie_word_embeddings", False) or ids is not None:
        head = _target_tensor(target_hf, "lm_head.weight", default=embed)
        if ids is not None:
            head = _partial_head(head, ids.long(), state.pop("lm_head.weight", None))
            config["tie_word_embeddings"] = False
        state["lm_head.weight"] = head.to(torch.bfloat16)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"),
              metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(config, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def _partial_head(full: torch.Tensor, ids: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """transformers has no partial output vocabulary: a full-size head whose rows outside
    `ids` are zero. Those ids then score 0 instead of -inf, which changes nothing at
    temperature 0 while the best listed id scores above 0 (a trained draft's does)."""
    head = torch.zeros_like(full)
    head[ids] = rows if rows is not None else full[ids]
    return head


def _target_tensor(hf_dir: Path, name: str, default=None) -> torch.Tensor:
    from safetensors import safe_open

    for f in sorted(Path(hf_dir).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            if name in st.keys():
                return st.get_tensor(name)
    if default is not None:
        return default
    raise FileNotFoundError(f"{hf_dir}: no tensor {name} in its safetensors files")


def load_offloaded(hf_dir: Path, cpu_bytes: int, offload_folder: Path, dtype=torch.bfloat16):
    """The target with at most `cpu_bytes` of weights in RAM, the rest offloaded to disk."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(hf_dir), dtype=dtype, device_map="auto",
        max_memory={"cpu": int(cpu_bytes), "disk": 1 << 50}, offload_folder=str(offload_folder))
    return model.eval()


def load_assistant(hf_dir: Path, dtype=torch.bfloat16):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=dtype).eval()


def offloaded_fraction(model) -> dict:
    """How accelerate placed the target: modules on disk vs in RAM."""
    placement = getattr(model, "hf_device_map", {}) or {}
    disk = [k for k, v in placement.items() if v == "disk"]
    return {"modules_on_disk": len(disk), "modules_in_ram": len(placement) - len(disk)}


class PassCounter:
    """Counts forward calls of the target: one per verification pass (assisted) or token (plain)."""

    def __init__(self, model):
        self.calls = 0
        self._handle = model.register_forward_pre_hook(self._hook)

    def _hook(self, *_):
        self.calls += 1

    def close(self) -> None:
        self._handle.remove()


def hf_generate(model, prompt_ids: list[int], max_new_tokens: int, temperature: float,
                seed: int, assistant=None, eos_ids=()) -> list[int]:
    """New token ids from transformers' generate (greedy at temperature 0, else plain
    temperature sampling: top_k=0, top_p=1, the same distribution specdec samples)."""
    ids = torch.tensor([prompt_ids], dtype=torch.long)
    kwargs = dict(max_new_tokens=max_new_tokens, attention_mask=torch.ones_like(ids),
                  do_sample=temperature > 0, pad_token_id=next(iter(eos_ids), 0))
    if eos_ids:
        kwargs["eos_token_id"] = list(eos_ids)
    if temperature > 0:
        kwargs.update(temperature=temperature, top_k=0, top_p=1.0)
    else:
        kwargs.update(temperature=None, top_k=None, top_p=None)
    if assistant is not None:
        kwargs["assistant_model"] = assistant
    torch.manual_seed(seed)
    with torch.inference_mode():
        out = model.generate(ids, **kwargs)
    return out[0, len(prompt_ids):].tolist()
