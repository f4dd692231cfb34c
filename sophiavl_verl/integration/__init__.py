"""Everything of sophiavl-verl that imports verl, in one subpackage.

    plugin.py          the ``verl.plugins`` entry point (``import verl`` runs it in every process)
    estimator.py       the registered ``trust_grpo`` advantage estimator (reward extra info -> Eq. 1-6 -> metrics)
    hooks.py           every place verl is touched (TOUCH_POINTS), the post-import hook and the guard (by interface)
    adapter.py         installs the trainer patches; why trust_grpo cannot run when they do not fit
    advantage.py       verl's compute_advantage given trust_grpo's inputs (shared by both trainer paths)
    trainer_v1.py      the v1 trainer's wrappers (reward extra info from TransferQueue, sessions, dumps)
    trainer_legacy.py  the legacy RayPPOTrainer's wrappers (its step, its metrics)
    backend_choice.py  whether this process uses the CPU backend (VERL_PLATFORM=cpu), without importing it
    validation.py      checks of a launch's config, run by verl's ``validate_config`` before Ray starts
    reward_manager.py  the ``sophiavl`` reward manager (R^o, R^t per response, during rollout)
    group_board.py     where a response waits for its group's outcomes (skip query policies)
    cpu_backend/       verl on a CPU-only machine (``VERL_PLATFORM=cpu`` only): smoke runs, CI, the quick start

How and where verl is touched: ``docs/verl_integration.md``.

verl is imported first, here: verl's plugin loader imports :mod:`.plugin`, which imports the modules
above, so whichever of them a program imports first, it gets them complete (not half-initialised
inside the plugin's own import).
"""

from __future__ import annotations

import verl  # noqa: F401  (first: see the module docstring)

from sophiavl_verl.integration.advantage import trainer_step

__all__ = ["trainer_step"]
