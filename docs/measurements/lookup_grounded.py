# Run: cd REPO && nice -n 19 python docs/measurements/lookup_grounded.py 64
"""--draft lookup on grounded prompts with the demo target (float32), greedy: tokens per pass,
acceptance, exactness against plain decoding of the same store."""
import json, sys, time
import torch
torch.set_num_threads(1)  # the machine is shared: one thread keeps a niced run steady
import specdec
from specdec.demo import DEMO_RAM, DEMO_MAX_CONTEXT
from specdec.demo_model import ensure_demo_gguf
from specdec.session import packed_store

PARA = ("The city council met on Tuesday evening to discuss the new park. Many residents came to "
        "the meeting because they were worried about traffic and noise. The mayor said that the park "
        "would have a playground, a small lake and walking paths, and that it would open next summer.")
CODE = ("def average(numbers):\n    total = 0\n    for n in numbers:\n        total += n\n"
        "    return total / len(number)\n")
PROMPTS = [
    f"Rewrite this paragraph in a more formal tone:\n\n{PARA}",
    f"Summarize the following text in two sentences:\n\n{PARA}",
    f"Fix the bug in this Python function and show the corrected code:\n\n```python\n{CODE}```",
    "Correct the spelling mistakes in this text and write it out again: \"Yesterday I went to the "
    "libary to borow a book about histroy. The librarian was very helpfull and showed me were the "
    "books about ancient Rome are kept.\"",
    f"Repeat the following paragraph exactly, word for word:\n\n{PARA}",
]
if __name__ == "__main__":  # lookup_branches.py imports PROMPTS only
    store = packed_store(ensure_demo_gguf(None), "bfloat16", None, True)
    N = int(sys.argv[1]) if len(sys.argv) > 1 else 96
    for penalty in (1.0, 1.1):
        plain = specdec.load(store, ram=DEMO_RAM, dtype="float32", max_context=DEMO_MAX_CONTEXT, progress=False)
        look = specdec.load(store, draft="lookup", ram=DEMO_RAM, dtype="float32", max_context=DEMO_MAX_CONTEXT, progress=False)
        tot = dict(passes=0, new=0, acc=0, drafted=0, rej=0, ps=0.0, ls=0.0, plain_passes=0)
        for p in PROMPTS:
            msgs = [{"role": "user", "content": p}]
            kw = dict(max_new_tokens=N, temperature=0.0, repetition_penalty=penalty)
            if penalty == 1.0:  # exactness once; the penalty run counts lookups only
                a = plain.chat(msgs, **kw); plain.reset()
            b = look.chat(msgs, **kw); look.reset()
            s = b.stats
            print(json.dumps(dict(penalty=penalty, prompt=p[:40], exact=a.token_ids == b.token_ids if penalty == 1.0 else None,
                                  tokens=s.new_tokens, tpp=round(s.tokens_per_pass, 3),
                                  token_acceptance=round(s.token_acceptance, 3), drafted=s.drafted,
                                  accepted=s.accepted, 
                                  lookup_s=round(s.seconds, 2), text=b.text[:160])), flush=True)
            tot["passes"] += s.target_passes; tot["new"] += s.new_tokens; tot["acc"] += s.accepted
            tot["drafted"] += s.drafted; tot["rej"] += s.rejected; tot["ls"] += s.seconds
        print("TOTAL", penalty, json.dumps(dict(tokens_per_pass=round(tot["new"] / tot["passes"], 3),
              token_acceptance=round(tot["acc"] / max(tot["acc"] + tot["rej"], 1), 3),
              drafted=tot["drafted"], accepted=tot["acc"])), flush=True)
        print("describe:", look.engine.strategy.describe())
        plain.close(); look.close()
