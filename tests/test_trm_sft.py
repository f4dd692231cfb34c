"""Stage 1 of the recipe for real: the thinking reward model trained by ``run_trm_sft_3b.sh`` (verl's SFT trainer).

The embedded TRM of every other test and of the quick start is this model (``trm_sft.make_embedded_trm``, built
once per machine into the shared cache; on a fresh machine, such as CI's, this test builds it). Each check reads
what verl wrote: its file-logger JSONL, its checkpoint folder, the ``huggingface`` model, and the model's answers
behind a real ``transformers serve``.
"""

from __future__ import annotations

import json
import re
import statistics
from collections import defaultdict
from pathlib import Path

import pytest

from sophiavl_verl.config import SophiaVLRewardConfig
from sophiavl_verl.thinking_reward import ThinkingRewardClient, ThinkingRewardItem
from sophiavl_verl.tools.audit import default_cache_dir
from sophiavl_verl.tools.trm_sft import EMBEDDED, KIND_SCORES, SFT_MODULE, make_embedded_trm, sft_losses

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def trm():
    return make_embedded_trm(default_cache_dir())


def test_the_sft_ran_through_the_recipe_script_and_its_loss_decreased(trm):
    work = Path(trm.checkpoint).parents[1]
    command = (work / "sft.log").read_text(encoding="utf-8").splitlines()[0]
    # run_trm_sft_3b.sh prints the command it execs: torchrun, verl's SFT module, the tiny CPU recipe.
    assert command.startswith("+ ") and f"-m {SFT_MODULE}" in command and "--config-name trm_sft_tiny_cpu" in command
    assert re.search(r"data\.train_files=\['\S+/trm_train\.parquet'\]", command), command  # data trm's output
    losses = sft_losses(work / "sft.jsonl")
    rows = sum(len(json.loads(line)["responses"]) for line in (EMBEDDED / "groups.jsonl").open(encoding="utf-8"))
    assert trm.rows == rows
    assert sorted(losses) == list(range(1, trm.steps + 1))
    assert trm.steps == 4 * -(-rows // 8)  # 4 epochs of batch 8 (trm_sft_tiny_cpu.yaml)
    assert (trm.first_loss, trm.last_loss) == (losses[1], losses[trm.steps])
    head, tail = statistics.mean(list(losses.values())[:10]), statistics.mean(list(losses.values())[-10:])
    assert tail < head / 10, (head, tail)
    assert trm.trained_by == SFT_MODULE and Path(trm.checkpoint).name == f"global_step_{trm.steps}"


def test_the_huggingface_folder_loads_with_transformers(trm):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from sophiavl_verl.integration.cpu_backend.processor_shim import install_processor_shim

    install_processor_shim()
    model = AutoModelForImageTextToText.from_pretrained(trm.model_dir, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(trm.model_dir)
    assert model.config.model_type == "qwen2_5_vl" and processor.tokenizer.chat_template


def test_served_it_answers_the_table_4_request_and_ranks_reasoning_as_labelled(embedded_trm_server, trm):
    """Through a real ``transformers serve``: every answer parses, and the kinds rank as their labels do."""
    from PIL import Image

    assert embedded_trm_server.model == str(Path(trm.model_dir).resolve())
    items, kinds = [], []
    for line in (EMBEDDED / "groups.jsonl").open(encoding="utf-8"):
        group = json.loads(line)
        images = [Image.open(EMBEDDED / p) for p in group["images"]]
        for response, kind in zip(group["responses"], group["response_kinds"], strict=True):
            items.append(ThinkingRewardItem(group["question"], response, images))
            kinds.append(kind)
    client = ThinkingRewardClient(embedded_trm_server.base_url, embedded_trm_server.model,
                                  SophiaVLRewardConfig(max_concurrency=4, timeout_s=120))
    scores = client.score_sync(items)
    client.close()
    assert client.stats.failed == 0 and all(0.0 <= s <= 1.0 for s in scores)
    by_kind = defaultdict(list)
    for kind, score in zip(kinds, scores, strict=True):
        by_kind[kind].append(score)
    mean = {kind: statistics.mean(values) for kind, values in by_kind.items()}
    assert mean["sound"] > mean["terse"] > mean["slip"] > mean["lucky"] > mean["fluent"], mean
    assert mean["sound"] == pytest.approx(KIND_SCORES["sound"], abs=0.1)
