"""The one place where the plugin adapts verl internals (tested on verl 0.9.1).

verl 0.9.1 calls a registered advantage estimator with ``token_level_rewards, response_mask,
config, index`` only. Trust-GRPO also needs each response's thinking reward (reward extra info),
the global step and T. This module carries them there, mirroring open upstream PR verl#7473
("pass non_tensor_batch to advantage estimators that can accept it") plus the step:

1. ``compute_advantage`` (bound in ``verl.trainer.ppo.ray_trainer`` and, by import, in
   ``verl.trainer.ppo.v1.utils``) is wrapped: for ``adv_estimator == "trust_grpo"`` it calls the
   estimator with ``non_tensor_batch`` (the per-sample reward extra info), ``global_step``,
   ``total_training_steps`` and a ``metrics`` dict. Every other estimator goes to verl's original
   function untouched.
2. The v1 trainer's ``PPOTrainer._compute_advantage`` fetches only uid, masks, scores and log-probs
   from TransferQueue; for trust_grpo the wrapper first fetches the samples' ``extra_fields`` (where
   the reward loop stores ``reward_extra_info``) for the same keys, then runs verl's method with the
   trainer's step and metrics dict in a context variable.
3. ``compute_advantage_for_multi_trajectories`` (v1) gives trust_grpo verl's GRPO treatment of
   multi-output sessions: it runs verl's own GRPO branch (only each session's final output takes part
   in the group statistics; its advantage goes to the session's other outputs), with trust_grpo as
   the estimator of that branch and the reward extra info riding in ``non_tensor_batch``.
4. The legacy ``RayPPOTrainer`` already merges reward extra info into ``batch.non_tensor_batch``;
   its ``fit`` is wrapped only to expose the trainer's step, and ``compute_data_metrics`` (called
   by that ``fit`` right after the advantage) to log the estimator's metrics.
5. ``verl.utils.config.validate_config`` (which ``main_ppo`` runs in the driver before Ray starts)
   is wrapped to validate the plugin's options.
6. The v1 trainer dumps training rollouts (``trainer.rollout_data_dir``) without the reward extra info
   that its validation dumps and the legacy trainer's dumps carry; for trust_grpo, ``_log_rollout_data``
   and ``_dump_generations`` are wrapped so that each row also has R^o, R^t and the TRM status.

The step comes from the trainer, not from the ``global_steps`` that v1 samples carry into the reward
loop: the legacy path has no per-sample step, and T (the run's total steps) and the metrics dict need
the trainer anyway. After PRs #7473 and #7497 (which put the reward extra info into the v1
``non_tensor_batch``), wrappers 1 and 2 reduce to passing the step, T and the metrics dict.

The trainer modules are patched when they are first imported (a post-import hook), so processes
that never import a trainer (rollout and reward workers) pay nothing. The guard is what the adapter
touches, not a version string: before patching a module, every attribute in :data:`REQUIREMENTS`
must exist and accept the listed parameters. On a mismatch that module is left unpatched and a
trust_grpo launch fails at config validation, naming what changed.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import importlib
import importlib.abc
import importlib.machinery
import inspect
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

import numpy as np
import verl

from sophiavl_verl.config import TRUST_GRPO, ConfigError, is_trust_grpo

__all__ = [
    "TESTED_VERL_VERSIONS",
    "REQUIREMENTS",
    "install",
    "require_trainer_adapter",
    "trainer_step",
    "adapter_missing_reason",
    "fetch_reward_extra_info",
    "when_imported",
]

logger = logging.getLogger(__name__)

TESTED_VERL_VERSIONS = ("0.9.1",)
#: Where the legacy path parks the estimator's metrics between compute_advantage and compute_data_metrics.
METRICS_META_KEY = "sophiavl_trust_grpo_metrics"

_COMPUTE_ADVANTAGE = ("data", "adv_estimator", "gamma", "lam", "num_repeat", "norm_adv_by_std_in_grpo", "config")
_MULTI_TRAJECTORIES = ("data", "batch_keys", "adv_estimator", *_COMPUTE_ADVANTAGE[2:])
#: Everything of verl the adapter touches, by module: (attribute path, parameters it must accept).
REQUIREMENTS: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "verl.utils.config": (("validate_config", ("config", "use_reference_policy", "use_critic")),),
    "verl.trainer.ppo.core_algos": (("get_adv_estimator_fn", ("name_or_enum",)), ("AdvantageEstimator.GRPO", ())),
    "verl.trainer.ppo.ray_trainer": (
        ("compute_advantage", _COMPUTE_ADVANTAGE),
        ("compute_response_mask", ("data",)),
        ("compute_data_metrics", ("batch", "use_critic")),
        ("RayPPOTrainer.fit", ("self",)),
    ),
    "verl.trainer.ppo.v1.utils": (
        ("compute_advantage", _COMPUTE_ADVANTAGE),
        ("compute_advantage_for_multi_trajectories", _MULTI_TRAJECTORIES),
    ),
    "verl.trainer.ppo.v1.trainer_base": (
        ("PPOTrainer._compute_advantage", ("self", "batch", "metrics")),
        ("PPOTrainer._log_rollout_data", ("self", "batch")),
        ("PPOTrainer._dump_generations",
         ("self", "inputs", "outputs", "gts", "scores", "reward_extra_infos_dict", "dump_path")),
        ("compute_advantage_for_multi_trajectories", _MULTI_TRAJECTORIES),
    ),
    "transfer_queue": (("kv_batch_get", ("keys", "partition_id", "select_fields")),),
    "verl.utils.tensordict_utils": (("unwrap_non_tensor_data", ("data",)),),
}

_installed = False
_mismatches: list[str] = []  # what of REQUIREMENTS this verl lacks


class TrainingProgress(Protocol):
    """What the estimator reads of a trainer; verl's trainers have both attributes."""

    global_steps: int
    total_training_steps: int


