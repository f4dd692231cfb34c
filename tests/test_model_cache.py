"""tools/model_cache.py: a model is built once per recipe, rebuilt when the recipe changes, never twice at once."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from sophiavl_verl.tools.model_cache import build_once, code_digest, fingerprint


def _build_counting(folder: Path) -> dict:
    """A 'model': one file, and a line in the log beside the cache for each build."""
    (folder / "weights").write_text("w", encoding="utf-8")
    with open(folder.parent / "builds.log", "a", encoding="utf-8") as log:
        log.write("built\n")
    return {"weights": str(folder.name)}


def _builds(cache: Path) -> int:
    log = cache / "builds.log"
    return len(log.read_text(encoding="utf-8").splitlines()) if log.exists() else 0


def test_a_model_is_reused_while_its_recipe_holds_and_rebuilt_when_it_changes(tmp_path):
    out = tmp_path / "model"
    first = build_once(out, fingerprint({"steps": 10}), _build_counting, marker="made.json")
    again = build_once(out, fingerprint({"steps": 10}), _build_counting, marker="made.json")
    assert first == again and _builds(tmp_path) == 1 and (out / "weights").is_file()
    build_once(out, fingerprint({"steps": 11}), _build_counting, marker="made.json")
    assert _builds(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["builds.log", "model", "model.lock"]  # no temporary left


def test_a_corrupt_marker_means_a_rebuild(tmp_path):
    out = tmp_path / "model"
    build_once(out, "f", _build_counting, marker="made.json")
    (out / "made.json").write_text("{not json", encoding="utf-8")
    build_once(out, "f", _build_counting, marker="made.json")
    assert _builds(tmp_path) == 2


def _build_in_child(out: str) -> None:
    import time

    def slow(folder: Path) -> dict:
        time.sleep(0.5)  # long enough for the other process to find no marker yet
        return _build_counting(folder)

    build_once(Path(out), "f", slow, marker="made.json")


def test_two_processes_on_a_cold_cache_build_once(tmp_path):
    context = multiprocessing.get_context("spawn")
    children = [context.Process(target=_build_in_child, args=(str(tmp_path / "model"),)) for _ in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
    assert [child.exitcode for child in children] == [0, 0]
    assert _builds(tmp_path) == 1


def test_the_code_digest_ignores_docstrings_and_comments_but_not_code(tmp_path):
    def digest(source: str) -> str:
        path = tmp_path / "m.py"
        path.write_text(source, encoding="utf-8")
        return code_digest(path)

    base = digest('"""Doc."""\n\ndef f(x):\n    """Doc."""\n    return x + 1\n')
    assert digest('"""Other doc."""\n\n\ndef f(x):  # a comment\n    return x + 1\n') == base
    assert digest('"""Doc."""\n\ndef f(x):\n    """Doc."""\n    return x + 2\n') != base
