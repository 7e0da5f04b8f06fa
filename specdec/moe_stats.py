"""What a generation cost in experts, from the expert counters of the target's weight source
(offload/prefetch.StreamStats.expert_counters): a MoE pass reads the union of the experts its
tokens route to, so these say how big that union was, how much of it the expert cache held and
how many bytes it took per pass and per token. Empty for a dense target or one held in RAM.
"""
from __future__ import annotations


def counter_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0) for k in after}


def add_counters(total: dict[str, float], delta: dict[str, float]) -> None:
    for k, v in delta.items():
        total[k] = total.get(k, 0) + v


def expert_figures(counters: dict[str, float], passes: int, tokens: int) -> dict[str, float]:
    """Per pass and per token figures of a generation's expert `counters` (the sums over its
    `passes` target passes, which produced `tokens` tokens); {} when no experts were routed
    through a reader."""
    layers = counters.get("expert_layers", 0)
    used = counters.get("experts_used", 0)
    if not layers or not used:
        return {}
    read_bytes = counters.get("expert_bytes_read", 0)
    guessed = counters.get("expert_prefetched", 0)
    guess = {"expert_guess_right": counters.get("expert_prefetch_used", 0) / guessed} if guessed else {}
    return {
        "experts_per_layer_pass": used / layers,  # the mean union a layer's pass needed
        "experts_per_pass": used / passes if passes else 0.0,  # summed over a pass's layers
        "experts_read_per_pass": counters.get("experts_read", 0) / passes if passes else 0.0,
        "expert_bytes_per_pass": read_bytes / passes if passes else 0.0,
        "expert_bytes_per_token": read_bytes / tokens if tokens else 0.0,
        "expert_hit_rate": counters.get("expert_cache_hits", 0) / used,
        **guess,  # of the experts a prefetch guess read, the share the layer routed to
    }


def expert_line(figures: dict[str, float]) -> str:
    """The reply summary's words for `figures` ("" when there are none)."""
    if not figures:
        return ""
    return (f"{figures['experts_per_layer_pass']:.1f} experts/layer/pass, "
            f"expert hit {figures['expert_hit_rate']:.0%}, "
            f"{figures['expert_bytes_per_token'] / 1e6:.2f} MB experts/token")
