r"""Offline text for distilling the draft: documentation and code already on this machine (or
one apt / pip install away), cut into passages and written as a corpus (corpus_shards.py's
format), so tools/draft/labels.py labels it and tools/draft/distil_corpus.py mixes it in:

  apt-get install -y --no-install-recommends python3-doc     # the Python docs' reST sources
  python -m tools.draft.offline_text --out /work/ft/textkd/offline --tokens 3000000

Sources (each document keeps its source and path in the shard's records; the manifest names
the packages and versions):
  python-doc   /usr/share/doc/python3.X/html/_sources/**/*.rst.txt (Debian python3-doc): prose,
               tutorials, the FAQ, code examples
  man          the man pages in sections 1, 5, 7, 8 rendered as plain text (`man -l`, man-db)
  doc          README / *.md / *.txt under /usr/share/doc (no copyright files or changelogs)
  code         the .py files of a few PyPI packages in this environment (--code-packages)

Each passage (96-320 tokens, cut at blank lines where it can be) is written either as an
assistant reply to a plain user request about it ("chat": the positions then resemble reply
positions, after the template and the default system prompt) or as text alone ("raw"). The
labels are the target's distribution on this text (teacher forcing): it does not matter that a
person wrote it. The passages are seeded and interleaved across sources, so any prefix of the
shards is a mix; the text itself is never committed, only this recipe."""
from __future__ import annotations

import argparse
import gzip
import random
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .corpus_shards import Conversation, Corpus

SHARD_TOKENS = 40_000
PASSAGE_TOKENS = (96, 320)
CHAT_SHARE = 0.8
REQUESTS = {
    "python-doc": ["Explain {title} in Python.", "Tell me about {title}.",
                   "Can you walk me through {title}?", "What does the Python documentation say about {title}?",
                   "How does {title} work?"],
    "man": ["How do I use {title}?", "Explain the {title} command.", "What are the options of {title}?",
            "Show me the manual for {title}."],
    "doc": ["What is {title}?", "Summarize the documentation of {title}.", "Tell me about {title}."],
    "code": ["Show me the code of {title}.", "Write {title} in Python.", "How is {title} implemented?"],
}


@dataclass
class Document:
    source: str
    path: str
    title: str
    text: str


ROLE = re.compile(r":[a-z]+(?::[a-z]+)?:`~?([^`<]*?)(?:\s*<[^>]*>)?`")
DIRECTIVE = re.compile(r"^\s*\.\. (index|_[^:]*|highlight|module|moduleauthor|sectionauthor|"
                       r"currentmodule|testsetup|testcleanup|versionadded|versionchanged)\b.*$", re.M)


def clean_rst(text: str) -> str:
    """Light: roles become their text, bookkeeping directives go; code and prose stay."""
    text = DIRECTIVE.sub("", text)
    text = ROLE.sub(lambda m: m.group(1), text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def python_docs(root: Path | None = None):
    roots = [root] if root else sorted(Path("/usr/share/doc").glob("python3*/html/_sources"))
    for r in roots:
        for p in sorted(r.rglob("*.txt")):
            text = clean_rst(p.read_text(errors="replace"))
            title = next((ln.strip("*` ") for ln in text.splitlines() if ln.strip() and
                          not set(ln.strip()) <= set("=-*#~^")), p.stem)
            yield Document("python-doc", str(p), title.split(" --- ")[0][:80], text)


def man_pages(sections=("1", "5", "7", "8"), limit: int = 3000):
    for sec in sections:
        for p in sorted(Path("/usr/share/man").glob(f"man{sec}/*"))[:limit]:
            try:
                out = subprocess.run(["man", "-l", str(p)], capture_output=True, timeout=20,
                                     env={"MANWIDTH": "80", "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8",
                                          "MAN_KEEP_FORMATTING": "0"}).stdout
            except (subprocess.TimeoutExpired, OSError):
                continue
            text = re.sub(r".\x08", "", out.decode(errors="replace"))  # overstrike bold/underline
            text = re.sub(r"[ \t]+\n", "\n", text)
            text = re.sub(r"\n{3,}", "\n\n", text).strip()
            if len(text) > 200:
                yield Document("man", str(p), p.name.split(".")[0], text)


def usr_share_doc(root: Path = Path("/usr/share/doc")):
    for p in sorted(root.rglob("*")):
        name = p.name.lower()
        if not p.is_file() or p.is_symlink() or "copyright" in name or "changelog" in name or \
                "_sources" in p.parts or "html" in p.parts:
            continue
        if not (name.startswith("readme") or name.endswith((".md", ".txt", ".md.gz", ".txt.gz"))):
            continue
        data = gzip.decompress(p.read_bytes()) if name.endswith(".gz") else p.read_bytes()
        text = data.decode(errors="replace").strip()
        if 200 < len(text) < 400_000:
            yield Document("doc", str(p), p.parent.name, text)


def python_code(packages: list[str]):
    import importlib.util

    for pkg in packages:
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            continue
        root = Path(list(spec.submodule_search_locations)[0])
        files = sorted(root.rglob("*.py"))
        random.Random(0).shuffle(files)  # a cap on the source then takes a spread of modules
        for p in files:
            text = p.read_text(errors="replace").strip()
            if 200 < len(text) < 200_000:
                mod = ".".join((pkg,) + p.relative_to(root).with_suffix("").parts)
                yield Document("code", str(p), mod.removesuffix(".__init__"), text)


def passages(ids: list[int], breaks: set[int], rng: random.Random):
    """Cut a document's ids into passages of PASSAGE_TOKENS, at a paragraph break (a token that
    starts after a blank line) in the last third of the length where there is one."""
    s = 0
    while len(ids) - s >= PASSAGE_TOKENS[0]:
        n = rng.randint(*PASSAGE_TOKENS)
        e = min(s + n, len(ids))
        cut = [b for b in breaks if s + 2 * n // 3 <= b < e]
        if cut and e < len(ids):
            e = max(cut)
        yield ids[s:e]
        s = e


class Formatter:
    """Token ids for a passage, as the target would see it in chat or as raw text."""

    def __init__(self, tok):
        self.tok = tok
        msgs = [{"role": "user", "content": "\x00"}]
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False)
        self.head = self.encode(text[:text.index("\x00")])
        self.assistant_tag = self.encode("<|im_end|>\n<|im_start|>assistant\n")

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False).input_ids

    def without_leading_blank(self, passage: list[int]) -> list[int]:
        """A passage cut at a paragraph break starts with the break's newlines: as a reply, one
        that opens with a blank line, which the target never writes. Re-encoded without them
        (canonical tokens for the stripped text); a passage that starts otherwise is kept as is,
        since a cut elsewhere may fall inside a character."""
        text = self.tok.decode(passage)
        return self.encode(text.lstrip("\n")) if text.startswith("\n") else passage

    def chat(self, request: str, reply: list[int]) -> Conversation:
        ids = self.head + self.encode(request) + self.assistant_tag
        return Conversation(ids + reply, [(len(ids), len(ids) + len(reply))])

    @staticmethod
    def raw(passage: list[int]) -> Conversation:
        return Conversation(list(passage), [(1, len(passage))])


