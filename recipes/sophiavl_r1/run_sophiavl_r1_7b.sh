#!/usr/bin/env bash
# SophiaVL-R1-7B with Trust-GRPO, hosting mode A: verl serves the thinking reward model (TRM) with
# vLLM on TRM_GPUS GPUs of its own, next to the N_GPUS_PER_NODE policy GPUs (the Ray cluster or
# machine needs both: 8 + 2 by default; on a single 8-GPU machine use N_GPUS_PER_NODE=4 TRM_GPUS=4
# or hosting mode B, run_sophiavl_r1_7b_external_trm.sh).
#
# Usage: bash run_sophiavl_r1_7b.sh [hydra overrides...]
#   e.g. TRM_MODEL=/ckpt/trm_sft_3b/huggingface bash run_sophiavl_r1_7b.sh trainer.save_freq=50
# The variables below can be set in the environment; every argument goes to verl as a Hydra override.
set -euo pipefail

# ---- user-adjustable --------------------------------------------------------------------------
ACTOR_MODEL="${ACTOR_MODEL:-Qwen/Qwen2.5-VL-7B-Instruct}"        # local directory or Hugging Face id
TRM_MODEL="${TRM_MODEL:-$HOME/models/sophiavl-trm-3b}"           # the SFT'd TRM (run_trm_sft_3b.sh)
TRAIN_FILES="${TRAIN_FILES:-$HOME/data/sophiavl_r1/train.parquet}" # comma-separated list allowed
VAL_FILES="${VAL_FILES:-$HOME/data/sophiavl_r1/val.parquet}"
N_GPUS_PER_NODE="${N_GPUS_PER_NODE:-8}"                          # policy GPUs (the paper: 8)
TRM_GPUS="${TRM_GPUS:-2}"                                        # TRM GPUs, one vLLM replica each
TRM_NNODES=1
# ------------------------------------------------------------------------------------------------

# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
handle_help "$@"
trm_overrides cluster
launch_ppo sophiavl_r1_7b "${TRM_OVERRIDES[@]}" "$@"
