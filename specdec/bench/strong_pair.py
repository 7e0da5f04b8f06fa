"""The STRONG-PAIR rows of `specdec bench offload` (`strong_chain`, `strong_tree`,
`strong_overlap`; shown as "chain (strong pair)", "tree (strong pair)", "overlap (strong
pair)"): the inflated target with a draft that agrees like a published same-family pair instead
of the home-made demo draft.

The draft is the demo target's own copy with every decoder linear weight re-rounded to 4 bits
(min/max per 64 inputs), inflated to the cost of a 0.5B-class draft (tools/inflate/strong.py:
the same weights multiplied per drafted token as the inflated demo draft). It agrees with the
target ~0.72-0.80 per token on independent prompts (docs/demo-draft-training.md), so these rows
bracket what a good real drafter gives; the plain `chain` / `tree` rows are the demo draft.

It is built with the workload (`python -m tools.inflate workload NAME`) into
<cache>/bench/inflated-strong-draft-bf16 (0.86 GB) and, for the q4 workloads, packed to 8 bits
as the demo draft is (inflated-strong-draft-q8-store, ~0.5 GB). A workload built before it
existed runs without these rows and says how to add them.
"""
from __future__ import annotations


SOURCE = "strong"  # Contender.draft_source of the strong rows; Workload.drafts key
HF_DIR = "inflated-strong-draft-bf16"
Q8_STORE = "inflated-strong-draft-q8-store"
CONTENDERS = {"strong_chain": "chain", "strong_tree": "tree",  # name -> speculation
              "strong_overlap": "overlap"}
LABELS = {name: f"{spec} (strong pair)" for name, spec in CONTENDERS.items()}
LABEL = ("specdec speculative ({spec}), STRONG PAIR: the target's rtn:4:64 copy inflated to a "
         "0.5B-class draft cost")
NOTE = ("strong pair = the target's own 4-bit (rtn:4:64) copy inflated to a 0.5B-class draft "
        "cost: a stand-in for a good same-family drafter (agreement ~0.72-0.80 per token)")
NOT_HERE = ("no strong-pair draft for this workload (it exists for the inflated workloads: the "
            "target's rtn:4:64 copy)")


def display(contender: str) -> str:
    """A row's contender as reports show it."""
    return LABELS.get(contender, contender)
