"""Every place the plugin touches verl, declared once, and the one mechanism and guard that apply them.

:data:`TOUCH_POINTS` lists each attribute of verl (and of what verl runs on) that the plugin wraps, replaces,
writes or calls, with the parameters it relies on, why, and which trainer path needs it. The patches go through
:func:`patch` and :func:`set_item`, which refuse an undeclared target (verl's own register functions and the
failure stand-ins of ``plugin.py`` write theirs directly); ``tests/test_verl_touch_points.py`` checks
that the attributes a process really changes are exactly the declared ones, and that the table in
``docs/verl_integration.md`` is :func:`touch_point_table`. The story behind each row is in that doc.

The guard is by interface, never by version string: before a group of touch points is applied (the patches of a
module when it is first imported, or the CPU backend's registrations), every point of the group must exist and
accept its listed parameters. On a mismatch the group is left as verl made it, the mismatch is logged at ERROR
and kept, and config validation then refuses a launch that needs it, naming the attribute and what it lacks.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import inspect
import logging
import sys
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

__all__ = [
    "CALL",
    "CPU_INSTALL",
    "CPU_PATHS",
    "FSDP_ENGINE",
    "PLUGIN_FAILURE",
    "PLUGIN_LOAD",
    "RAY_TRAINER",
    "REGISTER",
    "REGISTRY_WRITE",
    "SETTING",
    "STAND_IN_PATHS",
    "TESTED_VERL_VERSIONS",
    "TOUCH_POINTS",
    "TRAINER_PATHS",
    "V1_TRAINER",
    "V1_UTILS",
    "WRAP",
    "TouchPoint",
    "check",
    "mismatches",
    "on_import",
    "patch",
    "set_item",
    "touch_point_table",
    "when_imported",
]

logger = logging.getLogger(__name__)

#: The verl versions the touch points were written against; another one that fits them runs with a warning.
TESTED_VERL_VERSIONS = ("0.9.1",)

# Kinds of touch point.
WRAP = "wrap"  # replaced by a function that calls verl's original
REGISTER = "register"  # an entry added through verl's public registration function (``via``)
REGISTRY_WRITE = "registry write"  # an entry written into a mapping directly (verl has no register function)
SETTING = "setting"  # a default for one of verl's environment variables
CALL = "call"  # called or read, not changed: the guard checks it because a wrapper relies on it

# When a point is checked and applied, besides "when module X is first imported".
PLUGIN_LOAD = "plugin load"  # in every process: verl's decorators register, then adapter.install() checks and wraps
PLUGIN_FAILURE = "plugin failure"  # the stand-ins a broken install registers (plugin.py); unguarded
CPU_INSTALL = "CPU backend install"  # cpu_backend.install(), with VERL_PLATFORM=cpu only
_EVENTS = (PLUGIN_LOAD, PLUGIN_FAILURE, CPU_INSTALL)

_SHARED, _V1, _LEGACY, _CPU, _STAND_IN = "shared", "v1", "legacy", "cpu backend", "failure stand-in"
#: The trainer paths trust_grpo needs (a mismatch there refuses a trust_grpo launch).
TRAINER_PATHS = (_SHARED, _V1, _LEGACY)
CPU_PATHS = (_CPU,)
STAND_IN_PATHS = (_STAND_IN,)


@dataclass(frozen=True)
class TouchPoint:
    """One place the plugin touches verl.

    Attributes:
        module: The module that holds the attribute.
        attribute: A dotted path in ``module`` (``Class.method``, or a mapping for the registry kinds).
        kind: ``wrap``, ``register``, ``registry write``, ``setting`` or ``call``.
        path: Which part needs it: ``shared`` (both trainers), ``v1``, ``legacy``, ``cpu backend``,
            ``failure stand-in``.
        hook: When it is checked and applied: the module whose first import applies it, or one of
            :data:`PLUGIN_LOAD`, :data:`PLUGIN_FAILURE`, :data:`CPU_INSTALL`.
        why: What verl 0.9.1 lacks that makes it necessary.
        parameters: The parameters the plugin passes to it (or to ``via``); the guard checks they are accepted.
        key: The entry written, for the registry kinds and settings.
        via: The public function that writes the entry, for ``register``.
    """

    module: str
    attribute: str
    kind: str
    path: str
    hook: str
    why: str
    parameters: tuple[str, ...] = ()
    key: Any = None
    via: str | None = None

    @property
    def target(self) -> tuple[str, str, Any]:
        """What it changes: (module, attribute, key); ``key`` is None unless an entry is written."""
        return self.module, self.attribute, self.key

    @property
    def name(self) -> str:
        """``module.attribute``, with ``[key]`` for an entry."""
        suffix = "" if self.key is None else f"[{self.key!r}]"
        return f"{self.module}.{self.attribute}{suffix}"


_CORE_ALGOS = "verl.trainer.ppo.core_algos"
_VERL_CONFIG = "verl.utils.config"
#: The verl modules the trainer paths and the CPU backend patch when first imported (their ``PATCHES`` keys).
RAY_TRAINER = "verl.trainer.ppo.ray_trainer"
V1_UTILS = "verl.trainer.ppo.v1.utils"
V1_TRAINER = "verl.trainer.ppo.v1.trainer_base"
FSDP_ENGINE = "verl.workers.engine.fsdp.transformer_impl"
_ADVANTAGE = ("data", "adv_estimator", "gamma", "lam", "num_repeat", "norm_adv_by_std_in_grpo", "config")
_MULTI_TRAJECTORIES = ("data", "batch_keys", "adv_estimator", *_ADVANTAGE[2:])
_WHY_ADVANTAGE = ("verl calls an estimator without the reward extra info, the step, T or a metrics dict "
                  "(PR #7473): for trust_grpo they are passed")
_WHY_SESSIONS = "trust_grpo gets verl's GRPO treatment of multi-output sessions (each session counted once)"
_WHY_STAND_IN = "a broken install makes trust_grpo fail loudly (verl logs a plugin's import error at DEBUG only)"

#: Every place the plugin touches verl (and torch, for verl on CPU).
TOUCH_POINTS: tuple[TouchPoint, ...] = (
    TouchPoint(_CORE_ALGOS, "ADV_ESTIMATOR_REGISTRY", REGISTER, _SHARED, PLUGIN_LOAD,
               "the trust_grpo estimator (estimator.py)", key="trust_grpo", via="register_adv_est"),
    TouchPoint("verl.experimental.reward_loop.reward_manager.registry", "REWARD_MANAGER", REGISTER, _SHARED,
               PLUGIN_LOAD, "the sophiavl reward manager (reward_manager.py)", key="sophiavl", via="register"),
    TouchPoint(_VERL_CONFIG, "validate_config", WRAP, _SHARED, PLUGIN_LOAD,
               "main_ppo validates the config in the driver before Ray starts; the plugin's options are checked "
               "there too", ("config", "use_reference_policy", "use_critic")),
    TouchPoint(RAY_TRAINER, "compute_advantage", WRAP, _SHARED, RAY_TRAINER, _WHY_ADVANTAGE, _ADVANTAGE),
    TouchPoint(RAY_TRAINER, "compute_response_mask", CALL, _SHARED, RAY_TRAINER,
               "the compute_advantage wrapper fills response_mask as verl's function does", ("data",)),
    TouchPoint(_CORE_ALGOS, "get_adv_estimator_fn", CALL, _SHARED, RAY_TRAINER,
               "the compute_advantage wrapper looks up the registered trust_grpo estimator", ("name_or_enum",)),
    TouchPoint(_CORE_ALGOS, "AdvantageEstimator.GRPO", CALL, _V1, RAY_TRAINER,
               "verl's multi-output session branch runs for it; advantage.TRUST_GRPO_SESSIONS equals it ('grpo')"),
    TouchPoint(RAY_TRAINER, "compute_data_metrics", WRAP, _LEGACY, RAY_TRAINER,
               "the legacy trainer logs the metrics the estimator parked in meta_info", ("batch", "use_critic")),
    TouchPoint(RAY_TRAINER, "RayPPOTrainer.fit", WRAP, _LEGACY, RAY_TRAINER,
               "the legacy trainer's step and T reach the estimator", ("self",)),
    TouchPoint(V1_UTILS, "compute_advantage", WRAP, _V1, V1_UTILS,
               "v1's own binding of compute_advantage (imported from ray_trainer)", _ADVANTAGE),
    TouchPoint(V1_UTILS, "compute_advantage_for_multi_trajectories", WRAP, _V1, V1_UTILS, _WHY_SESSIONS,
               _MULTI_TRAJECTORIES),
    TouchPoint(V1_TRAINER, "compute_advantage_for_multi_trajectories", WRAP, _V1, V1_TRAINER,
               "the v1 trainer's own binding of that function", _MULTI_TRAJECTORIES),
    TouchPoint(V1_TRAINER, "PPOTrainer._compute_advantage", WRAP, _V1, V1_TRAINER,
               "v1 fetches no reward extra info for the estimator (PR #7497): fetched, and the step passed",
               ("self", "batch", "metrics")),
    TouchPoint(V1_TRAINER, "PPOTrainer._log_rollout_data", WRAP, _V1, V1_TRAINER,
               "its batch is what _dump_generations reads the reward extra info of", ("self", "batch")),
    TouchPoint(V1_TRAINER, "PPOTrainer._dump_generations", WRAP, _V1, V1_TRAINER,
               "v1 dumps training rollouts without R^o, R^t and the TRM status: they are added",
               ("self", "inputs", "outputs", "gts", "scores", "reward_extra_infos_dict", "dump_path")),
    TouchPoint("transfer_queue", "kv_batch_get", CALL, _V1, V1_TRAINER,
               "reads the samples' extra_fields as verl's v1 validation does", ("keys", "partition_id",
                                                                                  "select_fields")),
    TouchPoint("verl.utils.tensordict_utils", "unwrap_non_tensor_data", CALL, _V1, V1_TRAINER,
               "unwraps each sample's extra_fields", ("data",)),
    TouchPoint("verl.plugin.platform.platform_manager", "PlatformRegistry._platforms", REGISTER, _CPU, CPU_INSTALL,
               "the cpu platform (device cpu, backend gloo)", ("platform",), key="cpu",
               via="PlatformRegistry.register"),
    TouchPoint("verl.workers.rollout.replica", "RolloutReplicaRegistry._registry", REGISTER, _CPU, CPU_INSTALL,
               "the transformers rollout replica", ("name", "loader"), key="transformers",
               via="RolloutReplicaRegistry.register"),
    TouchPoint("verl.workers.rollout.base", "_ROLLOUT_REGISTRY", REGISTRY_WRITE, _CPU, CPU_INSTALL,
               "the worker-side transformers rollout: verl keeps it in a private dict with no register function",
               key=("transformers", "async")),
    TouchPoint("os", "environ", SETTING, _CPU, CPU_INSTALL,
               "verl registers its FSDP engines for cuda and npu only; verl's own override picks one, which reaches "
               "the device through the platform", key="VERL_ENGINE_DEVICE"),
    TouchPoint("torch.distributed", "init_process_group", WRAP, _CPU, CPU_INSTALL,
               "verl joins cpu:gloo with the platform's cpu:gloo, a duplicate torch rejects", ("backend",)),
    TouchPoint(FSDP_ENGINE, "CPUOffloadPolicy", WRAP, _CPU, FSDP_ENGINE,
               "verl pins the reference policy's offloaded memory, which needs an accelerator", ("pin_memory",)),
    TouchPoint(_CORE_ALGOS, "ADV_ESTIMATOR_REGISTRY", REGISTRY_WRITE, _STAND_IN, PLUGIN_FAILURE, _WHY_STAND_IN,
               key="trust_grpo"),
    TouchPoint(_VERL_CONFIG, "validate_config", WRAP, _STAND_IN, PLUGIN_FAILURE, _WHY_STAND_IN,
               ("config", "use_reference_policy", "use_critic")),
)

_found: list[tuple[TouchPoint, str]] = []  # every mismatch found so far, with its point


def _resolve(owner: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        owner = getattr(owner, part)
    return owner


def _mismatch(point: TouchPoint) -> str | None:
    """What ``point`` lacks in this process (a missing attribute, a parameter not accepted), or None."""
    try:
        module = importlib.import_module(point.module)  # already imported by the hooked module in practice
        target = _resolve(module, point.attribute)
        checked = _resolve(module, point.via) if point.via else target
    except (ImportError, AttributeError):
        return f"{point.name} is missing"
    if point.kind in (REGISTER, REGISTRY_WRITE, SETTING) and not isinstance(target, MutableMapping):
        return f"{point.module}.{point.attribute} is no longer a mapping ({type(target).__name__})"
    if not point.parameters:
        return None
    checked_name = f"{point.module}.{point.via or point.attribute}"
    try:
        signature = inspect.signature(checked)  # follows __wrapped__ to verl's own function
    except (TypeError, ValueError):
        return f"{checked_name} has no inspectable signature"
    lacking = [name for name in point.parameters if name not in signature.parameters]
    return f"{checked_name}{signature} lacks {', '.join(lacking)}" if lacking else None


def check(hook: str) -> list[str]:
    """The guard: what the touch points applied at ``hook`` lack here, each recorded and logged at ERROR."""
    found = []
    for point in TOUCH_POINTS:
        if point.hook == hook and (message := _mismatch(point)) is not None:
            found.append(message)
            if (point, message) not in _found:
                _found.append((point, message))
    if found:
        logger.error("sophiavl_verl: left %s as verl made it: %s", hook, "; ".join(found))
    return found


def mismatches(paths: tuple[str, ...]) -> list[str]:
    """The mismatches :func:`check` found so far in the touch points of ``paths`` (e.g. :data:`TRAINER_PATHS`)."""
    return [message for point, message in _found if point.path in paths]


def _declared(module: ModuleType, attribute: str, kind: tuple[str, ...], key: Any = None) -> TouchPoint:
    for point in TOUCH_POINTS:
        if point.target == (module.__name__, attribute, key) and point.kind in kind:
            return point
    raise LookupError(f"{module.__name__}.{attribute}[{key!r}] is not declared in sophiavl_verl's TOUCH_POINTS")


def patch(module: ModuleType, attribute: str, wrapper: Callable[[Any], Any]) -> None:
    """Replace a declared ``module.attribute`` by ``wrapper(original)`` (once: a wrapped one is left alone)."""
    _declared(module, attribute, (WRAP,))
    owner_path, _, name = attribute.rpartition(".")
    owner = _resolve(module, owner_path) if owner_path else module
    current = getattr(owner, name)
    if not hasattr(current, "__sophiavl_wrapped__"):
        replacement = wrapper(current)
        replacement.__sophiavl_wrapped__ = current
        setattr(owner, name, replacement)


def set_item(module: ModuleType, attribute: str, key: Any, value: Any, *, overwrite: bool = True) -> None:
    """Write ``value`` at ``key`` of the declared mapping ``module.attribute`` (kept if present, unless
    ``overwrite``)."""
    _declared(module, attribute, (REGISTRY_WRITE, SETTING), key)
    mapping = _resolve(module, attribute)
    if overwrite or key not in mapping:
        mapping[key] = value


def on_import(module_name: str, apply: Callable[[ModuleType], None]) -> None:
    """Run ``apply(module)`` once ``module_name`` is imported, if the points hooked on it pass the guard."""

    def guarded(module: ModuleType) -> None:
        if not check(module_name):
            apply(module)

    when_imported(module_name, guarded)


class _PostImportPatcher(importlib.abc.MetaPathFinder):
    """Runs a patch function right after a named module finishes executing."""

    def __init__(self) -> None:
        self._patches: dict[str, list[Callable[[ModuleType], None]]] = {}

    def add(self, module_name: str, patch: Callable[[ModuleType], None]) -> None:
        self._patches.setdefault(module_name, []).append(patch)

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in self._patches:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _PatchingLoader(spec.loader, self._patches.pop(fullname))
        return spec


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, loader: Any, patches: list[Callable[[ModuleType], None]]) -> None:
        self._loader = loader
        self._patches = patches

    def create_module(self, spec: Any) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        for apply in self._patches:
            apply(module)


_post_import_patcher: _PostImportPatcher | None = None


def when_imported(module_name: str, apply: Callable[[ModuleType], None]) -> None:
    """Run ``apply(module)`` once ``module_name`` is imported: now if it already is, else right after its import.

    Processes that never import the module pay nothing (rollout and reward workers never import a trainer).
    """
    global _post_import_patcher
    if module_name in sys.modules:
        apply(sys.modules[module_name])
        return
    if _post_import_patcher is None:
        _post_import_patcher = _PostImportPatcher()
        sys.meta_path.insert(0, _post_import_patcher)
    _post_import_patcher.add(module_name, apply)


def touch_point_table() -> str:
    """:data:`TOUCH_POINTS` as the markdown table of ``docs/verl_integration.md``."""
    rows = ["| verl attribute | kind | path | applied at | relies on | why |", "|---|---|---|---|---|---|"]
    for point in TOUCH_POINTS:
        kind = f"{point.kind} (`{point.via}`)" if point.via else point.kind
        hook = point.hook if point.hook in _EVENTS else f"import of `{point.hook}`"
        relies = ", ".join(f"`{name}`" for name in point.parameters)
        rows.append(f"| `{point.name}` | {kind} | {point.path} | {hook} | {relies} | {point.why} |")
    return "\n".join(rows) + "\n"
