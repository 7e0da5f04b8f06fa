"""Routing statistics of a mixture-of-experts target on some prompts, beside the published
figures: distinct experts per layer for one token and per pass of T consecutive tokens, the
same under independent routing, and the share of a token's experts its predecessor also used.

Plain decoding (no draft), so the trace holds exactly the tokens of the text in order.
"""
from __future__ import annotations

from specdec.moe_routing import RoutingTrace, routing_statistics

# Qwen3-30B-A3B (128 experts, 8 routed), measured by others: 4 verified tokens load ~2.5x the
# experts of one, where independent routing would load 29.0 / 8 = 3.6x.
PUBLISHED = {"model": "Qwen3-30B-A3B", "experts_4_over_1": 2.5}


def routing_report(lm, prompts: list, new_tokens: int, pass_sizes=(1, 2, 4, 8)) -> dict:
    """Statistics per prompt (each its own trace) and their token-weighted mean."""
    model = lm.target.model
    if not getattr(model.args, "num_experts", 0):
        raise ValueError("the target has no experts: routing statistics need a mixture-of-experts model")
    runs = []
    try:
        for prompt in prompts:
            model.routing_observer = trace = RoutingTrace()
            lm.reset()
            lm.generate(as_chat(lm, prompt), max_new_tokens=new_tokens)
            runs.append(routing_statistics(trace, model.args.num_experts, pass_sizes))
    finally:
        model.routing_observer = None
    return {"runs": runs, "mean": _mean(runs), "published": PUBLISHED}


def as_chat(lm, prompt):
    """A text prompt as a user turn under the chat template (an instruct model answers it at
    length instead of ending at once); token ids and template-less models as they are."""
    if isinstance(prompt, str) and lm.has_chat_template():
        return lm.encode_chat([{"role": "user", "content": prompt}])
    return prompt


def _mean(runs: list[dict]) -> dict:
    tokens = sum(r["tokens"] for r in runs)
    first = runs[0]
    sizes = [t for t in first["distinct_per_pass"] if all(t in r["distinct_per_pass"] for r in runs)]
    weighted = lambda get: sum(get(r) * r["tokens"] for r in runs) / tokens  # noqa: E731
    union = {t: weighted(lambda r, t=t: r["distinct_per_pass"][t]) for t in sizes}
    reuse = [r for r in runs if r["neighbour_reuse"] is not None]
    return {"tokens": tokens, "experts": first["experts"], "routed": first["routed"],
            "distinct_per_pass": union, "independent": {t: first["independent"][t] for t in sizes},
            "neighbour_reuse": sum(r["neighbour_reuse"] * r["tokens"] for r in reuse) /
            sum(r["tokens"] for r in reuse) if reuse else None,
            "experts_4_over_1": union[4] / union[1] if 4 in union and 1 in union else None}


def report_text(report: dict) -> str:
    """The report as lines of text (also one read back from JSON, whose keys are strings)."""
    m, p = _int_keys(report["mean"]), report["published"]
    lines = [f"{m['tokens']} tokens, {m['experts']} experts, {m['routed']} routed per token",
             "T  distinct/layer  independent"]
    lines += [f"{t:<2} {m['distinct_per_pass'][t]:>14.2f}  {m['independent'][t]:>11.2f}"
              for t in m["distinct_per_pass"]]
    if m["neighbour_reuse"] is not None:
        lines.append(f"share of a token's experts its predecessor used: {m['neighbour_reuse']:.2f}")
    if m["experts_4_over_1"] is not None:
        lines.append(f"experts at T=4 / T=1: {m['experts_4_over_1']:.2f} "
                     f"(published for {p['model']}: ~{p['experts_4_over_1']}; independent: "
                     f"{m['independent'][4] / m['independent'][1]:.2f})")
    return "\n".join(lines)


def _int_keys(mean: dict) -> dict:
    return {k: {int(t): v for t, v in mean[k].items()} if k in ("distinct_per_pass", "independent") else mean[k]
            for k in mean}
