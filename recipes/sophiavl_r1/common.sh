# shellcheck shell=bash
# Helpers shared by the run_*.sh scripts of this folder; sourced, never run on its own.
# Each script sets its variables first, then sources this file.

# Helpers print their result, so they run in $(...): let a failure there stop the script too.
shopt -s inherit_errexit
RECIPE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python3}"

die() {
    echo "error: $*" >&2
    exit 1
}

# handle_help "$@": with -h or --help anywhere, print the calling script's header comment and exit 0.
handle_help() {
    local arg
    for arg in "$@"; do
        if [[ "$arg" == "-h" || "$arg" == "--help" ]]; then
            sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p;}' "$0"
            exit 0
        fi
    done
}

# hydra_str VALUE: VALUE as a single-quoted Hydra string (safe for spaces, commas, '=').
hydra_str() {
    [[ "$1" != *"'"* && "$1" != *\\* ]] || die "quotes and backslashes are not supported in paths: $1"
    printf "'%s'" "$1"
}

# absolute PATH: PATH (which exists) made absolute, so that Ray workers with another cwd find it too.
absolute() {
    if [[ -d "$1" ]]; then (cd "$1" && pwd); else echo "$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"; fi
}

# require_files NAME VALUE: VALUE is one path or a comma-separated list; every one must exist.
# Prints the Hydra list of the absolute paths.
require_files() {
    local name="$1" path quoted items=()
    local -a paths
    IFS=',' read -r -a paths <<< "$2"
    [[ ${#paths[@]} -gt 0 ]] || die "$name is empty"
    for path in "${paths[@]}"; do
        [[ -e "$path" ]] || die "$name: no such file: '$path' (set $name=/path/to/file.parquet; see README.md, data preparation)"
        path="$(absolute "$path")"
        quoted="$(hydra_str "$path")"
        items+=("$quoted")
    done
    local IFS=','
    printf '[%s]' "${items[*]}"
}

# require_model NAME VALUE: a local model directory (printed absolute, as a Hydra string), or a
# Hugging Face id (org/name) that each node downloads.
require_model() {
    local name="$1" value="$2"
    if [[ -d "$value" ]]; then
        value="$(absolute "$value")"
        hydra_str "$value"
        return
    fi
    [[ "$value" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$ ]] ||
        die "$name: no such model directory: '$value' (set $name=/path/to/model)"
    echo "note: $name=$value is not a local directory; using it as a Hugging Face model id" >&2
    hydra_str "$value"
}

# check_trm_endpoint URL: the external TRM server answers GET URL/models (skip with TRM_CHECK=0).
check_trm_endpoint() {
    local url="${1%/}" key_env="${TRM_API_KEY_ENV:-SOPHIAVL_TRM_API_KEY}"
    [[ "$url" =~ ^https?:// ]] || die "TRM_BASE_URL must look like http://host:8000/v1, got '$1'"
    [[ "${TRM_CHECK:-1}" != 0 ]] || return 0
    if ! command -v curl > /dev/null; then
        echo "warning: curl not found; not checking that $url answers" >&2
        return 0
    fi
    local -a auth=()
    [[ -z "${!key_env:-}" ]] || auth=(-H "Authorization: Bearer ${!key_env}")
    curl -sf -m 10 "${auth[@]}" "$url/models" > /dev/null ||
        die "no OpenAI-compatible server answers at $url/models; start the TRM first (README.md, mode B) or set TRM_CHECK=0"
}

# shellcheck disable=SC2034  # TRM_OVERRIDES is the function's output, read by the calling script
# trm_overrides MODE [MODEL_VAR]: fills the array TRM_OVERRIDES for hosting mode "cluster" (A: the
# model in MODEL_VAR, default TRM_MODEL, served by verl on TRM_NNODES x TRM_GPUS GPUs) or "external"
# (B: TRM_BASE_URL serving TRM_SERVED_NAME).
trm_overrides() {
    if [[ "$1" == cluster ]]; then
        local var="${2:-TRM_MODEL}" model
        model="$(require_model "$var" "${!var}")"
        TRM_OVERRIDES=(
            reward.reward_model.enable=true
            reward.reward_model.enable_resource_pool=true
            reward.reward_model.model_path="$model"
            reward.reward_model.n_gpus_per_node="${TRM_GPUS:-2}"
            reward.reward_model.nnodes="${TRM_NNODES:-1}"
            reward.reward_kwargs.trm_base_url=null
        )
    else
        local url name
        check_trm_endpoint "$TRM_BASE_URL"
        url="$(hydra_str "$TRM_BASE_URL")"
        name="$(hydra_str "$TRM_SERVED_NAME")"
        TRM_OVERRIDES=(
            reward.reward_model.enable=false
            reward.reward_model.enable_resource_pool=false
            reward.reward_model.model_path=null
            reward.reward_kwargs.trm_base_url="$url"
            reward.reward_kwargs.trm_model="$name"
        )
    fi
}

# run_logged COMMAND...: print COMMAND, then replace this shell with it.
run_logged() {
    echo "+ $*" >&2
    exec "$@"
}

# launch_ppo CONFIG_NAME [overrides...]: checks the policy model and data, then replaces this shell
# with verl's PPO entry point on the recipe CONFIG_NAME.
launch_ppo() {
    local config="$1" actor train val
    shift
    actor="$(require_model ACTOR_MODEL "$ACTOR_MODEL")"
    train="$(require_files TRAIN_FILES "$TRAIN_FILES")"
    val="$(require_files VAL_FILES "$VAL_FILES")"
    run_logged "$PYTHON" -m verl.trainer.main_ppo \
        --config-path "$RECIPE_DIR" --config-name "$config" \
        actor_rollout_ref.model.path="$actor" \
        data.train_files="$train" \
        data.val_files="$val" \
        trainer.n_gpus_per_node="$N_GPUS_PER_NODE" \
        trainer.nnodes="${NNODES:-1}" \
        "$@"
}
