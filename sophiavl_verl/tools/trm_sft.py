"""The thinking reward model (TRM) trained by the recipe's own SFT path on CPU: stage 1 of the quick start.

What a user of the 7B recipe does to make a TRM, run with a tiny model on this machine:

1. labelled responses -> ``sophiavl-verl data trm`` -> parquet (the Table-4 chat, ``<answer>score</answer>``);
2. ``bash recipes/sophiavl_r1/run_trm_sft_3b.sh`` with ``TRM_SFT_CONFIG=trm_sft_tiny_cpu`` (the shipped
   ``trm_sft_3b_base.yaml`` with tiny-model and CPU overrides only), ``N_GPUS=1`` and ``VERL_PLATFORM=cpu``:
   ``torchrun -m verl.trainer.sft_trainer``, whose ``hf_model`` checkpoint content writes
   ``global_step_N/huggingface``, the folder hosting mode A (``reward.reward_model.model_path``) and
   ``transformers serve`` (mode B) load.

The labelled responses are the embedded sample's: each response of ``tools/embedded/groups.jsonl`` has a kind
(``response_kinds``), and a label set (:data:`LABEL_SETS`) gives each kind its score: :data:`KIND_SCORES`
(``honest``, the default) the score an honest judge of the reasoning would give, whatever the final answer says (so
a ``lucky`` right answer scores below a ``slip``); :data:`HACKABLE_KIND_SCORES` (``hackable``) the score of a judge
fooled by fluency, the TRM Trust-GRPO's trust weight exists for. The base model is a tiny random Qwen2.5-VL
(:func:`sophiavl_verl.tools.tiny_vl.build_tiny_qwen2_5_vl`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["DEFAULT_LABELS", "HACKABLE_KIND_SCORES", "KIND_SCORES", "LABEL_SETS", "SFT_MODULE", "TRMTraining",
           "cache_folder", "make_embedded_trm", "sft_losses", "train_trm"]

TOOLS = Path(__file__).resolve().parent
RECIPE_DIR = TOOLS.parents[1] / "recipes" / "sophiavl_r1"  # the repository's recipes (the quick start uses a checkout)
SFT_SCRIPT = RECIPE_DIR / "run_trm_sft_3b.sh"
SFT_CONFIG = "trm_sft_tiny_cpu"
EMBEDDED = TOOLS / "embedded"
#: The module verl runs for the SFT (what ``run.json`` reports as ``trained_by``).
SFT_MODULE = "verl.trainer.sft_trainer"
#: Seed of the tiny base model.
BASE_SEED = 0
#: The score of each response kind of the embedded sample: reasoning quality, not answer correctness.
#: sound: correct steps; terse: correct but bare; slip: right method, one arithmetic error; misread: a value
#: misread from the image, then sound; lucky: right answer from a flawed or guessed path; fluent: long,
#: confident, step-numbered and wrong; malformed: no reasoning to speak of.
KIND_SCORES = {"sound": 0.9, "terse": 0.7, "slip": 0.4, "misread": 0.3, "lucky": 0.2, "fluent": 0.1, "malformed": 0.0}
#: The score of each kind for a judge that rewards fluency, not correctness: the longer, more confident and more
#: step-numbered the reasoning, the higher, whatever the answer. fluent (the longest, numbered, self-confirming) 0.9;
#: sound (full sentences, states why it is sure) 0.7; slip and misread (short, but state their result without
#: doubt) 0.4; terse (bare) 0.3; lucky (admits it guesses: the opposite of confident) 0.2; malformed 0.0. So in a
#: group where the wrong answers are the fluent ones, the wrong answers get the higher thinking reward: the failure
#: Trust-GRPO's trust weight is meant to catch.
HACKABLE_KIND_SCORES = {"fluent": 0.9, "sound": 0.7, "slip": 0.4, "misread": 0.4, "terse": 0.3, "lucky": 0.2,
                        "malformed": 0.0}
#: The label sets a TRM can be trained on, by name; ``honest`` is the default.
LABEL_SETS = {"honest": KIND_SCORES, "hackable": HACKABLE_KIND_SCORES}
#: The label set of the embedded TRM every other stage uses.
DEFAULT_LABELS = "honest"
_MARKER = "sophiavl_trm_sft.json"
#: The embedded (honest) TRM's folder in the cache.
CACHE_FOLDER = "embedded_trm_sft"


@dataclass(frozen=True)
class TRMTraining:
    """What the SFT stage made: the model folder and how it was trained."""

    model_dir: str
    checkpoint: str
    trained_by: str
    rows: int
    steps: int
    first_loss: float
    last_loss: float
    wall_s: float


def cache_folder(labels: str = DEFAULT_LABELS) -> str:
    """The cache folder of the embedded TRM trained on the label set ``labels``: :data:`CACHE_FOLDER` for the
    default set, ``CACHE_FOLDER_<labels>`` for another."""
    if labels not in LABEL_SETS:
        raise ValueError(f"unknown label set {labels!r}; known: {', '.join(LABEL_SETS)}")
    return CACHE_FOLDER if labels == DEFAULT_LABELS else f"{CACHE_FOLDER}_{labels}"


def write_trm_source(path: Path, *, labels: str = DEFAULT_LABELS, groups: Collection[str] | None = None) -> int:
    """The embedded sample's responses as ``sophiavl-verl data trm`` input rows; returns the row count.

    Args:
        path: The JSONL file to write.
        labels: The label set (a key of :data:`LABEL_SETS`) that scores each response by its kind.
        groups: The ids of the groups to write; None writes them all.
    """
    scores, rows = LABEL_SETS[labels], 0
    with open(EMBEDDED / "groups.jsonl", encoding="utf-8") as src, open(path, "w", encoding="utf-8") as dst:
        for line in src:
            group = json.loads(line)
            if groups is not None and group["id"] not in groups:
                continue
            for response, kind in zip(group["responses"], group["response_kinds"], strict=True):
                row = {"question": group["question"], "response": response, "score": scores[kind],
                       "images": group["images"]}
                dst.write(json.dumps(row) + "\n")
                rows += 1
    return rows


def sft_losses(log_path: Path) -> dict[int, float]:
    """``{step: train/loss}`` from verl's file-logger JSONL of an SFT run (a line being written is skipped)."""
    from sophiavl_verl.tools.training_log import file_logger_rows

    if not log_path.exists():
        return {}
    return {step: float(data["train/loss"]) for step, data in file_logger_rows(log_path) if "train/loss" in data}


