"""One pure-torch decoder for the Llama family (llama, mistral, qwen2, qwen3).

The arithmetic follows transformers' implementations step by step (RMSNorm in float32,
rope tables in float32 cast to the compute dtype) so float32 logits match them to
~1e-6. One deliberate difference in bf16: the residual stream stays in float32 (matmuls
run in bf16, their outputs are added in float32). Accumulating 30 layers of residuals in
bf16 drifts by ~1 logit on SmolLM2 and flipped its greedy choices into loops. Weights come from a source (`specdec.weights`): resident in RAM or streamed
from disk; the model holds no weights itself, only rope tables (and a partial output
vocabulary's rows copied out of a tied table, see weights.OUTPUT_IDS).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .compute import kernels as kernels_module
from .compute.attention import attend
from .compute.head import kernel_head
from .cache import KVCache
from .config import ModelArgs
from .weights import output_layer


def linear(x: torch.Tensor, weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Every weight matmul goes through here. A weight that is not a plain tensor (a
    quantized encoding) brings its own kernel: `weight.linear(x, bias)`; a plain one takes
    the path the running model's kernel policy chose for its dtype and token count on this CPU
    (specdec/compute/kernels.py)."""
    if not isinstance(weight, torch.Tensor):
        return weight.linear(x, bias)
    return kernels_module.linear(x, weight, bias)


def embed(tokens: torch.Tensor, table) -> torch.Tensor:
    """Embedding lookup as float32 (the residual stream's dtype). A quantized table (tied to
    the output layer, e.g. SmolLM2's Q8_0 token_embd) dequantizes only the rows asked for."""
    if not isinstance(table, torch.Tensor):
        return table.rows(tokens, torch.float32)
    return F.embedding(tokens, table).float()


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Normalise in float32, scale in the weight's dtype (the dtype the matmuls run in)."""
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(weight.dtype)


