"""Generate the reference pages from the code: docs/config.md and docs/cli.md.

    python -m tools.docs_ref --write     # regenerate both (make docs)
    python -m tools.docs_ref --check     # exit 1 when a page differs from the code

docs/config.md lists every ``DistillConfig`` key (and the ``gkd:`` section's) with its type,
default and the comment beside or above its field in raydistill/config.py; a comment block that
opens a group of fields with a one-line sentence (``# Data.``) names a section. docs/cli.md
lists every subcommand and flag of ``raydistill`` (raydistill/cli.py and the parsers it builds)
and of the ``jobs/*.py`` scripts. tests/unit/test_docs_reference.py fails when the pages drift.
A repository tool beside bench/, not part of the package: it reads jobs/, which is not installed.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib.util
import io
import sys
import tokenize
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CONFIG_PY = REPO / "raydistill" / "config.py"
JOBS = ("make_student", "pseudo_label", "distill", "evaluate", "tune")
REGENERATE = "python -m tools.docs_ref --write (or make docs)"
HEADER = "<!-- Generated from the code by `{cmd}`; do not edit by hand. -->\n"


# ---- docs/config.md -------------------------------------------------------------------------

@dataclasses.dataclass
class Key:
    name: str
    type: str
    default: Any
    description: str
    section: str


def _comments(source: str) -> dict[int, str]:
    """Line number -> the text of the comment on that line (without '#')."""
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = tok.string.lstrip("#").strip()
    return out


def class_keys(cls: type, source: str = "") -> list[Key]:
    """A dataclass's fields, described by their comments in ``source`` (its module's text)."""
    source = source or Path(sys.modules[cls.__module__].__file__).read_text()
    lines = source.splitlines()
    comments = _comments(source)
    node = next(n for n in ast.walk(ast.parse(source))
                if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
    defaults = {f.name: (f.default if f.default is not dataclasses.MISSING else
                         f.default_factory() if f.default_factory is not dataclasses.MISSING
                         else None)
                for f in dataclasses.fields(cls)}
    keys, section = [], ""
    for stmt in node.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        name, row = stmt.target.id, stmt.lineno
        above, i = [], row - 1
        while i >= 1 and lines[i - 1].strip().startswith("#"):
            above.insert(0, comments.get(i, ""))
            i -= 1
        # A block that opens a group (after a blank line) with one short sentence: a section.
        opens_group = i >= 1 and (not lines[i - 1].strip() or lines[i - 1].strip().endswith('"""'))
        if above and opens_group and above[0].endswith(".") and len(above[0]) <= 90:
            section = above.pop(0).rstrip(".")
        text = " ".join(above + ([comments[row]] if row in comments and
                                 not lines[row - 1].strip().startswith("#") else []))
        keys.append(Key(name, ast.get_source_segment(source, stmt.annotation) or "",
                        defaults.get(name), text, section))
    return keys


def _default(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    return f"`{value!r}`"


def _code(text: str) -> str:
    """Code in a table cell: a '|' inside backticks still ends the cell unless escaped."""
    return "`" + text.replace("|", "\\|") + "`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|") or "-"


def _meaning(text: str) -> str:
    return _cell(text) if text else "(no comment beside the field in raydistill/config.py yet)"


def render_config() -> str:
    from raydistill.config import SECTIONS, DistillConfig, GKDSettings

    source = CONFIG_PY.read_text()
    out = [HEADER.format(cmd=REGENERATE),
           "# Configuration reference\n",
           "A run is one YAML file, loaded into a frozen dataclass, `raydistill.DistillConfig` "
           "(raydistill/config.py), and validated once before Ray starts: a wrong value is one "
           "line that names the key and the fix, and an unknown key names the closest valid one. "
           "`key=value` on the command line overrides any key (`distillation.temperature=8` "
           "reaches into the `distillation:` section). Keys may also be grouped under "
           + ", ".join(f"`{s}:`" for s in SECTIONS) + " for readability. Shipped examples: "
           "`jobs/configs/` (a test loads and validates every one). Sweeps add a `tune:` section "
           "([tune.md](tune.md)); the TextBrewer sections `distillation:` and `training:` are in "
           "[textbrewer.md](textbrewer.md); `stages:` in [recipes.md](recipes.md).\n"]
    section = None
    for key in class_keys(DistillConfig, source):
        if key.section != section:
            section = key.section
            out += [f"\n## {section or 'Other keys'}\n", "| key | type | default | meaning |",
                    "|---|---|---|---|"]
        out.append(f"| `{key.name}` | {_code(key.type)} | {_default(key.default)} | "
                   f"{_meaning(key.description)} |")
    doc = " ".join((GKDSettings.__doc__ or "").split())
    out += ["\n## The `gkd:` section (`method: gkd`)\n", _cell(doc) if doc else "", "",
            "| key | type | default | meaning |", "|---|---|---|---|"]
    out += [f"| `gkd.{k.name}` | {_code(k.type)} | {_default(k.default)} | {_meaning(k.description)} |"
            for k in class_keys(GKDSettings, source)]
    return "\n".join(out) + "\n"


