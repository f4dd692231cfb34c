"""Data preparation (sophiavl_verl.tools.data): schemas, rejected rows, --strict, and read-back through verl."""

import json
import sys
import types

import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from sophiavl_verl.errors import SophiaVLError
from sophiavl_verl.thinking_reward import TRM_SYSTEM_PROMPT, build_trm_prompt
from sophiavl_verl.tools.cli import data_main as main  # `sophiavl-verl-data`, the old name of `sophiavl-verl data`
from sophiavl_verl.tools.data import (
    QUESTION_TEMPLATE,
    TYPE_TEMPLATE,
    DataError,
    build_rl_prompt,
    prepare_rl,
    prepare_trm,
)

PIXEL_LIMIT = 5000  # --max-image-pixels of the tests: 100x100 only warns in Pillow (<= 2x), 200x200 raises
PILLOW_LIMIT = Image.MAX_IMAGE_PIXELS


def _write_images(root):
    images = root / "images"
    images.mkdir(parents=True)
    Image.new("RGB", (32, 24), "red").save(images / "red.png")
    Image.new("RGB", (40, 30), "blue").save(images / "blue.jpg", quality=90)
    (images / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    Image.new("L", (100, 100)).save(images / "big.png")
    Image.new("L", (200, 200)).save(images / "huge.png")


# One row per case, in the SophiaVL-R1-130k schema; "expect" is the rejection (field) or the problem type.
RL_ROWS = [
    ({"problem": "How many cubes?", "solution": "<answer>5</answer>", "path": "./images/red.png",
      "problem_type": "numerical", "data_type": "image"}, "numerical"),
    ({"problem": "Which shape?", "solution": "<answer>B</answer>", "path": "images/blue.jpg",
      "problem_type": "multiple choice", "data_type": "image", "options": ["A. circle", "B. square"]},
     "multiple choice"),
    ({"problem": "Who shot him in 1963?", "solution": "Lee Harvey Oswald", "path": "",
      "problem_type": "free-form", "data_type": "text"}, "free-form"),
    ({"problem": "Read the sign.", "solution": "STOP", "path": "images/corrupt.png",
      "problem_type": "OCR", "data_type": "image"}, "path"),
    ({"problem": "Read the label.", "solution": "EXIT", "path": "images/missing.png",
      "problem_type": "OCR", "data_type": "image"}, "path"),
    ({"problem": "Write an essay.", "solution": "x", "path": "", "problem_type": "essay", "data_type": "text"},
     "problem_type"),
    ({"problem": "What is 2+2?", "solution": "<answer> </answer>", "path": "", "problem_type": "numerical",
      "data_type": "text"}, "solution"),
    ({"problem": "Big?", "solution": "1", "path": "images/big.png", "problem_type": "numerical",
      "data_type": "image"}, "path"),
    ({"problem": "Huge?", "solution": "1", "path": "images/huge.png", "problem_type": "numerical",
      "data_type": "image"}, "path"),
    ({"problem": "Name the city.", "solution": "<answer>Kathmandu</answer>", "path": "images/red.png",
      "problem_type": "text", "data_type": "image"}, "text"),
]
GOOD_RL = [i for i, (_, expect) in enumerate(RL_ROWS) if expect not in ("path", "problem_type", "solution")]


@pytest.fixture(scope="module")
def rl_dir(tmp_path_factory):
    """A folder in the released layout: data.json next to images/, plus a metadata JSON to skip."""
    root = tmp_path_factory.mktemp("sophiavl_130k")
    _write_images(root)
    (root / "data.json").write_text(json.dumps([row for row, _ in RL_ROWS]))
    (root / "dataset_info.json").write_text(json.dumps({"description": "not rows"}))
    return root


@pytest.fixture(scope="module")
def rl_run(rl_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("rl_out") / "train.parquet"
    summary = prepare_rl([rl_dir], out, max_image_pixels=PIXEL_LIMIT)
    return summary, out


@pytest.fixture(scope="module")
def tiny_vl(tmp_path_factory):
    """Tokenizer and processor of sophiavl_verl.tools.tiny_vl's tiny Qwen2.5-VL (built locally, no hub)."""
    from transformers import AutoProcessor, AutoTokenizer

    from sophiavl_verl.tools.tiny_vl import build_tiny_qwen2_5_vl

    path = build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny_vl"))  # also installs the processor shim
    return AutoTokenizer.from_pretrained(path), AutoProcessor.from_pretrained(path)


@pytest.fixture
def qwen_vl_utils_without_torchvision(monkeypatch):
    """verl fetches images through qwen_vl_utils, which imports torchvision (not installable here).

    Stand in a PIL-only module with the two functions verl calls; the processor still resizes the images.
    """
    module = types.ModuleType("qwen_vl_utils")

    def fetch_image(ele, image_patch_size=14):
        return ele["image"].convert("RGB")

    def process_vision_info(messages, image_patch_size=14, return_video_metadata=False):
        images = [fetch_image(part) for message in messages if isinstance(message["content"], list)
                  for part in message["content"] if part.get("type") == "image"]
        return images or None, None

    module.fetch_image, module.process_vision_info = fetch_image, process_vision_info
    monkeypatch.setitem(sys.modules, "qwen_vl_utils", module)


def _report(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# --------------------------------------------------------------------------------------------------- rl


def test_rl_summary_counts(rl_run):
    summary, _ = rl_run
    assert summary.rows_read == len(RL_ROWS)
    assert summary.rows_written == len(GOOD_RL) == 4
    assert dict(summary.per_type) == {"numerical": 1, "multiple choice": 1, "free-form": 1, "text": 1}
    assert (summary.images_embedded, summary.images_missing, summary.images_unreadable,
            summary.images_oversized) == (3, 1, 1, 2)
    assert len(summary.rejected) == 6
    assert Image.MAX_IMAGE_PIXELS == PILLOW_LIMIT  # the run's limit does not leak
    text = summary.format()
    assert "10 rows read" in text
    assert "rows per problem type: numerical 1, multiple choice 1, OCR 0, free-form 1, text 1" in text
    assert "images: 3 embedded, 1 missing, 1 unreadable, 2 oversized" in text
    assert "rows rejected: 6 (path: 4, problem_type: 1, solution: 1)" in text


def test_rl_rejected_rows_report(rl_run, rl_dir):
    summary, out = rl_run
    report = _report(out.with_name("train_rejected.jsonl"))
    assert [(r["row"], r["field"]) for r in report] == [
        (i, expect) for i, (_, expect) in enumerate(RL_ROWS) if i not in GOOD_RL
    ]
    assert all(r["file"] == str(rl_dir / "data.json") for r in report)
    reasons = {r["row"]: r["reason"] for r in report}
    assert reasons[3].startswith("unreadable image: ")
    assert reasons[4] == f"image not found: {rl_dir / 'images' / 'missing.png'}"
    assert reasons[5].startswith("unknown problem_type 'essay'")
    assert reasons[6] == "empty answer"
    assert reasons[7].startswith("image too large: ") and "decompression bomb" in reasons[7]
    assert reasons[8].startswith("image too large: ")


def test_rl_output_rows(rl_run, rl_dir):
    _, out = rl_run
    rows = pq.read_table(out).to_pylist()
    assert [r["extra_info"]["index"] for r in rows] == GOOD_RL
    numerical, choice, text_only, city = rows
    assert numerical["data_source"] == "sophiavl_r1"
    assert numerical["prompt"] == [{"role": "user", "content": "<image>" + QUESTION_TEMPLATE.format(
        Question="How many cubes?") + TYPE_TEMPLATE["numerical"]}]
    assert numerical["images"] == [{"bytes": (rl_dir / "images" / "red.png").read_bytes()}]
    assert numerical["reward_model"] == {"style": "rule", "ground_truth": "5"}
    assert numerical["extra_info"] == {"problem_type": "numerical", "question": "How many cubes?", "index": 0,
                                       "data_type": "image", "split": None}
    assert numerical["ability"] == "numerical"
    assert choice["images"] == [{"bytes": (rl_dir / "images" / "blue.jpg").read_bytes()}]  # JPEG kept as is
    assert choice["extra_info"]["question"] == "Which shape?\nA. circle; B. square"
    assert choice["prompt"][0]["content"].startswith("<image>Which shape?\nA. circle; B. square\nPlease think")
    assert choice["prompt"][0]["content"].endswith(TYPE_TEMPLATE["multiple choice"])
    assert text_only["images"] == []
    assert "<image>" not in text_only["prompt"][0]["content"]
    assert text_only["extra_info"]["data_type"] == "text"
    assert city["reward_model"]["ground_truth"] == "Kathmandu"
    assert city["prompt"][0]["content"].endswith(TYPE_TEMPLATE["text"])


def test_build_rl_prompt_placeholders():
    assert build_rl_prompt("Compare <image> and <image>.", "OCR", 2).startswith("Compare <image> and <image>.\n")
    assert build_rl_prompt("Q", "ocr", 2).startswith("<image><image>Q\n")
    assert build_rl_prompt("Q", "numerical").startswith("Q\nPlease think")


def test_rl_strict_names_row_and_field(rl_dir, tmp_path, capsys):
    out = tmp_path / "train.parquet"
    status = main(["rl", str(rl_dir), "-o", str(out), "--strict", "--max-image-pixels", str(PIXEL_LIMIT)])
    assert status == 2
    error = capsys.readouterr().err
    assert f"sophiavl-verl-data rl: error: row 3 of {rl_dir / 'data.json'}: field 'path': unreadable image:" in error
    assert list(tmp_path.iterdir()) == []  # nothing half-written
    source = tmp_path / "two.json"
    source.write_text(json.dumps([RL_ROWS[2][0], RL_ROWS[5][0]]))
    with pytest.raises(DataError,
                       match=r"^row 1 of .*two.json: field 'problem_type': unknown problem_type 'essay'") as info:
        prepare_rl([source], out, strict=True)
    assert (info.value.path, info.value.row, info.value.field) == (str(source), 1, "problem_type")  # for programs
    assert isinstance(info.value, SophiaVLError)


def test_rl_cli_prints_summary(rl_dir, tmp_path, capsys):
    out = tmp_path / "rl.parquet"
    assert main(["rl", str(rl_dir), "-o", str(out), "--max-image-pixels", str(PIXEL_LIMIT),
                 "--data-source", "mine"]) == 0
    printed = capsys.readouterr()
    assert "sophiavl-verl data rl: 10 rows read from 1 file(s)" in printed.out
    assert "rows rejected: 6" in printed.out
    assert f"skipping {rl_dir / 'dataset_info.json'}" in printed.err
    assert set(pd.read_parquet(out)["data_source"]) == {"mine"}


def test_rl_val_split(rl_run, rl_dir, tmp_path):
    _, full = rl_run
    out = tmp_path / "train.parquet"
    summary = prepare_rl([rl_dir], out, val_size=0.5, seed=1, max_image_pixels=PIXEL_LIMIT)
    assert (summary.rows_written, summary.rows_val) == (4, 2)
    train, val = pq.read_table(out).to_pylist(), pq.read_table(tmp_path / "val.parquet").to_pylist()
    assert len(train) == len(val) == 2
    # The split is marked for the reward manager (validation samples never wait for their group).
    assert [r["extra_info"]["split"] for r in train + val] == ["train", "train", "val", "val"]
    unsplit = pq.read_table(full).to_pylist()
    assert {r["extra_info"]["split"] for r in unsplit} == {None}  # no split made: no claim either way
    unmarked = [dict(r, extra_info=dict(r["extra_info"], split=None)) for r in train + val]
    assert sorted(unmarked, key=lambda r: r["extra_info"]["index"]) == unsplit
    with pytest.raises(DataError, match="leaves no training rows"):
        prepare_rl([rl_dir], out, val_size=4, max_image_pixels=PIXEL_LIMIT)


def test_rl_input_formats_agree(rl_run, rl_dir, tmp_path):
    """JSONL and parquet inputs (parquet with embedded image bytes) give the same rows as the JSON list."""
    _, reference = rl_run
    rows = [row for row, _ in RL_ROWS]
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    # Hugging Face's image feature: {"bytes", "path"} structs; red.png embedded, the others by path
    embedded = []
    for row in rows:
        row = dict(row)
        path = row.pop("path")
        inline = path.endswith("red.png")
        row["image"] = {"bytes": (rl_dir / path).read_bytes() if inline else None,
                        "path": None if inline else path} if path else None
        embedded.append(row)
    parquet = tmp_path / "data.parquet"
    pd.DataFrame(embedded).to_parquet(parquet)
    expected = pq.read_table(reference).to_pylist()
    for source in (jsonl, parquet):
        out = tmp_path / f"{source.suffix[1:]}_out.parquet"
        prepare_rl([source], out, image_root=rl_dir, max_image_pixels=PIXEL_LIMIT)
        assert pq.read_table(out).to_pylist() == expected


def test_missing_inputs_are_errors(tmp_path):
    with pytest.raises(DataError, match="input not found"):
        prepare_rl([tmp_path / "nope.json"], tmp_path / "o.parquet")
    (tmp_path / "notes.json").write_text("{}")
    with pytest.raises(DataError, match="no data file"):
        prepare_rl([tmp_path], tmp_path / "o.parquet")


def test_rl_text_only_reads_back_with_tokenizer_only(tmp_path, tiny_vl):
    from omegaconf import OmegaConf
    from verl.utils.dataset.rl_dataset import RLHFDataset

    source = tmp_path / "text.json"
    source.write_text(json.dumps([row for row, _ in RL_ROWS if row["data_type"] == "text"]))
    out = tmp_path / "text.parquet"
    summary = prepare_rl([source], out)
    assert summary.rows_written == 1 and summary.images_embedded == 0
    assert "images" not in pq.read_schema(out).names  # no image anywhere: column left out
    tokenizer, _ = tiny_vl
    config = OmegaConf.create({"cache_dir": str(tmp_path / "cache"), "max_prompt_length": 4096,
                               "filter_overlong_prompts_workers": None})
    dataset = RLHFDataset([str(out)], tokenizer, config, processor=None)
    assert len(dataset) == 1
    item = dataset[0]
    assert item["raw_prompt"][0]["content"].startswith("Who shot him in 1963?\nPlease think")
    assert item["extra_info"]["problem_type"] == "free-form"
    assert item["reward_model"]["ground_truth"] == "Lee Harvey Oswald"


def test_rl_images_read_back_through_rlhf_dataset(rl_run, tmp_path, tiny_vl, qwen_vl_utils_without_torchvision):
    from omegaconf import OmegaConf
    from verl.utils.dataset.rl_dataset import RLHFDataset

    _, out = rl_run
    tokenizer, processor = tiny_vl
    config = OmegaConf.create({"cache_dir": str(tmp_path / "cache"), "max_prompt_length": 4096,
                               "filter_overlong_prompts_workers": None})
    dataset = RLHFDataset([str(out)], tokenizer, config, processor=processor)
    assert len(dataset) == len(GOOD_RL)  # none dropped by verl's length filter (which runs the processor)
    image_pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    sizes = []
    for i in range(len(dataset)):
        messages = dataset[i]["raw_prompt"]
        parts = messages[0]["content"]
        images = [p["image"] for p in parts if isinstance(parts, list) and p["type"] == "image"]
        sizes.append([im.size for im in images])
        if images:  # what verl's agent loop does with raw_prompt
            text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            inputs = processor(text=[text], images=images, return_tensors="pt")
            assert (inputs["input_ids"] == image_pad).sum() == inputs["image_grid_thw"].prod(-1).sum() // 4
    assert sizes == [[(32, 24)], [(40, 30)], [], [(32, 24)]]


# -------------------------------------------------------------------------------------------------- trm

TRM_ROWS = [
    {"question": "How many cubes?", "path": "images/red.png", "response": "<think>I count 5.</think><answer>5</answer>",
     "score": 0.7},
    {"question": "<image>Which shape?", "image": "images/blue.jpg",
     "response": "<think>square</think><answer>B</answer>", "score": "1"},
    {"question": "2+2?", "response": "<think>4</think><answer>4</answer>", "score": "<answer>0.3</answer>"},
    {"question": "Bad score", "path": "images/red.png", "response": "<think>x</think><answer>1</answer>", "score": 7},
    {"question": "No reasoning", "path": "images/red.png", "response": "", "score": 0.5},
    {"question": "Missing image", "path": "images/missing.png", "response": "<think>x</think>", "score": 0.1},
    {"question": "No score", "path": "images/red.png", "response": "<think>x</think><answer>1</answer>", "score": None},
]


@pytest.fixture(scope="module")
def trm_run(rl_dir, tmp_path_factory):
    source = rl_dir.parent / "thinking_156k.jsonl"
    source.write_text("\n".join(json.dumps(r) for r in TRM_ROWS))
    out = tmp_path_factory.mktemp("trm_out") / "trm.parquet"
    return prepare_trm([source], out, image_root=rl_dir), out


def test_trm_summary_and_report(trm_run, rl_dir):
    summary, out = trm_run
    assert (summary.rows_read, summary.rows_written, summary.images_embedded, summary.images_missing) == (7, 3, 2, 1)
    assert [(r["row"], r["field"], r["reason"]) for r in _report(out.with_name("trm_rejected.jsonl"))] == [
        (3, "score", "score must be a number in [0, 1], got '7'"),
        (4, "response", "empty response"),
        (5, "path", f"image not found: {rl_dir / 'images' / 'missing.png'}"),
        (6, "score", "empty score"),
    ]


def test_trm_messages(trm_run):
    _, out = trm_run
    rows = pq.read_table(out).to_pylist()
    first, second, text_only = rows
    assert first["messages"] == [
        {"role": "system", "content": TRM_SYSTEM_PROMPT},
        {"role": "user", "content": "<image>" + build_trm_prompt("How many cubes?",
                                                                 "<think>I count 5.</think><answer>5</answer>")},
        {"role": "assistant", "content": "<answer>0.7</answer>"},
    ]
    assert second["messages"][1]["content"].count("<image>") == 1  # the question's own marker is not doubled
    assert second["messages"][2]["content"] == "<answer>1.0</answer>"
    assert text_only["images"] == [] and "<image>" not in text_only["messages"][1]["content"]
    assert text_only["messages"][2]["content"] == "<answer>0.3</answer>"


def test_trm_reads_back_through_sft_dataset(trm_run, tiny_vl, qwen_vl_utils_without_torchvision):
    from omegaconf import OmegaConf
    from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset

    _, out = trm_run
    tokenizer, processor = tiny_vl
    dataset = MultiTurnSFTDataset(str(out), tokenizer, OmegaConf.create({"max_length": 4096, "pad_mode": "no_padding"}),
                                  processor=processor)
    image_pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    targets, image_tokens = [], []
    for i in range(len(dataset)):
        item = dataset[i]
        targets.append(tokenizer.decode(item["input_ids"][item["loss_mask"].bool()]))
        image_tokens.append(int((item["input_ids"] == image_pad).sum()))
    assert targets == ["<answer>0.7</answer><|im_end|>\n", "<answer>1.0</answer><|im_end|>\n",
                       "<answer>0.3</answer><|im_end|>\n"]
    assert image_tokens[0] > 0 and image_tokens[1] > 0 and image_tokens[2] == 0


def test_trm_text_only_reads_back_with_tokenizer_only(tmp_path, tiny_vl):
    from omegaconf import OmegaConf
    from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset

    source = tmp_path / "text.json"
    source.write_text(json.dumps([TRM_ROWS[2]]))
    out = tmp_path / "trm.parquet"
    prepare_trm([source], out)
    assert "images" not in pq.read_schema(out).names
    tokenizer, _ = tiny_vl
    dataset = MultiTurnSFTDataset(str(out), tokenizer, OmegaConf.create({"max_length": 4096}), processor=None)
    item = dataset[0]
    assert tokenizer.decode(item["input_ids"][item["loss_mask"].bool()]) == "<answer>0.3</answer><|im_end|>\n"


def test_several_files_number_rows_per_file(rl_dir, tmp_path, capsys):
    first, second = tmp_path / "a.json", tmp_path / "b.jsonl"
    first.write_text(json.dumps([RL_ROWS[0][0], RL_ROWS[5][0]]))
    second.write_text(json.dumps(RL_ROWS[6][0]) + "\n" + json.dumps(RL_ROWS[2][0]) + "\n")
    out = tmp_path / "out" / "train.parquet"
    summary = prepare_rl([first, second], out, image_root=rl_dir)
    assert [(r.file, r.row, r.field) for r in summary.rejected] == [
        (str(first), 1, "problem_type"), (str(second), 0, "solution")]
    assert [r["extra_info"]["index"] for r in pq.read_table(out).to_pylist()] == [0, 3]  # index runs over files
    # every row rejected: the CLI says so and fails
    only_bad = tmp_path / "bad.json"
    only_bad.write_text(json.dumps([RL_ROWS[5][0]]))
    assert main(["rl", str(only_bad), "-o", str(tmp_path / "none.parquet")]) == 2
    last = capsys.readouterr().err.splitlines()[-1]  # after the progress bar
    assert last == "sophiavl-verl-data rl: error: no row was written; see the rejected-rows report"


# ------------------------------------------------------------------------------------- adversarial input

GOOD_ROW = {"problem": "How many?", "solution": "4", "problem_type": "numerical", "data_type": "image",
            "path": "images/red.png"}


def _rejections(rows, root, tmp_path, **options):
    tmp_path.mkdir(parents=True, exist_ok=True)
    source = tmp_path / "rows.json"
    source.write_text(json.dumps(rows))
    summary = prepare_rl([source], tmp_path / "out" / "train.parquet", image_root=root, **options)
    return summary, [(r.row, r.field, r.reason) for r in summary.rejected]


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"problem": ["a", "b"]}, "problem", "must be a string, got list ['a', 'b']"),
        ({"solution": ["4"]}, "solution", "must be a string or a number, got list ['4']"),
        ({"solution": True}, "solution", "must be a string or a number, got bool True"),
        ({"problem_type": {"kind": "numerical"}}, "problem_type", "must be a string, got dict"),
        ({"data_type": ["image"]}, "data_type", "must be a string, got list"),
        ({"path": 123}, "path", "must be an image path, a list of them, or {'bytes', 'path'}, got int 123"),
        ({"path": ["images/red.png", 7]}, "path", "got int 7"),
        ({"path": {"bytes": "not bytes", "path": None}}, "path", "'bytes' must be bytes, got str"),
        ({"path": None, "image": False}, "image", "got bool False"),
        ({"options": "A. one; B. two"}, "options", "must be a list of strings, got str"),
        ({"options": [["A"], "B"]}, "options", "must be a list of strings"),
        ({"problem_id": [1]}, "problem_id", "must be a string or an integer, got list [1]"),
        ({"data_type": "text", "path": 5}, "path", "got int 5"),  # checked even where the image is not read
    ],
)
def test_wrong_typed_fields_are_rejected_with_row_and_field(rl_dir, tmp_path, change, field, reason):
    summary, rejected = _rejections([GOOD_ROW, GOOD_ROW | change], rl_dir, tmp_path)
    assert summary.rows_written == 1
    assert len(rejected) == 1 and rejected[0][:2] == (1, field) and reason in rejected[0][2], rejected


