"""How well a thinking reward model (TRM) trained by the recipe's SFT path ranks responses it has not seen.

:func:`held_out_ranking` splits the embedded sample's groups (:func:`split_groups`: the same number held out of
each task type, by a seeded draw), trains a TRM on the other groups' responses with :func:`trm_sft.train_trm` (the
real ``sophiavl-verl data trm`` -> ``run_trm_sft_3b.sh`` -> verl SFT path) and one label set, serves it with a real
``transformers serve`` (:class:`~sophiavl_verl.integration.cpu_backend.transformers_serve.LocalOpenAIServer`),
scores the held-out groups' responses through :class:`~sophiavl_verl.thinking_reward.ThinkingRewardClient`, and
reports two AUCs (:func:`auc`):

* ``sound_vs_flawed``: that a ``sound`` response scores above a flawed one (``slip``, ``misread``, ``lucky``,
  ``fluent``); an honest TRM that generalises is near 1;
* ``sound_right_vs_fluent_wrong``: that a ``sound`` response with a right answer scores above a ``fluent`` one with
  a wrong answer (right and wrong by the outcome reward, :data:`response_kinds.RIGHT_MIN`); near 1 for an honest
  TRM, near 0 for a hackable one that generalises, about 0.5 for one that learned nothing it can carry over.

Each AUC comes with the one the label set itself gives the same responses (a TRM that reproduced its labels
exactly), the reference the measured one is to be read against.

Usage: ``python -m sophiavl_verl.tools.trm_ranking --labels hackable --work DIR [--seed 0] [--out report.json]``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from sophiavl_verl.rewards import outcome_reward
from sophiavl_verl.tools.response_kinds import RIGHT_MIN
from sophiavl_verl.tools.trm_sft import BASE_SEED, DEFAULT_LABELS, EMBEDDED, LABEL_SETS, train_trm

__all__ = ["FLAWED", "RankingReport", "auc", "held_out_ranking", "split_groups"]

#: The flawed kinds ``sound`` is ranked against (``terse`` is sound but bare, ``malformed`` has no reasoning).
FLAWED = ("slip", "misread", "lucky", "fluent")


@dataclass(frozen=True)
class RankingReport:
    """One TRM's ranking quality on held-out responses.

    Attributes:
        labels: The label set it was trained on.
        seed: The seed of the split.
        train_groups: The ids of the groups it was trained on.
        held_out_groups: The ids of the groups it scored.
        sft_rows: Responses it was trained on.
        sft_steps: Steps of the SFT run.
        sft_first_loss: The first step's training loss.
        sft_last_loss: The last step's training loss.
        auc_sound_vs_flawed: :func:`auc` of ``sound`` against the :data:`FLAWED` kinds.
        auc_sound_right_vs_fluent_wrong: :func:`auc` of right ``sound`` against wrong ``fluent`` responses.
        labels_auc_sound_vs_flawed: ``auc_sound_vs_flawed`` of the label set's own scores.
        labels_auc_sound_right_vs_fluent_wrong: ``auc_sound_right_vs_fluent_wrong`` of the label set's own scores.
        counts: Held-out responses per comparison class.
        mean_score_by_kind: Mean held-out score of each kind.
        sft_wall_s: Seconds of the SFT (data prep included).
        wall_s: Seconds of the whole measurement.
    """

    labels: str
    seed: int
    train_groups: list[str]
    held_out_groups: list[str]
    sft_rows: int
    sft_steps: int
    sft_first_loss: float
    sft_last_loss: float
    auc_sound_vs_flawed: float
    auc_sound_right_vs_fluent_wrong: float
    labels_auc_sound_vs_flawed: float
    labels_auc_sound_right_vs_fluent_wrong: float
    counts: dict[str, int]
    mean_score_by_kind: dict[str, float]
    sft_wall_s: float
    wall_s: float


def auc(positives: Sequence[float], negatives: Sequence[float]) -> float:
    """The area under the ROC curve: the chance that a random positive scores above a random negative, ties
    counting half (the Mann-Whitney U statistic over the number of pairs).

    Raises:
        ValueError: Either sequence is empty.
    """
    if not positives or not negatives:
        raise ValueError("the AUC needs at least one positive and one negative score")
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def _groups() -> list[dict]:
    with open(EMBEDDED / "groups.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def split_groups(seed: int, held_out_per_type: int = 2) -> tuple[list[str], list[str]]:
    """Split the embedded sample's group ids into (train, held out): ``held_out_per_type`` groups of each problem
    type, drawn by ``random.Random(seed)``, are held out."""
    by_type: dict[str, list[str]] = defaultdict(list)
    for group in _groups():
        by_type[group["problem_type"]].append(group["id"])
    rng = random.Random(seed)
    held_out = {gid for ptype in sorted(by_type) for gid in rng.sample(by_type[ptype], held_out_per_type)}
    ids = [group["id"] for group in _groups()]
    return [g for g in ids if g not in held_out], [g for g in ids if g in held_out]


def _score(model_dir: str, groups: list[dict], work: Path) -> list[float]:
    """The TRM's scores of every response of ``groups``, in order, through a real ``transformers serve``."""
    from sophiavl_verl.config import SophiaVLRewardConfig
    from sophiavl_verl.integration.cpu_backend.transformers_serve import LocalOpenAIServer
    from sophiavl_verl.thinking_reward import ThinkingRewardClient, ThinkingRewardItem

    items = [ThinkingRewardItem(group["question"], response, [str(EMBEDDED / p) for p in group["images"]])
             for group in groups for response in group["responses"]]
    with LocalOpenAIServer(model_dir, log_path=work / "serve.log") as server:
        client = ThinkingRewardClient(server.base_url, server.model,
                                      SophiaVLRewardConfig(max_concurrency=4, timeout_s=120))
        try:
            scores = client.score_sync(items)
        finally:
            client.close()
    if client.stats.failed:
        raise RuntimeError(f"{client.stats.failed} of {len(items)} scoring requests failed; see {work / 'serve.log'}")
    return scores