# ---- docs/cli.md ----------------------------------------------------------------------------

def _arg(action: argparse.Action) -> str:
    meta = action.metavar or (action.dest.upper() if action.option_strings else action.dest.upper())
    if action.nargs == 0:
        value = ""
    elif action.nargs == "+":
        value = f"{meta} [{meta} ...]"
    elif action.nargs == "*":
        value = f"[{meta} ...]"
    elif action.nargs == "?":
        value = f"[{meta}]"
    else:
        value = meta
    if not action.option_strings:
        return f"`{value}`"
    return ", ".join(f"`{o}{' ' + value if value else ''}`" for o in action.option_strings)


def _help(action: argparse.Action) -> str:
    text = action.help or ""
    if "%(" in text:
        text = text % {**vars(action), "prog": ""}
    if action.choices:
        text += ("; " if text else "") + "one of: " + ", ".join(f"`{c}`" for c in action.choices)
    if action.required and action.option_strings:
        text = "**required**" + ("; " + text if text else "")
    return " ".join(text.split())


def _flag_default(action: argparse.Action) -> str:
    if action.nargs == 0 or action.default in (None, argparse.SUPPRESS) or action.default == []:
        return "-"
    return _default(action.default)


def _parser_table(parser: argparse.ArgumentParser) -> list[str]:
    rows = [a for a in parser._actions
            if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]
    if not rows:
        return ["No arguments."]
    rows.sort(key=lambda a: bool(a.option_strings))  # positionals first, then in order
    return ["| argument | default | meaning |", "|---|---|---|"] + [
        f"| {_arg(a)} | {_flag_default(a)} | {_cell(_help(a))} |" for a in rows]


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {c.dest: c.help or "" for c in action._choices_actions}
            return [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return []


def _job(name: str):
    spec = importlib.util.spec_from_file_location(f"jobs_{name}", REPO / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def render_cli() -> str:
    from raydistill.cli import build_parser

    parser = build_parser()
    subs = _subcommands(parser)
    out = [HEADER.format(cmd=REGENERATE), "# CLI reference\n",
           "`raydistill SUBCOMMAND ...` (installed by `pip install -e .`; also `python -m "
           "raydistill.cli`). An input error is one line on stderr and exit code 2, before Ray "
           "starts. The `jobs/*.py` scripts, one per stage for `ray job submit`, are at the "
           "end. Configuration keys: [config.md](config.md).\n",
           "| subcommand | what it does |", "|---|---|"]
    out += [f"| [`{name}`](#raydistill-{name}) | {_cell(help_)} |" for name, help_, _ in subs]
    out += ["\n## `raydistill` (before the subcommand)\n", *_parser_table(parser)]
    for name, help_, sub in subs:
        out += [f"\n## raydistill {name}\n", f"{help_}\n" if help_ else "", *_parser_table(sub)]
    out += ["\n## jobs/*.py\n",
            "Each script takes a YAML config and `key=value` overrides and reads top to bottom "
            "(config -> inputs -> run -> summary); on a cluster, submit it with `ray job submit` "
            "([cluster.md](cluster.md)).\n"]
    for name in JOBS:
        module = _job(name)
        doc = (module.__doc__ or "").strip().splitlines()[0]
        out += [f"\n### jobs/{name}.py\n", f"{doc}\n", *_parser_table(module.build_parser())]
        known = list(getattr(module, "KNOWN", None) or getattr(module, "KEYS", None) or [])
        required = set(getattr(module, "REQUIRED", ()))
        if known:
            out.append("\nConfig keys: " + ", ".join(
                f"`{k}`" + (" (required)" if k in required else "") for k in known) + ".")
        else:
            out.append("\nConfig keys: every `DistillConfig` key ([config.md](config.md))"
                       + (" and a `tune:` section ([tune.md](tune.md))." if name == "tune" else "."))
    return "\n".join(out) + "\n"


# ---- the pages ------------------------------------------------------------------------------

PAGES = {"docs/config.md": render_config, "docs/cli.md": render_cli}


def stale() -> list[str]:
    """The pages whose file differs from what the code generates now."""
    return [page for page, render in PAGES.items()
            if not (REPO / page).exists() or (REPO / page).read_text() != render()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="regenerate the pages")
    mode.add_argument("--check", action="store_true", help="exit 1 when a page is stale")
    args = parser.parse_args(argv)
    if args.write:
        for page, render in PAGES.items():
            (REPO / page).write_text(render())
            print(f"wrote {page}")
        return 0
    old = stale()
    for page in old:
        print(f"{page} differs from the code; regenerate it: {REGENERATE}", file=sys.stderr)
    return 1 if old else 0


if __name__ == "__main__":
    sys.exit(main())
