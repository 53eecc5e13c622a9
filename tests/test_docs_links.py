"""Every relative link and image in README.md, benchmarks/README.md, docs/ and experiments/
points to a file that exists, and every #anchor to a heading of the target (GitHub's slugs)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import ROOT

LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
CODE = re.compile(r"`[^`\n]*`")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)


def markdown_files() -> list[Path]:
    files = [
        ROOT / "README.md",
        ROOT / "benchmarks" / "README.md",
        *sorted((ROOT / "docs").glob("*.md")),
    ]
    return files + sorted((ROOT / "experiments").rglob("*.md"))


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code spans (links there are not links)."""
    return CODE.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", CODE.sub(lambda m: m.group(0).strip("`"), heading).lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for h in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        s = slug(h)
        n = seen.get(s, 0)
        seen[s] = n + 1
        out.add(s if n == 0 else f"{s}-{n}")
    return out


def broken_links(path: Path) -> list[str]:
    bad = []
    for target in LINK.findall(_prose(path.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            bad.append(f"{target}: no such file {dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{target}: no heading #{anchor} in {dest.name}")
    return bad


def test_slugs_follow_github():
    assert slug("Benchmark (`benchmarks/bench_cox.py`)") == "benchmark-benchmarksbench_coxpy"
    assert slug("Does pretraining learn?") == "does-pretraining-learn"
    assert slug("Configuration (`atlas:`)") == "configuration-atlas"


def test_broken_links_are_found(tmp_path):
    (tmp_path / "there.md").write_text("# A heading\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](there.md) [ok](there.md#a-heading) ![gone](missing.png) [x](there.md#nope)\n"
        "`[not a link](nowhere.md)` [web](https://example.org/x.md)\n"
        "```\n[in code](nowhere.md)\n```\n"
    )
    bad = broken_links(page)
    assert len(bad) == 2 and "missing.png" in bad[0] and "#nope" in bad[1]


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    assert not broken_links(path), broken_links(path)


def test_every_experiment_has_a_readme_listed_in_the_index():
    index = (ROOT / "experiments" / "README.md").read_text(encoding="utf-8")
    folders = sorted(p for p in (ROOT / "experiments").iterdir() if p.is_dir())
    assert folders
    for folder in folders:
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}-[a-z0-9-]+", folder.name), folder.name
        assert (folder / "README.md").exists(), folder
        assert f"]({folder.name}/README.md)" in index, f"{folder.name} missing from the index"
