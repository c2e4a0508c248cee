"""The README and docs link only to what a clone has, and the README's commands leave the clone clean."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_links_stay_inside_the_repository(document):
    text = document.read_text()
    assert "../shared" not in text
    for target in re.findall(r"\]\(([^)#]+)\)", text):
        if "://" in target:
            continue
        path = (document.parent / target).resolve()
        assert path.is_relative_to(ROOT) and path.exists(), f"{document.name} links to {target}"


def test_what_the_readme_commands_write_is_ignored_by_git():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    paths = ["data/scenes/annotations.json", "ckpt/qwen/config.json", "grid.png", "runs/demo/table.md"]
    out = subprocess.run(["git", "check-ignore", *paths], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.split() == paths
    kept = subprocess.run(
        ["git", "check-ignore", "src/visionloom/data/pedes.py"], cwd=ROOT, capture_output=True
    )
    assert kept.returncode == 1  # the package's own data/ is not ignored
