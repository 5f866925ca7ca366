"""docs/config.md and docs/cli.md are generated from the code (tools/docs_ref.py) and must not
drift from it; every relative link of README.md and docs/*.md points to a file that exists."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SPEC = importlib.util.spec_from_file_location("docs_ref", REPO / "tools" / "docs_ref.py")
docs_ref = importlib.util.module_from_spec(SPEC)
sys.modules["docs_ref"] = docs_ref  # its dataclass looks its module up there
SPEC.loader.exec_module(docs_ref)


@pytest.mark.parametrize("page", sorted(docs_ref.PAGES))
def test_the_reference_page_matches_the_code(page):
    """Regenerated in memory, the page equals the file: a key or flag added, removed or
    re-described in the code without regenerating fails here."""
    path = REPO / page
    assert path.exists(), f"{page} is missing; generate it: {docs_ref.REGENERATE}"
    fresh = docs_ref.PAGES[page]()
    if path.read_text() != fresh:
        old, new = path.read_text().splitlines(), fresh.splitlines()
        first = next((i for i, (a, b) in enumerate(zip(old, new)) if a != b), min(len(old), len(new)))
        pytest.fail(f"{page} has drifted from the code (first difference at line {first + 1}: "
                    f"{(new[first] if first < len(new) else '<end>')!r}); regenerate it: "
                    f"{docs_ref.REGENERATE}, and commit it with the change")


def test_every_config_key_and_flag_is_in_the_references():
    """Independently of the generator's own walk: each DistillConfig and gkd: key, and each
    option string of every raydistill subcommand, appears in its page."""
    import argparse

    from raydistill.cli import build_parser
    from raydistill.config import DistillConfig, GKDSettings

    config = (REPO / "docs" / "config.md").read_text()
    missing = [f.name for f in dataclasses.fields(DistillConfig) if f"| `{f.name}` |" not in config]
    missing += [f"gkd.{f.name}" for f in dataclasses.fields(GKDSettings)
                if f"| `gkd.{f.name}` |" not in config]
    assert not missing, f"docs/config.md lacks {missing}; regenerate it: {docs_ref.REGENERATE}"

    cli = (REPO / "docs" / "cli.md").read_text()
    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    absent = []
    for name, sub in subs.choices.items():
        section = cli.split(f"\n## raydistill {name}\n", 1)
        assert len(section) == 2, f"docs/cli.md has no section for raydistill {name}"
        body = section[1].split("\n## ", 1)[0]
        absent += [f"{name} {o}" for a in sub._actions for o in a.option_strings
                   if o not in ("-h", "--help") and f"`{o}" not in body]
    assert not absent, f"docs/cli.md lacks {absent}; regenerate it: {docs_ref.REGENERATE}"


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def test_every_relative_link_points_to_a_file_that_exists():
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # not links in code
        text = re.sub(r"`[^`\n]*`", "", text)
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a URL or an anchor in the same page
            path = target.split("#", 1)[0]
            if not (page.parent / path).exists():
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert not broken, "links to files that do not exist:\n" + "\n".join(broken)
    assert len(pages) > 2
