#!/usr/bin/env bash
# Quick start, command 2: install the CPU stack if needed, lint (ruff), then run the whole test suite.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_cpu.sh"
cd "$root"
"${SOPHIAVL_VENV:-$root/.venv}/bin/ruff" check "$root"
exec "${SOPHIAVL_VENV:-$root/.venv}/bin/python" -m pytest tests "$@"
