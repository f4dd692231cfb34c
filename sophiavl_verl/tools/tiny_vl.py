"""A tiny random Qwen2.5-VL for the CPU runs: the base of the quick start's policy and thinking reward model.

No weights can be downloaded on the CPU machines this package is tested on, so :func:`build_tiny_qwen2_5_vl`
makes a ~1.4 MB Qwen2.5-VL (2 text layers, hidden 64, a 1-block vision tower) with a byte-level BPE tokenizer
trained on the spot. The thinking reward model is fine-tuned from it by verl's own SFT trainer
(:mod:`sophiavl_verl.tools.trm_sft`); :func:`finetune_policy` teaches the quick start's policy the answer format.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sophiavl_verl.thinking_reward import TRM_INSTRUCTION, TRM_SYSTEM_PROMPT, build_trm_prompt

logger = logging.getLogger(__name__)

__all__ = [
    "build_tiny_qwen2_5_vl",
    "finetune_policy",
    "synthetic_trm_examples",
]

# Qwen2-VL's chat template (the one Qwen2.5-VL-Instruct ships), image/video placeholders included.
QWEN_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# 28 = patch 14 x merge 2; a 56 x 56 image is 4 x 4 patches = 4 image tokens.
IMAGE_PIXELS = 56 * 56
VOCAB_SIZE = 2048
INIT_STD = 0.1
ANSWER_TOKENS = tuple(f"<answer>{k / 10:.1f}</answer>" for k in range(11))


# ------------------------------------------------------------------------------------------ toy data


_QUESTIONS = (
    "What color is the shape?",
    "How many objects are in the image?",
    "Which option matches the picture? A. circle B. square C. triangle D. star",
    "What is the value of x in the figure?",
    "Read the text in the image.",
    "What is the sum of the values of bars B and A?",
    "How much greater is the tallest bar than the shortest bar?",
    "What is the length of the hypotenuse of the right triangle?",
    "Is the object on the left larger than the one on the right?",
)
# Neutral reasoning sentences ({n}: a number, {c}: a letter); a response is a few of them and of random
# pseudo-words, plus a keyword sentence for two labels out of three, at a random place.
_NEUTRAL = (
    "Let me look at the figure.",
    "Reading each bar against the gridlines: A = {n}, B = {n}, C = {n}.",
    "The question asks for the difference, so {n} - {n} = {n}.",
    "The y-axis runs from 0 to {n} with gridlines every {n} units.",
    "So the answer is {n}.",
    "Option {c} matches the shape in the picture.",
    "I count {n} objects on the table.",
    "The two legs are {n} and {n}, so the hypotenuse is about {n}.",
    "Step {n}: add the values, which gives {n}.",
    "The text in the image reads {c}{c}{c}.",
    "Hmm, the left object is larger.",
    "Computing, I get {n}.",
)
_BECAUSE = (
    "This is reliable because every value was read from the figure.",
    "It is {n} because each step follows from the previous one.",
    "Because the sides are equal, x = {n}.",
    "I am confident in {n} because all the details agree.",
)
_GUESS = (
    "This is a rough guess.",
    "I am mostly guessing here.",
    "Just a guess, though.",
    "I'd guess {n}.",
    "Guess: {c}.",
)
_ANSWERS = ("A", "B", "C", "3", "4", "10", "red", "hello", "yes")
_PSEUDO_RATE = 0.4


def _fill(sentence: str, rng: random.Random) -> str:
    while "{n}" in sentence or "{c}" in sentence:
        sentence = sentence.replace("{n}", str(rng.randint(0, 20)), 1).replace("{c}", rng.choice("ABCD"), 1)
    return sentence


def _toy_image(rng: random.Random):
    from PIL import Image

    side = rng.choice((32, 48, 64, 96))
    color = tuple(rng.randrange(256) for _ in range(3))
    return Image.new("RGB", (side, side), color)


def _pseudo_sentence(rng: random.Random) -> str:
    """Random words (lower, Title or UPPER case, some digits and quotes): unseen text the model must look past."""
    case = rng.choice((str.lower, str.lower, str.title, str.upper))
    words = []
    for _ in range(rng.randint(3, 12)):
        alphabet = "abcdefghijklmnopqrstuvwxyz" + rng.choice(("", "0123456789"))
        word = case("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 9))))
        words.append(f"'{word}'" if rng.random() < 0.1 else word)
    for _ in range(rng.randint(0, 2)):
        words.insert(rng.randint(0, len(words)), rng.choice(("=", "+", "-", "(e.g.", "->", str(rng.randint(0, 99)))))
    words[0] = words[0][:1].upper() + words[0][1:]
    return " ".join(words) + rng.choice((".", ".", ":", "?", ";"))


def synthetic_trm_examples(n: int, *, seed: int = 0) -> list[tuple[str, str, tuple]]:
    """Synthetic (question, response, images) TRM inputs: the tokenizer's corpus, and varied test requests.

    Three response flavours take turns (a ``guess`` sentence, neither, a ``because`` sentence sometimes with a
    guess too); about half the examples have one image, a quarter two, a quarter none.
    """
    rng = random.Random(seed)
    examples = []
    for i in range(n):
        sentences = [
            _pseudo_sentence(rng) if rng.random() < _PSEUDO_RATE else _fill(rng.choice(_NEUTRAL), rng)
            for _ in range(rng.randint(1, 10))
        ]
        label = i % 3  # 0: guess, 1: neither, 2: because (sometimes with a guess too)
        if label == 0 or (label == 2 and rng.random() < 0.3):
            sentences.insert(rng.randint(0, len(sentences)), _fill(rng.choice(_GUESS), rng))
        if label == 2:
            sentences.insert(rng.randint(0, len(sentences)), _fill(rng.choice(_BECAUSE), rng))
        sep = rng.choice((" ", "\n"))
        response = f"<think>{sep.join(sentences)}</think>\n<answer>{rng.choice(_ANSWERS)}</answer>"
        images = tuple(_toy_image(rng) for _ in range(rng.choice((0, 1, 1, 2))))
        examples.append((rng.choice(_QUESTIONS), response, images))
    return examples


# --------------------------------------------------------------------------------------------- build


def _train_tokenizer():
    """Byte-level BPE (GPT-2 style word split) trained on TRM prompts; deterministic."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    corpus = [build_trm_prompt(q, r) for q, r, _ in synthetic_trm_examples(64, seed=1)]
    corpus += [TRM_SYSTEM_PROMPT, "system user assistant Picture Video 0123456789"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    # Toy shortcuts (normal, non-special tokens; any other text still tokenizes normally): the fixed Table-4
    # instruction as one token shrinks prompts from ~390 to ~90 tokens, so CPU fine-tuning is several times
    # faster; each reply `<answer>0.x</answer>` as one token makes the reply a single decision, so the model
    # stays parseable on text unlike its training data.
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in (TRM_INSTRUCTION, *ANSWER_TOKENS)])
    return tokenizer


