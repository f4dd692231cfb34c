#!/usr/bin/env bash
# The trust-weight study: Trust-GRPO against GRPO and its ablations (the paper's Table 3 in miniature), real
# `python -m verl.trainer.main_ppo` runs of the shipped presets on this CPU machine, with a hackable and an honest
# thinking reward model, several seeds each.
#   bash scripts/study_cpu.sh [--out DIR] [--quick]    (default DIR: ./study_cpu_out; an interrupted study resumes)
# Writes DIR/study.json, DIR/study.md and one figure per claim; docs/experiments.md reports the full run.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=cpu_stack.sh
source "$(dirname "${BASH_SOURCE[0]}")/cpu_stack.sh" >&2
exec "$venv_bin/python" -m sophiavl_verl.tools.study_cpu "$@"
