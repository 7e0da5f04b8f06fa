"""What the commands print about a loaded decoder: the banner and the RAM plan table."""
from __future__ import annotations

from .load_args import is_demo


def banner(lm, args=None) -> str:
    from offload.budget import format_size

    t = lm.target
    lines = [f"specdec: target {t.path} ({t.args.model_type}, {t.args.num_layers} layers)"]
    if t.description:
        lines.append(f"  {t.description}")
    plan = lm.plan
    if plan is not None:
        n = len(plan.pinned) + len(plan.streamed)
        where = (f"{len(plan.pinned)}/{n} layers pinned in RAM, {len(plan.streamed)} streamed from "
                 f"disk ({format_size(plan.streamed_bytes_per_pass)} read per pass, ring of "
                 f"{plan.ring_size})" if plan.streamed else f"all {n} layers pinned in RAM"
                 + ("" if plan.experts_pinned else " (their dense parts)"))
        lines.append(f"  RAM budget {format_size(plan.budget_bytes)} ({_budget_source(plan, args)}): "
                     f"{where}")
        if plan.expert_slots:  # a mixture-of-experts store: how many experts fit
            lines.append(f"  experts: {plan.expert_summary}")
        lines.append(f"  planned: resident {format_size(plan.resident_bytes)}, draft "
                     f"{format_size(plan.draft_bytes)}, KV {format_size(plan.kv_target_bytes + plan.kv_draft_bytes)}"
                     f" at {plan.max_context} tokens; total {format_size(plan.total_bytes)}")
    else:
        lines.append("  target fully in RAM (no --ram given)")
    draft = "none (plain decoding)"
    if lm.engine.strategy.name == "plain" and args is not None and is_demo(args):
        draft += ("; the demo's default, as fast as the demo gets: --speculation chain for its "
                  "draft model, --draft lookup for prompt lookup")
    if lm.draft is None and lm.engine.strategy.name != "plain":  # drafting without a model
        draft = f"none: {_speculation_text(lm)}"
    elif lm.draft is not None:
        name = lm.draft_kind.label(lm.draft) if lm.draft_kind is not None else lm.draft.path
        draft = f"{name}, {_speculation_text(lm)}"
    lines.append(f"  draft: {draft}")
    lines.append(f"  compute: {kernels_text(t.model)}")
    return "\n".join(lines)


def kernels_text(model) -> str:
    """'bf16 activations on AVX2 (no bf16 instructions); matmuls: bf16: native at 1, ...'"""
    from ..compute.probe import machine

    m, dtype, policy = machine(), model.dtype, model.kernels
    bf16 = "bf16 instructions" if m["bf16_instructions"] else "no bf16 instructions"
    how = policy.summary() if policy.timings else "F.linear (reference kernels)"
    return (f"{str(dtype).removeprefix('torch.')} activations on {m['isa']} ({bf16}); "
            f"matmuls: {how}; q4/q8: torch's int4 kernel")


def _budget_source(plan, args) -> str:
    if args is not None and args.ram:
        return "--ram"
    preset = getattr(args, "preset", None) or {}
    if preset.get("ram"):
        return f"preset {args.config}"
    if args is not None and is_demo(args):
        return "the demo's default; change it with --ram"
    return plan.budget_reason


def _speculation_text(lm) -> str:
    return lm.engine.strategy.describe()


def plan_text(plan) -> str:
    from offload.budget import format_size

    pinned = "pinned layers" if plan.experts_pinned else "pinned dense parts"
    rows = [(pinned, _ranges(plan.pinned), format_size(plan.pinned_bytes)),
            ("streamed layers", _ranges(plan.streamed),
             f"{format_size(plan.streamed_bytes_per_pass)} per pass"),
            ("ring buffers", str(plan.ring_size), format_size(plan.ring_bytes)),
            *([("expert buffers (cache)", f"{plan.expert_slots} ({plan.expert_cache})",
                format_size(plan.expert_buffer_bytes))] if plan.expert_slots else []),
            ("resident (embeddings, norms, head)", "", format_size(plan.resident_bytes)),
            ("draft", "", format_size(plan.draft_bytes)),
            ("KV caches", f"{plan.max_context} tokens", format_size(plan.kv_target_bytes + plan.kv_draft_bytes)),
            ("overhead allowance", "", format_size(plan.overhead_bytes)),
            ("total planned", "", format_size(plan.total_bytes)),
            ("budget", "", format_size(plan.budget_bytes)),
            ("smallest budget that works", "", format_size(plan.minimum_bytes))]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    return "RAM plan (MB = 10^6 bytes):\n" + "\n".join(
        f"  {a:<{w0}}  {b:<{w1}}  {c:>10}" for a, b, c in rows)


def _ranges(ids) -> str:
    """(0, 1, 2, 5, 6) -> '0-2, 5-6'; () -> 'none'."""
    ids = sorted(ids)
    if not ids:
        return "none"
    spans, start = [], ids[0]
    for prev, cur in zip(ids, ids[1:] + [None]):
        if cur != prev + 1 if cur is not None else True:
            spans.append(f"{start}-{prev}" if prev != start else str(start))
            start = cur
    return ", ".join(spans)


def draft_info(lm) -> dict | None:
    """The banner's draft line for `info --json`: what the draft is, by its kind (a self-draft
    has no path of its own: its layers and encoding instead); None: plain decoding."""
    from ..drafts import Draft

    return (lm.draft_kind or Draft()).info(lm.draft, lm.plan)


def compute_info(model) -> dict:
    """The compute line's facts for `info --json`: ISA, bf16 instructions, the model's paths."""
    from ..compute.probe import machine

    m, policy = machine(), model.kernels
    return {"dtype": str(model.dtype).removeprefix("torch."), "isa": m["isa"], "cpu": m["cpu"],
            "bf16_instructions": m["bf16_instructions"], "threads": m["threads"],
            "kernels": policy.summary() if policy.timings else "reference (F.linear)",
            "probe_ms": policy.as_dict()["timings_ms"]}