def _aucs(responses: list[tuple[str, bool, float]], prefix: str) -> dict[str, float]:
    """The two AUCs of ``(kind, right, score)`` triples, as :class:`RankingReport` fields named with ``prefix``."""
    sound = [score for kind, _, score in responses if kind == "sound"]
    flawed = [score for kind, _, score in responses if kind in FLAWED]
    sound_right = [score for kind, right, score in responses if kind == "sound" and right]
    fluent_wrong = [score for kind, right, score in responses if kind == "fluent" and not right]
    return {f"{prefix}sound_vs_flawed": auc(sound, flawed),
            f"{prefix}sound_right_vs_fluent_wrong": auc(sound_right, fluent_wrong)}


def held_out_ranking(work: Path, labels: str = DEFAULT_LABELS, *, seed: int = 0,
                     progress: Callable[[str], None] = print) -> RankingReport:
    """Train a TRM on the training groups of :func:`split_groups` and measure its ranking of the held-out ones.

    Args:
        work: An empty folder for the base model, the SFT run and the server's log.
        labels: The label set (a key of :data:`trm_sft.LABEL_SETS`) to train on.
        seed: The seed of the split.
        progress: Called with progress lines.
    """
    from sophiavl_verl.tools.tiny_vl import build_tiny_qwen2_5_vl

    if labels not in LABEL_SETS:
        raise ValueError(f"unknown label set {labels!r}; known: {', '.join(LABEL_SETS)}")
    started = time.monotonic()
    train_ids, held_out_ids = split_groups(seed)
    progress(f"training a {labels} TRM on {len(train_ids)} groups; holding out {', '.join(held_out_ids)}")
    build_tiny_qwen2_5_vl(work / "base", seed=BASE_SEED)
    made = train_trm(work / "sft", work / "base", progress=progress, labels=labels, groups=set(train_ids))
    held_out = [group for group in _groups() if group["id"] in held_out_ids]
    progress(f"scoring {sum(len(g['responses']) for g in held_out)} held-out responses")
    kinds_right = [(kind, outcome_reward(group["problem_type"], response, group["ground_truth"]) >= RIGHT_MIN)
                   for group in held_out
                   for response, kind in zip(group["responses"], group["response_kinds"], strict=True)]
    measured = [(kind, right, score) for (kind, right), score in
                zip(kinds_right, _score(made.model_dir, held_out, work), strict=True)]
    labelled = [(kind, right, LABEL_SETS[labels][kind]) for kind, right in kinds_right]
    by_kind: dict[str, list[float]] = defaultdict(list)
    for kind, _, score in measured:
        by_kind[kind].append(score)
    return RankingReport(
        labels=labels, seed=seed, train_groups=train_ids, held_out_groups=held_out_ids, sft_rows=made.rows,
        sft_steps=made.steps, sft_first_loss=made.first_loss, sft_last_loss=made.last_loss,
        **_aucs(measured, "auc_"), **_aucs(labelled, "labels_auc_"),
        counts={"sound": len(by_kind["sound"]), "flawed": sum(len(by_kind[kind]) for kind in FLAWED),
                "sound_right": sum(kind == "sound" and right for kind, right in kinds_right),
                "fluent_wrong": sum(kind == "fluent" and not right for kind, right in kinds_right)},
        mean_score_by_kind={kind: round(statistics.mean(v), 3) for kind, v in sorted(by_kind.items())},
        sft_wall_s=made.wall_s, wall_s=time.monotonic() - started,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: measure one label set's held-out ranking and print (and optionally write) the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", choices=sorted(LABEL_SETS), default=DEFAULT_LABELS)
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/held-out split (default 0)")
    parser.add_argument("--work", type=Path, help="folder for the SFT run (default: a new temporary folder)")
    parser.add_argument("--out", type=Path, help="write the report here as JSON")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix=f"trm_ranking_{args.labels}_"))
    report = json.dumps(asdict(held_out_ranking(work, args.labels, seed=args.seed)), indent=1)
    if args.out:
        args.out.write_text(report + "\n", encoding="utf-8")
    print(report)


if __name__ == "__main__":
    main()
