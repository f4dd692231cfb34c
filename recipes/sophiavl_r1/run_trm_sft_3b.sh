#!/usr/bin/env bash
# SFT of the thinking reward model (TRM): Qwen2.5-VL-3B-Instruct, 2 epochs on 4 GPUs (paper
# Sec. 4.1), with verl's SFT trainer on trm_sft_3b.yaml. Make the data first:
#   sophiavl-verl data trm <SophiaVL-R1-Thinking-156k files> -o "$TRM_TRAIN_FILES"
# The result, "$SAVE_DIR"/global_step_<last>/huggingface, is what reward.reward_model.model_path
# (TRM_MODEL of the run scripts, mode A) or `vllm serve` (mode B) loads.
#
# Usage: bash run_trm_sft_3b.sh [hydra overrides...]
# The variables below can be set in the environment; every argument goes to verl as a Hydra override.
set -euo pipefail

# ---- user-adjustable --------------------------------------------------------------------------
TRM_BASE_MODEL="${TRM_BASE_MODEL:-Qwen/Qwen2.5-VL-3B-Instruct}"  # local directory or Hugging Face id
TRM_TRAIN_FILES="${TRM_TRAIN_FILES:-$HOME/data/sophiavl_r1/trm_train.parquet}" # comma-separated list allowed
N_GPUS="${N_GPUS:-4}"                                            # the paper: 4
SAVE_DIR="${SAVE_DIR:-$PWD/checkpoints/sophiavl_r1/trm_sft_3b}"
TORCHRUN="${TORCHRUN:-torchrun}"
TRM_SFT_CONFIG="${TRM_SFT_CONFIG:-trm_sft_3b}"                   # recipe of this folder (trm_sft_tiny_cpu: CPU)
# ------------------------------------------------------------------------------------------------

# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
handle_help "$@"
model="$(require_model TRM_BASE_MODEL "$TRM_BASE_MODEL")"
train="$(require_files TRM_TRAIN_FILES "$TRM_TRAIN_FILES")"
save_dir="$(hydra_str "$SAVE_DIR")"
run_logged "$TORCHRUN" --standalone --nnodes=1 --nproc_per_node="$N_GPUS" \
    -m verl.trainer.sft_trainer \
    --config-path "$RECIPE_DIR" --config-name "$TRM_SFT_CONFIG" \
    model.path="$model" \
    data.train_files="$train" \
    trainer.n_gpus_per_node="$N_GPUS" \
    trainer.default_local_dir="$save_dir" \
    "$@"
