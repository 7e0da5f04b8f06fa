"""`gen`: the first recipe's data, greedy target replies (with their top-16 logits) to
template and Magpie prompts, in torch shards under --data (resumable by shard count)."""
from __future__ import annotations

import json
import random
import time
from pathlib import Path

import torch

from .batch_decode import left_pad
from .files import TOPK, eval_prompts, write_atomic, write_json_atomic
from .target import chat_ids, load_target
from .template_prompts import build_prompts

def sample_user_turns(tok, model, n: int, batch: int, seed: int, exclude: set[str]) -> list[str]:
    """n user messages written by the target itself (the Magpie idea): the chat template up to
    the start of a user turn, sampled at temperature 1 until <|im_end|>. An instruct model's
    idea of what users ask follows its chat tuning data, so these are closer to real chat than
    the templates (which the target never saw). Unfinished, tiny and duplicate ones are dropped."""
    probe = tok.decode(chat_ids(tok, "\x00"))
    prefix = tok(probe[:probe.index("\x00")], return_tensors="pt").input_ids
    end = tok.convert_tokens_to_ids("<|im_end|>")
    torch.manual_seed(seed)
    out: list[str] = []
    seen = {p.lower() for p in exclude}
    start = time.time()
    while len(out) < n:
        inp = prefix.repeat(batch, 1)
        with torch.no_grad():
            gen = model.generate(input_ids=inp, attention_mask=torch.ones_like(inp), do_sample=True,
                                 temperature=1.0, top_p=0.95, max_new_tokens=48, eos_token_id=end,
                                 pad_token_id=end)
        for row in gen[:, prefix.shape[1]:].tolist():
            if end not in row:
                continue  # ran past 48 tokens: a fragment, not a question
            text = tok.decode(row[:row.index(end)]).strip()
            if len(text.split()) >= 4 and text.lower() not in seen:
                seen.add(text.lower())
                out.append(text)
        print(f"[prompts {(time.time() - start) / 60:5.1f} min] {min(len(out), n)}/{n} written by the target",
              flush=True)
    return out[:n]


def job_prompts(args, tok, model, held: list[str]) -> list[str]:
    """The generated prompts, fixed once per data directory (prompts.json) so that a resumed
    gen continues the same list: --magpie of them written by the target, the rest templates."""
    path = Path(args.data) / "prompts.json"
    if path.exists():
        prompts = json.loads(path.read_text())["prompts"]
        print(f"{len(prompts)} prompts from {path} (--num-prompts/--magpie apply to a new data "
              f"directory only)", flush=True)
        return prompts
    n_self = round(args.num_prompts * args.magpie)
    own = sample_user_turns(tok, model, n_self, args.batch, args.seed, set(held))
    prompts = own + build_prompts(args.num_prompts - n_self, args.seed, set(held) | set(own))
    random.Random(args.seed).shuffle(prompts)
    write_json_atomic(path, {"magpie": args.magpie, "prompts": prompts})
    return prompts


def cmd_gen(args) -> None:
    from transformers import LogitsProcessor, LogitsProcessorList

    out_dir = Path(args.data)
    out_dir.mkdir(parents=True, exist_ok=True)
    _, tok, model = load_target()
    eos = tok.eos_token_id
    held = eval_prompts()
    prompts = job_prompts(args, tok, model, held)
    torch.manual_seed(args.seed)
    n_heldout = args.heldout
    # held-out split: the eval prompts (never trained on) + n_heldout generated prompts
    jobs = [(p, True) for p in held] + [(p, True) for p in prompts[:n_heldout]] + \
           [(p, False) for p in prompts[n_heldout:]]
    done = sum(len(torch.load(f, weights_only=True)["held"]) for f in sorted(out_dir.glob("shard_*.pt")))
    print(f"{len(jobs)} prompts, {done} already done", flush=True)

    class TopK(LogitsProcessor):
        def __init__(self):
            self.steps = []

        def __call__(self, input_ids, scores):
            v, i = scores.float().topk(TOPK, dim=-1)
            self.steps.append((v.to(torch.bfloat16), i.to(torch.int32)))
            return scores

    start = time.time()
    shard = len(list(out_dir.glob("shard_*.pt")))
    pos = done
    total_tokens = ties = 0
    while pos < len(jobs) and time.time() - start < args.minutes * 60:
        batch = jobs[pos:pos + args.batch]
        ids = [chat_ids(tok, p) for p, _ in batch]
        inp, att = left_pad(ids, eos)
        width = inp.shape[1]
        cap = TopK()
        with torch.no_grad():
            gen = model.generate(input_ids=inp, attention_mask=att, max_new_tokens=args.max_new_tokens,
                                 do_sample=False, pad_token_id=eos, eos_token_id=eos,
                                 logits_processor=LogitsProcessorList([cap]))
        reply = gen[:, width:]
        vals = torch.stack([v for v, _ in cap.steps], 1)  # [B, S, K]
        idx = torch.stack([i for _, i in cap.steps], 1)
        rec = {"ids": [], "n_prompt": [], "top_v": [], "top_i": [], "held": [], "prompt": []}
        for r, (p, h) in enumerate(batch):
            rr = reply[r].tolist()
            n = rr.index(eos) + 1 if eos in rr else len(rr)
            for s in range(n):  # bf16 logits tie often: make the token greedy decoding took the top-1
                if int(idx[r, s, 0]) != rr[s]:
                    hit = (idx[r, s] == rr[s]).nonzero()
                    j = int(hit[0]) if len(hit) else TOPK - 1
                    idx[r, s, j], vals[r, s, j] = idx[r, s, 0], vals[r, s, 0]
                    idx[r, s, 0] = rr[s]
                    ties += 1
            rec["ids"].append(torch.tensor(ids[r] + rr[:n], dtype=torch.int32))
            rec["n_prompt"].append(len(ids[r]))
            rec["top_v"].append(vals[r, :n].clone())
            rec["top_i"].append(idx[r, :n].clone())
            rec["held"].append(h)
            rec["prompt"].append(p)
            total_tokens += n
        write_atomic(out_dir / f"shard_{shard:04d}.pt", lambda t: torch.save(rec, t))
        shard += 1
        pos += len(batch)
        el = time.time() - start
        print(f"[gen {el / 60:5.1f} min] {pos}/{len(jobs)} prompts, {total_tokens} reply tokens "
              f"({total_tokens / el:.0f}/s, {ties} ties); e.g. {tok.decode(rec['ids'][0][rec['n_prompt'][0]:])[:80]!r}",
              flush=True)
