#!/usr/bin/env bash
# The ablations of the paper's Table 3 (and the full method, and the reference-code preset).
#
# Usage: bash run_ablation.sh NAME [hydra overrides...]
#   grpo                Qwen2.5-VL-7B+GRPO: outcome reward only, no TRM       (ablation_grpo.yaml)
#   untrained_trm       SophiaVL-R1-wo-trained-TRM: TRM = UNTRAINED_TRM_MODEL (ablation_untrained_trm.yaml)
#   no_trust_no_anneal  SophiaVL-R1-wo-trust-and-annealing                    (ablation_no_trust_no_anneal.yaml)
#   no_trust            SophiaVL-R1-wo-trust                                  (ablation_no_trust.yaml)
#   full                SophiaVL-R1, the full method                          (sophiavl_r1_7b.yaml)
#   official            what the authors' released code does                  (official.yaml)
# The TRM is served by verl in the cluster (mode A, TRM_GPUS extra GPUs) unless TRM_BASE_URL
# names an external server (mode B); grpo needs no TRM. Each ablation has its own
# trainer.experiment_name, so checkpoints of different runs never mix.
# The variables below can be set in the environment; later arguments go to verl as Hydra overrides.
set -euo pipefail

# ---- user-adjustable --------------------------------------------------------------------------
ACTOR_MODEL="${ACTOR_MODEL:-Qwen/Qwen2.5-VL-7B-Instruct}"        # local directory or Hugging Face id
TRM_MODEL="${TRM_MODEL:-$HOME/models/sophiavl-trm-3b}"           # the SFT'd TRM
UNTRAINED_TRM_MODEL="${UNTRAINED_TRM_MODEL:-Qwen/Qwen2.5-VL-3B-Instruct}"
TRM_BASE_URL="${TRM_BASE_URL:-}"                                 # mode B: http://host:8000/v1
TRM_SERVED_NAME="${TRM_SERVED_NAME:-sophiavl-trm}"                # mode B: --served-model-name
TRAIN_FILES="${TRAIN_FILES:-$HOME/data/sophiavl_r1/train.parquet}" # comma-separated list allowed
VAL_FILES="${VAL_FILES:-$HOME/data/sophiavl_r1/val.parquet}"
N_GPUS_PER_NODE="${N_GPUS_PER_NODE:-8}"                          # policy GPUs (the paper: 8)
TRM_GPUS="${TRM_GPUS:-2}"                                        # mode A: TRM GPUs
TRM_NNODES=1
# ------------------------------------------------------------------------------------------------

# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
handle_help "$@"
[[ $# -ge 1 ]] || die "name an ablation: grpo | untrained_trm | no_trust_no_anneal | no_trust | full | official (--help)"
name="$1"
shift
case "$name" in
    grpo | no_trust_no_anneal | no_trust) config="ablation_$name" ;;
    untrained_trm) config=ablation_untrained_trm ;;
    full) config=sophiavl_r1_7b ;;
    official) config=official ;;
    *) die "unknown ablation '$name' (grpo | untrained_trm | no_trust_no_anneal | no_trust | full | official)" ;;
esac

TRM_OVERRIDES=()
if [[ "$name" == grpo ]]; then
    :
elif [[ -n "$TRM_BASE_URL" ]]; then
    trm_overrides external
elif [[ "$name" == untrained_trm ]]; then
    trm_overrides cluster UNTRAINED_TRM_MODEL
else
    trm_overrides cluster
fi
launch_ppo "$config" "${TRM_OVERRIDES[@]}" "$@"
