"""The README and docs/: the README stays short and in its order, every relative link in it and
in docs/*.md resolves (files and #anchors), and the figures it shows are small committed PNGs."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
MAX_README_LINES = 150
MAX_FIGURE_BYTES = 100_000
README_SECTIONS = ["Two commands", "What you will see", "The course", "Using your own data",
                   "Where to go next"]

_FENCE = re.compile(r"^```.*?^```[^\n]*$", re.M | re.S)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HTML_LINK = re.compile(r"""<(?:a|img)\b[^>]*?\b(?:href|src)\s*=\s*["']([^"']+)["']""", re.I)
_EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//)", re.I)  # http:, https:, mailto:, //host


def _prose(text: str) -> str:
    """Markdown without fenced code blocks (whose brackets are not links)."""
    return _FENCE.sub("", text)


def links(text: str) -> list[str]:
    """Every link target of a Markdown text: ``[..](target)``, ``![..](target)`` and HTML
    ``href``/``src``, outside code blocks and code spans."""
    prose = _prose(text)
    return _LINK.findall(_CODE_SPAN.sub("", prose)) + _HTML_LINK.findall(prose)


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped (word characters,
    hyphens and spaces kept), spaces as hyphens."""
    text = re.sub(r"<[^>]+>", "", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors of a Markdown text's headings, numbered ``-1``, ``-2`` when repeated."""
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", _prose(text), re.M):
        slug = github_slug(heading)
        out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return out


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """The relative links of ``page`` whose file (inside ``root``) or #anchor does not exist."""
    problems = []
    for target in links(page.read_text(encoding="utf-8")):
        if _EXTERNAL.match(target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if root.resolve() not in (resolved, *resolved.parents) or not resolved.exists():
            problems.append(f"{target}: no such file")
        elif anchor and (resolved.suffix != ".md"
                         or anchor not in anchors(resolved.read_text(encoding="utf-8"))):
            problems.append(f"{target}: no heading #{anchor} in {resolved.name}")
    return problems


# --- the checker itself -------------------------------------------------------------------------

def test_the_slugs_are_githubs():
    assert github_slug("Cross-validation: `--folds K`") == "cross-validation---folds-k"
    assert github_slug("`ichlib predict`") == "ichlib-predict"
    assert github_slug("Status and honest results (SYNTHETIC data)") == "status-and-honest-results-synthetic-data"
    assert anchors("# A\n## A\n```\n# not a heading\n```\n") == {"a", "a-1"}


def test_the_checker_finds_a_missing_file_a_missing_anchor_and_a_link_outside(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text("# Other\n\n## Its part\n")
    page = tmp_path / "README.md"
    page.write_text(
        "# Title\n\n## Here\n\n"
        "[ok](docs/other.md) [ok](docs/other.md#its-part) [ok](#here) [ok](https://example.org/x)\n"
        "`[not a link](nowhere.md)`\n```\n[not a link](nowhere.md)\n```\n"
        "[gone](docs/gone.md) [bad](docs/other.md#no-part) ![img](docs/fig.png) [up](../outside.md)\n"
        '[self](#nowhere) <img src="docs/missing.png">\n')
    assert sorted(broken_links(page, root=tmp_path)) == sorted([
        "docs/gone.md: no such file", "docs/other.md#no-part: no heading #no-part in other.md",
        "docs/fig.png: no such file", "../outside.md: no such file",
        "#nowhere: no heading #nowhere in README.md", "docs/missing.png: no such file"])


# --- the README and docs/ -----------------------------------------------------------------------

def test_the_readme_is_at_most_150_lines_in_the_agreed_order():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_README_LINES
    assert re.findall(r"^## (.+)$", _prose(text), re.M) == README_SECTIONS
    intro = text.split("\n## ", 1)[0]
    assert "SYNTHETIC" in intro and "no clinical claim" in intro and "not a medical device" in intro


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    assert links(page.read_text(encoding="utf-8")), f"{page.name} links nowhere"
    assert broken_links(page) == []


def test_every_docs_page_is_linked_from_the_readme():
    targets = {(ROOT / t.partition("#")[0]).resolve() for t in links(README.read_text(encoding="utf-8"))}
    assert [p.name for p in PAGES[1:] if p.resolve() not in targets] == []


def test_the_figures_are_small_pngs_in_docs_that_git_does_not_ignore():
    figures = sorted({(page.parent / t).resolve() for page in PAGES
                      for t in links(page.read_text(encoding="utf-8"))
                      if t.lower().endswith((".png", ".jpg", ".jpeg", ".gif", ".svg"))})
    assert len(figures) >= 2
    for figure in figures:
        assert figure.parent == ROOT / "docs" and figure.suffix == ".png", figure
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", figure
        assert figure.stat().st_size <= MAX_FIGURE_BYTES, (figure, figure.stat().st_size)
    done = subprocess.run(["git", "check-ignore", *map(str, figures)], cwd=ROOT,
                          capture_output=True, text=True)
    if done.returncode == 128:
        pytest.fail(f"this check needs the git checkout: {done.stderr.strip()}")
    assert done.returncode == 1 and done.stdout == "", f"ignored by git: {done.stdout}"
