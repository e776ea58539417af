"""The documentation stays true to the code: every setting documented, every link resolving.

Reads files only (no import of the service), so it runs in milliseconds and does not care
where the modules live.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
CONFIG_SOURCE = ROOT / "bridge" / "config.py"
CONFIGURATION_PAGE = DOCS / "configuration.md"
README_MAX_LINES = 220
#: Names of ours; anything else in the table (``PORT``, ``FORWARDED_ALLOW_IPS``) is read elsewhere.
OUR_PREFIXES = ("EKA_", "BRIDGE_", "VOBIZ_", "TWILIO_", "RESULT_", "PLIVO_", "SIGNALWIRE_", "EXOTEL_", "TELNYX_")

#: ``r.number("BRIDGE_BATCH_MS", ...)``: the first argument of every reader call in ``from_env``.
READER_CALL = re.compile(r"""\br\.[a-z_][a-z0-9_]*\(\s*["']([A-Z][A-Z0-9_]*)["']""")
FENCE = re.compile(r"^(```|~~~)")
INLINE_CODE = re.compile(r"`+[^`]*`+")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
BACKTICKED = re.compile(r"`([^`]+)`")


def pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def read_settings() -> set[str]:
    """Every variable ``Settings.from_env`` reads, from the source text of ``bridge/config.py``."""
    names = set(READER_CALL.findall(CONFIG_SOURCE.read_text(encoding="utf-8")))
    assert len(names) >= 40, f"found only {sorted(names)} in {CONFIG_SOURCE}: has the reader been renamed?"
    return names


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def table_first_cells(text: str) -> list[str]:
    """The first cell of every body row of every table outside code blocks."""
    cells = []
    for line in prose_lines(text):
        stripped = line.strip()
        if not stripped.startswith("|") or re.fullmatch(r"\|[\s:|-]+\|?", stripped):
            continue
        cells.append(re.split(r"(?<!\\)\|", stripped)[1])
    return cells


def documented_settings() -> set[str]:
    """Every name written in backticks in the first column of the configuration page's tables."""
    return {
        name
        for cell in table_first_cells(CONFIGURATION_PAGE.read_text(encoding="utf-8"))
        for name in BACKTICKED.findall(cell)
        if re.fullmatch(r"[A-Z][A-Z0-9_]*", name)
    }


def github_anchor(heading: str) -> str:
    """GitHub's heading id: markup dropped, lowercase, punctuation but ``-`` and ``_`` dropped,
    spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = re.sub(r"<[^>]+>", "", text).lower()
    text = "".join(c for c in text if c.isalnum() or c in "-_ ")
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of ``page``, repeated headings numbered as GitHub numbers them."""
    seen: dict[str, int] = {}
    found = set()
    for line in prose_lines(page.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        anchor = github_anchor(match.group(2))
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        found.add(anchor if count == 0 else f"{anchor}-{count}")
    return found


def relative_links(page: Path) -> list[str]:
    links = []
    for line in prose_lines(page.read_text(encoding="utf-8")):
        for target in LINK.findall(INLINE_CODE.sub("", line)):
            if not re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
                links.append(target)
    return links


def test_every_setting_that_config_reads_is_documented() -> None:
    missing = read_settings() - documented_settings()
    assert not missing, f"read by bridge/config.py, not in docs/configuration.md's table: {sorted(missing)}"


def test_every_documented_setting_exists() -> None:
    ours = {name for name in documented_settings() if name.startswith(OUR_PREFIXES)}
    unknown = ours - read_settings()
    assert not unknown, f"in docs/configuration.md's table, not read by bridge/config.py: {sorted(unknown)}"


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for link in relative_links(page):
        path_part, _, anchor = link.partition("#")
        target = (page.parent / path_part).resolve() if path_part else page
        if not target.exists():
            broken.append(f"{link}: no such file")
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            broken.append(f"{link}: no heading with that anchor in {target.relative_to(ROOT)}")
        elif anchor and target.suffix != ".md":
            broken.append(f"{link}: an anchor into a file that is not Markdown")
    assert not broken, "\n".join(broken)


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {(ROOT / link.partition("#")[0]).resolve() for link in relative_links(README)}
    orphans = [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert not orphans, f"docs pages the README does not link: {orphans}"


def test_the_readme_is_a_front_page() -> None:
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES}): move detail to docs/"


def test_the_anchor_rule_matches_githubs() -> None:
    assert github_anchor("On Kubernetes (`deploy/k8s/`)") == "on-kubernetes-deployk8s"
    assert github_anchor("The /calls API") == "the-calls-api"
    assert github_anchor("Eka's webhook") == "ekas-webhook"
    assert github_anchor("Results: Get Session after End") == "results-get-session-after-end"
    assert github_anchor("Two parties, one stream") == "two-parties-one-stream"
    assert github_anchor("snake_case and-hyphens") == "snake_case-and-hyphens"
