"""sophiavl-verl: SophiaVL-R1 (thinking reward + Trust-GRPO + annealing) as a verl plugin.

``import verl`` loads :mod:`sophiavl_verl.plugin` through the ``verl.plugins`` entry point, which
registers ``algorithm.adv_estimator=trust_grpo`` and ``reward.reward_manager.name=sophiavl``.
"""

# Importing verl first lets its plugin loader register our modules in one, fully ordered pass, even
# when a user's first import is a submodule (``from sophiavl_verl.trust_grpo import ...``).
import verl  # noqa: F401

__version__ = "0.1.0"