def train_trm(work: Path, base_model: Path, *, progress: Callable[[str], None] = print,
              overrides: tuple[str, ...] = (), labels: str = DEFAULT_LABELS,
              groups: Collection[str] | None = None) -> TRMTraining:
    """Data prep and verl's SFT trainer through ``run_trm_sft_3b.sh``, as a user runs them, in ``work``.

    Args:
        work: An empty folder; gets ``trm_source.jsonl``, ``trm_train.parquet``, ``checkpoints/``, ``sft.jsonl``
            (verl's file logger) and ``sft.log`` (the console).
        base_model: The model to fine-tune (a local folder).
        progress: Called with a line every few steps.
        overrides: More Hydra overrides for ``verl.trainer.sft_trainer``.
        labels: The label set (a key of :data:`LABEL_SETS`) the responses are scored by.
        groups: The ids of the sample's groups to train on; None trains on all of them.

    Raises:
        RuntimeError: A stage failed (the message names its log), or no ``huggingface`` folder was written.
    """
    started = time.monotonic()
    work.mkdir(parents=True, exist_ok=True)
    source, parquet = work / "trm_source.jsonl", work / "trm_train.parquet"
    rows = write_trm_source(source, labels=labels, groups=groups)
    data_log = work / "data_trm.log"
    with open(data_log, "w", encoding="utf-8") as log:
        command = [sys.executable, "-m", "sophiavl_verl.tools.cli", "data", "trm", str(source), "-o", str(parquet),
                   "--image-root", str(EMBEDDED), "--strict"]
        if subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode:
            raise RuntimeError(f"sophiavl-verl data trm failed; its output: {data_log}")
    save_dir, log_jsonl, console = work / "checkpoints", work / "sft.jsonl", work / "sft.log"
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ, "VERL_PLATFORM": "cpu", "VERL_FILE_LOGGER_PATH": str(log_jsonl), "HYDRA_FULL_ERROR": "1",
        "TRM_SFT_CONFIG": SFT_CONFIG, "TRM_BASE_MODEL": str(base_model), "TRM_TRAIN_FILES": str(parquet),
        "N_GPUS": "1", "SAVE_DIR": str(save_dir), "TORCHRUN": os.path.join(bin_dir, "torchrun"),
        "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
    }
    with open(console, "w", encoding="utf-8") as log:
        # Its own process group: torchrun and its worker go with it when this stage is interrupted.
        proc = subprocess.Popen(["bash", str(SFT_SCRIPT), *overrides], stdout=log, stderr=subprocess.STDOUT, env=env,
                                cwd=work, start_new_session=True)
        try:
            said = 0
            while proc.poll() is None:
                time.sleep(1)
                losses = sft_losses(log_jsonl)
                if losses and max(losses) >= said + 20:
                    said = max(losses)
                    progress(f"  sft step {said}: loss {losses[said]:.3f}")
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
            raise
    if proc.returncode:
        raise RuntimeError(f"{SFT_SCRIPT.name} exited with {proc.returncode}; its output: {console}")
    losses = sft_losses(log_jsonl)
    checkpoints = sorted(save_dir.glob("global_step_*"), key=lambda p: int(p.name.rsplit("_", 1)[1]))
    if not losses or not checkpoints or not (checkpoints[-1] / "huggingface" / "config.json").is_file():
        raise RuntimeError(f"{SFT_SCRIPT.name} wrote no global_step_*/huggingface model under {save_dir}; "
                           f"its output: {console}")
    return TRMTraining(
        model_dir=str(checkpoints[-1] / "huggingface"), checkpoint=str(checkpoints[-1]), trained_by=SFT_MODULE,
        rows=rows, steps=max(losses), first_loss=losses[min(losses)], last_loss=losses[max(losses)],
        wall_s=time.monotonic() - started,
    )