@dataclass
class _StepContext:
    progress: TrainingProgress
    reward_extra_info: dict[str, Any] | None = None  # None: read data.non_tensor_batch
    metrics: dict[str, Any] | None = None  # None: park them in data.meta_info
    grpo_runs_trust_grpo: bool = False  # inside verl's multi-trajectory GRPO branch, run for trust_grpo


_STEP_CONTEXT: contextvars.ContextVar[_StepContext | None] = contextvars.ContextVar("sophiavl_step", default=None)


@dataclass
class _FixedProgress:
    global_steps: int
    total_training_steps: int | None


@contextlib.contextmanager
def _step_context(context: _StepContext) -> Iterator[None]:
    token = _STEP_CONTEXT.set(context)
    try:
        yield
    finally:
        _STEP_CONTEXT.reset(token)


@contextlib.contextmanager
def trainer_step(
    global_step: int,
    total_training_steps: int | None = None,
    *,
    reward_extra_info: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> Iterator[None]:
    """Run verl's ``compute_advantage`` for trust_grpo outside verl's trainers (other loops, tests).

    Args:
        global_step: The training step the anneal schedule sees.
        total_training_steps: T when ``algorithm.trust_grpo.anneal_steps`` is null.
        reward_extra_info: Per-sample columns to use instead of ``data.non_tensor_batch``.
        metrics: A dict that receives the estimator's metrics (else ``data.meta_info``).
    """
    with _step_context(_StepContext(_FixedProgress(global_step, total_training_steps), reward_extra_info, metrics)):
        yield


def adapter_missing_reason() -> str:
    """Why trust_grpo cannot get its inputs in this process (for error messages)."""
    if _mismatches:
        return (
            f"sophiavl_verl's verl adapter does not fit verl {verl.__version__} (tested: "
            f"{', '.join(TESTED_VERL_VERSIONS)}), so it left verl unpatched and trust_grpo cannot run: "
            f"{'; '.join(_mismatches)}. Install a verl whose interfaces match, or a sophiavl-verl made for this one."
        )
    if not _installed:
        return "the sophiavl_verl plugin's verl adapter is not installed in this process (was verl imported?)"
    return (
        "it was called outside a verl trainer step; verl's trainers provide the step, other callers "
        "wrap the call in sophiavl_verl.integration.adapter.trainer_step(...)"
    )


def fetch_reward_extra_info(batch: Any) -> dict[str, list[Any]]:
    """The reward extra info of a v1 batch, as per-sample columns aligned with ``batch.keys``.

    Uses verl's TransferQueue client as the v1 trainer's validation does (``select_fields=["extra_fields"]``;
    each sample's ``extra_fields["reward_extra_info"]``), reading the field with ``list(...)`` and verl's
    ``unwrap_non_tensor_data``, which take every container a storage backend returns (a ``NonTensorStack``
    of ``NonTensorData``, a list of dicts). A key absent from a sample is ``None`` there (missing, never 0).
    """
    import transfer_queue as tq
    from verl.utils.tensordict_utils import unwrap_non_tensor_data

    data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["extra_fields"])
    rows = [
        (fields.get("reward_extra_info") or {}) if isinstance(fields, dict) else {}
        for fields in map(unwrap_non_tensor_data, list(data.pop("extra_fields")))
    ]
    keys = sorted({key for row in rows for key in row})
    return {key: np.array([row.get(key) for row in rows], dtype=object) for key in keys}


