"""Each table of the docs that lists what the code declares is generated from it, and the recipe follows it.

The options (``sophiavl_verl/config.py``) and the metrics (``keys.STEP_METRICS``) in docs/options.md, and the other
blocks of ``scripts/docs_tables.py``: these tests fail when a doc (or the base recipe) no longer says what the
declarations say.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from sophiavl_verl.config import SophiaVLRewardConfig, TrustGRPOConfig
from sophiavl_verl.keys import STEP_METRICS
from sophiavl_verl.thinking_reward import TRMFailure

from support.docs_tables import SCRIPT, docs_tables

ROOT = Path(__file__).resolve().parents[1]
DECLARED = {"algorithm.trust_grpo": TrustGRPOConfig, "reward.reward_kwargs": SophiaVLRewardConfig}


def _options(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if not f.name.startswith("_")]


def _doc_rows(prefix: str) -> list[tuple[str, str, str]]:
    """(key, default, meaning) of each row of docs/options.md's table of ``prefix``, read with a plain parser."""
    text = (ROOT / "docs" / "options.md").read_text(encoding="utf-8")
    block = re.search(rf"<!-- generated: options:{re.escape(prefix)} -->\n(.*?)<!-- /generated -->", text, re.S)
    assert block, f"docs/options.md has no options table for {prefix}"
    rows = []
    for line in block.group(1).splitlines()[2:]:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        rows.append((cells[0].strip("`"), cells[1], cells[2].replace("\\|", "|").replace("&lt;", "<")))
    return rows


@pytest.mark.parametrize("prefix", DECLARED)
def test_the_options_table_says_what_the_declarations_say(prefix):
    rows = _doc_rows(prefix)
    fields = _options(DECLARED[prefix])
    assert [key for key, _, _ in rows] == [f.name for f in fields]
    for (key, default, meaning), f in zip(rows, fields, strict=True):
        assert OmegaConf.create(f"v: {default.strip('`')}").v == f.default, key  # as a verl YAML reads it
        assert meaning == f.metadata["help"], key


def test_every_option_has_a_help_and_valid_choices():
    for cls in DECLARED.values():
        for f in _options(cls):
            assert f.metadata.get("help", "").strip(), f"{cls.__name__}.{f.name} has no help"
            if "choices" in f.metadata:
                assert f.default in f.metadata["choices"], f.name


def test_the_generated_docs_are_current():
    result = subprocess.run([sys.executable, SCRIPT, "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("doc, line, drifted_line", [
    ("docs/options.md", "| `max_retries` | 5 |", "| `max_retries` | 3 |"),
    ("docs/options.md", "| `trm/failed` |", "| `trm/failures` |"),
    ("docs/readme_thinking_reward.md", "| `timeout` |", "| `time_out` |"),
    ("docs/verl_integration.md", "| `verl.utils.config.validate_config` | wrap | shared |",
     "| `verl.utils.config.validate_config` | wrap | v1 |"),
])
def test_a_drifted_table_is_caught_and_rewritten(tmp_path, doc, line, drifted_line):
    """A copy of the docs with one drifted row: --check names the doc, a rewrite restores it."""
    copy = tmp_path / doc
    copy.parent.mkdir(parents=True)
    for other in {where for where, _ in docs_tables()["TABLES"].values()}:
        (tmp_path / other).write_text((ROOT / other).read_text(encoding="utf-8"), encoding="utf-8")
    original = copy.read_text(encoding="utf-8")
    assert line in original
    copy.write_text(original.replace(line, drifted_line), encoding="utf-8")
    result = subprocess.run([sys.executable, SCRIPT, "--check", "--root", tmp_path], capture_output=True, text=True)
    assert result.returncode == 1 and f"{doc}: a generated table differs" in result.stderr, result.stderr
    assert subprocess.run([sys.executable, SCRIPT, "--root", tmp_path]).returncode == 0
    assert copy.read_text(encoding="utf-8") == original


def test_the_metrics_table_lists_every_declared_metric_with_its_meaning():
    text = (ROOT / "docs" / "options.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- generated: metrics -->\n(.*?)<!-- /generated -->", text, re.S).group(1)
    rows = [re.split(r"(?<!\\)\|", line)[1:-1] for line in block.splitlines()[2:]]
    assert [(name.strip().strip("`"), meaning.strip().replace("&lt;", "<")) for name, meaning in rows] == list(
        STEP_METRICS.items())


def test_the_failure_kinds_table_lists_every_kind():
    text = (ROOT / "docs" / "readme_thinking_reward.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- generated: failure-kinds -->\n(.*?)<!-- /generated -->", text, re.S).group(1)
    assert [line.split("|")[1].strip().strip("`") for line in block.splitlines()[2:]] == [k.value for k in TRMFailure]


@pytest.mark.parametrize("prefix", DECLARED)
def test_the_base_recipe_declares_every_option_with_its_default(prefix):
    """The recipe lists every option (so overrides need no `+`) with the declared default."""
    node = OmegaConf.load(ROOT / "recipes" / "sophiavl_r1" / "sophiavl_r1_7b_base.yaml")
    declared = OmegaConf.to_container(OmegaConf.select(node, prefix))
    assert declared == {f.name: f.default for f in _options(DECLARED[prefix])}
