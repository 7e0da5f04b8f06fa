"""What the chat and `generate` print about a reply: the one-line summary and the /stats table.

Units match the RAM budget's: decimal MB and GB (10^6, 10^9 bytes). RAM is the process's
resident set size (RSS) at the end of the reply, which is what the budget bounds.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from ..moe_stats import expert_line

MARKERS = {"max_new_tokens": "[max tokens]", "context_full": "[context full]",
           "interrupted": "[stopped]"}


@dataclass
class ReplyTiming:
    """Wall-clock marks of one reply, taken by whoever consumes the token stream: the first
    yield comes after the prompt's prefill and the first verification pass."""
    started: float = 0.0
    first_token: float | None = None

    @classmethod
    def start(cls) -> "ReplyTiming":
        return cls(started=time.perf_counter())

    def saw_tokens(self) -> None:
        if self.first_token is None:
            self.first_token = time.perf_counter()

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.started


def rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def summary_line(stats, timing: ReplyTiming | None = None, ctx: tuple[int, int] | None = None
                 ) -> str:
    parts = []
    if ctx is not None:
        parts.append(f"ctx {ctx[0]}/{ctx[1]}")
    if timing is not None and timing.ttft is not None:
        parts.append(f"first token {timing.ttft:.2f} s")
        if stats.prefilled_tokens and timing.ttft > 0:
            parts.append(f"prefill {stats.prefilled_tokens / timing.ttft:.0f} tok/s")
    parts += [f"{stats.tokens_per_second:.2f} tok/s", f"{stats.tokens_per_pass:.2f} tokens/pass",
              f"acceptance {stats.token_acceptance:.0%}", f"{stats.bytes_read / 1e9:.2f} GB read",
              f"RAM {rss_bytes() / 1e6:.0f} MB"]
    experts = expert_line(stats.experts)
    if experts:
        parts.append(experts)
    return "[" + " | ".join(parts) + "]"


def table(rows: list[tuple[str, str, str]], header: tuple[str, str, str]) -> str:
    """A plain text table, first column left-aligned, the others right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    fmt = lambda r: f"  {r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}"  # noqa: E731
    return "\n".join([fmt(header), *(fmt(r) for r in rows)])


def stats_rows(last, totals, last_timing: ReplyTiming | None) -> list[tuple[str, str, str]]:
    """(what, last reply, session) rows for /stats."""
    def both(name, f_last, f_total):
        return (name, f_last(last) if last is not None else "-", f_total(totals))

    ttft = last_timing.ttft if last_timing is not None else None
    return [
        both("replies", lambda s: "1", lambda t: str(t.replies)),
        both("tokens generated", lambda s: str(s.new_tokens), lambda t: str(t.tokens)),
        both("prompt tokens prefilled", lambda s: str(s.prefilled_tokens), lambda t: str(t.prefilled)),
        ("time to first token", f"{ttft:.2f} s" if ttft is not None else "-", "-"),
        both("seconds", lambda s: f"{s.seconds:.2f}", lambda t: f"{t.seconds:.2f}"),
        both("tokens/s", lambda s: f"{s.tokens_per_second:.2f}",
             lambda t: f"{t.tokens / t.seconds:.2f}" if t.seconds else "0.00"),
        both("target passes", lambda s: str(s.target_passes), lambda t: str(t.passes)),
        both("tokens/pass", lambda s: f"{s.tokens_per_pass:.2f}",
             lambda t: f"{t.tokens / t.passes:.2f}" if t.passes else "0.00"),
        both("drafted tokens", lambda s: str(s.drafted), lambda t: str(t.drafted)),
        both("drafted tokens taken", lambda s: str(s.accepted), lambda t: str(t.accepted)),
        both("acceptance (per token offered)", lambda s: f"{s.token_acceptance:.0%}",
             lambda t: f"{t.accepted / (t.accepted + t.rejected):.0%}"
             if t.accepted + t.rejected else "0%"),
        both("GB read from disk", lambda s: f"{s.bytes_read / 1e9:.3f}",
             lambda t: f"{t.bytes_read / 1e9:.3f}"),
        both("ended on", lambda s: s.stop_reason or "-", lambda t: "-"),
        ("RAM now (RSS, MB)", "-", f"{rss_bytes() / 1e6:.0f}"),
    ] + expert_rows(last, totals)


def expert_rows(last, totals) -> list[tuple[str, str, str]]:
    """/stats rows for a mixture-of-experts target (none for a dense one)."""
    figures = [s.experts if s is not None else {} for s in (last, totals)]
    if not any(figures):
        return []
    rows = (("distinct experts per layer per pass", "experts_per_layer_pass", "{:.2f}", 1),
            ("experts read per pass", "experts_read_per_pass", "{:.1f}", 1),
            ("MB of experts read per pass", "expert_bytes_per_pass", "{:.2f}", 1e-6),
            ("MB of experts read per token", "expert_bytes_per_token", "{:.2f}", 1e-6),
            ("expert cache hit rate", "expert_hit_rate", "{:.0%}", 1))
    cell = lambda f, key, fmt, scale: fmt.format(f[key] * scale) if key in f else "-"  # noqa: E731
    return [(name, *(cell(f, key, fmt, scale) for f in figures)) for name, key, fmt, scale in rows]
