#!/usr/bin/env bash
# Quick start, command 1: install the CPU stack if needed, then run the main job
# (`sophiavl-verl audit`) on its embedded default. Extra arguments go to the audit.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_cpu.sh"
cd "$root"
exec "${SOPHIAVL_VENV:-$root/.venv}/bin/sophiavl-verl" audit "$@"