def _current_context() -> _StepContext:
    context = _STEP_CONTEXT.get()
    if context is None:
        raise RuntimeError(f"trust_grpo does not know the global step: {adapter_missing_reason()}")
    return context


def _wrap_compute_advantage(original: Callable[..., Any]) -> Callable[..., Any]:
    """verl's ``compute_advantage``, with trust_grpo called with its extra inputs (PR #7473 + step)."""

    @functools.wraps(original)
    def compute_advantage(
        data: Any,
        adv_estimator: Any,
        gamma: float = 1.0,
        lam: float = 1.0,
        num_repeat: int = 1,
        norm_adv_by_std_in_grpo: bool = True,
        config: Any = None,
    ) -> Any:
        context = _STEP_CONTEXT.get()
        name = getattr(adv_estimator, "value", adv_estimator)
        if name != TRUST_GRPO and not (name == "grpo" and context is not None and context.grpo_runs_trust_grpo):
            return original(
                data,
                adv_estimator,
                gamma=gamma,
                lam=lam,
                num_repeat=num_repeat,
                norm_adv_by_std_in_grpo=norm_adv_by_std_in_grpo,
                config=config,
            )
        from verl.trainer.ppo.core_algos import get_adv_estimator_fn
        from verl.trainer.ppo.ray_trainer import compute_response_mask

        context = _current_context()  # raises, saying why, outside a trainer step
        if "response_mask" not in data.batch.keys():
            data.batch["response_mask"] = compute_response_mask(data)
        metrics: dict[str, Any] = {}
        advantages, returns = get_adv_estimator_fn(TRUST_GRPO)(
            token_level_rewards=data.batch["token_level_rewards"],
            response_mask=data.batch["response_mask"],
            index=data.non_tensor_batch["uid"],
            config=config,
            non_tensor_batch=(
                data.non_tensor_batch if context.reward_extra_info is None else context.reward_extra_info
            ),
            global_step=context.progress.global_steps,
            total_training_steps=context.progress.total_training_steps,
            metrics=metrics,
            norm_adv_by_std_in_grpo=norm_adv_by_std_in_grpo,
        )
        data.batch["advantages"] = advantages
        data.batch["returns"] = returns
        if context.metrics is not None:
            context.metrics.update(metrics)
        else:
            data.meta_info[METRICS_META_KEY] = metrics
        return data

    compute_advantage.__sophiavl_wrapped__ = original  # type: ignore[attr-defined]
    return compute_advantage


