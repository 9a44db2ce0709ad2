"""Every relative link in the docs and every "CONTRACT §N" in the project resolves.

Users follow these: a link to a missing file or heading, or a section number the
contract page does not have, sends them nowhere. Anchors follow GitHub's rules
(lower case, punctuation dropped, spaces to hyphens, "-1", "-2" for repeats).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = ROOT / "docs" / "CONTRACT.md"
DOC_FILES = sorted(
    [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *(ROOT / "docs").glob("*.md")]
)
# Where "CONTRACT §N" may be written: the project's own text, not what tools installed.
SOURCE_SUFFIXES = frozenset({".py", ".md", ".yaml", ".yml", ".json", ".toml", ".txt", ".cfg"})
SKIPPED_DIRS = frozenset(
    {".git", ".venv", "node_modules", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
)

FENCE_RE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE_RE = re.compile(r"`[^`\n]*`")
LINK_RE = re.compile(r"!?\[(?P<text>[^\]\n]*)\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
REF_DEF_RE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s+(?P<target>\S+)", re.MULTILINE)
HEADING_RE = re.compile(r"^(#{1,6})\s+(?P<text>.+?)\s*#*\s*$")
SECTION_HEADING_RE = re.compile(r"^§(?P<n>\d+)\b")
CONTRACT_REF_RE = re.compile(r"CONTRACT §(?P<n>\d+)")
# Plain text (--help, docstrings) may also say "docs/CONTRACT.md §N".
ANY_CONTRACT_REF_RE = re.compile(r"CONTRACT(?:\.md)? §(?P<n>\d+)")
CONTRACT_LINK_RE = re.compile(r"\[CONTRACT §(?P<n>\d+)\]\((?P<target>[^)\s]+)\)")
EXTERNAL = ("http://", "https://", "mailto:", "ftp://")


def _prose(text: str) -> str:
    """``text`` with fenced code blocks blanked (line numbers kept): links there are code."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE_RE.match(line):
            fenced = not fenced
            lines.append("")
            continue
        lines.append("" if fenced else line)
    return "\n".join(lines)


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading's text (before de-duplication)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link reads as its text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)  # \w is Unicode: letters, digits, underscore
    return text.replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    """Every heading anchor of a Markdown file, repeats numbered as GitHub does."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    for line in _prose(path.read_text(encoding="utf-8")).splitlines():
        match = HEADING_RE.match(line)
        if match is None:
            continue
        slug = github_slug(match["text"])
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return frozenset(found)


@cache
def contract_sections() -> dict[int, str]:
    """``§N`` -> the anchor of the contract page's heading for section N."""
    sections: dict[int, str] = {}
    for line in _prose(CONTRACT.read_text(encoding="utf-8")).splitlines():
        match = HEADING_RE.match(line)
        if match and len(match.group(1)) == 2:
            section = SECTION_HEADING_RE.match(match["text"])
            if section:
                sections[int(section["n"])] = github_slug(match["text"])
    return sections


def links(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, target) of every link outside code in a Markdown file."""
    prose = _prose(path.read_text(encoding="utf-8"))
    for number, line in enumerate(prose.splitlines(), start=1):
        line = INLINE_CODE_RE.sub("", line)
        for match in LINK_RE.finditer(line):
            yield number, match["target"]
        for match in REF_DEF_RE.finditer(line):
            yield number, match["target"]


def broken_link(source: Path, target: str) -> str | None:
    """Why ``target`` (a link in ``source``) does not resolve, or None when it does."""
    if target.startswith(EXTERNAL):
        return None
    path_part, _, anchor = target.partition("#")
    destination = (source.parent / path_part).resolve() if path_part else source
    if not destination.exists():
        return f"{path_part} does not exist"
    if not anchor:
        return None
    if destination.suffix != ".md":
        return f"#{anchor} on a file that is not Markdown"
    if anchor not in anchors(destination):
        return f"{destination.relative_to(ROOT)} has no heading #{anchor}"
    return None


def project_files() -> Iterator[Path]:
    """The project's own text files (not the virtualenv, caches or node_modules)."""
    stack = [ROOT]
    while stack:
        folder = stack.pop()
        for entry in folder.iterdir():
            if entry.is_dir():
                if entry.name not in SKIPPED_DIRS and not entry.name.endswith(".egg-info"):
                    stack.append(entry)
            elif entry.suffix in SOURCE_SUFFIXES:
                yield entry


def test_the_contract_page_numbers_sections_1_to_17() -> None:
    assert CONTRACT.exists(), "docs/CONTRACT.md is missing"
    assert sorted(contract_sections()) == list(range(1, 18))


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc: Path) -> None:
    broken = [
        f"{doc.relative_to(ROOT)}:{number}: {target}: {why}"
        for number, target in links(doc)
        if (why := broken_link(doc, target)) is not None
    ]
    assert not broken, "\n".join(broken)


def test_every_contract_reference_names_a_section_of_the_page() -> None:
    assert CONTRACT.exists(), "docs/CONTRACT.md is missing"
    sections = contract_sections()
    unresolved = []
    for path in project_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), start=1):
            for match in ANY_CONTRACT_REF_RE.finditer(line):
                if int(match["n"]) not in sections:
                    unresolved.append(f"{path.relative_to(ROOT)}:{number}: {match.group()}")
    assert not unresolved, "no such section in docs/CONTRACT.md:\n" + "\n".join(unresolved)


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_markdown_contract_references_link_to_their_section(doc: Path) -> None:
    """In Markdown, "CONTRACT §N" is a link to section N's own heading, not plain text."""
    assert CONTRACT.exists(), "docs/CONTRACT.md is missing"
    sections = contract_sections()
    wrong = []
    for number, line in enumerate(_prose(doc.read_text(encoding="utf-8")).splitlines(), 1):
        line = INLINE_CODE_RE.sub("", line)
        linked = list(CONTRACT_LINK_RE.finditer(line))
        if len(linked) != len(CONTRACT_REF_RE.findall(line)):
            wrong.append(f"{doc.relative_to(ROOT)}:{number}: CONTRACT § not written as a link")
        for match in linked:
            path_part, _, anchor = match["target"].partition("#")
            n = int(match["n"])
            points_at_contract = (doc.parent / path_part).resolve() == CONTRACT.resolve()
            if not points_at_contract or anchor != sections.get(n):
                wrong.append(
                    f"{doc.relative_to(ROOT)}:{number}: {match.group()} should point at"
                    f" CONTRACT.md#{sections.get(n)}"
                )
    assert not wrong, "\n".join(wrong)


def test_github_slugs() -> None:
    assert github_slug("§13 Packing") == "13-packing"
    assert github_slug("Fault matrix: a throttling API (`options.adaptive`, CONTRACT §14)") == (
        "fault-matrix-a-throttling-api-optionsadaptive-contract-14"
    )
    assert github_slug("T1: where a 9 KB item's CPU goes") == "t1-where-a-9-kb-items-cpu-goes"
    assert github_slug("[`demo`](#demo) and more") == "demo-and-more"
