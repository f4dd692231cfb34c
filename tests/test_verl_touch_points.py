"""Every place the plugin touches verl is declared once (``hooks.TOUCH_POINTS``), and the list cannot drift.

The drift test compares what verl's modules hold in a process without the plugin and in processes with it: the
attributes and registry entries that differ must be exactly the declared ones. The fault injections give the
plugin a verl whose touched interface changed and check that it is left unpatched and that validation names it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from sophiavl_verl.integration import hooks

#: Prints, as JSON, every function, class and mapping entry held by verl's modules (and by the non-verl modules
#: of the touch points), each by where its code is defined, after importing verl's trainer modules.
SNAPSHOT = """
import importlib, json, os, sys
from collections.abc import Mapping
from types import CodeType
{setup}
started_with = dict(os.environ)
import verl
args = json.loads(sys.argv[1])
for name in args["imports"]:
    importlib.import_module(name)


def origin(value):
    value = getattr(value, "__func__", value)  # classmethod, staticmethod
    code = getattr(value, "__code__", None) if callable(value) else None
    if isinstance(code, CodeType):
        return f"{{code.co_filename}}:{{code.co_firstlineno}}"
    return f"{{value.__module__}}.{{value.__qualname__}}" if isinstance(value, type) else None


state = {{}}


def scan(module, prefix, namespace):
    for attribute, value in list(namespace.items()):
        if origin(value) is not None:
            state[json.dumps([module, prefix + attribute, None])] = origin(value)
        if isinstance(value, Mapping) and not attribute.startswith("__"):
            for key, item in list(value.items()):
                state[json.dumps([module, prefix + attribute, repr(key)])] = origin(item) or type(item).__name__


modules = sorted(m for m in sys.modules if m.split(".")[0] == "verl" or m in args["also"])
for name in modules:
    scan(name, "", vars(sys.modules[name]))
    for value in list(vars(sys.modules[name]).values()):
        if isinstance(value, type) and value.__module__ == name:
            scan(name, value.__qualname__ + ".", dict(vars(value)))
for key, value in os.environ.items():
    if started_with.get(key) != value:
        state[json.dumps(["os", "environ", repr(key)])] = "str"
