"""scripts/docs_tables.py (a script, not a module of the package): its path, and its names loaded once."""

from __future__ import annotations

import functools
import runpy
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "docs_tables.py"


@functools.cache
def docs_tables() -> dict[str, Any]:
    """The script's global names (``TABLES``, ``module_listing``, ...), run once per test session."""
    return runpy.run_path(str(SCRIPT))
