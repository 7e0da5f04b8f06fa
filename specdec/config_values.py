"""Checked reads of config values: every bad value is a ConfigError naming the key and the fix."""
from __future__ import annotations

import math

FIX_CONFIG = "The config is corrupt; restore it from the original model download."
# Sizes past these are not models but corrupt numbers (and would overflow tensor shapes).
MAX_DIM = 1 << 20
MAX_VOCAB = 1 << 24


class ConfigError(ValueError):
    """A model config we cannot run; the message says what is wrong and what to do."""


def _positive_int(cfg: dict, key: str, source: str, default: int | None = None,
                  limit: int = MAX_DIM, fix: str = FIX_CONFIG) -> int:
    value = cfg.get(key, default)
    if value is None:
        raise ConfigError(f"{source}: {key} is missing. The config is incomplete; restore it "
                          "from the original model download.")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{source}: {key} must be a positive integer, got {value!r}. {fix}")
    if value > limit:
        raise ConfigError(f"{source}: {key}={value} is implausibly large (over {limit}). {fix}")
    return value


def _number(cfg: dict, key: str, default: float, source: str, fix: str, positive: bool = False,
            where: str = "") -> float:
    value = cfg.get(key, default)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        need = "a positive number" if positive else "a number >= 0"
        raise ConfigError(f"{source}: {where}{key} must be {need}, got {value!r}. {fix}")
    return float(value)


def _flag(cfg: dict, key: str, default: bool, source: str, fix: str) -> bool:
    value = cfg.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ConfigError(f"{source}: {key} must be true or false, got {value!r}. {fix}")
    return value


def _check_heads(cfg: dict, hidden: int, heads: int, kv_heads: int, source: str, fix: str) -> None:
    """Attention head counts every family shares: kv heads divide heads, and without an
    explicit head_dim the hidden size splits evenly into heads."""
    if heads % kv_heads:
        raise ConfigError(f"{source}: num_attention_heads ({heads}) must be a multiple of "
                          f"num_key_value_heads ({kv_heads}). {fix}")
    if cfg.get("head_dim") is None and hidden % heads:
        raise ConfigError(f"{source}: hidden_size ({hidden}) is not a multiple of "
                          f"num_attention_heads ({heads}) and no head_dim is given. {fix}")