print(json.dumps({{"state": state, "modules": modules}}))
"""

_TRAINER_MODULES = ["verl.trainer.ppo.ray_trainer", "verl.trainer.ppo.v1.trainer_base",
                    "verl.workers.engine.fsdp.transformer_impl"]
_NOT_VERL = sorted({p.module for p in hooks.TOUCH_POINTS if p.module.split(".")[0] not in ("verl", "os")})


def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without verl's ``VERL_*`` settings, plus ``extra``."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("VERL_")}, **extra}


def _snapshot(imports: list[str], setup: str = "", **env: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", SNAPSHOT.format(setup=setup), json.dumps({"imports": imports, "also": _NOT_VERL})],
        capture_output=True, text=True, timeout=600, env=_clean_env(**env),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


def _changed(before: dict, after: dict) -> set[tuple]:
    """(module, attribute, repr(key) or None) of what differs; only in modules both processes imported."""
    keys = {k for k in {*before["state"], *after["state"]} if json.loads(k)[0] in {*after["modules"], "os",
                                                                                    *_NOT_VERL}}
    return {tuple(json.loads(k)) for k in keys if before["state"].get(k) != after["state"].get(k)}


def _declared(points) -> set[tuple]:
    return {(p.module, p.attribute, None if p.key is None else repr(p.key)) for p in points if p.kind != hooks.CALL}


@pytest.fixture(scope="module")
def snapshots() -> dict[str, dict]:
    """A process with the plugin on the cpu platform, one whose plugin fails to load, and verl alone."""
    taken = {
        "plugin": _snapshot(_TRAINER_MODULES, VERL_PLATFORM="cpu"),
        # The same injected import failure as test_verl_plugin.py's broken install.
        "broken": _snapshot(_TRAINER_MODULES, 'sys.modules["sophiavl_verl.thinking_reward"] = None'),
    }
    imports = sorted({*taken["plugin"]["modules"], *taken["broken"]["modules"]})
    # Plugins are loaded (verl binds its entry-point reader then), but none is allowed; verl alone knows no cpu
    # platform, so it runs on its default one (which changes none of the functions, classes or registries).
    taken["verl"] = _snapshot(imports, VERL_USE_EXTERNAL_PLUGINS="no_such_plugin")
    return taken


def test_what_the_plugin_changes_in_verl_is_exactly_the_declared_touch_points(snapshots):
    expected = _declared(p for p in hooks.TOUCH_POINTS if p.path not in hooks.STAND_IN_PATHS)
    assert _changed(snapshots["verl"], snapshots["plugin"]) == expected


def test_what_a_broken_install_changes_is_exactly_the_declared_stand_ins(snapshots):
    expected = _declared(p for p in hooks.TOUCH_POINTS if p.path in hooks.STAND_IN_PATHS)
    assert _changed(snapshots["verl"], snapshots["broken"]) == expected


def test_every_touch_point_is_declared_once_with_a_known_kind_path_and_hook():
    targets = [(p.target, p.path) for p in hooks.TOUCH_POINTS]
    assert len(targets) == len(set(targets))
    kinds = {hooks.WRAP, hooks.REGISTER, hooks.REGISTRY_WRITE, hooks.SETTING, hooks.CALL}
    for point in hooks.TOUCH_POINTS:
        assert point.kind in kinds and point.why, point
        assert point.path in (*hooks.TRAINER_PATHS, *hooks.CPU_PATHS, *hooks.STAND_IN_PATHS), point
        assert (point.key is not None) == (point.kind in (hooks.REGISTER, hooks.REGISTRY_WRITE, hooks.SETTING)), point
        assert (point.via is not None) == (point.kind == hooks.REGISTER), point


def test_this_verl_fits_every_guarded_touch_point():
    for hook in {p.hook for p in hooks.TOUCH_POINTS} - {hooks.PLUGIN_FAILURE}:
        assert hooks.check(hook) == [], hook


def test_an_undeclared_patch_is_refused():
    import verl.trainer.ppo.core_algos as core_algos

    with pytest.raises(LookupError, match="compute_grpo_outcome_advantage.* is not declared"):
        hooks.patch(core_algos, "compute_grpo_outcome_advantage", lambda original: original)


# Fault injection: verl's RolloutReplicaRegistry.register no longer takes a loader.
CPU_FAULT_PROBE = """
from verl.workers.rollout.replica import RolloutReplicaRegistry
RolloutReplicaRegistry.register = classmethod(lambda cls, name: None)
import sophiavl_verl.integration.plugin
from omegaconf import OmegaConf
from verl.plugin.platform import PlatformRegistry
from sophiavl_verl.integration import cpu_backend
print("REGISTERED:", "cpu" in PlatformRegistry.registered_names())
try:
    cpu_backend.require_registered(OmegaConf.create({"actor_rollout_ref": {"rollout": {"name": "transformers"}}}))
except Exception as e:
    print("ERROR:", type(e).__name__, e)
"""


def test_fault_injection_a_cpu_touch_point_that_changed_leaves_verl_unpatched_and_fails_validation():
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CPU_FAULT_PROBE)], capture_output=True, text=True, timeout=300,
        env=_clean_env(VERL_PLATFORM="cpu", VERL_USE_EXTERNAL_PLUGINS="none"),
    )
    missing = "verl.workers.rollout.replica.RolloutReplicaRegistry.register(name) lacks loader"
    assert "REGISTERED: False" in result.stdout, result.stdout + result.stderr
    assert "ERROR: ConfigError VERL_PLATFORM=cpu but sophiavl_verl's CPU backend does not fit" in result.stdout
    assert missing in result.stdout and missing in result.stderr  # refused at validation, logged at ERROR
