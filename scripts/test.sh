#!/usr/bin/env bash
# Quick start, command 2: install the CPU stack if needed, lint (ruff), then run the whole test suite.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=cpu_stack.sh
source "$(dirname "${BASH_SOURCE[0]}")/cpu_stack.sh"
cd "$root"
"$venv_bin/ruff" check "$root"
exec "$venv_bin/python" -m pytest tests "$@"
