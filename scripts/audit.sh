#!/usr/bin/env bash
# Quick start, command 1: install the CPU stack if needed, then run the main job
# (`sophiavl-verl audit`) on its embedded default. Extra arguments go to the audit.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=cpu_stack.sh
source "$(dirname "${BASH_SOURCE[0]}")/cpu_stack.sh"
cd "$root"
exec "$venv_bin/sophiavl-verl" audit "$@"