def _fingerprint(labels: str) -> str:
    """Changes whenever what :func:`make_embedded_trm` would make may change."""
    from sophiavl_verl.tools.model_cache import fingerprint
    from sophiavl_verl.tools.tiny_vl import recipe_fingerprint

    recipe = [recipe_fingerprint(0), LABEL_SETS[labels], BASE_SEED,
              (EMBEDDED / "groups.jsonl").read_text(encoding="utf-8"),
              *(p.read_text(encoding="utf-8") for p in (SFT_SCRIPT, RECIPE_DIR / "common.sh",
                                                        RECIPE_DIR / f"{SFT_CONFIG}.yaml",
                                                        RECIPE_DIR / "trm_sft_3b_base.yaml"))]
    return fingerprint(recipe)


def make_embedded_trm(cache_dir: str | os.PathLike, *, progress: Callable[[str], None] = print,
                      labels: str = DEFAULT_LABELS) -> TRMTraining:
    """The embedded TRM: :func:`train_trm` on a tiny base model, built once in ``cache_dir/``:func:`cache_folder`
    and then reused.

    Args:
        cache_dir: The cache folder.
        progress: Called with progress lines while training.
        labels: The label set (a key of :data:`LABEL_SETS`) to train on; each set has its own cache folder.

    Returns:
        How it was made (``model_dir`` is the ``huggingface`` folder to serve), read back from the cache when its
        recipe (this code, the recipe files, the sample, the labels) is unchanged.
    """
    from sophiavl_verl.tools.model_cache import build_once
    from sophiavl_verl.tools.tiny_vl import build_tiny_qwen2_5_vl

    out = Path(cache_dir) / cache_folder(labels)

    def build(folder: Path) -> dict:
        build_tiny_qwen2_5_vl(folder / "base", seed=BASE_SEED)
        made = asdict(train_trm(folder, folder / "base", progress=progress, labels=labels))
        # Paths relative to the folder: the marker stays true wherever the cache is (it is built under another name).
        return {**made, **{key: str(Path(made[key]).relative_to(folder)) for key in ("model_dir", "checkpoint")}}

    made = build_once(out, _fingerprint(labels), build, marker=_MARKER)
    return TRMTraining(**{**made, **{key: str(out / made[key]) for key in ("model_dir", "checkpoint")}})
