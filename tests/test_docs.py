"""The README is a front page: its links, and the docs' links, must lead somewhere."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    targets = [t.split("#")[0] for t in LINK.findall(page.read_text())
               if not t.startswith(("http://", "https://", "mailto:", "#"))]
    missing = [t for t in targets if not (page.parent / t).exists()]
    assert not missing, f"{page.name}: {missing}"


def test_the_readme_links_every_docs_page():
    linked = set(LINK.findall((ROOT / "README.md").read_text()))
    assert {f"docs/{p.name}" for p in PAGES[1:]} <= linked


def test_the_quickstart_has_exactly_two_commands():
    quickstart = (ROOT / "README.md").read_text().split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", quickstart, re.S).group(1)
    install, test = block.strip().splitlines()
    assert install == 'pip install "torch==2.13.0" -e ".[dev]" && lnexp train configs/quickstart.yaml'
    assert test == "python -m pytest"
