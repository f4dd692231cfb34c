#!/usr/bin/env bash
# Quick start, command 1 (the main job): the SophiaVL-R1 recipe on verl's own trainer, on this CPU machine.
#   bash scripts/train_cpu.sh [--out DIR]      (default DIR: ./train_cpu_out; --help lists the options)
# Installs the CPU stack if needed (scripts/setup_cpu.sh), then runs sophiavl_verl.tools.train_cpu: data prep, the
# thinking reward model trained by the recipe's SFT path (run_trm_sft_3b.sh), a tiny policy,
# `python -m verl.trainer.main_ppo` with trust_grpo and the TRM in hosting mode A (2 steps, checkpoint, resume to
# step 3; --trm-hosting B serves it beside the run), then the audit and plots of the run; DIR/run.json says what
# ran. A smoke run on the CPU backend (VERL_PLATFORM=cpu), not a training setup.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=cpu_stack.sh
source "$(dirname "${BASH_SOURCE[0]}")/cpu_stack.sh" >&2
exec "$venv_bin/python" -m sophiavl_verl.tools.train_cpu "$@"
