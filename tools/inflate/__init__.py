"""Inflated models for the benchmarks: SmolLM2-135M-Instruct (and the demo draft) embedded
exactly into Llama-2-7B/13B shapes, so a pass costs the big model's I/O and compute while the
answers stay the small model's (builder.py explains the construction, check.py measures its
exactness at full size, workloads.py writes what `specdec bench offload`'s big workloads read).

    python -m tools.inflate workload seed-13b          # the files of one bench workload
    python -m tools.inflate hf --shape inflated-7b --out DIR
    python -m tools.inflate.check --shape inflated-7b
"""
