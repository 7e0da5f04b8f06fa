# Run: cd REPO && nice -n 19 python docs/measurements/lookup_branches.py 64
"""Prompt-lookup branches on the demo pair's tree (SmolLM2-135M-Instruct Q4_1 store + the demo
draft, float32, greedy, no penalty): a fixed 16-node draft tree without and with 8 fixed lookup
nodes, on the grounded prompts (docs/measurements/lookup_grounded.py) and on the draft's 20
evaluation chat prompts. Fixed sizes, so the counts do not depend on the machine's speed.
Prints per-prompt and total tokens per pass, and whether the output equals plain decoding."""
import json
import runpy
import sys
import tomllib

import torch

torch.set_num_threads(1)  # the machine is shared: one thread keeps a niced run steady
import specdec  # noqa: E402
from specdec.configs import resource  # noqa: E402

N = int(sys.argv[1]) if len(sys.argv) > 1 else 64
SETS = {"grounded": runpy.run_path("docs/measurements/lookup_grounded.py", run_name="prompts")["PROMPTS"],
        "chat": tomllib.loads(resource("demo_prompts.toml").read_text())["prompts"]}


def run(lm, prompt):
    out = lm.chat([{"role": "user", "content": prompt}], max_new_tokens=N, temperature=0.0)
    lm.reset()
    return out


plain = specdec.load(dtype="float32", ram="2GB", draft="lookup", k=0, progress=False)  # k=0: plain passes
for name, prompts in SETS.items():
    expected = [run(plain, p).token_ids for p in prompts]
    for lookup in (0, 8):
        lm = specdec.load(dtype="float32", ram="2GB", speculation="tree", tree_nodes=16, lookup_branches=lookup,
                          progress=False)
        new = passes = taken = 0
        exact = 0
        for p, want in zip(prompts, expected):
            out = run(lm, p)
            s = out.stats
            new += s.new_tokens
            passes += s.target_passes
            taken += s.counters.get("lookup_taken", 0)
            exact += out.token_ids == want
            print(json.dumps(dict(set=name, lookup=lookup, prompt=p[:40], tpp=round(s.tokens_per_pass, 3),
                                  lookup_taken=s.counters.get("lookup_taken", 0))), flush=True)
        print("TOTAL", json.dumps(dict(set=name, lookup=lookup, prompts=len(prompts), tokens=new,
                                        passes=passes, tokens_per_pass=round(new / passes, 3),
                                        lookup_taken=taken, equal_to_plain=f"{exact}/{len(prompts)}")),
              flush=True)
        lm.close()
