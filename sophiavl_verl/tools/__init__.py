"""The tools around the method, apart from it: command lines, data preparation, the audit, the CPU run.

    cli.py          ``sophiavl-verl audit|plot|data`` (one front, one error format)
    data/           data preparation: SophiaVL-R1 rows -> verl RL parquet, TRM SFT parquet: one module per
                    stage (inputs, rows, images, records, convert), prepare_rl / prepare_trm in __init__
    audit/          what Trust-GRPO makes of rollouts, with a real thinking reward model, on CPU: one module
                    per stage (settings, inputs, scoring, report, plots), run_audit in __init__
    training_log.py verl's metric logs read and plotted, behind ``plot``
    output.py       atomic file writes and PNG figures, shared by the audit and ``plot``
    local_server.py ``transformers serve`` for one local model (the embedded tiny TRM)
    tiny_vl.py      tiny Qwen2.5-VL models built on the spot (the embedded TRM, the CPU run's policy)
    train_cpu.py    the quick start's main job: the recipe on verl's real trainer, on CPU

None imports verl except ``train_cpu`` (which launches ``verl.trainer.main_ppo`` as a subprocess).
"""
