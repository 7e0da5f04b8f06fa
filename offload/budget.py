"""Fit a RAM budget: what stays resident, what is pinned, what is streamed.

Everything that must be in RAM is counted first: the resident part (embeddings, final norm,
lm_head), the draft model, both KV caches at the maximum context, the ring of
`ring_size` buffers of the largest streamed layer, and a fixed runtime overhead (Python,
torch, activations). What is left pins whole target layers, the first ones first
(`StreamedWeights(pinned=N)` takes the same N): a pinned layer is never re-read, so each
one saves its size in disk reads on every pass. If all layers fit, no ring is needed.

Mixture-of-experts stores: the ring holds a layer's dense part only; the routed experts a pass
reads go into `expert_slots` buffers of the largest expert (offload/expert_stream.py), counted
with the ring. Unless the whole model fits (then every layer is pinned with all its experts),
what is left pins the layers' dense parts, first ones first (they are read on every pass),
and then becomes expert cache: more expert buffers, kept least-recently-used
(offload/expert_cache.py); the plan says how many experts fit.

Sizes: "4GB" = 4e9 bytes, "4GiB" = 4 * 2**30; "4G" (no B) is read as GiB, like `free -g`.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import asdict, dataclass

DEFAULT_OVERHEAD = 384 << 20  # measured: python + torch + specdec imported ~240 MB RSS, plus activations
DEFAULT_FRACTION = 0.5  # of available RAM, when no budget is given

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40,
          "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


class BudgetError(ValueError):
    """The RAM budget cannot hold the model; the message says the minimum that would."""


@dataclass(frozen=True)
class Budget:
    """A RAM budget that says where it came from, for the plan and its messages (a bare
    size reads as "given")."""
    size: int | float | str
    source: str


def parse_size(value: int | float | str) -> int:
    """'4GB' -> 4_000_000_000, '512MB', '1.5GiB', '8G' (GiB), 1234 -> bytes."""
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, (int, float)):
        n = int(value)
    else:
        m = _SIZE.match(value)
        unit = m.group(2).lower() if m else None
        if m is None or unit not in _UNITS:
            raise ValueError(f"cannot read size {value!r}: write it like 4GB, 512MB, 1.5GiB or a "
                             "number of bytes.")
        n = int(float(m.group(1)) * _UNITS[unit])
    if n <= 0:
        raise ValueError(f"size {value!r} must be positive.")
    return n


def format_size(n: int) -> str:
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


@dataclass(frozen=True)
class LayerSizes:
    """The byte sizes planning needs; `LayerSizes.of(store)` reads them from a Store."""
    resident_nbytes: int
    layer_nbytes: tuple[int, ...]  # the dense part of each layer (what the ring reads)
    expert_nbytes: tuple[int, ...] = ()  # all experts of each layer (mixture of experts)
    expert_read_nbytes: int = 0  # the largest single expert: one slot buffer

    @classmethod
    def of(cls, store_or_sizes) -> "LayerSizes":
        if isinstance(store_or_sizes, LayerSizes):
            return store_or_sizes
        s = store_or_sizes
        n = range(s.num_layers)
        experts = tuple(s.experts_nbytes(i) for i in n) if s.has_experts else ()
        return cls(s.resident_nbytes, tuple(s.layer_nbytes(i) for i in n), experts, s.max_expert_nbytes)

    def pin_nbytes(self, i: int) -> int:
        """RAM to pin layer i: its dense part and every expert."""
        return self.layer_nbytes[i] + (self.expert_nbytes[i] if self.expert_nbytes else 0)


@dataclass(frozen=True)
class MemoryPlan:
    budget_bytes: int
    budget_reason: str
    resident_bytes: int
    draft_bytes: int
    kv_target_bytes: int
    kv_draft_bytes: int
    max_context: int
    overhead_bytes: int
    ring_size: int  # 0 when every layer is pinned
    ring_bytes: int
    pinned: tuple[int, ...]  # always the first len(pinned) layers
    pinned_bytes: int
    streamed: tuple[int, ...]
    streamed_bytes_per_pass: int
    minimum_bytes: int  # the smallest budget that works (with the requested ring)
    context_fits: int | None = None  # the longest context this budget plans for (None: no KV)
    expert_slots: int = 0  # buffers for routed experts, cache included (mixture of experts)
    expert_buffer_bytes: int = 0
    expert_cache: int = 0  # of expert_slots, those past what one batch of reads needs
    experts_pinned: bool = True  # pinned layers keep their experts (False: dense parts only)
    experts_total: int = 0  # every expert of every layer (mixture of experts)
    guess_bytes: int = 0  # tensors an expert prefetch guess keeps in RAM (routers of streamed layers)

    @property
    def num_pinned(self) -> int:
        return len(self.pinned)

    @property
    def total_bytes(self) -> int:
        return (self.resident_bytes + self.draft_bytes + self.kv_target_bytes + self.kv_draft_bytes
                + self.overhead_bytes + self.ring_bytes + self.pinned_bytes + self.expert_buffer_bytes
                + self.guess_bytes)

    @property
    def summary(self) -> str:
        n = len(self.pinned) + len(self.streamed)
        layers = (f"all {n} target layers pinned in RAM" if not self.streamed and self.experts_pinned else
                  f"{len(self.pinned)}/{n} target layers pinned, {len(self.streamed)} streamed "
                  f"({format_size(self.streamed_bytes_per_pass)} read per pass, ring of "
                  f"{self.ring_size} x {format_size(self.ring_bytes // max(self.ring_size, 1))}"
                  f"{self._experts})")
        return (f"RAM budget {format_size(self.budget_bytes)} ({self.budget_reason}): {layers}; "
                f"resident {format_size(self.resident_bytes)}, draft {format_size(self.draft_bytes)}, "
                f"KV {format_size(self.kv_target_bytes + self.kv_draft_bytes)} at {self.max_context} "
                f"tokens{self._fits}; planned {format_size(self.total_bytes)}")

    @property
    def _experts(self) -> str:
        return f"; {self.expert_summary}" if self.expert_slots else ""

    @property
    def expert_summary(self) -> str:
        """How a mixture-of-experts store's experts are held ("" for a dense store)."""
        if not self.expert_slots:
            return ""
        pinned = "" if self.experts_pinned else f"dense parts of {len(self.pinned)} layers pinned; "
        return (f"{pinned}experts read as routed, into {self.expert_slots} expert buffers of "
                f"{format_size(self.expert_buffer_bytes // self.expert_slots)} "
                f"({self.expert_cache} of them cache; the model has {self.experts_total} experts)"
                + (f"; {format_size(self.guess_bytes)} of routers kept for the prefetch guess"
                   if self.guess_bytes else ""))

    @property
    def _fits(self) -> str:
        if self.context_fits is None or self.context_fits <= self.max_context:
            return ""
        return f" (this budget fits up to {self.context_fits} tokens, with fewer layers pinned)"

    def without_expert_cache(self) -> "MemoryPlan":
        """The same plan with only the expert buffers one batch of reads needs (the page cache,
        not the expert buffers, is to keep hot experts)."""
        if not self.expert_cache:
            return self
        slots = self.expert_slots - self.expert_cache
        return dataclasses.replace(self, expert_slots=slots, expert_cache=0,
                                   expert_buffer_bytes=self.expert_buffer_bytes // self.expert_slots * slots)

    def with_guess_bytes(self, nbytes: int, what: str) -> "MemoryPlan":
        """The same plan with `nbytes` held in RAM for an expert prefetch guess (`what` names
        it), taken from the expert cache; ValueError when the cache is too small to give it up."""
        if nbytes <= 0:
            return self
        buffer = self.expert_buffer_bytes // max(self.expert_slots, 1)
        drop = -(-nbytes // buffer) if buffer else 0
        if drop > self.expert_cache:
            raise ValueError(f"{what} needs {format_size(nbytes)} of RAM, more than the expert cache "
                             f"this budget leaves ({self.expert_cache} buffers of {format_size(buffer)}): "
                             "raise the RAM budget, or choose another prefetch guess")
        slots = self.expert_slots - drop
        return dataclasses.replace(self, expert_slots=slots, expert_cache=self.expert_cache - drop,
                                   expert_buffer_bytes=buffer * slots, guess_bytes=self.guess_bytes + nbytes)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["total_bytes"], d["summary"] = self.total_bytes, self.summary
        return d


def default_budget(fraction: float = DEFAULT_FRACTION) -> tuple[int, str]:
    import psutil

    vm = psutil.virtual_memory()
    budget = int(vm.available * fraction)
    return budget, (f"no budget given: {fraction:.0%} of the {format_size(vm.available)} RAM "
                    "available now")


def context_that_fits(budget: int, without_kv: int, kv_per_token: int) -> int | None:
    """The most context tokens whose KV fits in `budget` beside `without_kv` bytes (None when
    there is no KV to size)."""
    if kv_per_token <= 0:
        return None
    return max(0, (budget - without_kv) // kv_per_token)


def _fits_hint(fits: int | None) -> str:
    if not fits or fits < 2:
        return ""
    return f" (this budget fits a context of up to {fits} tokens: --max-context {fits})"


def plan_memory(store_or_sizes, ram_bytes: int | str | Budget | None = None, draft_bytes: int = 0,
                kv_bytes_per_token_target: int = 0, kv_bytes_per_token_draft: int = 0,
                max_context: int = 4096, ring_size: int = 2,
                overhead_bytes: int = DEFAULT_OVERHEAD, expert_slots: int = 0) -> MemoryPlan:
    """Plan RAM for a store (or LayerSizes). Raises BudgetError, stating the minimum budget,
    when even streaming every layer does not fit. `expert_slots`: buffers for routed experts
    (a mixture-of-experts store; ignored for a dense one)."""
    sizes = LayerSizes.of(store_or_sizes)
    if ram_bytes is None:
        budget, reason = default_budget()
    elif isinstance(ram_bytes, Budget):
        budget, reason = parse_size(ram_bytes.size), ram_bytes.source
    else:
        budget, reason = parse_size(ram_bytes), "given"
    kv_t, kv_d = kv_bytes_per_token_target * max_context, kv_bytes_per_token_draft * max_context
    fixed = sizes.resident_nbytes + draft_bytes + kv_t + kv_d + overhead_bytes
    ring_size = max(1, ring_size)
    ring_bytes = ring_size * max(sizes.layer_nbytes, default=0)
    expert_slots = expert_slots if sizes.expert_nbytes else 0
    expert_bytes = expert_slots * sizes.expert_read_nbytes
    minimum = fixed + ring_bytes + expert_bytes
    pin = [sizes.pin_nbytes(i) for i in range(len(sizes.layer_nbytes))]
    everything = fixed + sum(pin)
    fits = context_that_fits(budget, min(minimum, everything) - kv_t - kv_d,
                             kv_bytes_per_token_target + kv_bytes_per_token_draft)
    common = dict(budget_bytes=budget, budget_reason=reason, resident_bytes=sizes.resident_nbytes,
                  draft_bytes=draft_bytes, kv_target_bytes=kv_t, kv_draft_bytes=kv_d,
                  max_context=max_context, overhead_bytes=overhead_bytes,
                  minimum_bytes=min(minimum, everything), context_fits=fits)
    if budget >= everything:  # no streaming at all: no ring needed
        return MemoryPlan(**common, ring_size=0, ring_bytes=0, pinned=tuple(range(len(pin))),
                          pinned_bytes=sum(pin), streamed=(), streamed_bytes_per_pass=0)
    if budget < minimum:
        experts = f" + {expert_slots} expert buffers {format_size(expert_bytes)}" if expert_slots else ""
        raise BudgetError(
            f"RAM budget {format_size(budget)} ({reason}) is too small: at least "
            f"{format_size(minimum)} is needed (resident {format_size(sizes.resident_nbytes)} + draft "
            f"{format_size(draft_bytes)} + KV {format_size(kv_t + kv_d)} at {max_context} tokens + "
            f"{ring_size} layer buffers {format_size(ring_bytes)}{experts} + runtime "
            f"{format_size(overhead_bytes)}). Give --ram {-(-minimum // 10**6)}MB "
            f"or more, or a shorter max context{_fits_hint(fits)}, or a smaller draft.")
    if expert_slots:
        return _moe_plan(sizes, common, budget - minimum, ring_size, ring_bytes, expert_slots)
    left, n = budget - minimum, 0
    while n < len(pin) and pin[n] <= left:
        left -= pin[n]
        n += 1
    streamed = tuple(range(n, len(pin)))
    return MemoryPlan(**common, ring_size=ring_size, ring_bytes=ring_bytes, pinned=tuple(range(n)),
                      pinned_bytes=sum(pin[:n]), streamed=streamed,
                      streamed_bytes_per_pass=sum(sizes.layer_nbytes[i] for i in streamed),
                      expert_slots=expert_slots, expert_buffer_bytes=expert_bytes)


def _moe_plan(sizes: LayerSizes, common: dict, left: int, ring_size: int, ring_bytes: int,
              slots: int) -> MemoryPlan:
    """`left` bytes past the minimum: dense parts pinned first to last, the rest expert cache."""
    n = 0
    while n < len(sizes.layer_nbytes) and sizes.layer_nbytes[n] <= left:
        left -= sizes.layer_nbytes[n]
        n += 1
    if n == len(sizes.layer_nbytes):  # every dense part pinned: no ring, its bytes are cache too
        left, ring_size, ring_bytes = left + ring_bytes, 0, 0
    every_expert = sum(sizes.expert_nbytes) // max(sizes.expert_read_nbytes, 1)
    cache = max(0, min(left // max(sizes.expert_read_nbytes, 1), every_expert - slots))
    streamed = tuple(range(n, len(sizes.layer_nbytes)))
    return MemoryPlan(**common, ring_size=ring_size, ring_bytes=ring_bytes, pinned=tuple(range(n)),
                      pinned_bytes=sum(sizes.layer_nbytes[:n]), streamed=streamed,
                      streamed_bytes_per_pass=sum(sizes.layer_nbytes[i] for i in streamed),
                      expert_slots=slots + cache, expert_cache=cache, experts_pinned=False,
                      experts_total=every_expert,
                      expert_buffer_bytes=(slots + cache) * sizes.expert_read_nbytes)
