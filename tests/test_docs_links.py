"""The README and docs/*.md link only to what the repository holds: every relative link's
file or folder exists inside the repository, and every #anchor names a heading (or an
explicit <a id>) of the file it points into. Also: the README stays a front page (<= 200
lines) and user-facing docs carry no issue numbers."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_README_LINES = 200

FENCE = re.compile(r"^(```|~~~)")
INLINE_CODE = re.compile(r"`[^`]*`")
# [text](target) or ![alt](target), target up to whitespace or ')'; an optional "title" after it
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
EXPLICIT_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")
EXTERNAL = ("http://", "https://", "mailto:")


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def prose_lines(text: str):
    """(line number, line) outside fenced code blocks."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def links(text: str) -> list[tuple[int, str]]:
    """(line number, target) of every link outside code (fenced or inline)."""
    return [(n, m.group(1)) for n, line in prose_lines(text)
            for m in LINK.finditer(INLINE_CODE.sub("``", line))]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, markup and punctuation dropped, spaces -> '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    found, seen = set(), {}
    for _, line in prose_lines(text):
        found.update(EXPLICIT_ANCHOR.findall(line))
        m = HEADING.match(line)
        if m:
            base = slug(m.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken_links(doc: Path, root: Path = ROOT) -> list[str]:
    """'FILE:LINE: target (why)' for each link of `doc` that does not resolve in `root`."""
    problems = []
    text = doc.read_text(encoding="utf-8")
    for number, target in links(text):
        if target.startswith(EXTERNAL):
            continue
        where = f"{doc.relative_to(root)}:{number}: {target}"
        path_part, _, anchor = target.partition("#")
        resolved = (doc.parent / path_part).resolve() if path_part else doc.resolve()
        if root.resolve() not in (resolved, *resolved.parents):
            problems.append(f"{where} (points outside the repository)")
        elif not resolved.exists():
            problems.append(f"{where} (no such file)")
        elif anchor and (resolved.is_dir() or anchor not in anchors(resolved.read_text(encoding="utf-8"))):
            problems.append(f"{where} (no heading with anchor #{anchor})")
    return problems


@pytest.mark.parametrize("doc", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves_inside_the_repository(doc):
    assert broken_links(doc) == []


def test_the_checker_finds_each_kind_of_broken_link(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# Title\n\n## Two words, `code`?\n", encoding="utf-8")
    readme = tmp_path / "README.md"
    readme.write_text(
        "[ok](docs/a.md) [ok anchor](docs/a.md#two-words-code) [self](#top)\n"
        "[missing](docs/b.md) [bad anchor](docs/a.md#nope) [outside](../elsewhere.md)\n"
        "# Top\n`[in code](docs/c.md)`\n```\n[fenced](docs/d.md)\n```\n"
        "[web](https://example.com/x)\n", encoding="utf-8")
    problems = broken_links(readme, tmp_path)
    assert [p.split(": ", 1)[1] for p in problems] == [
        "docs/b.md (no such file)",
        "docs/a.md#nope (no heading with anchor #nope)",
        "../elsewhere.md (points outside the repository)",
    ]


def test_slugs_follow_github():
    assert slug("Why is \"= plain\" sometimes NO?") == "why-is--plain-sometimes-no"
    assert slug("One prompt: `specdec generate`") == "one-prompt-specdec-generate"
    assert anchors("# A\n## A\n") == {"a", "a-1"}


def test_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


@pytest.mark.parametrize("doc", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_issue_numbers_in_user_facing_docs(doc):
    text = doc.read_text(encoding="utf-8")
    hits = [f"{n}: {line.strip()}" for n, line in enumerate(text.splitlines(), 1)
            if re.search(r"\bissues?\s+#?\d+", line, re.IGNORECASE)]
    assert hits == []


# A repository path the docs name in code spans: `specdec/session.py`, `offload/encodings/`.
REPO_PATH = re.compile(r"`((?:specdec|offload|tests|tools|scripts|docs|\.ci)/[\w./-]*)`")


@pytest.mark.parametrize("doc", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_repository_path_named_in_the_docs_exists(doc):
    """A renamed or removed module must take its mentions in the docs with it."""
    text = doc.read_text(encoding="utf-8")
    missing = sorted({m.group(1) for _, line in prose_lines(text) for m in REPO_PATH.finditer(line)
                      if not (ROOT / m.group(1)).exists()})
    assert missing == []