def _wrap_v1_compute_advantage(original: Callable[..., Any]) -> Callable[..., Any]:
    """``PPOTrainer._compute_advantage`` that also fetches the reward extra info for trust_grpo."""

    @functools.wraps(original)
    def _compute_advantage(self: Any, batch: Any, metrics: dict) -> Any:
        if not is_trust_grpo(self.config.algorithm):
            return original(self, batch, metrics)
        with _step_context(_StepContext(self, fetch_reward_extra_info(batch), metrics)):
            return original(self, batch, metrics)

    _compute_advantage.__sophiavl_wrapped__ = original  # type: ignore[attr-defined]
    return _compute_advantage


_DUMP_BATCH: contextvars.ContextVar[Any] = contextvars.ContextVar("sophiavl_dump_batch", default=None)


def _wrap_v1_log_rollout_data(original: Callable[..., Any]) -> Callable[..., Any]:
    """``PPOTrainer._log_rollout_data`` with its batch visible to :func:`_wrap_v1_dump_generations`."""

    @functools.wraps(original)
    def _log_rollout_data(self: Any, batch: Any, *args: Any, **kwargs: Any) -> Any:
        if not is_trust_grpo(self.config.algorithm):
            return original(self, batch, *args, **kwargs)
        token = _DUMP_BATCH.set(batch)
        try:
            return original(self, batch, *args, **kwargs)
        finally:
            _DUMP_BATCH.reset(token)

    _log_rollout_data.__sophiavl_wrapped__ = original  # type: ignore[attr-defined]
    return _log_rollout_data


def _wrap_v1_dump_generations(original: Callable[..., Any]) -> Callable[..., Any]:
    """``PPOTrainer._dump_generations`` whose training-rollout rows also carry the reward extra info.

    verl 0.9.1's v1 trainer dumps validation samples with their reward extra info but training rollouts
    with uid, input, output, ground truth and score only; R^o, R^t and the TRM status of each response
    are what a user audits a Trust-GRPO run by, so they are added here (as the legacy trainer dumps them).
    """

    @functools.wraps(original)
    def _dump_generations(self: Any, inputs, outputs, gts, scores, reward_extra_infos_dict, dump_path) -> Any:
        batch = _DUMP_BATCH.get()
        if batch is not None:
            extra = fetch_reward_extra_info(batch)
            position = {key: i for i, key in enumerate(batch.keys)}
            order = [position[key] for key in reward_extra_infos_dict["uid"]]
            reward_extra_infos_dict = {
                **{name: [column[i] for i in order] for name, column in extra.items()},
                **reward_extra_infos_dict,
            }
        return original(self, inputs, outputs, gts, scores, reward_extra_infos_dict, dump_path)

    _dump_generations.__sophiavl_wrapped__ = original  # type: ignore[attr-defined]
    return _dump_generations


def _wrap_multi_trajectories(original: Callable[..., Any]) -> Callable[..., Any]:
    """v1's ``compute_advantage_for_multi_trajectories``, giving trust_grpo verl's GRPO session treatment.

    verl counts each ``{uid}_{session_id}`` once in GRPO (its final output), while the agent loop copies
    the reward extra info onto every output of a session. For trust_grpo this runs verl's own GRPO branch,
    whose ``compute_advantage`` call then reaches the trust_grpo estimator with the final outputs' rows.
    """

    @functools.wraps(original)
    def compute_advantage_for_multi_trajectories(
        data: Any, batch_keys: list[str], adv_estimator: Any, **kwargs: Any
    ) -> Any:
        if getattr(adv_estimator, "value", adv_estimator) != TRUST_GRPO:
            return original(data, batch_keys=batch_keys, adv_estimator=adv_estimator, **kwargs)
        from verl.trainer.ppo.core_algos import AdvantageEstimator

        context = _current_context()
        if context.reward_extra_info is not None:
            # Rows follow batch_keys; verl's select_idxs then keeps the extra info of the rows it keeps.
            data.non_tensor_batch.update({k: np.asarray(v, dtype=object) for k, v in context.reward_extra_info.items()})
        route = dataclasses.replace(context, reward_extra_info=None, grpo_runs_trust_grpo=True)
        with _step_context(route):
            return original(data, batch_keys=batch_keys, adv_estimator=AdvantageEstimator.GRPO, **kwargs)

    compute_advantage_for_multi_trajectories.__sophiavl_wrapped__ = original  # type: ignore[attr-defined]
    return compute_advantage_for_multi_trajectories