def build_tiny_qwen2_5_vl(out_dir: str | os.PathLike, *, seed: int = 0) -> Path:
    """Save a tiny random Qwen2.5-VL with its tokenizer and processor to ``out_dir``.

    Text model: hidden 64, 2 layers, 2 heads of dim 32, vocab 2,060: a byte-level BPE of 2,048 tokens trained
    on Table-4 prompts, with Qwen's special tokens and chat template (token ids differ from the real Qwen
    ones), plus two toy shortcuts as ordinary tokens, the whole Table-4 instruction and each reply
    ``<answer>0.x</answer>``. Vision tower: 1 block, hidden 64; images are resized to 56 x 56 pixels
    (4 image tokens each). Weights are drawn with std 0.1 (see :data:`INIT_STD`).
    ``AutoProcessor.from_pretrained(out_dir)`` (after the CPU backend's ``install_processor_shim``) and
    ``AutoModelForImageTextToText.from_pretrained(out_dir)`` load the result.

    Args:
        out_dir: Directory to write (created; existing files are overwritten).
        seed: Seed of the random weights.

    Returns:
        ``out_dir`` as a Path.
    """
    import torch
    from transformers import (
        GenerationConfig,
        PreTrainedTokenizerFast,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
    )
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.video_processing_utils import BaseVideoProcessor

    from sophiavl_verl.integration.cpu_backend.processor_shim import install_processor_shim

    install_processor_shim()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=_train_tokenizer(),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in ("<|im_end|>", "<|endoftext|>")],
        model_max_length=4096,
        padding_side="left",
    )
    tok.chat_template = QWEN_VL_CHAT_TEMPLATE
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}

    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tok),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 1,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_heads": 2,
            "out_hidden_size": 64,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 56,
            "fullatt_block_indexes": [0],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    with torch.no_grad():
        # Wider than the usual std 0.02: a fine-tune of this tiny model then learns in a few hundred steps.
        for module in model.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
                module.weight.normal_(0.0, INIT_STD)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
    model.generation_config = GenerationConfig(
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        bos_token_id=ids["<|endoftext|>"],
        do_sample=False,
        max_new_tokens=32,
    )
    model.save_pretrained(out)

    image_processor = Qwen2VLImageProcessorPil(size={"shortest_edge": IMAGE_PIXELS, "longest_edge": IMAGE_PIXELS})
    video_processor = BaseVideoProcessor(merge_size=2, patch_size=14, temporal_patch_size=2)
    processor = Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        video_processor=video_processor,
        chat_template=QWEN_VL_CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)
    return out


