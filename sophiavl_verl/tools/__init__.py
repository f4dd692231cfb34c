"""The tools around the method, apart from it: command lines, data preparation, the audit, the CPU runs.

    cli.py           ``sophiavl-verl audit|plot|data`` (one front, one error format)
    command.py       the one-line error format and exit status of every command line
    data/            data preparation: SophiaVL-R1 rows -> verl RL parquet, TRM SFT parquet (prepare_rl, prepare_trm)
    audit/           what Trust-GRPO makes of rollouts, with a real thinking reward model, on CPU (run_audit)
    training_log.py  verl's metric logs read and plotted, behind ``plot``
    output.py        atomic file writes and PNG figures, shared by the audit and ``plot``
    local_server.py  ``python -m sophiavl_verl.tools.local_server serve MODEL``: one local model on an OpenAI API
    tiny_vl.py       tiny Qwen2.5-VL models built on the spot (the embedded TRM, the CPU runs' policies)
    model_cache.py   each tiny model built once per recipe (fingerprint, marker, lock), then reused
    trm_sft.py       the embedded TRM, trained by the recipe's own SFT path (verl's SFT trainer) on CPU
    trm_ranking.py   how well such a TRM ranks responses it has not seen (held-out AUCs)
    response_kinds.py  the kind of reasoning of a response of the embedded sample (sound, fluent, terse, ...)
    main_ppo.py      ``verl.trainer.main_ppo`` launched as a subprocess, and the metrics its file logger wrote
    train_cpu.py     the quick start's main job: the recipe on verl's real trainer, on CPU
    study_cpu.py     the trust-weight study: the shipped presets, several seeds, the claims measured and drawn

None imports verl when it is imported; running a CPU stage does (verl's trainers run as subprocesses; serving a
local model goes through the CPU backend's ``transformers serve``).
"""