def _wrap_legacy_fit(original: Callable[..., Any]) -> Callable[..., Any]:
    """``RayPPOTrainer.fit`` run with the trainer exposed as the step source."""

    @functools.wraps(original)
    def fit(self: Any, *args: Any, **kwargs: Any) -> Any:
        with _step_context(_StepContext(self)):
            return original(self, *args, **kwargs)

    fit.__sophiavl_wrapped__ = original  # type: ignore[attr-defined]
    return fit


def _wrap_compute_data_metrics(original: Callable[..., Any]) -> Callable[..., Any]:
    """verl's ``compute_data_metrics`` plus the estimator metrics parked in ``batch.meta_info``."""

    @functools.wraps(original)
    def compute_data_metrics(batch: Any, use_critic: bool = True) -> dict[str, Any]:
        metrics = original(batch=batch, use_critic=use_critic)
        metrics.update(batch.meta_info.pop(METRICS_META_KEY, {}))
        return metrics

    compute_data_metrics.__sophiavl_wrapped__ = original  # type: ignore[attr-defined]
    return compute_data_metrics


def _wrap_validate_config(original: Callable[..., Any], check: Callable[[Any], None]) -> Callable[..., Any]:
    """verl's ``validate_config`` followed by the plugin's own ``check``."""

    @functools.wraps(original)
    def validate_config(config: Any, use_reference_policy: bool, use_critic: bool) -> None:
        original(config=config, use_reference_policy=use_reference_policy, use_critic=use_critic)
        check(config)

    validate_config.__sophiavl_wrapped__ = original  # type: ignore[attr-defined]
    return validate_config


def _patch_attr(owner: Any, name: str, wrapper: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    current = getattr(owner, name)
    if not hasattr(current, "__sophiavl_wrapped__"):
        setattr(owner, name, wrapper(current))


def _patch_ray_trainer(module: ModuleType) -> None:
    _patch_attr(module, "compute_advantage", _wrap_compute_advantage)
    _patch_attr(module, "compute_data_metrics", _wrap_compute_data_metrics)
    _patch_attr(module.RayPPOTrainer, "fit", _wrap_legacy_fit)


def _patch_v1_utils(module: ModuleType) -> None:
    _patch_attr(module, "compute_advantage", _wrap_compute_advantage)
    _patch_attr(module, "compute_advantage_for_multi_trajectories", _wrap_multi_trajectories)


def _patch_v1_trainer_base(module: ModuleType) -> None:
    _patch_attr(module.PPOTrainer, "_compute_advantage", _wrap_v1_compute_advantage)
    _patch_attr(module.PPOTrainer, "_log_rollout_data", _wrap_v1_log_rollout_data)
    _patch_attr(module.PPOTrainer, "_dump_generations", _wrap_v1_dump_generations)
    # Its own binding of the v1 utils function (patched already if v1.utils was imported through the hook).
    _patch_attr(module, "compute_advantage_for_multi_trajectories", _wrap_multi_trajectories)


#: module -> (its patch, the modules whose REQUIREMENTS the patched code also uses)
_TRAINER_PATCHES: dict[str, tuple[Callable[[ModuleType], None], tuple[str, ...]]] = {
    "verl.trainer.ppo.ray_trainer": (_patch_ray_trainer, ("verl.trainer.ppo.core_algos",)),
    "verl.trainer.ppo.v1.utils": (_patch_v1_utils, ("verl.trainer.ppo.core_algos",)),
    "verl.trainer.ppo.v1.trainer_base": (_patch_v1_trainer_base, ("transfer_queue", "verl.utils.tensordict_utils")),
}


def _mismatches_of(module: ModuleType) -> list[str]:
    """What of :data:`REQUIREMENTS` ``module`` lacks: a missing attribute or a parameter it no longer accepts."""
    found = []
    for path, parameters in REQUIREMENTS[module.__name__]:
        target: Any = module
        try:
            for part in path.split("."):
                target = getattr(target, part)
        except AttributeError:
            found.append(f"{module.__name__}.{path} is missing")
            continue
        if not parameters:
            continue
        try:
            accepted = inspect.signature(target).parameters  # follows __wrapped__ to verl's own function
        except (TypeError, ValueError):
            found.append(f"{module.__name__}.{path} has no inspectable signature")
            continue
        lacking = [name for name in parameters if name not in accepted]
        if lacking:
            found.append(f"{module.__name__}.{path}{inspect.signature(target)} lacks {', '.join(lacking)}")
    return found


def _guarded(patch: Callable[[ModuleType], None], uses: tuple[str, ...] = ()) -> Callable[[ModuleType], None]:
    """``patch``, applied only if the module and the modules it ``uses`` have all the adapter touches."""

    def apply(module: ModuleType) -> None:
        found = _mismatches_of(module)
        for name in uses:  # already imported by ``module`` itself
            found += _mismatches_of(importlib.import_module(name))
        if found:
            _mismatches.extend(m for m in found if m not in _mismatches)
            logger.error("sophiavl_verl: %s", adapter_missing_reason())
            return
        patch(module)

    return apply


class _PostImportPatcher(importlib.abc.MetaPathFinder):
    """Runs a patch function right after a named module finishes executing."""

    def __init__(self, patches: dict[str, Callable[[ModuleType], None]]) -> None:
        self._patches = dict(patches)

    def add(self, module_name: str, patch: Callable[[ModuleType], None]) -> None:
        """Also run ``patch`` after ``module_name`` is imported (after any patch already registered for it)."""
        previous = self._patches.get(module_name)
        self._patches[module_name] = patch if previous is None else (lambda module: (previous(module), patch(module)))

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in self._patches:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _PatchingLoader(spec.loader, self._patches.pop(fullname))
        return spec


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, loader: Any, patch: Callable[[ModuleType], None]) -> None:
        self._loader = loader
        self._patch = patch

    def create_module(self, spec: Any) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        self._patch(module)


