"""The tools around the method, apart from it: command lines, data preparation, the audit, the CPU run.

    cli.py          ``sophiavl-verl audit|plot|data`` (one front, one error format)
    data.py         data preparation: SophiaVL-R1 rows -> verl RL parquet, TRM SFT parquet
    audit.py        what Trust-GRPO makes of rollouts, with a real thinking reward model, on CPU
    report.py       the audit's report (report.json, report.md)
    plots.py        the audit's plots and the training-log reader behind ``plot``
    local_server.py ``transformers serve`` for one local model (the embedded tiny TRM)
    tiny_vl.py      tiny Qwen2.5-VL models built on the spot (the embedded TRM, the CPU run's policy)
    train_cpu.py    the quick start's main job: the recipe on verl's real trainer, on CPU

None imports verl except ``train_cpu`` (which launches ``verl.trainer.main_ppo`` as a subprocess).
"""
