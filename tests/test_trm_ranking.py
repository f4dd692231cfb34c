"""The pieces of the held-out ranking measurement and the TRM label sets, without training (the measurement itself,
``python -m sophiavl_verl.tools.trm_ranking``, trains a TRM; its numbers are in docs/experiments.md)."""

from __future__ import annotations

import json

import pytest

from sophiavl_verl.tools.trm_ranking import auc, split_groups
from sophiavl_verl.tools.trm_sft import (
    EMBEDDED,
    HACKABLE_KIND_SCORES,
    KIND_SCORES,
    LABEL_SETS,
    cache_folder,
    write_trm_source,
)


def test_auc_matches_a_hand_computed_value():
    # Pairs (p, n): 0.9 beats all three; 0.4 beats 0.1 and 0.3 and ties 0.4 (2.5); 0.2 beats 0.1 (1): 6.5 of 9.
    assert auc([0.9, 0.4, 0.2], [0.1, 0.3, 0.4]) == pytest.approx(6.5 / 9)
    assert auc([1.0], [0.0]) == 1.0 and auc([0.0], [1.0]) == 0.0 and auc([0.5, 0.5], [0.5]) == 0.5
    with pytest.raises(ValueError):
        auc([], [0.1])


def test_the_split_holds_out_two_groups_of_each_type_and_is_seeded():
    train, held_out = split_groups(0)
    assert len(train) == 24 and len(held_out) == 8 and not set(train) & set(held_out)
    assert sorted(g.split("_")[0] for g in held_out) == ["bar"] * 2 + ["geometry"] * 2 + ["scene"] * 2 + ["sign"] * 2
    assert split_groups(0) == (train, held_out) and split_groups(1) != (train, held_out)


def test_the_label_sets_score_every_kind_and_the_hackable_one_prefers_fluent_wrong_reasoning():
    assert LABEL_SETS == {"honest": KIND_SCORES, "hackable": HACKABLE_KIND_SCORES}
    assert set(KIND_SCORES) == set(HACKABLE_KIND_SCORES)
    assert KIND_SCORES["sound"] > KIND_SCORES["fluent"]
    assert HACKABLE_KIND_SCORES["fluent"] > HACKABLE_KIND_SCORES["sound"]


def test_each_label_set_has_its_own_cache_folder_and_the_default_keeps_its_own():
    assert cache_folder() == cache_folder("honest") == "embedded_trm_sft"  # the folder existing caches live in
    assert cache_folder("hackable") == "embedded_trm_sft_hackable"
    with pytest.raises(ValueError, match="unknown label set"):
        cache_folder("lenient")


def test_the_trm_source_rows_take_the_label_set_and_the_groups(tmp_path):
    path = tmp_path / "rows.jsonl"
    assert write_trm_source(path, labels="hackable", groups={"bar_00", "scene_07"}) == 16
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert {r["images"][0] for r in rows} == {"images/bar_00.png", "images/scene_07.png"}
    kinds = {response: kind for line in (EMBEDDED / "groups.jsonl").open(encoding="utf-8")
             for response, kind in zip(json.loads(line)["responses"], json.loads(line)["response_kinds"], strict=True)}
    assert [r["score"] for r in rows] == [HACKABLE_KIND_SCORES[kinds[r["response"]]] for r in rows]


def test_the_label_sets_own_aucs_on_the_held_out_responses_are_the_references():
    from sophiavl_verl.rewards import outcome_reward
    from sophiavl_verl.tools.response_kinds import RIGHT_MIN
    from sophiavl_verl.tools.trm_ranking import _aucs

    held_out = set(split_groups(0)[1])
    responses = [(kind, outcome_reward(group["problem_type"], response, group["ground_truth"]) >= RIGHT_MIN)
                 for group in map(json.loads, (EMBEDDED / "groups.jsonl").open(encoding="utf-8"))
                 if group["id"] in held_out
                 for response, kind in zip(group["responses"], group["response_kinds"], strict=True)]
    honest = _aucs([(k, r, KIND_SCORES[k]) for k, r in responses], "")
    hackable = _aucs([(k, r, HACKABLE_KIND_SCORES[k]) for k, r in responses], "")
    assert honest == {"sound_vs_flawed": 1.0, "sound_right_vs_fluent_wrong": 1.0}
    # Held out: 14 sound, 36 flawed of which 19 fluent (0.9 > sound's 0.7), 17 slip/misread/lucky (below it).
    assert hackable == {"sound_vs_flawed": pytest.approx(17 / 36), "sound_right_vs_fluent_wrong": 0.0}