def install(config_check: Callable[[Any], None]) -> bool:
    """Install the adapter in this process (idempotent). Returns whether it is installed.

    Only ``validate_config`` is patched now; each trainer module is checked against
    :data:`REQUIREMENTS` and patched when it is first imported.

    Args:
        config_check: The plugin's checks of a launch config
            (:func:`sophiavl_verl.integration.validation.validate_plugin_config`), run after verl's own
            ``validate_config`` in the driver, before Ray starts.
    """
    global _installed
    if _installed:
        return True
    import verl.utils.config as verl_config

    wrap = functools.partial(_wrap_validate_config, check=config_check)
    _guarded(lambda module: _patch_attr(module, "validate_config", wrap))(verl_config)
    if _mismatches:
        return False
    if verl.__version__ not in TESTED_VERL_VERSIONS:
        logger.warning(
            "sophiavl_verl: verl %s is untested (tested: %s); the interfaces the adapter touches are checked "
            "as each trainer module loads", verl.__version__, ", ".join(TESTED_VERL_VERSIONS),
        )
    for name, (patch, uses) in _TRAINER_PATCHES.items():
        when_imported(name, _guarded(patch, uses))
    _installed = True
    return True


_post_import_patcher: _PostImportPatcher | None = None


def when_imported(module_name: str, patch: Callable[[ModuleType], None]) -> None:
    """Run ``patch(module)`` once ``module_name`` is imported: now if it already is, else right after its import.

    Processes that never import the module pay nothing (rollout and reward workers never import a trainer).
    """
    global _post_import_patcher
    if module_name in sys.modules:
        patch(sys.modules[module_name])
        return
    if _post_import_patcher is None:
        _post_import_patcher = _PostImportPatcher({})
        sys.meta_path.insert(0, _post_import_patcher)
    _post_import_patcher.add(module_name, patch)


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
    if not _installed or _mismatches:
        raise ConfigError(adapter_missing_reason())
