"""The documentation: the run-file reference is what the config models generate, every link between the pages
resolves (anchors included), no page cites a document outside the repository, and the README stays a front page."""

import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

PAGES = sorted(
    [ROOT / "README.md", ROOT / "tests" / "README.md", ROOT / "deploy" / "README.md", *(ROOT / "docs").rglob("*.md")]
)
OUTSIDE = ("ALGORITHMS.md", "DESIGN.md", "STYLE.md", "QUICKSTART.md", "STRUCTURE.md", "../shared")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_the_run_file_reference_is_current():
    from relay_rl.cluster.config.reference import render

    assert (ROOT / "docs" / "run-file.md").read_text() == render(), (
        "docs/run-file.md is stale: regenerate it with `python -m relay_rl.cluster.config.reference > docs/run-file.md`"
    )


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.*)$", page.read_text(), flags=re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(target)
    assert broken == []


def test_nothing_cites_a_document_outside_the_repository():
    tracked = [
        p
        for p in ROOT.rglob("*")
        if p.is_file()
        and p.suffix in (".md", ".py", ".yaml", ".sh", ".toml")
        and not any(part.startswith(".") or part in ("runs", "test-artifacts") for part in p.relative_to(ROOT).parts)
        and p.name != "test_docs.py"
    ]
    found = [f"{p.relative_to(ROOT)}: {name}" for p in tracked for name in OUTSIDE if name in p.read_text()]
    assert found == []


def test_the_readme_is_a_front_page():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    assert "make quickstart" in text and "make test" in text  # the two commands
    for page in (
        "docs/installation.md",
        "docs/run-file.md",
        "docs/methods/README.md",
        "docs/performance.md",
        "docs/operations.md",
        "docs/troubleshooting.md",
        "tests/README.md",
    ):
        assert f"({page}" in text, page


def test_the_docs_tell_no_development_history():
    pattern = re.compile(r"\b(this|last) round\b|\bissue \d+|\bthis session\b", re.I)
    found = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in PAGES for m in pattern.finditer(p.read_text())]
    assert found == []
