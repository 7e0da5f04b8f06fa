"""The draft model and its distillation loss: a llama built from some of the target's layers,
a partial output layer over the ids the target writes most, soft + hard cross-entropy, the
teacher-forced agreement, and the atomic save of specdec/demo_draft's files."""
from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from .files import write_atomic

def make_batch(examples):
    """Right-padded batch (causal attention: pads at the right never affect real positions)."""
    L = max(len(e[0]) for e in examples) - 1
    inp = torch.zeros((len(examples), L), dtype=torch.long)
    rows, cols, tv, ti = [], [], [], []
    for r, (ids, npr, v, i) in enumerate(examples):
        inp[r, :len(ids) - 1] = ids[:-1]
        n = len(ids) - npr  # reply tokens; position npr-1+s predicts reply token s
        rows.append(torch.full((n,), r))
        cols.append(torch.arange(npr - 1, npr - 1 + n))
        tv.append(v)
        ti.append(i)
    return inp, torch.cat(rows), torch.cat(cols), torch.cat(tv), torch.cat(ti)


def build_draft(target, layers: list[int], init_from: Path | None = None):
    from transformers import LlamaConfig, LlamaForCausalLM

    tc = target.config
    cfg = LlamaConfig(vocab_size=tc.vocab_size, hidden_size=tc.hidden_size,
                      intermediate_size=tc.intermediate_size, num_hidden_layers=len(layers),
                      num_attention_heads=tc.num_attention_heads, num_key_value_heads=tc.num_key_value_heads,
                      head_dim=tc.hidden_size // tc.num_attention_heads, rms_norm_eps=tc.rms_norm_eps,
                      rope_theta=100000.0, max_position_embeddings=tc.max_position_embeddings,
                      tie_word_embeddings=True, hidden_act="silu", attention_bias=False, mlp_bias=False,
                      bos_token_id=tc.bos_token_id, eos_token_id=tc.eos_token_id)
    cfg.rope_parameters = {"rope_theta": 100000.0, "rope_type": "default"}
    draft = LlamaForCausalLM(cfg)
    sd = target.state_dict()
    new = {"model.embed_tokens.weight": sd["model.embed_tokens.weight"], "model.norm.weight": sd["model.norm.weight"]}
    for j, src in enumerate(layers):
        for k, v in sd.items():
            if k.startswith(f"model.layers.{src}."):
                new[k.replace(f"model.layers.{src}.", f"model.layers.{j}.")] = v
    if init_from is not None:  # warm start: a previous draft's layers and norm
        from safetensors.torch import load_file

        new.update({k: v for k, v in load_file(str(init_from / "model.safetensors")).items()
                    if k.startswith(("model.layers.", "model.norm."))})
    return with_weights(draft, new)


def with_weights(draft, state: dict):
    """`draft` holding `state` (every weight but the tied output layer), the borrowed embedding
    table frozen, in float32: how every trainable draft starts."""
    missing, unexpected = draft.load_state_dict(state, strict=False)
    assert not unexpected and all(m == "lm_head.weight" for m in missing), (missing, unexpected)
    draft.tie_weights()
    draft.model.embed_tokens.weight.requires_grad_(False)
    return draft.float()


def select_output_ids(train, n: int, vocab: int) -> torch.Tensor:
    """The draft's output vocabulary (specdec.weights.OUTPUT_IDS): the target's greedy
    tokens in the training replies by frequency, then its other top-4 candidates, then the
    lowest ids (BPE merge order: roughly the most common), `n` in all, ascending."""
    from collections import Counter

    top1, top4 = Counter(), Counter()
    for _, _, _, ti in train:
        top1.update(ti[:, 0].tolist())
        top4.update(ti[:, :4].flatten().tolist())
    ranked = [t for t, _ in top1.most_common()] + [t for t, _ in top4.most_common() if t not in top1]
    chosen = dict.fromkeys(ranked[:n])
    fill = (i for i in range(vocab) if i not in chosen)
    while len(chosen) < min(n, vocab):
        chosen[next(fill)] = None
    return torch.tensor(sorted(chosen), dtype=torch.long)


def length_batches(lengths: list[int], batch_tokens: int, rng: random.Random,
                   chunk: int = 256) -> list[list[int]]:
    """One epoch's batches, as indices into `lengths`: shuffled, sorted by length inside chunks
    of `chunk`, cut when a batch reaches `batch_tokens`. A chunk's last, partial batch ends with
    the chunk: carried into the next chunk it took that chunk's shortest sequences beside its
    own longest, and right padding made such a batch up to 8x its tokens (the training runs'
    short 10-18 GB peaks and ~30% of their compute, 2026-12-06)."""
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    out = []
    for i in range(0, len(idx), chunk):
        cur, tok = [], 0
        for j in sorted(idx[i:i + chunk], key=lambda j: lengths[j]):
            cur.append(j)
            tok += lengths[j]
            if tok >= batch_tokens:
                out.append(cur)
                cur, tok = [], 0
        if cur:
            out.append(cur)
    rng.shuffle(out)
    return out


