"""A preallocated, slot-indexed KV cache (gpt-fast style, with mlx-lm's trim).

Slots are storage positions 0..length-1; each slot also records the rope position of
its token, which equals the slot for chain decoding and the depth for tree nodes. The
model writes a forward's keys/values at slots [length, length+T) and attends to
[0, length+T); `commit(T)` then makes them part of the context. Rollback is `crop(n)`;
tree verification keeps an arbitrary subset of the new slots with `keep(start, slots)`.
New tokens continue at `next_positions(n)`; `causal_mask(n)` is their default visibility.
"""
from __future__ import annotations

import torch


class ContextFull(ValueError):
    """The context would exceed the cache's capacity."""


class KVCache:
    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, max_len: int,
                 dtype: torch.dtype = torch.bfloat16):
        shape = (num_layers, num_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype)
        self.v = torch.zeros(shape, dtype=dtype)
        self.positions = torch.zeros(max_len, dtype=torch.long)
        self.max_len = max_len
        self.length = 0

    @staticmethod
    def nbytes_for(num_layers: int, num_kv_heads: int, head_dim: int, max_len: int,
                   dtype: torch.dtype = torch.bfloat16) -> int:
        itemsize = torch.empty((), dtype=dtype).element_size()
        return 2 * num_layers * num_kv_heads * head_dim * max_len * itemsize + 8 * max_len

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes + self.positions.nbytes

    def next_positions(self, n: int) -> torch.Tensor:
        """Rope positions for n tokens that continue the cached context in order: the one
        place positions are derived from the cache (a tree offsets its nodes from these)."""
        first = int(self.positions[self.length - 1]) + 1 if self.length else 0
        return torch.arange(first, first + n)

    def causal_mask(self, n: int) -> torch.Tensor:
        """[n, length + n] bool: n new tokens in order, each seeing every cached entry, itself
        and the new tokens before it (the mask `forward` uses when given none)."""
        mask = torch.ones(n, self.length + n, dtype=torch.bool)
        mask[:, self.length:] = torch.ones(n, n, dtype=torch.bool).tril()
        return mask

    def reserve(self, positions: torch.Tensor) -> None:
        """Record rope positions for the next T slots (before a forward writes them)."""
        end = self.length + positions.numel()
        if end > self.max_len:
            raise ContextFull(f"context of {end} tokens exceeds the cache's {self.max_len}; "
                              "start a new conversation or load with a larger max_context.")
        self.positions[self.length:end] = positions

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v ([heads, T, dim]) at the pending slots; return keys/values of [0, length+T)."""
        end = self.length + k.shape[1]
        self.k[layer, :, self.length:end] = k
        self.v[layer, :, self.length:end] = v
        return self.k[layer, :, :end], self.v[layer, :, :end]

    def commit(self, n: int) -> None:
        self.length += n

    def crop(self, n: int) -> None:
        """Forget everything from slot n on (stale values stay but are never read)."""
        if not 0 <= n <= self.length:
            raise ValueError(f"crop({n}) outside the cache's 0..{self.length}")
        self.length = n

    def keep(self, start: int, slots: torch.Tensor) -> None:
        """Keep only `slots` (absolute, ascending, all >= start) of the entries past `start`,
        moved to consecutive slots from `start`: compaction after tree verification. With no
        slots this is crop(start)."""
        if not 0 <= start <= self.length:
            raise ValueError(f"keep({start}, ...) outside the cache's 0..{self.length}")
        n = slots.numel()
        if n and (int(slots.min()) < start or int(slots.max()) >= self.length):
            raise ValueError(f"keep: slots must lie in [{start}, {self.length}), got {slots.tolist()}")
        self.k[:, :, start:start + n] = self.k[:, :, slots]
        self.v[:, :, start:start + n] = self.v[:, :, slots]
        self.positions[start:start + n] = self.positions[slots]
        self.length = start + n