# ------------------------------------------------------------------------------------------ fine-tune


def _collate(encodings: list[dict], pad_id: int) -> dict:
    """Left-pad single-example processor outputs into one batch (images stay in token order)."""
    import torch

    length = max(e["input_ids"].shape[1] for e in encodings)
    batch = {
        "input_ids": torch.full((len(encodings), length), pad_id, dtype=torch.long),
        "attention_mask": torch.zeros((len(encodings), length), dtype=torch.long),
        "mm_token_type_ids": torch.zeros((len(encodings), length), dtype=torch.long),
        "labels": torch.full((len(encodings), length), -100, dtype=torch.long),
    }
    for row, enc in enumerate(encodings):
        n = enc["input_ids"].shape[1]
        for key in batch:
            batch[key][row, length - n :] = enc[key][0]
    with_images = [e for e in encodings if "pixel_values" in e]
    if with_images:
        batch["pixel_values"] = torch.cat([e["pixel_values"] for e in with_images])
        batch["image_grid_thw"] = torch.cat([e["image_grid_thw"] for e in with_images])
    return batch


def finetune_policy(
    model_dir: str | os.PathLike,
    examples: Sequence[tuple[list[dict], Sequence[Any], str]],
    *,
    steps: int = 120,
    batch_size: int = 8,
    lr: float = 6e-3,
    seed: int = 0,
) -> dict[str, float]:
    """Supervised fine-tuning of a tiny policy on chat prompts and their responses (the quick start's warm-up).

    A random policy writes noise, so every group of a GRPO run is all-wrong and the thinking term never
    applies; a few dozen steps on ``<think>...</think><answer>...</answer>`` responses teach it the format and
    the sample's answers, so sampling gives mixed groups from the first step. The loss is on the response tokens
    (and the closing ``<|im_end|>``) only; the weights are saved back to ``model_dir``.

    Args:
        model_dir: A model saved by :func:`build_tiny_qwen2_5_vl` (updated in place).
        examples: ``(messages, images, response)``: the chat as verl's dataset renders it (content parts
            ``{"type": "image"}`` in image order), its PIL images, and the target response.
        steps: Optimizer steps (batches are sampled from the examples).
        batch_size: Examples per step.
        lr: Learning rate.
        seed: Seed of the sampling order.

    Returns:
        ``{"loss_first": ..., "loss_last": ..., "seconds": ...}``.
    """
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from sophiavl_verl.integration.cpu_backend.processor_shim import install_processor_shim

    install_processor_shim()
    start = time.monotonic()
    torch.manual_seed(seed)
    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = processor.tokenizer

    def encode(example: tuple[list[dict], Sequence[Any], str]) -> dict:
        messages, images, reply = example
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        target = f"{reply}<|im_end|>"
        enc = processor(text=[prompt + target], images=list(images) or None, return_tensors="pt")
        labels = enc["input_ids"].clone()
        labels[:, : -len(tokenizer(target, add_special_tokens=False)["input_ids"])] = -100  # loss on the reply only
        enc["labels"] = labels
        return enc

    losses = _train(model, list(examples), encode, steps=steps, batch_size=batch_size, lr=lr,
                    rng=random.Random(seed), pad_id=tokenizer.pad_token_id)
    model.eval()
    model.save_pretrained(model_dir)
    return {"loss_first": losses[0], "loss_last": losses[-1], "seconds": time.monotonic() - start}


def _train(model, examples: list, encode, *, steps: int, batch_size: int, lr: float, rng: random.Random,
           pad_id: int) -> list[float]:
    """The SFT loop of :func:`finetune_policy`; returns the loss of every step."""
    import torch

    n = len(examples)
    memo: dict[int, dict] = {}
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 10)
    # Warm-up then cosine decay to 0: the last steps settle instead of leaving the weights mid-jump.
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda k: min((k + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(k, steps) / steps)))
    )
    losses = []
    for _ in range(steps):
        picks = rng.sample(range(n), min(batch_size, n))
        batch = [memo[i] if i in memo else memo.setdefault(i, encode(examples[i])) for i in picks]
        batch = _collate(batch, pad_id)
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
    return losses


def recipe_fingerprint(steps: int) -> str:
    """Changes whenever a model built and fine-tuned here may change: this module's code (its syntax tree, so that
    comments, docstrings and line wrapping do not retrain the cached models), the prompt, the library versions."""
    import tokenizers
    import torch
    import transformers

    from sophiavl_verl.tools.model_cache import code_digest, fingerprint

    recipe = {
        "code": code_digest(__file__),
        "prompt": build_trm_prompt("{question}", "{response}"),
        "system": TRM_SYSTEM_PROMPT,
        "steps": steps,
        "versions": [transformers.__version__, tokenizers.__version__, torch.__version__],
    }
    return fingerprint(recipe)