class OutputVocab:
    """Maps between full token ids and rows of the draft's partial output layer."""

    def __init__(self, ids: torch.Tensor, vocab: int):
        self.ids = ids
        self.row = torch.full((vocab,), -1, dtype=torch.long)
        self.row[ids] = torch.arange(len(ids))
        self._head = None

    def logits(self, draft, h: torch.Tensor) -> torch.Tensor:
        # The listed ids' rows of the frozen (borrowed) embedding table, as the runtime
        # scores them: gathered once, not on every step.
        if self._head is None:
            self._head = draft.model.embed_tokens.weight[self.ids].detach()
        return h @ self._head.t()


def compute_dtype(choice: str = "auto") -> torch.dtype:
    """The training arithmetic: bf16 autocast only where the CPU has bf16 instructions (on an
    AVX2 CPU torch emulates it, several times slower than float32)."""
    if choice not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision {choice!r}: use auto, bf16 or fp32")
    if choice == "auto":
        from specdec.compute.probe import bf16_instructions

        choice = "bf16" if bf16_instructions() else "fp32"
    return torch.bfloat16 if choice == "bf16" else torch.float32


def draft_logits(draft, vocab: OutputVocab, inp, rows, cols, dtype=torch.bfloat16):
    """The draft's logits over its output ids at the batch's (row, col) positions."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        h = draft.model(input_ids=inp).last_hidden_state
        return vocab.logits(draft, h[rows, cols])


def draft_loss(draft, vocab: OutputVocab, batch, hard_weight: float, dtype=torch.bfloat16):
    loss, top1, _ = draft_loss_logits(draft, vocab, batch, hard_weight, dtype)
    return loss, top1


def draft_loss_logits(draft, vocab: OutputVocab, batch, hard_weight: float, dtype=torch.bfloat16):
    """draft_loss, and the logits it was computed from (for a term on the same positions)."""
    inp, rows, cols, tv, ti = batch
    logits = draft_logits(draft, vocab, inp, rows, cols, dtype)
    logp = torch.log_softmax(logits.float(), -1)
    r = vocab.row[ti]  # -1: an id the draft cannot propose, left out of both terms
    inside = r >= 0
    p = torch.softmax(tv, -1) * inside
    soft = -(p * logp.gather(1, r.clamp(min=0))).sum(-1).mean()
    hard = -(logp.gather(1, r[:, :1].clamp(min=0)) * inside[:, :1]).mean()
    top1 = (vocab.ids[logits.argmax(-1)] == ti[:, 0]).float()
    return soft + hard_weight * hard, top1, logits


def agreement(draft, vocab: OutputVocab, held, bs: int = 16) -> dict:
    """The first recipe's held-out measure, in bf16 autocast."""
    return agreement_on(draft, vocab, (make_batch(held[s:s + bs]) for s in range(0, len(held), bs)))


@torch.no_grad()
def agreement_on(draft, vocab: OutputVocab, batches, autocast: bool = True) -> dict:
    """Top-1 and top-4 agreement with the target's argmax over made batches (inp, rows, cols,
    top values, top ids), in bf16 autocast or (autocast=False) the draft's own float32."""
    draft.eval()
    hits, n, top4 = 0.0, 0, 0.0
    for inp, rows, cols, _, ti in batches:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = vocab.logits(draft, draft.model(input_ids=inp).last_hidden_state[rows, cols]).float()
        hits += (vocab.ids[logits.argmax(-1)] == ti[:, 0]).sum().item()
        top4 += (vocab.ids[logits.topk(4, -1).indices] == ti[:, :1]).any(-1).sum().item()
        n += len(ti)
    draft.train()
    return {"top1": hits / max(n, 1), "top4": top4 / max(n, 1), "tokens": n}


def save_draft(draft, vocab: OutputVocab, out_dir: Path, meta: dict) -> None:
    from safetensors.torch import save_file

    from specdec.weights import OUTPUT_IDS

    out_dir.mkdir(parents=True, exist_ok=True)
    c = draft.config
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers, "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads, "head_dim": c.head_dim,
        "rms_norm_eps": c.rms_norm_eps, "rope_theta": 100000.0,
        "max_position_embeddings": c.max_position_embeddings, "tie_word_embeddings": True,
        "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
        "bos_token_id": c.bos_token_id, "eos_token_id": c.eos_token_id, "torch_dtype": "bfloat16",
    }
    state = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in draft.state_dict().items()
             if k not in ("model.embed_tokens.weight", "lm_head.weight") and "rotary" not in k}
    if len(vocab.ids) < c.vocab_size:
        state[OUTPUT_IDS] = vocab.ids.to(torch.int32)
    files = {"config.json": lambda p: p.write_text(json.dumps(config, indent=2) + "\n"),
             "model.safetensors": lambda p: save_file(state, str(p), metadata={"format": "pt"}),
             "specdec_draft.json": lambda p: p.write_text(json.dumps(meta, indent=2) + "\n")}
    for name, write in files.items():
        write_atomic(out_dir / name, write)


def _previous_run(init_from: Path | None) -> dict | None:
    """What the warm start had been through (its sidecar's numbers), kept in the new one."""
    if init_from is None:
        return None
    side = init_from / "specdec_draft.json"
    old = json.loads(side.read_text()) if side.exists() else {}
    keys = ("train_minutes", "steps", "train_reply_tokens", "heldout_top1", "output_vocab", "warm_start")
    return {"from": init_from.name, **{k: old[k] for k in keys if k in old}}
