# Run: cd REPO && nice -n 19 python docs/measurements/demo_sampling.py 128 [T,TOP_P,PENALTY[,WINDOW] ...] [--seeds N]
#   (max new tokens; then the grid rows, default the three greedy rows below; WINDOW: the last N
#   tokens the penalty looks at, 0 = the whole context, default 64; --seeds N: sampled
#   rows run every prompt with seeds 0..N-1, default 1 and 3 for the capital question)
"""Demo sampling defaults by measurement: the demo pair (float32), a few prompts with checkable
answers, a grid of (temperature, top-p, repetition penalty, repetition window); right answers, loops, acceptance."""
import json, sys, time
import torch
torch.set_num_threads(1)  # the machine is shared
import specdec

CHECKS = {  # prompt -> a reply is right when one of these (lower-cased) occurs in it
    "Write a short poem about the ocean.": None,  # loops only (greedy unpenalized loops here)
    "What is the capital of France?": ["paris"],
    "How many minutes are there in a day?": ["1440", "1,440"],
    "Write a Python function that reverses a string.": ["[::-1]", "reversed(", ".reverse("],
    "Why is the sky blue?": ["scatter"],
    "What is photosynthesis?": ["light"],
}
SEEDS = {"What is the capital of France?": 3}  # the known failure gets more seeds


def loops(ids, n=10, times=3):
    """A reply loops when some n-token run occurs `times` times or more."""
    seen = {}
    for i in range(len(ids) - n + 1):
        key = tuple(ids[i:i + n])
        seen[key] = seen.get(key, 0) + 1
        if seen[key] >= times:
            return True
    return False


GRID = [(0.0, 1.0, 1.0, 64), (0.0, 1.0, 1.05, 64), (0.0, 1.0, 1.1, 64)]
argv = sys.argv[1:]
n_seeds = None
if "--seeds" in argv:
    i = argv.index("--seeds")
    n_seeds = int(argv[i + 1])
    del argv[i:i + 2]
max_new = int(argv[0]) if argv else 96
if argv[1:]:
    GRID = []
    for row in argv[1:]:
        t, p, pen, *w = row.split(",")
        GRID.append((float(t), float(p), float(pen), int(w[0]) if w else 64))
lm = specdec.load(dtype="float32", ram="2GB", progress=False)  # float32 doubles the draft: 600 MB is too small
print("strategy:", lm.engine.strategy.describe(), flush=True)
for t, p, pen, win in GRID:
    right = total = looped = 0
    passes = new = acc = rej = 0
    secs = 0.0
    wrong = []
    for prompt, keys in CHECKS.items():
        for seed in range(1 if t == 0 else n_seeds or SEEDS.get(prompt, 1)):
            out = lm.chat([{"role": "user", "content": prompt}], max_new_tokens=max_new,
                          temperature=t, top_p=p, repetition_penalty=pen,
                          repetition_window=win, seed=seed)
            lm.reset()
            s = out.stats
            ok = keys is None or any(k in out.text.lower() for k in keys)
            lp = loops(out.token_ids)
            right += ok and keys is not None; total += keys is not None; looped += lp
            passes += s.target_passes; new += s.new_tokens; acc += s.accepted; rej += s.rejected
            secs += s.seconds
            print("  ", json.dumps(dict(t=t, pen=pen, win=win, prompt=prompt[:30], seed=seed, ok=ok, loop=lp,
                  tpp=round(s.tokens_per_pass, 2), n=s.new_tokens, text=out.text)), flush=True)
    print(json.dumps(dict(temperature=t, top_p=p, penalty=pen, window=win, right=f"{right}/{total}",
                          loops=looped, token_acceptance=round(acc / max(acc + rej, 1), 3),
                          tokens_per_pass=round(new / passes, 3), tokens=new,
                          tok_s=round(new / secs, 2))), flush=True)
