# Sourced by the scripts that run on the CPU stack: installs it if needed (scripts/setup_cpu.sh; its output goes
# where the `source` line sends it), then sets root (the repository) and venv_bin (the stack's bin folder,
# under SOPHIAVL_VENV if set).
# shellcheck shell=bash disable=SC2034  # root and venv_bin are read by the sourcing script
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv_bin="${SOPHIAVL_VENV:-$root/.venv}/bin"
bash "$root/scripts/setup_cpu.sh"
