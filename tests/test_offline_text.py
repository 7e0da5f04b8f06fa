"""Offline text for the draft (tools/draft/offline_text.py): passages cut at paragraph breaks,
written as assistant replies (or raw text) in the corpus format, seeded and resumable."""
from __future__ import annotations

import random

from tools.draft.corpus_shards import Corpus
from tools.draft.offline_text import (PASSAGE_TOKENS, Document, Formatter, build, clean_rst,
                                      document_passages, passages)


class CharTokenizer:
    """Characters as tokens; a chat template with visible tags."""

    def __call__(self, text, add_special_tokens=False):
        return type("Enc", (), {"input_ids": [ord(c) % 60000 for c in text]})()

    def decode(self, ids):
        return "".join(chr(i) for i in ids)

    def apply_chat_template(self, msgs, tokenize=False, add_generation_prompt=False):
        return "<sys>default</sys>" + "".join(f"<{m['role']}>{m['content']}" for m in msgs)


def docs(n: int, seed: int) -> list[Document]:
    rng = random.Random(seed)
    out = []
    for k in range(n):
        paras = ["".join(rng.choice("abcdef ") for _ in range(rng.randint(20, 150)))
                 for _ in range(rng.randint(2, 12))]
        out.append(Document("python-doc", f"/doc/{k}.rst.txt", f"topic {k}", "\n\n".join(paras)))
    return out


def test_rst_roles_become_their_text_and_bookkeeping_goes():
    text = ".. index:: single: x\n\nUse :func:`len` or :meth:`~str.join <join>`.\n\n\n\nEnd."
    assert clean_rst(text) == "Use len or str.join.\n\nEnd."


def test_passages_cover_the_document_in_order_within_their_lengths():
    ids = list(range(2000))
    breaks = set(range(0, 2000, 37))
    got = list(passages(ids, breaks, random.Random(1)))
    assert sum(got, []) == ids[:len(sum(got, []))]
    assert all(len(p) <= PASSAGE_TOKENS[1] for p in got)
    assert all(len(p) >= PASSAGE_TOKENS[0] for p in got[:-1])
    assert len(ids) - len(sum(got, [])) < PASSAGE_TOKENS[0]


def test_a_chat_passage_is_the_assistant_reply_and_a_raw_one_is_all_positions():
    fmt = Formatter(CharTokenizer())
    convs = document_passages(fmt, docs(1, 3)[0], random.Random(0))
    assert convs
    for c in convs:
        (s, e), = c.spans
        text = "".join(chr(i) for i in c.ids)
        if c.meta["kind"] == "offline-chat:python-doc":
            assert text.startswith("<sys>default</sys><user>") and e == len(c.ids)
            assert text[:s].endswith("<|im_end|>\n<|im_start|>assistant\n") and c.meta["user"] in text[:s]
        else:
            assert c.meta["kind"] == "offline-raw:python-doc" and (s, e) == (1, len(c.ids))


def test_a_passage_cut_at_a_paragraph_break_starts_with_the_paragraph_not_a_blank_line():
    fmt = Formatter(CharTokenizer())
    assert fmt.without_leading_blank(fmt.encode("\n\n  code\n\nmore")) == fmt.encode("  code\n\nmore")
    assert fmt.without_leading_blank(fmt.encode("text\n\n")) == fmt.encode("text\n\n")
    cut_at_break = 0
    for doc in docs(20, 4):
        for c in document_passages(fmt, doc, random.Random(1)):
            (s, e), = c.spans
            text = "".join(chr(i) for i in c.ids[s:e] if c.meta["kind"].startswith("offline-chat"))
            assert not text.startswith("\n")
            cut_at_break += bool(text) and "\n\n" + text[:40] in doc.text
    assert cut_at_break > 5  # the cuts do fall at breaks: the stripped passages are there


def test_the_corpus_is_seeded_capped_and_resumes(tmp_path):
    fmt = Formatter(CharTokenizer())

    def make(root, tokens):
        corpus = Corpus(root, {"seed": 5})
        build(fmt, {"python-doc": iter(docs(40, 7))}, {"python-doc": 10**9}, corpus, tokens, 5,
              log=lambda m: None)
        return Corpus(root)

    whole = make(tmp_path / "a", 15_000)
    assert whole.manifest["totals"]["assistant_tokens"] >= 15_000
    make(tmp_path / "b", 6_000)
    again = make(tmp_path / "b", 15_000)  # resumed: the same passages, in the same order
    assert [c.ids for c in again.conversations()] == [c.ids for c in whole.conversations()]
    assert make(tmp_path / "d", 15_000).shards == whole.shards  # seeded
    capped = Corpus(tmp_path / "c")
    build(fmt, {"python-doc": iter(docs(40, 7))}, {"python-doc": 2_000}, capped, 10**9, 5,
          log=lambda m: None)
    assert Corpus(tmp_path / "c").manifest["totals"]["assistant_tokens"] < 2_000 + 5_000
