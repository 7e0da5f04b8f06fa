"""The broad corpus on disk: token-id shards that accumulate across runs, and a manifest.

A shard (shard_NNNNN.npz, compressed) holds whole conversations as uint16 token ids (the
demo target's vocabulary has 49,152 ids), their offsets, the spans the target wrote as the
assistant (where a draft is trained: position t-1 predicts token t for t in a span), and one
JSON record per conversation (kind, system prompt, decoding, the user turns' text). The
target's distributions are not stored: teacher forcing recomputes them (tools/draft/labels.py)
far faster than generation made the text, and ids alone keep the corpus small enough to commit.

manifest.json lists the shards in order with their seeds and counts; a shard is written
before the manifest names it (both atomically), so a stop at any moment leaves a readable
corpus and a resumed run starts at the first index the manifest lacks."""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from offload.atomic import write_atomic

MANIFEST = "manifest.json"
VOCAB_LIMIT = 1 << 16


@dataclass
class Conversation:
    ids: list[int]
    spans: list[tuple[int, int]] = field(default_factory=list)  # assistant tokens [start, end)
    meta: dict = field(default_factory=dict)


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.npz"


def encode_shard(convs: list[Conversation]) -> bytes:
    ids = np.concatenate([np.asarray(c.ids, dtype=np.int64) for c in convs] + [np.zeros(0, np.int64)])
    if len(ids) and (ids.min() < 0 or ids.max() >= VOCAB_LIMIT):
        raise ValueError(f"token id {int(ids.max())} does not fit uint16: this format is for "
                         f"vocabularies under {VOCAB_LIMIT} ids")
    offsets = np.cumsum([0] + [len(c.ids) for c in convs]).astype(np.int64)
    spans = np.array([(j, s, e) for j, c in enumerate(convs) for s, e in c.spans],
                     dtype=np.int32).reshape(-1, 3)
    meta = np.frombuffer(json.dumps([c.meta for c in convs]).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez_compressed(buf, tokens=ids.astype(np.uint16), offsets=offsets, spans=spans, meta=meta)
    return buf.getvalue()


def decode_shard(data: bytes) -> list[Conversation]:
    z = np.load(io.BytesIO(data), allow_pickle=False)
    tokens, offsets, spans = z["tokens"].astype(np.int64), z["offsets"], z["spans"]
    metas = json.loads(z["meta"].tobytes().decode())
    convs = [Conversation(tokens[offsets[j]:offsets[j + 1]].tolist(), [], metas[j])
             for j in range(len(offsets) - 1)]
    for j, s, e in spans.tolist():
        convs[j].spans.append((s, e))
    return convs


class Corpus:
    """A data directory: read its manifest, append shards, read them back."""

    def __init__(self, root: Path | str, recipe: dict | None = None):
        self.root = Path(root)
        path = self.root / MANIFEST
        if path.exists():
            self.manifest = json.loads(path.read_text())
        else:
            self.manifest = {"format": "uint16 token ids, npz (tools/draft/corpus_shards.py)",
                             "recipe": recipe or {}, "shards": []}

    @property
    def shards(self) -> list[dict]:
        return self.manifest["shards"]

    def append(self, convs: list[Conversation], seed: int, extra: dict | None = None) -> dict:
        self.root.mkdir(parents=True, exist_ok=True)
        index = len(self.shards)
        data = encode_shard(convs)
        write_atomic(self.root / shard_name(index), data)
        entry = {"file": shard_name(index), "index": index, "seed": seed,
                 "sha256": hashlib.sha256(data).hexdigest(), **shard_counts(convs), **(extra or {})}
        self.shards.append(entry)
        self.manifest["totals"] = totals(self.shards)
        write_atomic(self.root / MANIFEST, json.dumps(self.manifest, indent=1) + "\n")
        return entry

    def read(self, entry: dict, verify: bool = True) -> list[Conversation]:
        data = (self.root / entry["file"]).read_bytes()
        if verify and hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise ValueError(f"{self.root / entry['file']}: content differs from the manifest's "
                             f"checksum (a changed or partial file); regenerate it or drop it from "
                             f"{self.root / MANIFEST}")
        return decode_shard(data)

    def conversations(self):
        for entry in self.shards:
            yield from self.read(entry)


def shard_counts(convs: list[Conversation]) -> dict:
    kinds: dict[str, int] = {}
    for c in convs:
        kinds[c.meta.get("kind", "?")] = kinds.get(c.meta.get("kind", "?"), 0) + 1
    replies = sum(len(c.spans) for c in convs)
    greedy = sum(len(c.spans) for c in convs if c.meta.get("greedy"))
    return {"conversations": len(convs), "tokens": sum(len(c.ids) for c in convs),
            "assistant_tokens": sum(e - s for c in convs for s, e in c.spans),
            "replies": replies, "greedy_replies": greedy, "sampled_replies": replies - greedy,
            "kinds": kinds}


def totals(shards: list[dict]) -> dict:
    keys = ("conversations", "tokens", "assistant_tokens", "replies", "greedy_replies",
            "sampled_replies")
    out = {k: sum(s[k] for s in shards) for k in keys}
    out["shards"] = len(shards)
    kinds: dict[str, int] = {}
    for s in shards:
        for k, v in s["kinds"].items():
            kinds[k] = kinds.get(k, 0) + v
    out["kinds"] = dict(sorted(kinds.items()))
    return out
