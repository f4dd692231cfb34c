"""Code that makes a fresh interpreter behave as if packages were not installed (for subprocess tests)."""

from __future__ import annotations


def blocking(*packages: str) -> str:
    """Python source that, run first, makes ``import <package>`` (and its submodules) raise ModuleNotFoundError."""
    return (
        "import importlib.abc, sys\n"
        "class _Blocked(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        f"        if name.split('.')[0] in {packages!r}:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r} (blocked by the test)')\n"
        "sys.meta_path.insert(0, _Blocked())\n"
    )
