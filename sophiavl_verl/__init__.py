"""sophiavl-verl: SophiaVL-R1 (thinking reward + Trust-GRPO + annealing) as a verl plugin.

``import verl`` loads :mod:`sophiavl_verl.plugin` through the ``verl.plugins`` entry point, which
registers ``algorithm.adv_estimator=trust_grpo`` and ``reward.reward_manager.name=sophiavl``.
"""

__version__ = "0.1.0"
