"""Everything of sophiavl-verl that imports verl, in one subpackage.

    plugin.py          the ``verl.plugins`` entry point (``import verl`` runs it in every process)
    estimator.py       the registered ``trust_grpo`` advantage estimator (reward extra info -> Eq. 1-6 -> metrics)
    adapter.py         the one module that touches verl internals: what verl 0.9.1 does not pass an estimator
    validation.py      checks of a launch's config, run by verl's ``validate_config`` before Ray starts
    reward_manager.py  the ``sophiavl`` reward manager (R^o, R^t per response, during rollout)
    group_board.py     where a response waits for its group's outcomes (skip query policies)
    cpu_backend/       verl on a CPU-only machine (``VERL_PLATFORM=cpu``): smoke runs, CI, the quick start

verl is imported first, here: verl's plugin loader imports :mod:`.plugin`, which imports the modules
above, so whichever of them a program imports first, it gets them complete (not half-initialised
inside the plugin's own import).
"""

from __future__ import annotations

import verl  # noqa: F401  (first: see the module docstring)

from sophiavl_verl.integration.adapter import trainer_step

__all__ = ["trainer_step"]
