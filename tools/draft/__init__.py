r"""Distil the demo draft (specdec/demo_draft) for SmolLM2-135M-Instruct, the offline demo target.

Three steps, one subcommand each (all on CPU, one thread by default, fixed seed), run from the
repository root as a module (so `specdec` and `tools` import without an install or a sys.path edit):

  python -m tools.draft gen   --minutes 35   # target greedy replies -> results/demo_draft_data
  python -m tools.draft train --minutes 50   # distil -> specdec/demo_draft
  python -m tools.draft eval                 # the real runtime on specdec/configs/demo_prompts.toml

The broad corpus (the second recipe, which accumulates across sessions), each resumable:

  python -m tools.draft.corpus_gen --data data/draft_corpus --minutes 60   # grow the corpus
  python -m tools.draft.labels --data data/draft_corpus --cache results/draft_labels
  python -m tools.draft.distil_corpus --data data/draft_corpus --labels results/draft_labels \
      --checkpoint results/draft_ckpt.pt --out results/draft_new --init-from specdec/demo_draft
  python -m tools.draft.measure [--draft DIR]   # held-out prompts: per-depth agreement, runtime

See docs/demo-draft-training.md.

First recipe (the shipped draft)
--------------------------------
* Data (the bottleneck, see docs/demo-draft.md): a few thousand chat prompts, none equal to the 20
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
