"""The model cache of the CPU runs: each tiny model is built once per recipe, then reused.

A model folder holds a JSON *marker* written with it: the *fingerprint* of the recipe that made it (whatever may
change the model: its code, data, settings, library versions) and what the build recorded. :func:`build_once`
reuses a folder whose marker matches, else builds into a temporary sibling and renames it into place; a lock file
beside the folder keeps concurrent processes from building it twice or replacing it under each other.
"""

from __future__ import annotations

import ast
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["build_once", "code_digest", "fingerprint"]


def code_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a Python file's syntax tree without docstrings: comments, docstrings and layout do not count.

    A fingerprint built on it changes when the code does, not when a line is rewrapped or a docstring reworded
    (the tree's dump may differ between Python versions: the cache is then rebuilt once).
    """
    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and ast.get_docstring(
                node, clean=False) is not None:
            node.body = node.body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()


def fingerprint(recipe: Any) -> str:
    """16 hex digits identifying ``recipe`` (anything JSON can write: what may change a model)."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def build_once(out: Path, fingerprint: str, build: Callable[[Path], dict[str, Any]], *, marker: str) -> dict[str, Any]:
    """The model folder ``out`` made by ``build``, reused while its marker holds ``fingerprint``.

    Args:
        out: The model folder.
        fingerprint: Identifies the recipe; a folder made by another one is rebuilt.
        build: Makes the model in the folder it is given (a temporary sibling of ``out``) and returns what to record
            in the marker (JSON-serialisable; paths in it should point into ``out``).
        marker: The marker's file name inside ``out``.

    Returns:
        What ``build`` returned, read back from the marker when the folder was reused.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_name(f"{out.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also when the process dies
        try:
            record = json.loads((out / marker).read_text(encoding="utf-8"))
            if record.pop("fingerprint") == fingerprint:
                return record
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
        tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        record = build(tmp)  # a failed build leaves its folder (and the logs in it) for a look
        (tmp / marker).write_text(json.dumps({"fingerprint": fingerprint, **record}, indent=1), encoding="utf-8")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        return record
