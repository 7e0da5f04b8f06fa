"""What the broad data generator asks the target to do: one plan per batch (decoding, reply
length, turns) and one opening per conversation (system prompt, and how its first user turn
is made). The target writes most user turns itself (the Magpie idea: its chat template up to
a user turn, sampled), steered by an opener for some kinds (code, lists, math, rewrites,
translation, constraints, casual chat); material tasks ask it to rewrite, summarise or
translate a reply it wrote earlier in the run; written prompts (written_prompts.toml, by hand
in real users' voices: code with pasted errors, typos, other languages, pasted text to
rewrite...) reach past the target's own bland user turns; template prompts add the first
recipe's kinds. Shares of openings: Magpie 30%, openers 36%, written 15%, material 12%,
template the rest (and material's share while there is none). Nothing here is fitted to an
evaluation prompt: tools/draft/held_out.py filters the results (written_prompts.toml passes
it as a whole: tests/test_draft_corpus.py)."""
from __future__ import annotations

import functools
import random
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .template_prompts import template_prompt

# 2: version 1's user turns were up to T 1.2 (mostly noise at 135M), its openers lost a space
# 3: 15% of openings are hand-written prompts ("written"), taken from the openers (45 -> 36%)
#    and the template prompts (13 -> 7%)
RECIPE_VERSION = 3
WRITTEN_TOML = Path(__file__).with_name("written_prompts.toml")

# None: the model's default system prompt (what `specdec chat` sends), the most common case.
SYSTEM_PROMPTS = [
    None, None, None, None, None, None,
    "You are a helpful assistant.",
    "You are a friendly assistant. Keep answers short and clear.",
    "You are an expert programmer who writes clean, commented code.",
    "You are a patient teacher who explains things step by step.",
    "You are a concise assistant. Answer in as few words as possible.",
    "You are a writing assistant that helps people edit emails and documents.",
    "You are a math tutor. Show your working.",
    "You are a travel agent with good local knowledge.",
    "You are a supportive friend who gives honest advice.",
    "You are a customer support agent for an online shop.",
    "You are a cooking assistant.",
    "You are a translator between English and other languages.",
    "You answer questions about science for curious teenagers.",
    "Always answer with a numbered list.",
]

# The start of a user turn that the target then finishes: steers the kind of request
# without writing it (the rest, and so the request itself, is the target's).
OPENERS = {
    "code": ["Write a Python function that", "How do I", "Can you fix this code", "In JavaScript, how",
             "What does this error mean:", "Write a SQL query", "Explain this code:", "Write a bash",
             "I'm learning Python and"],
    "list": ["List", "Give me a list of", "What are 5", "Name three", "Give me 10", "Make a checklist"],
    "math": ["Solve", "If a", "How many", "A store sells", "Calculate", "What is the probability",
             "My son has a math problem:"],
    "rewrite": ["Rewrite this", "Can you make this email", "Proofread:", "Make this sound",
                "Paraphrase"],
    "translate": ["Translate", "How do you say", "What does", "Translate into Spanish:"],
    "constraint": ["In exactly three sentences,", "Without using the letter", "In under 50 words,",
                   "Using only simple words,", "Answer in one word:", "Write a haiku", "In a table,"],
    "casual": ["hey", "hi", "lol", "ok so", "ugh", "honestly", "quick question", "can u",
               "so my friend", "i need help"],
    "advice": ["I'm thinking about", "Should I", "My boss", "How can I", "What's the best way to",
               "I feel", "Any tips for"],
    "explain": ["Explain", "Why do", "What is the difference between", "How does", "What happens when"],
    "write": ["Write a story", "Write a poem", "Write an email", "Write a short speech",
              "Write a product description", "Write a cover letter"],
}

MATERIAL_TASKS = [
    "Summarize this in two sentences:", "Rewrite this to sound more formal:",
    "Rewrite this for a five-year-old:", "Turn this into three bullet points:",
    "Translate this into French:", "Translate this into Spanish:", "Translate this into German:",
    "Shorten this to one sentence:", "Make this more friendly:", "What is the main point here?",
    "Fix any mistakes in this text:", "Give this text a title:", "tl;dr this pls:",
    "Write three questions a teacher could ask about this text:",
]

CONSTRAINTS = ["", "", "", "", " Keep it short.", " Use bullet points.", " Answer in one paragraph.",
               " Explain step by step.", " Give an example.", " No more than 50 words.",
               " Be funny.", " Use simple words."]


@functools.cache
def written_prompts() -> tuple[str, ...]:
    """Every hand-written first user turn in written_prompts.toml, all its tables in file order."""
    data = tomllib.loads(WRITTEN_TOML.read_text(encoding="utf-8"))
    return tuple(p for table in data.values() for p in table["prompts"])


@dataclass(frozen=True)
class BatchPlan:
    """Decoding for every reply in one batch (one decode call per turn takes one setting)."""
    greedy: bool
    temperature: float  # replies' temperature (1.0 and unused when greedy)
    top_p: float
    max_new_tokens: int
    turns: int  # user/assistant exchanges; follow-up user turns are the target's too
    user_temperature: float  # the temperature the target writes user turns at


@dataclass(frozen=True)
class Opening:
    """How a conversation starts: a system prompt (None: the default) and either a full first
    user turn (`user`) or the start of one for the target to finish (`opener`, '' = Magpie)."""
    kind: str
    system: str | None
    user: str | None = None
    opener: str = ""


def plan_batch(rng: random.Random) -> BatchPlan:
    greedy = rng.random() < 0.5
    return BatchPlan(greedy=greedy,
                     temperature=1.0 if greedy else rng.choice([0.7, 0.7, 1.0]),
                     top_p=1.0 if greedy else rng.choice([0.9, 0.95, 1.0]),
                     max_new_tokens=rng.choices([128, 256, 512], weights=[4, 4, 2])[0],
                     turns=rng.choices([1, 2, 3], weights=[6, 3, 1])[0],
                     user_temperature=rng.choice([0.7, 0.8, 0.9, 1.0]))


def plan_opening(rng: random.Random, material: list[str]) -> Opening:
    """material: earlier replies of this run to rewrite or summarise (may be empty)."""
    system = rng.choice(SYSTEM_PROMPTS)
    r = rng.random()
    if r < 0.30:
        return Opening("magpie", system)
    if r < 0.66:
        kind = rng.choice(sorted(OPENERS))
        return Opening(kind, system, opener=rng.choice(OPENERS[kind]))
    if r < 0.81:
        prompt = rng.choice(written_prompts())
        if rng.random() < 0.3:  # a constraint after a pasted block goes on its own line
            extra = rng.choice(CONSTRAINTS)
            prompt += extra if "\n" not in prompt else ("\n\n" + extra.strip() if extra else "")
        return Opening("written", system, user=prompt)
    if r < 0.93 and material:
        text = rng.choice(material)
        return Opening("material", system, user=f"{rng.choice(MATERIAL_TASKS)}\n\n{text}")
    prompt = template_prompt(rng).strip()
    return Opening("template", system, user=prompt + rng.choice(CONSTRAINTS))
