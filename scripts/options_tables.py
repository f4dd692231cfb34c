#!/usr/bin/env python
"""Write the README's options tables from the option declarations in ``sophiavl_verl/config.py``.

    python scripts/options_tables.py          # rewrite the tables between the README's options markers
    python scripts/options_tables.py --check  # exit 1, naming the stale table, if the README is not current

Each table row is one ``dataclasses.field`` of ``TrustGRPOConfig`` / ``SophiaVLRewardConfig``: its name, its
default (as YAML writes it) and its ``metadata["help"]``. ``tests/test_options_docs.py`` runs ``--check``.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sophiavl_verl.config import SophiaVLRewardConfig, TrustGRPOConfig  # noqa: E402

README = ROOT / "README.md"
TABLES = {"algorithm.trust_grpo": TrustGRPOConfig, "reward.reward_kwargs": SophiaVLRewardConfig}


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


def table(cls: type) -> str:
    """The markdown table of one options class."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for f in dataclasses.fields(cls):
        if not f.name.startswith("_"):
            meaning = f.metadata["help"].replace("<", "&lt;").replace("|", "\\|")  # not HTML, not a new cell
            rows.append(f"| `{f.name}` | {yaml_value(f.default)} | {meaning} |")
    return "\n".join(rows)


def render(text: str) -> str:
    """``text`` with every table between ``<!-- options: PREFIX -->`` and ``<!-- /options -->`` regenerated."""
    for prefix, cls in TABLES.items():
        pattern = re.compile(rf"(<!-- options: {re.escape(prefix)} [^>]*-->\n)(?:.*?\n)??(<!-- /options -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"no '<!-- options: {prefix} ... -->' ... '<!-- /options -->' block")
        text = pattern.sub(lambda m, cls=cls: m.group(1) + table(cls) + "\n" + m.group(2), text)
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check that the README is current")
    parser.add_argument("--readme", type=Path, default=README, help="the README to check or rewrite")
    args = parser.parse_args()
    current = args.readme.read_text(encoding="utf-8")
    wanted = render(current)
    if wanted == current:
        return 0
    if args.check:
        print(f"{args.readme}: the options tables differ from sophiavl_verl/config.py; run scripts/options_tables.py",
              file=sys.stderr)
        return 1
    args.readme.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
