"""Installs the plugin's patches of verl's trainers, and says why trust_grpo cannot run when they do not fit.

verl 0.9.1 calls a registered advantage estimator with ``token_level_rewards, response_mask, config, index``
only; Trust-GRPO also needs each response's thinking reward (reward extra info), the global step and T.
:mod:`.advantage` carries them to the estimator (the part both trainers share), :mod:`.trainer_v1` and
:mod:`.trainer_legacy` hold each trainer path's wrappers, and :mod:`.hooks` declares every place verl is
touched and guards it by interface. The whole story, with the table of touch points:
``docs/verl_integration.md``.

:func:`install` wraps ``validate_config`` now and registers the trainer patches to run when each trainer
module is first imported, so processes that never import a trainer (rollout and reward workers) pay nothing.
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Callable
from types import ModuleType
from typing import Any

import verl

from sophiavl_verl.config import ConfigError
from sophiavl_verl.integration import hooks, trainer_legacy, trainer_v1
from sophiavl_verl.integration.advantage import OUTSIDE_TRAINER_STEP

__all__ = ["adapter_missing_reason", "install", "is_installed", "require_trainer_adapter"]

logger = logging.getLogger(__name__)

_TRAINER_PATCHES: dict[str, Callable[[ModuleType], None]] = {**trainer_legacy.PATCHES, **trainer_v1.PATCHES}
_installed = False


def adapter_missing_reason() -> str:
    """Why trust_grpo cannot get its inputs in this process (for error messages)."""
    found = hooks.mismatches(hooks.TRAINER_PATHS)
    if found:
        return (
            f"sophiavl_verl's verl adapter does not fit verl {verl.__version__} (tested: "
            f"{', '.join(hooks.TESTED_VERL_VERSIONS)}), so it left verl unpatched and trust_grpo cannot run: "
            f"{'; '.join(found)}. Install a verl whose interfaces match, or a sophiavl-verl made for this one."
        )
    if not _installed:
        return "the sophiavl_verl plugin's verl adapter is not installed in this process (was verl imported?)"
    return OUTSIDE_TRAINER_STEP


def _wrap_validate_config(original: Callable[..., Any], check: Callable[[Any], None]) -> Callable[..., Any]:
    """verl's ``validate_config`` followed by the plugin's own ``check``."""

    @functools.wraps(original)
    def validate_config(config: Any, use_reference_policy: bool, use_critic: bool) -> None:
        original(config=config, use_reference_policy=use_reference_policy, use_critic=use_critic)
        check(config)

    return validate_config


def install(config_check: Callable[[Any], None]) -> bool:
    """Install the adapter in this process (idempotent). Returns whether it is installed.

    Only ``validate_config`` is patched now; each trainer module is guarded and patched when it is first
    imported.

    Args:
        config_check: The plugin's checks of a launch config
            (:func:`sophiavl_verl.integration.validation.validate_plugin_config`), run after verl's own
            ``validate_config`` in the driver, before Ray starts.
    """
    global _installed
    if _installed:
        return True
    if hooks.check(hooks.PLUGIN_LOAD):
        return False
    wrap = functools.partial(_wrap_validate_config, check=config_check)
    hooks.patch(importlib.import_module("verl.utils.config"), "validate_config", wrap)
    if verl.__version__ not in hooks.TESTED_VERL_VERSIONS:
        logger.warning(
            "sophiavl_verl: verl %s is untested (tested: %s); the interfaces the adapter touches are checked "
            "as each trainer module loads", verl.__version__, ", ".join(hooks.TESTED_VERL_VERSIONS),
        )
    for name, patch in _TRAINER_PATCHES.items():
        hooks.on_import(name, patch)
    _installed = True
    return True


def is_installed() -> bool:
    """Whether :func:`install` ran and found ``validate_config`` as the adapter expects."""
    return _installed


def require_trainer_adapter() -> None:
    """Import verl's trainer modules (patching them) and refuse if any lacks what the adapter touches.

    Called by config validation for trust_grpo, in the driver before Ray starts, so a verl whose
    interfaces changed fails in seconds, naming what changed.

    Raises:
        ConfigError: When the adapter is not installed or does not fit this verl.
    """
    if _installed:
        for name in _TRAINER_PATCHES:
            importlib.import_module(name)
    if not _installed or hooks.mismatches(hooks.TRAINER_PATHS):
        raise ConfigError(adapter_missing_reason())