def test_a_numeric_answer_is_text_and_trm_types_are_checked(rl_dir, tmp_path):
    summary, _ = _rejections([GOOD_ROW | {"solution": 4}], rl_dir, tmp_path)
    assert pq.read_table(tmp_path / "out" / "train.parquet").to_pylist()[0]["reward_model"]["ground_truth"] == "4"
    source = tmp_path / "trm.jsonl"
    rows = [{"question": "Q", "response": "R", "score": 0.5}, {"question": ["Q"], "response": "R", "score": 0.5},
            {"question": "Q", "response": {"text": "R"}, "score": 0.5},
            {"question": "Q", "response": "R", "score": True}]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = prepare_trm([source], tmp_path / "trm.parquet")
    assert [(r.row, r.field) for r in summary.rejected] == [(1, "question"), (2, "response"), (3, "score")]
    assert summary.rejected[2].reason == "must be a string or a number, got bool True"


def test_duplicate_ids_are_rejected_naming_the_first(rl_dir, tmp_path):
    first, second = tmp_path / "a.json", tmp_path / "b.jsonl"
    first.write_text(json.dumps([GOOD_ROW | {"problem_id": 1}, GOOD_ROW | {"problem_id": 2},
                                 GOOD_ROW | {"problem_id": 1}]))
    second.write_text(json.dumps(GOOD_ROW | {"problem_id": 2}) + "\n" + json.dumps(GOOD_ROW | {"id": "x"}) + "\n")
    summary = prepare_rl([first, second], tmp_path / "out.parquet", image_root=rl_dir)
    assert summary.rows_written == 3
    assert [(r.file, r.row, r.field, r.reason) for r in summary.rejected] == [
        (str(first), 2, "problem_id", f"duplicate id 1: first at row 0 of {first}"),
        (str(second), 0, "problem_id", f"duplicate id 2: first at row 1 of {first}"),
    ]


