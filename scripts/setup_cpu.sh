#!/usr/bin/env bash
# Installs the CPU stack of SPEC §4 into ./.venv (idempotent; a second run only checks).
#   torch 2.13.0 (CPU wheel) first, pinned by a constraints file so nothing pulls a CUDA build;
#   verl[verl-core]==0.9.1 (never the cpu/fsdp/vllm/sglang/megatron extras, never torchvision);
#   this package with its test, serving and plotting extras, editable.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SOPHIAVL_VENV:-$root/.venv}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating $venv"
  "$python" -m venv "$venv"
fi
pip() { "$venv/bin/python" -m pip --disable-pip-version-check -q "$@"; }

constraints="$venv/constraints.txt"
printf 'torch==2.13.0\n' > "$constraints"
export PIP_CONSTRAINT="$constraints"

if ! "$venv/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null; then
  echo "[setup] installing torch 2.13.0 (CPU)"
  pip install "torch==2.13.0"
fi
if ! "$venv/bin/python" -c "import verl, sys; sys.exit(verl.__version__ != '0.9.1')" 2>/dev/null; then
  echo "[setup] installing verl[verl-core]==0.9.1"
  pip install "verl[verl-core]==0.9.1"
fi
echo "[setup] installing sophiavl-verl (editable, test + serve + plot extras)"
pip install -e "${root}[test,serve,plot]"
if "$venv/bin/python" -c "import torchvision" 2>/dev/null; then
  echo "[setup] torchvision is installed; it breaks transformers on CPU (SPEC §4). Remove it." >&2
  exit 1
fi
"$venv/bin/python" -c "import torch, verl; print(f'[setup] ok: torch {torch.__version__}, verl {verl.__version__}')"
