#!/usr/bin/env bash
# Quick start, command 1 (the main job): the SophiaVL-R1 recipe on verl's own trainer, on this CPU machine.
#   bash scripts/train_cpu.sh [--out DIR]      (default DIR: ./train_cpu_out; --help lists the options)
# Installs the CPU stack if needed (scripts/setup_cpu.sh), then runs sophiavl_verl.tools.train_cpu: data prep, a tiny
# policy, the embedded thinking reward model served on 127.0.0.1, `python -m verl.trainer.main_ppo` with
# trust_grpo (2 steps, checkpoint, resume to step 3), then the audit and plots of the run. A smoke run on the
# CPU backend (VERL_PLATFORM=cpu), not a training setup.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_cpu.sh" >&2
exec "${SOPHIAVL_VENV:-$root/.venv}/bin/python" -m sophiavl_verl.tools.train_cpu "$@"
