#!/usr/bin/env bash
# SophiaVL-R1-7B with Trust-GRPO on a multi-node Ray cluster.
#   1. head node:        ray start --head --port=6379 --num-gpus=8
#   2. every other node: ray start --address=<head ip>:6379 --num-gpus=8
#   3. head node:        NNODES=2 bash recipes/sophiavl_r1/run_multinode.sh [hydra overrides...]
# The policy takes NNODES x N_GPUS_PER_NODE GPUs (trainer.nnodes / trainer.n_gpus_per_node; the
# 128 trajectories of a step must divide evenly among them). Hosting mode A (default) adds a TRM
# pool of TRM_NNODES x TRM_GPUS GPUs, so the cluster needs that many more; with TRM_BASE_URL set,
# mode B uses that external server instead. Models and data must be at the same paths on every
# node (a shared filesystem), and the script must see a running cluster (RAY_CHECK=0 skips that).
#
# Usage: bash run_multinode.sh [hydra overrides...]
# The variables below can be set in the environment; every argument goes to verl as a Hydra override.
set -euo pipefail

# ---- user-adjustable --------------------------------------------------------------------------
ACTOR_MODEL="${ACTOR_MODEL:-Qwen/Qwen2.5-VL-7B-Instruct}"        # local directory or Hugging Face id
TRM_MODEL="${TRM_MODEL:-$HOME/models/sophiavl-trm-3b}"           # mode A: the SFT'd TRM
TRM_BASE_URL="${TRM_BASE_URL:-}"                                 # mode B: http://host:8000/v1
TRM_SERVED_NAME="${TRM_SERVED_NAME:-sophiavl-trm}"                # mode B: --served-model-name
TRAIN_FILES="${TRAIN_FILES:-$HOME/data/sophiavl_r1/train.parquet}" # comma-separated list allowed
VAL_FILES="${VAL_FILES:-$HOME/data/sophiavl_r1/val.parquet}"
NNODES="${NNODES:-2}"                                            # policy nodes
N_GPUS_PER_NODE="${N_GPUS_PER_NODE:-8}"
TRM_NNODES="${TRM_NNODES:-1}"                                    # mode A: TRM pool nodes
TRM_GPUS="${TRM_GPUS:-2}"                                        # mode A: TRM GPUs per node
export RAY_ADDRESS="${RAY_ADDRESS:-auto}"                        # verl joins this running cluster
# ------------------------------------------------------------------------------------------------

# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
handle_help "$@"
if [[ -n "$TRM_BASE_URL" ]]; then
    config=sophiavl_r1_7b_external_trm
    trm_overrides external
else
    config=sophiavl_r1_7b
    trm_overrides cluster
fi
if [[ "${RAY_CHECK:-1}" != 0 ]]; then
    command -v ray > /dev/null || die "the ray command is not on PATH; activate verl's environment"
    ray status > /dev/null 2>&1 ||
        die "no Ray cluster at RAY_ADDRESS=$RAY_ADDRESS; start it first (see the top of this script) or set RAY_CHECK=0"
fi
launch_ppo "$config" "${TRM_OVERRIDES[@]}" "$@"
