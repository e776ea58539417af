"""The provider pages (``docs/providers/*.md``) stay true like the other docs: every relative
link and anchor resolves, the README's providers table links each page, one line per provider,
and every provider the bridge serves has a page. ``tests/test_docs.py`` checks ``docs/*.md``;
this applies its rules one folder down."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bridge.config import Settings
from bridge.providers import build_providers
from tests.test_docs import README, ROOT, anchors, relative_links

PAGES = sorted((ROOT / "docs" / "providers").glob("*.md"))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_on_a_provider_page_resolves(page: Path) -> None:
    broken = []
    for link in relative_links(page):
        path_part, _, anchor = link.partition("#")
        target = (page.parent / path_part).resolve() if path_part else page
        if not target.exists():
            broken.append(f"{link}: no such file")
        elif anchor and (target.suffix != ".md" or anchor not in anchors(target)):
            broken.append(f"{link}: no such anchor in {target.relative_to(ROOT)}")
    assert not broken, "\n".join(broken)


def test_every_provider_has_a_page_and_one_readme_table_row() -> None:
    names = [p.name for p in build_providers(Settings(), log=None, rejections=None, end_call=None)]  # type: ignore[arg-type]
    assert sorted(p.stem for p in PAGES) == sorted(names)
    rows = [line for line in README.read_text(encoding="utf-8").splitlines() if "](docs/providers/" in line]
    section = README.read_text(encoding="utf-8").split("## Providers", 1)[1].split("\n## ", 1)[0]
    table = [line for line in section.splitlines() if line.startswith("| [")]
    for name in names:
        linked = [row for row in table if f"](docs/providers/{name}.md)" in row]
        assert len(linked) == 1, f"README's providers table needs one row linking docs/providers/{name}.md"
    assert len(table) == len(names) and rows


def test_provider_pages_name_only_settings_that_exist() -> None:
    source = (ROOT / "bridge/config.py").read_text()
    known = set(re.findall(r"""\br\.[a-z_0-9]+\(\s*["']([A-Z][A-Z0-9_]*)["']""", source))
    for page in PAGES:
        named = set(re.findall(r"`((?:TWILIO|VOBIZ|PLIVO|SIGNALWIRE|EXOTEL|TELNYX)_[A-Z0-9_]+)`", page.read_text()))
        assert named <= known, f"{page.name} names settings bridge/config.py does not read: {sorted(named - known)}"
