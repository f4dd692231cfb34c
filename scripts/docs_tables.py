#!/usr/bin/env python
"""Write the docs' generated tables from the declarations in the code, so that no table can drift from it.

    python scripts/docs_tables.py          # rewrite every generated block of the docs
    python scripts/docs_tables.py --check  # exit 1, naming each stale block, if a doc is not current

A generated block sits between ``<!-- generated: NAME -->`` and ``<!-- /generated -->``; NAME says what fills it
(:data:`TABLES`). ``tests/test_generated_docs.py`` runs ``--check``.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import re
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sophiavl_verl.config import SophiaVLRewardConfig, TrustGRPOConfig  # noqa: E402
from sophiavl_verl.integration.hooks import touch_point_table  # noqa: E402
from sophiavl_verl.keys import STEP_METRICS  # noqa: E402
from sophiavl_verl.thinking_reward import TRMFailure  # noqa: E402


def yaml_value(value: object) -> str:
    """A default as a verl YAML config writes it: null, true/false, 60 (not 60.0), 1e-6."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else re.sub(r"e([+-])0*(\d)", r"e\1\2", repr(value))
    if isinstance(value, str):
        return f"`{value}`"
    return str(value)


def _cell(text: str) -> str:
    """Markdown table cell text: not HTML (``<`` escaped outside code spans, where an entity would show), not a
    new cell."""
    parts = text.split("`")
    parts[::2] = [part.replace("<", "&lt;") for part in parts[::2]]
    return "`".join(parts).replace("|", "\\|")


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def options_table(cls: type) -> str:
    """One options class: each field's name, default (as YAML writes it) and ``metadata["help"]``."""
    return _table(("key", "default", "meaning"), [
        (f"`{f.name}`", yaml_value(f.default), _cell(f.metadata["help"]))
        for f in dataclasses.fields(cls) if not f.name.startswith("_")
    ])


def metrics_table() -> str:
    """``keys.STEP_METRICS``: what the estimator logs at every step."""
    return _table(("metric", "meaning"), [(f"`{name}`", _cell(meaning)) for name, meaning in STEP_METRICS.items()])


def failure_kinds_table() -> str:
    """``TRMFailure``: each kind of failure of a thinking-reward request, what it means, whether it is retried."""
    return _table(("kind", "what happened", "retried"),
                  [(f"`{kind.value}`", _cell(kind.meaning), _cell(kind.retried)) for kind in TRMFailure])


PACKAGE = ROOT / "sophiavl_verl"
_ENTRY = re.compile(r"^    (\S+(?:\.py|/))\s+(\S.*)$")
_MORE = re.compile(r"^     +(\S.*)$")


def module_listing(package: Path) -> dict[str, str]:
    """What a package's ``__init__`` docstring lists: each module (``x.py``) or subpackage (``x/``) -> what it holds.

    An entry is a line indented by four spaces, a name, spaces, the text; deeper-indented lines right after it
    continue its text.
    """
    source = (package / "__init__.py").read_text(encoding="utf-8")
    listing: dict[str, str] = {}
    last = None
    for line in (ast.get_docstring(ast.parse(source), clean=False) or "").splitlines():
        if entry := _ENTRY.match(line):
            last = entry.group(1)
            listing[last] = entry.group(2)
        elif last and (more := _MORE.match(line)):
            listing[last] += " " + more.group(1)
        else:
            last = None
    return listing


def layout_tree() -> str:
    """The package's tree, each module with what its package's docstring says it holds."""
    lines = ["sophiavl_verl/"]

    def walk(package: Path, depth: int) -> None:
        listing = module_listing(package)
        width = max(map(len, listing)) + 2
        for name, what in listing.items():
            what = re.sub(r":\w+:`~?([^`]*)`", r"\1", what).replace("``", "")  # reST roles and literals read as text
            indent = "  " * depth
            lines.extend(textwrap.wrap(what, 118, initial_indent=f"{indent}{name:<{width}}",
                                       subsequent_indent=" " * (len(indent) + width)))
            if name.endswith("/"):
                walk(package / name[:-1], depth + 1)

    walk(PACKAGE, 1)
    return "```\n" + "\n".join(lines) + "\n```"


#: Each generated block's name -> (the doc holding it, relative to the repository, and what renders it).
TABLES: dict[str, tuple[str, Callable[[], str]]] = {
    "options:algorithm.trust_grpo": ("docs/options.md", lambda: options_table(TrustGRPOConfig)),
    "options:reward.reward_kwargs": ("docs/options.md", lambda: options_table(SophiaVLRewardConfig)),
    "metrics": ("docs/options.md", metrics_table),
    "failure-kinds": ("docs/readme_thinking_reward.md", failure_kinds_table),
    "layout": ("docs/DESIGN.md", layout_tree),
    "verl-touch-points": ("docs/verl_integration.md", lambda: touch_point_table().rstrip("\n")),
}


def render(text: str, doc: str) -> str:
    """``text`` (the doc ``doc``) with each of its generated blocks rewritten."""
    for name, (where, make) in TABLES.items():
        if where != doc:
            continue
        pattern = re.compile(rf"(<!-- generated: {re.escape(name)} -->\n)(?:.*?\n)??(<!-- /generated -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"{doc}: no '<!-- generated: {name} -->' ... '<!-- /generated -->' block")
        table = make()
        text = pattern.sub(lambda m, table=table: m.group(1) + table + "\n" + m.group(2), text)
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check that every generated block is current")
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository whose docs to check or rewrite")
    args = parser.parse_args()
    stale = []
    for doc in sorted({where for where, _ in TABLES.values()}):
        path = args.root / doc
        current = path.read_text(encoding="utf-8")
        wanted = render(current, doc)
        if wanted == current:
            continue
        if args.check:
            stale.append(doc)
        else:
            path.write_text(wanted, encoding="utf-8")
    for doc in stale:
        print(f"{doc}: a generated table differs from the code; run scripts/docs_tables.py", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
