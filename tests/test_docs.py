"""The docs stay true to the code: the config reference is generated from it, the README stays a manual's length,
and every relative link in the README and the guide lands on a file."""

import re
from pathlib import Path

import pytest

from rl.reference import config_reference

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")  # [text](target "title")
REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)  # [label]: target
CODE = re.compile(r"^(```|~~~).*?^\1", re.DOTALL | re.MULTILINE)  # fenced blocks: their brackets are code, not links
INLINE_CODE = re.compile(r"`[^`\n]*`")


def test_the_config_reference_is_generated_from_the_config():
    written = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    assert written == config_reference(), (
        "docs/config.md is not the reference of rl/config.py: run `python -m rl.reference > docs/config.md`"
    )


def test_the_readme_is_a_manual_of_at_most_300_lines():
    lines = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert lines <= 300, f"README.md has {lines} lines: move reference material to docs/ (at most 300)"


def relative_links(page: Path) -> list[str]:
    """The link targets of a Markdown page that point into the repository (no scheme, not a bare #anchor)."""
    text = INLINE_CODE.sub("", CODE.sub("", page.read_text(encoding="utf-8")))
    targets = LINK.findall(text) + REFERENCE.findall(text)
    return [t for t in targets if not re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:", t) and not t.startswith("#")]


def test_the_link_finder_sees_links_and_skips_code(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "See [the guide](docs/a.md#part), [site](https://x.org), [here](#top) and ![figure](img/f.png 'F').\n"
        "`[not](a-link.md)`\n```python\nx = d[k](v)\n[nor](this.md)\n```\n[ref]: other/b.md\n"
    )
    assert sorted(relative_links(page)) == ["docs/a.md#part", "img/f.png", "other/b.md"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_at_a_file(page):
    broken = []
    for target in relative_links(page):
        path = target.split("#", 1)[0].split("?", 1)[0]
        if not (page.parent / path).exists():
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)} links to files that do not exist: {broken}"
