#!/usr/bin/env bash
# SophiaVL-R1-7B with Trust-GRPO, hosting mode B: the thinking reward model (TRM) runs outside
# verl as an OpenAI-compatible server, started first, e.g. on other GPUs:
#   vllm serve /ckpt/trm_sft_3b/huggingface --port 8000 --served-model-name sophiavl-trm
# All N_GPUS_PER_NODE GPUs go to the policy. The script checks that TRM_BASE_URL/models answers
# (TRM_CHECK=0 skips it); an API key, if the server wants one, goes in $SOPHIAVL_TRM_API_KEY.
#
# Usage: bash run_sophiavl_r1_7b_external_trm.sh [hydra overrides...]
#   e.g. TRM_BASE_URL=http://10.0.0.5:8000/v1 bash run_sophiavl_r1_7b_external_trm.sh
# The variables below can be set in the environment; every argument goes to verl as a Hydra override.
set -euo pipefail

# ---- user-adjustable --------------------------------------------------------------------------
ACTOR_MODEL="${ACTOR_MODEL:-Qwen/Qwen2.5-VL-7B-Instruct}"        # local directory or Hugging Face id
TRM_BASE_URL="${TRM_BASE_URL:-http://127.0.0.1:8000/v1}"          # must be reachable from every node
TRM_SERVED_NAME="${TRM_SERVED_NAME:-sophiavl-trm}"                # vllm serve --served-model-name
TRAIN_FILES="${TRAIN_FILES:-$HOME/data/sophiavl_r1/train.parquet}" # comma-separated list allowed
VAL_FILES="${VAL_FILES:-$HOME/data/sophiavl_r1/val.parquet}"
N_GPUS_PER_NODE="${N_GPUS_PER_NODE:-8}"                          # policy GPUs (the paper: 8)
# ------------------------------------------------------------------------------------------------

# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
handle_help "$@"
trm_overrides external
launch_ppo sophiavl_r1_7b_external_trm "${TRM_OVERRIDES[@]}" "$@"
