"""The README stays an index, and no relative link in it or in docs/ points at a file that does not exist.

No servers: this reads files only. `make docs-build` (in .ci/run) checks the rest with `mkdocs build --strict`
(anchors, the pages in the nav, the included BENCHMARKS.md and RELIABILITY.md).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
README_MAX_LINES = 150

FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"`[^`]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
SNIPPET = re.compile(r"^\s*-{1,}8<-{1,}\s+\"([^\"]+)\"")


def prose_lines(text: str) -> list[tuple[int, str]]:
    """The lines outside fenced code blocks, with their numbers, inline code removed."""
    out, fenced = [], False
    for number, line in enumerate(text.splitlines(), start=1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((number, CODE_SPAN.sub("", line)))
    return out


def relative_links(text: str) -> list[tuple[int, str]]:
    """Each link target that names a file of the repository (no scheme, not a bare #anchor), without its anchor."""
    links = []
    for number, line in prose_lines(text):
        for target in LINK.findall(line):
            if target.startswith("#") or re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):
                continue
            links.append((number, target.split("#", 1)[0].split("?", 1)[0]))
    return links


def documents() -> list[Path]:
    return [README, *sorted(DOCS.glob("**/*.md"))]


def test_readme_is_an_index_of_at_most_150_lines():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): move the detail to a page in docs/")


@pytest.mark.parametrize("document", documents(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_point_at_existing_files(document: Path):
    broken = [f"{document.relative_to(REPO)}:{number}: {target}"
              for number, target in relative_links(document.read_text(encoding="utf-8"))
              if not (document.parent / target).exists()]
    assert not broken, "links to files that do not exist:\n" + "\n".join(broken)


@pytest.mark.parametrize("document", sorted(DOCS.glob("**/*.md")), ids=lambda p: str(p.relative_to(REPO)))
def test_included_files_exist(document: Path):
    """`--8<-- "FILE"` includes (pymdownx.snippets, base path: the repository root)."""
    included = [SNIPPET.match(line) for line in document.read_text(encoding="utf-8").splitlines()]
    names = [re.sub(r"(:-?\d*)+$", "", match.group(1)) for match in included if match]  # drop a line range
    missing = [name for name in names if not (REPO / name).exists()]
    assert not missing, f"{document.relative_to(REPO)} includes files that do not exist: {missing}"


def test_the_link_finder_sees_relative_links_and_skips_the_rest():
    text = "\n".join([
        "See [a page](docs/model.md#the-model), ![a picture](img/x.png \"title\") and [web](https://dagster.io).",
        "Not these: [anchor](#here), [mail](mailto:someone@example.com), `[code](missing.md)`.",
        "```",
        "[in a fence](missing.md)",
        "```",
        "[after the fence](../Dockerfile)",
    ])
    assert relative_links(text) == [(1, "docs/model.md"), (1, "img/x.png"), (6, "../Dockerfile")]
