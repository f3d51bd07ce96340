"""The documentation lives in the repository: README and docs/ link only to files (and
headings) inside it, and no code, config or doc points at files outside it."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def tracked(*patterns: str) -> list[Path]:
    names = subprocess.run(["git", "ls-files", *patterns], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    return [ROOT / name for name in names if (ROOT / name).is_file()]


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown file (lower case, punctuation dropped,
    spaces to hyphens)."""
    headings = re.findall(r"^#+ (.+)$", path.read_text(), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_docs_exist():
    assert {p.name for p in DOCS} >= {"README.md", "methods.md", "benchmark.md",
                                     "architecture.md"}


def test_no_file_points_outside_the_repository():
    """Nothing names ../shared or the design notes that only lived there."""
    outside = re.compile(r"\.\./shared|(?<![\w/])(METHODS|BENCHMARK|DESIGN|STYLE)\.md")
    files = DOCS + tracked("*.py", "*.yaml", "*.md", "*.txt", "*.cfg", "*.toml")
    offenders = [f"{p.relative_to(ROOT)}:{n}" for p in set(files)
                 for n, line in enumerate(p.read_text(errors="ignore").splitlines(), 1)
                 if outside.search(line) and p.name != "test_docs.py"]
    assert not offenders, offenders


def test_every_relative_link_resolves_to_a_file_and_heading():
    broken = []
    for doc in DOCS:
        for target in LINK.findall(doc.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            path, _, anchor = target.partition("#")
            file = (doc.parent / path).resolve() if path else doc
            if not file.is_file() or ROOT not in file.parents:
                broken.append(f"{doc.name}: {target}")
            elif anchor and file.suffix == ".md" and anchor not in anchors(file):
                broken.append(f"{doc.name}: {target} (no such heading)")
    assert not broken, broken


def test_code_names_only_docs_that_exist():
    named = {m for p in tracked("*.py", "*.yaml")
             for m in re.findall(r"docs/(\w+\.md)", p.read_text(errors="ignore"))}
    assert named and all((ROOT / "docs" / name).is_file() for name in named), named
