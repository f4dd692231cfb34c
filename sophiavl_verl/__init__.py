"""sophiavl-verl: SophiaVL-R1 (thinking reward + Trust-GRPO + annealing) as a verl plugin.

``import verl`` loads :mod:`sophiavl_verl.plugin` through the ``verl.plugins`` entry point, which
registers ``algorithm.adv_estimator=trust_grpo`` and ``reward.reward_manager.name=sophiavl``.

Importing this package is light: the command lines (``cli``, ``data``) and what they import before a
command runs never load torch or verl. Every other submodule needs verl, and verl must be imported
*before* it: verl's plugin loader imports our plugin, which imports those submodules, so a user whose
first import is ``from sophiavl_verl.trust_grpo import ...`` would otherwise meet a half-initialised
``trust_grpo`` inside the plugin (a circular import that verl swallows silently). :class:`_VerlFirst`
imports verl just before such a submodule is created and then uses the module verl's plugin loaded.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

__version__ = "0.1.0"

#: Submodules that do not need verl (the command lines and what they import before a command runs).
_WITHOUT_VERL = frozenset(
    {"annealing", "audit", "cli", "config", "data", "errors", "local_server", "outcome_reward_fn", "plots", "report",
     "rewards", "thinking_reward", "tiny_vl", "train_cpu"}
)


class _VerlFirst(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Import verl before the first of this package's verl-dependent submodules (see the module docstring)."""

    def __init__(self) -> None:
        self._loaded_by_verl: set[str] = set()
        self._loaders: dict[str, importlib.abc.Loader] = {}

    def find_spec(self, name, path, target=None):
        package, _, submodule = name.partition(".")
        if package != __name__ or not submodule or submodule.split(".")[0] in _WITHOUT_VERL or "verl" in sys.modules:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            self._loaders[name] = spec.loader
            spec.loader = self
        return spec

    def create_module(self, spec):
        import verl  # noqa: F401  (its plugin loader may import spec.name completely)

        module = sys.modules.get(spec.name)
        if module is None:
            return self._loaders[spec.name].create_module(spec)
        self._loaded_by_verl.add(spec.name)
        return module

    def exec_module(self, module) -> None:
        name = module.__spec__.name
        loader = self._loaders.pop(name)
        module.__spec__.loader = module.__loader__ = loader  # the module's own file loader from here on
        if name in self._loaded_by_verl:
            self._loaded_by_verl.discard(name)  # already executed by verl's plugin loader
            return
        loader.exec_module(module)


sys.meta_path.insert(0, _VerlFirst())
