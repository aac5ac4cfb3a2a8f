"""The README and docs/ hold together: every relative link resolves to a file of the checkout (and, where it names a
heading of a Markdown file, to that heading, slugged as GitHub slugs it), and the README stays a front door."""
from __future__ import annotations

import glob
import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README_MAX_LINES = 250  # issue 21: the README is a front door; narratives and run tables live in docs/

LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"`[^`]*`")


def _pages() -> list[str]:
    pages = ["README.md", "benchmarks/README.md"] + sorted(glob.glob("docs/*.md", root_dir=ROOT))
    return [p for p in pages if os.path.exists(os.path.join(ROOT, p))]


def _prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            out.append(line)
    return out


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: inline-code backticks dropped, lower case, punctuation but '-' and '_' removed,
    spaces to '-'."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: str) -> set[str]:
    with open(path, encoding="utf-8") as f:
        lines = _prose_lines(f.read())
    seen: dict[str, int] = {}
    anchors = set()
    for line in lines:
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = _slug(m.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def _links(page: str) -> list[str]:
    with open(os.path.join(ROOT, page), encoding="utf-8") as f:
        lines = _prose_lines(f.read())
    return [m.group(1) for line in lines for m in LINK.finditer(INLINE_CODE.sub("", line))]


def _broken(page: str) -> list[str]:
    """The relative links of `page` that name no file of the checkout, or no heading of the Markdown file named."""
    bad = []
    for target in _links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        path = os.path.normpath(os.path.join(ROOT, os.path.dirname(page), file_part)) if file_part \
            else os.path.join(ROOT, page)
        if not os.path.exists(path):
            bad.append(f"{target} (no such file)")
        elif anchor and path.endswith(".md") and anchor not in _anchors(path):
            bad.append(f"{target} (no heading '{anchor}' in {os.path.relpath(path, ROOT)})")
    return bad


@pytest.mark.parametrize("page", _pages())
def test_every_relative_link_resolves(page):
    assert _links(page) or page != "README.md", "the README links to nothing: the link check would prove nothing"
    assert _broken(page) == [], f"{page}: broken links"


def test_readme_is_a_front_door():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        n = len(f.read().splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines (at most {README_MAX_LINES}): move narratives to docs/"


def test_every_docs_page_says_what_it_holds():
    """Each docs/ page opens with its title and then one line saying what it holds."""
    for page in glob.glob(os.path.join(ROOT, "docs", "*.md")):
        with open(page, encoding="utf-8") as f:
            lines = f.read().splitlines()
        assert len(lines) >= 3 and lines[0].startswith("# ") and lines[1] == "" and lines[2].strip(), page


def test_the_link_check_sees_a_broken_link(tmp_path, monkeypatch):
    """The checker itself: a missing file and a missing heading are both reported, good links are not."""
    monkeypatch.setattr(sys.modules[__name__], "ROOT", str(tmp_path))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A page\n\nholds a.\n\n## Jetson (JetPack 6.1+ / 7)\n", encoding="utf-8")
    (tmp_path / "README.md").write_text(
        "[ok](docs/a.md) [ok](docs/a.md#jetson-jetpack-61--7) [web](https://example.com/x)\n"
        "`[in code](nowhere.md)`\n```\n[fenced](nowhere.md)\n```\n"
        "[gone](docs/b.md) [bad anchor](docs/a.md#jetson)\n", encoding="utf-8")
    assert _broken("README.md") == ["docs/b.md (no such file)", "docs/a.md#jetson (no heading 'jetson' in docs/a.md)"]