def _run_cli(argv, capsys):
    status = main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _files_under(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


@pytest.mark.parametrize("layout", ["jsonl", "json", "folder"])
def test_a_malformed_json_line_is_one_error_naming_file_and_line(rl_dir, tmp_path, capsys, layout):
    data = tmp_path / "data"
    data.mkdir()
    good = data / "a_good.json"
    good.write_text(json.dumps([GOOD_ROW]))  # read first in the folder: its image must not be read in vain
    if layout == "jsonl":
        bad = tmp_path / "bad.jsonl"
        bad.write_text(json.dumps(GOOD_ROW) + "\n\n" + json.dumps(GOOD_ROW) + "\n" + '{"problem": "x", oops}\n')
        where, inputs = (f"{bad}:4: not valid JSON (Expecting property name enclosed in double quotes at column 18)",
                         [good, bad])
    elif layout == "json":
        bad = tmp_path / "bad.json"
        bad.write_text("[\n" + json.dumps(GOOD_ROW) + ",\n" + json.dumps(GOOD_ROW)[:-1] + "\n]\n")
        where, inputs = f"{bad}:4: not valid JSON", [good, bad]
    else:
        bad = data / "b_truncated.jsonl"
        bad.write_text(json.dumps(GOOD_ROW) + "\n" + json.dumps(GOOD_ROW)[:20] + "\n")
        where, inputs = f"{bad}:2: not valid JSON", [data]
    out = tmp_path / "out"
    status, printed, err = _run_cli(["rl", *map(str, inputs), "-o", str(out / "train.parquet"),
                                     "--image-root", str(rl_dir)], capsys)
    assert status == 2 and err.startswith(f"sophiavl-verl-data rl: error: {where}") and err.count("\n") == 1, err
    assert printed == "" and _files_under(out) == []


def test_a_folder_never_skips_a_data_file_silently(rl_dir, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "rows.json").write_text(json.dumps([GOOD_ROW]))
    (data / "dataset_info.json").write_text(json.dumps({"description": "metadata"}))
    status, printed, err = _run_cli(["rl", str(data), "-o", str(data / "train.parquet"), "--image-root", str(rl_dir)],
                                    capsys)
    assert status == 0, err
    assert f"files skipped: 1 ({data / 'dataset_info.json'} (a JSON object, not a list of rows))" in printed
    # A second run into the same folder skips its own outputs, and says so.
    status, printed, err = _run_cli(["rl", str(data), "-o", str(data / "train.parquet"), "--image-root", str(rl_dir)],
                                    capsys)
    assert status == 0 and "files skipped: 3" in printed and "an output of this run" in printed, err
    # A file of rows with other columns is an error, not a skip.
    (data / "other.jsonl").write_text(json.dumps({"question": "Q", "answer": "A"}) + "\n")
    status, printed, err = _run_cli(["rl", str(data), "-o", str(tmp_path / "o.parquet"), "--image-root", str(rl_dir)],
                                    capsys)
    assert status == 2 and err.splitlines()[-1].startswith(
        f"sophiavl-verl-data rl: error: {data / 'other.jsonl'}: its rows lack the column(s) problem")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--val-size", "50"], "--val-size 50.0 leaves no training rows"),
        (["--val-size", "nan"], "--val-size must be a fraction in [0, 1) or a whole count of rows, got nan"),
        (["--val-size", "inf"], "--val-size must be"),
        (["--val-size", "2.5"], "--val-size must be"),
        (["--seed", "-1"], "--seed must be an integer >= 0, got -1"),
        (["--max-image-pixels", "0"], "--max-image-pixels must be a positive integer, got 0"),
        (["--max-image-bytes", "-5"], "--max-image-bytes must be a positive integer, got -5"),
        (["--image-root", "/nonexistent/images"], "--image-root /nonexistent/images is not a folder"),
        (["--val-output", "val.csv"], "--val-output must be a .parquet file"),
        (["-o", "/proc/sophiavl/train.parquet"], "cannot write /proc/sophiavl"),
        (["-o", "/sys/train.parquet"], "cannot write /sys/train.parquet"),
    ],
)
def test_option_and_output_errors_are_one_line_and_leave_nothing(rl_dir, tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    argv = ["rl", str(rl_dir / "data.json"), "-o", str(out / "train.parquet"), "--image-root", str(rl_dir), *argv]
    status, printed, err = _run_cli(argv, capsys)
    lines = err.splitlines()  # a run that got to the rows also printed its progress bar
    assert (status == 2 and lines[-1].startswith(f"sophiavl-verl-data rl: error: {message}")
            and "Traceback" not in err), err
    assert sum("error" in line for line in lines) == 1
    assert _files_under(out) == [] and not list(tmp_path.glob("**/.*partial"))


def test_rejected_row_reasons_are_reproducible(tmp_path):
    _write_images(tmp_path)
    (tmp_path / "images" / "text.png").write_bytes(b"this is text, not an image")
    rows = [GOOD_ROW | {"path": "images/text.png"}, GOOD_ROW | {"path": "images/corrupt.png"}]
    reports = []
    for run in range(2):
        _, rejected = _rejections(rows, tmp_path, tmp_path / str(run))
        reports.append(rejected)
    assert reports[0] == reports[1] and len(reports[0]) == 2
    assert not any(" at 0x" in reason for _, _, reason in reports[0]), reports[0]


@pytest.fixture
def escape_root(tmp_path):
    """An image root with an image inside, and three paths to one outside it: ../, absolute, symlink."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "images").mkdir(parents=True)
    outside.mkdir()
    Image.new("RGB", (8, 8), "red").save(root / "images" / "in.png")
    Image.new("RGB", (8, 8), "blue").save(outside / "secret.png")
    (root / "images" / "link.png").symlink_to(outside / "secret.png")
    (root / "images" / "inner_link.png").symlink_to(root / "images" / "in.png")
    return root, ["../outside/secret.png", str(outside / "secret.png"), "images/link.png",
                  "images/../../outside/secret.png"]


def test_image_paths_are_confined_to_the_image_root(escape_root, tmp_path):
    root, escapes = escape_root
    rows = [GOOD_ROW | {"path": p} for p in ["images/in.png", "images/inner_link.png", *escapes]]
    summary, rejected = _rejections(rows, root, tmp_path / "confined")
    assert summary.rows_written == 2 and summary.images_outside_root == len(escapes)
    assert [(row, field) for row, field, _ in rejected] == [(i + 2, "path") for i in range(len(escapes))]
    assert all(f"outside the image root {root.resolve()}" in reason for _, _, reason in rejected)
    summary, rejected = _rejections(rows, root, tmp_path / "allowed", allow_outside_image_root=True)
    assert summary.rows_written == len(rows) and rejected == []


def test_image_size_on_disk_is_checked_before_reading(rl_dir, tmp_path, monkeypatch):
    big = rl_dir / "images" / "red.png"
    size = big.stat().st_size
    real_read_bytes = type(big).read_bytes

    def read_bytes(path):
        assert path.name != "red.png", "the oversized image was read"
        return real_read_bytes(path)

    monkeypatch.setattr(type(big), "read_bytes", read_bytes)
    summary, rejected = _rejections([GOOD_ROW], rl_dir, tmp_path, max_image_bytes=size - 1)
    assert summary.images_oversized == 1
    assert rejected == [(0, "path", f"image too large: {big}: {size} bytes on disk, over {size - 1}")]


@pytest.mark.parametrize(("layout", "text", "where"), [
    # Python's json reads NaN / Infinity, which are no JSON: "solution": Infinity became the ground truth "inf".
    ("jsonl", '{"problem": "How many?", "solution": Infinity, "problem_type": "numerical"}',
     "{bad}:2: solution is Infinity; JSON numbers must be finite"),
    ("jsonl", '{"problem": "How many?", "solution": NaN, "problem_type": "numerical"}',
     "{bad}:2: solution is NaN; JSON numbers must be finite"),
    ("jsonl", '{"problem": "Which?", "solution": "A", "problem_type": "multiple choice", "options": [1, -Infinity]}',
     "{bad}:2: options[1] is -Infinity; JSON numbers must be finite"),
    ("json", '{"problem": "How many?", "solution": Infinity, "problem_type": "numerical"}',
     "{bad}: row 2: solution is Infinity; JSON numbers must be finite"),
])
def test_a_non_finite_number_is_one_error_naming_file_row_and_field(rl_dir, tmp_path, capsys, layout, text, where):
    bad = tmp_path / f"bad.{layout}"
    good = json.dumps(GOOD_ROW | {"data_type": "text", "path": None})
    bad.write_text(f"{good}\n{text}\n" if layout == "jsonl" else f"[{good},\n{text}]")
    out = tmp_path / "out"
    status, printed, err = _run_cli(["rl", str(bad), "-o", str(out / "train.parquet")], capsys)
    assert status == 2 and err == f"sophiavl-verl-data rl: error: {where.format(bad=bad)}\n", err
    assert printed == "" and _files_under(out) == []


def test_a_non_finite_parquet_answer_is_rejected_by_row_and_field(tmp_path):
    source = tmp_path / "rows.parquet"
    pd.DataFrame({"problem": ["How many?", "How many?"], "solution": [4.0, float("inf")],
                  "problem_type": ["numerical"] * 2}).to_parquet(source)
    summary = prepare_rl([source], tmp_path / "out.parquet")
    assert [(r.row, r.field, r.reason) for r in summary.rejected] == [
        (1, "solution", "must be a finite number, got inf")]


@pytest.mark.parametrize("layout", ["jsonl", "json"])
def test_a_utf8_byte_order_mark_is_accepted(rl_dir, tmp_path, layout):
    source = tmp_path / f"rows.{layout}"
    rows = [GOOD_ROW, GOOD_ROW | {"solution": "5"}]
    text = "".join(json.dumps(r) + "\n" for r in rows) if layout == "jsonl" else json.dumps(rows)
    source.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    summary = prepare_rl([source], tmp_path / "out.parquet", image_root=rl_dir)
    assert summary.rows_written == 2 and summary.rejected == []
    answers = [r["reward_model"]["ground_truth"] for r in pq.read_table(tmp_path / "out.parquet").to_pylist()]
    assert answers == ["4", "5"]