def document_passages(fmt: Formatter, doc: Document, rng: random.Random) -> list[Conversation]:
    paras = re.split(r"\n\s*\n", doc.text)
    ids, breaks = [], set()
    for k, para in enumerate(paras):
        if k:
            breaks.add(len(ids))
        ids += fmt.encode(("\n\n" if k else "") + para)
    out = []
    for p in passages(ids, breaks, rng):
        p = fmt.without_leading_blank(p)
        if rng.random() < CHAT_SHARE:
            request = rng.choice(REQUESTS[doc.source]).format(title=doc.title)
            c = fmt.chat(request, p)
            c.meta = {"kind": f"offline-chat:{doc.source}", "path": doc.path, "user": request}
        else:
            c = fmt.raw(p)
            c.meta = {"kind": f"offline-raw:{doc.source}", "path": doc.path}
        out.append(c)
    return out


def build(fmt: Formatter, sources: dict, caps: dict, corpus: Corpus, tokens: int, seed: int,
          log=print) -> int:
    """Passages from every source (up to caps[source] assistant tokens each), in a seeded order
    that interleaves them, written in shards of ~SHARD_TOKENS until `tokens` assistant tokens;
    resumes after the shards already there."""
    rng = random.Random(seed)
    pool = []
    for name, docs in sources.items():
        n = 0
        for doc in docs:
            got = document_passages(fmt, doc, rng)
            pool.extend(got)
            n += sum(e - s for c in got for s, e in c.spans)
            if n >= caps.get(name, tokens):
                break
        log(f"{name}: {n} tokens; {len(pool)} passages so far")
    rng.shuffle(pool)
    done = corpus.manifest.get("totals", {}).get("assistant_tokens", 0)
    skip = sum(s["conversations"] for s in corpus.shards)
    shard, total = [], done
    for c in pool[skip:]:
        if total >= tokens:
            break
        shard.append(c)
        total += sum(e - s for s, e in c.spans)
        if sum(len(x.ids) for x in shard) >= SHARD_TOKENS:
            corpus.append(shard, seed)
            shard = []
    if shard:
        corpus.append(shard, seed)
    log(f"{len(corpus.shards)} shards, {total} assistant tokens (of {len(pool)} passages)")
    return total


def package_versions(packages: list[str]) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    try:
        out["python3-doc"] = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "python3-doc"],
                                            capture_output=True, text=True).stdout or None
    except OSError:
        out["python3-doc"] = None
    for p in packages:
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = None
    return out


def main(argv=None) -> None:
    from transformers import AutoTokenizer

    from specdec.demo_model import find_demo_gguf

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="a corpus directory (outside the repository)")
    ap.add_argument("--tokens", type=int, default=3_000_000, help="assistant tokens in all")
    ap.add_argument("--sources", default="python-doc,man,doc,code")
    ap.add_argument("--code-packages", default="numpy,transformers,safetensors,tokenizers")
    ap.add_argument("--man-limit", type=int, default=400, help="pages per man section")
    ap.add_argument("--caps", default="python-doc=3000000,man=400000,doc=400000,code=600000",
                    help="assistant tokens per source at most")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    path = find_demo_gguf()
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    pkgs = args.code_packages.split(",")
    make = {"python-doc": python_docs, "man": lambda: man_pages(limit=args.man_limit),
            "doc": usr_share_doc, "code": lambda: python_code(pkgs)}
    sources = {s: make[s]() for s in args.sources.split(",")}
    recipe = {"sources": args.sources, "code_packages": pkgs, "man_limit": args.man_limit,
              "passage_tokens": list(PASSAGE_TOKENS), "chat_share": CHAT_SHARE, "seed": args.seed,
              "versions": package_versions(pkgs), "module": "tools/draft/offline_text.py"}
    caps = {k: int(v) for k, v in (x.split("=") for x in args.caps.split(","))}
    recipe["caps"] = caps
    build(Formatter(tok), sources, caps, Corpus(args.out, recipe), args.tokens, args.seed,
          log=lambda m: print(m, flush=True))


if __name__ == "__main__":
    main()