def rope_inv_freq(args: ModelArgs) -> torch.Tensor:
    dim = args.head_dim
    inv_freq = 1.0 / (args.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    if args.rope_scaling is None:
        return inv_freq
    return _llama3_scaled(inv_freq, args.rope_scaling)


def _llama3_scaled(inv_freq: torch.Tensor, s: dict) -> torch.Tensor:
    # Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, and the band
    # between is interpolated smoothly.
    old_len, factor = s["original_max_position_embeddings"], s["factor"]
    low_wavelen = old_len / s["low_freq_factor"]
    high_wavelen = old_len / s["high_freq_factor"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - s["low_freq_factor"]) / (s["high_freq_factor"] - s["low_freq_factor"])
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope_qk(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """q [heads, T, dim] and k [kv heads, T, dim] rotated by one set of elementwise ops over
    both (x * cos + rotate_half(x) * sin): bit for bit what each gets alone, in half the op
    calls (per layer of a one-token pass the calls, not the arithmetic, are the cost)."""
    both = torch.cat((q, k))
    both = both * cos + rotate_half(both) * sin
    return both[:q.shape[0]], both[q.shape[0]:]


def visibility_mask(cache: KVCache, n: int, mask: torch.Tensor | None,
                    window: int | None) -> torch.Tensor | None:
    """What n new tokens may attend to: `mask` (None: causal) and, with a window, only keys
    fewer than `window` rope positions back. Positions, not slots: a tree node's position is
    its depth, so a node sees its ancestry within the window, as the path would if accepted.
    None when no mask is needed (one token seeing its whole context)."""
    start = cache.length
    if n == 1 and mask is None and (window is None or start < window):
        return None
    mask = cache.causal_mask(n) if mask is None else mask.clone()
    if window is not None:
        pos = cache.positions[:start + n]
        mask &= (pos[start:, None] - pos[None, :]) < window
    return mask


class Transformer:
    """The Llama family's decoder; specdec/families.py derives Gemma's and Phi-3's from it
    (`families.build_model` picks the class from the args)."""

    def __init__(self, args: ModelArgs, weights, dtype: torch.dtype = torch.bfloat16,
                 kernels: kernels_module.Policy | None = None):
        if type(self) is Transformer and args.family != "llama":
            raise TypeError(f"{args.model_type} needs its own decoder: build it with "
                            "specdec.families.build_model(args, weights, dtype)")
        self.args = args
        self.weights = weights
        self.dtype = dtype
        self.kernels = kernels or kernels_module.REFERENCE  # which path each plain matmul takes
        self._setup_rope()
        head, self.output_ids = output_layer(weights.resident, args)
        self.head = kernel_head(head, dtype)  # once, not per pass (specdec/compute/head.py)

    def new_cache(self, max_len: int) -> KVCache:
        a = self.args
        return KVCache(a.num_layers, a.num_kv_heads, a.head_dim, max_len, self.dtype)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache,
                mask: torch.Tensor | None = None, num_logits: int | None = None,
                idle=None) -> torch.Tensor:
        """Run T new tokens after the cache's entries; return float32 logits [T, vocab]
        (only the last `num_logits` rows if given). `positions` [T] are the tokens' rope
        positions (`cache.next_positions` for the usual consecutive case). `mask` (bool
        [T, cache.length + T], True = may attend) is the full visibility over the cached
        entries and the new tokens; None means causal (`cache.causal_mask`). Mistral's
        sliding window applies on top of either. The new keys/values are committed.
        `idle` (a callable(eta) -> bool) goes to the weights source, which runs it while it waits
        for a layer from disk (offload/prefetch.py, idle work). Every plain matmul follows
        this model's kernel policy."""
        with kernels_module.using(self.kernels):
            return self._forward(tokens, positions, cache, mask, num_logits, idle)

    def forward_steps(self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache,
                      mask: torch.Tensor | None = None, num_logits: int | None = None) -> "LayerSteps":
        """forward() run one layer per `LayerSteps.step()` call, for work done in the waits of
        another model's streamed pass: each call holds that pass up for one layer at most,
        not a whole forward. Weights in RAM only."""
        return LayerSteps(self, tokens, positions, cache, mask, num_logits)

    @torch.inference_mode()
    def _forward(self, tokens, positions, cache, mask, num_logits, idle) -> torch.Tensor:
        h, rope, mask = self._begin(tokens, positions, cache, mask)
        for i, w in enumerate(self.weights.layers(idle=idle)):
            h = self._layer(h, w, i, cache, rope, mask)
        return self._finish(h, cache, num_logits)

    def _begin(self, tokens, positions, cache, mask):
        """Check the inputs, reserve the cache's slots; (embedded tokens, rope, mask)."""
        tokens = tokens.reshape(-1)
        n = tokens.numel()
        positions = positions.reshape(-1)
        if positions.numel() != n:
            raise ValueError(f"forward got {n} tokens but {positions.numel()} positions")
        if mask is not None and tuple(mask.shape) != (n, cache.length + n):
            raise ValueError(f"mask must be [{n}, {cache.length + n}] (new tokens x cached + new), "
                             f"got {list(mask.shape)}")
        cache.reserve(positions)
        rope = self._rope(positions)  # cos, sin (a family's decoder may hold one pair per layer kind)
        mask = self._mask(cache, n, mask)
        h = self._embed(tokens, self.weights.resident["model.embed_tokens.weight"])  # residual in float32
        return h, rope, mask

    def _finish(self, h, cache, num_logits) -> torch.Tensor:
        """Commit the new keys/values; the logits of the last `num_logits` rows."""
        n = h.shape[0]
        cache.commit(n)
        res = self.weights.resident
        if num_logits is not None:
            h = h[n - num_logits:]
        h = self._norm(h, res["model.norm.weight"])  # back to compute dtype
        logits = self._cap_logits(linear(h, self.head).float())
        if self.output_ids is None:
            return logits
        # A partial output vocabulary: ids outside it get probability 0 (logit -inf).
        full = torch.full((logits.shape[0], self.args.vocab_size), float("-inf"))
        return full.index_copy_(1, self.output_ids, logits)

    # Hooks a family's decoder overrides (specdec/families.py).
    def _setup_rope(self) -> None:
        self.inv_freq = rope_inv_freq(self.args)

    def _embed(self, tokens: torch.Tensor, table) -> torch.Tensor:
        return embed(tokens, table)

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, weight, self.args.rms_norm_eps)

    def _cap_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return logits

    def _rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(self.dtype), emb.sin().to(self.dtype)

    def _mask(self, cache: KVCache, n: int, mask: torch.Tensor | None) -> torch.Tensor | None:
        return visibility_mask(cache, n, mask, self.args.sliding_window)

    def _layer(self, h, w, i, cache, rope, mask) -> torch.Tensor:
        eps, (cos, sin) = self.args.rms_norm_eps, rope
        h = h + self._attention(rms_norm(h, w["input_layernorm.weight"], eps), w, i, cache, cos, sin, mask)
        x = rms_norm(h, w["post_attention_layernorm.weight"], eps)
        gate = linear(x, w["mlp.gate_proj.weight"], w.get("mlp.gate_proj.bias"))
        up = linear(x, w["mlp.up_proj.weight"], w.get("mlp.up_proj.bias"))
        return h + linear(F.silu(gate) * up, w["mlp.down_proj.weight"], w.get("mlp.down_proj.bias")).float()

    def _heads(self, x, w) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v of the layer's input, each [heads, T, dim]."""
        a, n = self.args, x.shape[0]
        q = linear(x, w["self_attn.q_proj.weight"], w.get("self_attn.q_proj.bias")).view(n, a.num_heads, a.head_dim)
        k = linear(x, w["self_attn.k_proj.weight"], w.get("self_attn.k_proj.bias")).view(n, a.num_kv_heads, a.head_dim)
        v = linear(x, w["self_attn.v_proj.weight"], w.get("self_attn.v_proj.bias")).view(n, a.num_kv_heads, a.head_dim)
        if a.qk_norm:
            q = rms_norm(q, w["self_attn.q_norm.weight"], a.rms_norm_eps)
            k = rms_norm(k, w["self_attn.k_norm.weight"], a.rms_norm_eps)
        return q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)

    def _attention(self, x, w, i, cache, cos, sin, mask) -> torch.Tensor:
        n = x.shape[0]
        q, k, v = self._heads(x, w)
        q, k = rope_qk(q, k, cos, sin)
        keys, values = cache.write(i, k, v)
        out = attend(q, keys, values, mask)  # the cache read in place (compute/attention.py)
        out = linear(out.transpose(0, 1).reshape(n, -1), w["self_attn.o_proj.weight"],
                       w.get("self_attn.o_proj.bias"))
        return out.float()


class LayerSteps:
    """One forward of a model with its weights in RAM, run a layer per `step()` call
    (Transformer.forward_steps). The new keys/values are committed by the last step only, so
    one dropped part way leaves the cache as it was (its slots past `length` are never read)."""

    def __init__(self, model: Transformer, tokens, positions, cache: KVCache, mask, num_logits):
        self.model, self.cache, self.num_logits = model, cache, num_logits
        with kernels_module.using(model.kernels), torch.inference_mode():
            self._h, self._rope, self._mask = model._begin(tokens, positions, cache, mask)
        self._layers = enumerate(model.weights.layers())
        self._upcoming = next(self._layers, None)
        self.logits: torch.Tensor | None = None  # set by the last step

    def step(self) -> bool:
        """Run the next layer (the last one also computes the logits); True once done."""
        if self.logits is not None:
            return True
        m = self.model
        with kernels_module.using(m.kernels), torch.inference_mode():
            if self._upcoming is not None:
                i, w = self._upcoming
                self._h = m._layer(self._h, w, i, self.cache, self._rope, self._mask)
                self._upcoming = next(self._layers, None)
            if self._upcoming is None:
                self.logits = m._finish(self._h, self.cache, self.num_logits)
        return self.logits is not None
