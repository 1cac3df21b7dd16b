from __future__ import annotations

import json
from collections import Counter

import pytest

from slmnb.config import FinetuneConfig
from slmnb.data import encode, load_data, preview, read_splits, select_split, with_default_templates
from slmnb.errors import ConfigError
from slmnb.models import load_tokenizer

ROWS = [{"phrase": f"p{i}", "tone": "Joy" if i % 2 else "Sad"} for i in range(20)]


def config(**values) -> FinetuneConfig:
    return FinetuneConfig.from_dict({"prompt_template": "{phrase}", "response_template": "{tone}", **values})


def test_bundled_tones_is_balanced_and_test_is_unseen() -> None:
    splits = read_splits(FinetuneConfig(data_name="tones"))
    assert len(splits["train"]) >= 300 and len(splits["test"]) >= 40
    for rows in splits.values():
        counts = Counter(r["tone"] for r in rows)
        assert set(counts) == {"Sad", "Joy", "Fear", "Surprise"}
        assert max(counts.values()) == min(counts.values())
    train = {r["phrase"].strip().lower() for r in splits["train"]}
    assert len(train) == len(splits["train"])
    assert not train & {r["phrase"].strip().lower() for r in splits["test"]}


def test_bundled_data_brings_its_templates() -> None:
    resolved = with_default_templates(FinetuneConfig(data_name="tones"))
    assert "{phrase}" in resolved.prompt_template and resolved.response_template == "{tone}"
    own = FinetuneConfig(data_name="tones", text_template="{phrase} => {tone}")
    assert with_default_templates(own) == own


@pytest.mark.parametrize("suffix", ["json", "jsonl", "csv", "parquet"])
def test_file_formats(tmp_path, suffix: str) -> None:
    path = tmp_path / f"data.{suffix}"
    if suffix == "json":
        path.write_text(json.dumps(ROWS))
    elif suffix == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    elif suffix == "csv":
        path.write_text("phrase,tone\n" + "".join(f"{r['phrase']},{r['tone']}\n" for r in ROWS))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(ROWS), path)
    data = load_data(config(data_files=str(path), eval_size=0))
    assert data.train == ROWS


def test_saved_datasets_folder_keeps_its_splits(tmp_path) -> None:
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_list(ROWS[:15]), "test": Dataset.from_list(ROWS[15:])}).save_to_disk(
        str(tmp_path / "saved"))
    data = load_data(config(data_name=str(tmp_path / "saved"), eval_split="test"))
    assert (len(data.train), len(data.eval)) == (15, 5)


def test_slices_and_held_out_eval() -> None:
    splits = {"train": ROWS}
    assert select_split(splits, "train[:25%]", "train_split") == ROWS[:5]
    assert select_split(splits, "train[-2:]", "train_split") == ROWS[-2:]
    data = load_data(config(rows=ROWS, eval_size=0.25, max_samples=10))
    assert (len(data.train), len(data.eval)) == (10, 5)
    assert not {r["phrase"] for r in data.train} & {r["phrase"] for r in data.eval}
    again = load_data(config(rows=ROWS, eval_size=0.25, max_samples=10))
    assert again.eval == data.eval  # the hold-out is seeded


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"data_files": "missing.json"}, "Data file 'missing.json' does not exist: check data_files"),
        ({"data_name": "no-such-set"}, "neither a bundled dataset (tones)"),
        ({"rows": ROWS, "train_split": "valid"},
         "train_split 'valid' names no split of the data: the splits are train."),
        ({"rows": ROWS, "train_split": "train[:x]"}, "is not a split or slice such as"),
        ({"rows": ROWS, "eval_split": "train[:0]"}, "eval_split 'train[:0]' has no rows"),
        ({"rows": ROWS, "train_split": "train[:0]"}, "The training data has no rows"),
        ({"rows": ROWS, "prompt_template": "{phrse}"}, "prompt_template uses {phrse}, which is not a column: the "
                                                       "columns are phrase, tone."),
        ({"rows": ROWS, "prompt_template": "{phrase.upper}"}, "may only use plain {column} placeholders"),
        ({"rows": ROWS, "prompt_template": "{phrase[0]}"}, "may only use plain {column} placeholders"),
        ({"rows": ROWS, "prompt_template": "{phrase"}, "prompt_template is malformed"),
        ({"rows": ROWS, "prompt_template": None, "response_template": None},
         "Give a text_template, or a prompt_template and response_template, using the columns: phrase, tone."),
        ({"prompt_template": "{phrase}"}, "Give the training data"),
    ],
)
def test_data_mistakes_are_one_sentence(values: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_data(FinetuneConfig.from_dict({"prompt_template": "{phrase}", "response_template": "{tone}", **values}))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_broken_json_lines_name_the_line(tmp_path) -> None:
    (tmp_path / "d.jsonl").write_text('{"phrase": "a", "tone": "Joy"}\n{"phrase": \n')
    with pytest.raises(ConfigError, match="d.jsonl line 2 is not valid JSON"):
        load_data(config(data_files=str(tmp_path / "d.jsonl")))


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("tiny-llama")


def test_response_only_loss_masks_the_prompt(tokenizer) -> None:
    enc = encode(config(), tokenizer, {"phrase": "I lost my keys", "tone": "Sad"})
    n_prompt = enc["labels"].count(-100)
    assert n_prompt == len(tokenizer("I lost my keys")["input_ids"])
    answer = enc["input_ids"][n_prompt:]
    assert enc["labels"][n_prompt:] == answer
    assert tokenizer.decode(answer, skip_special_tokens=True) == "Sad"
    assert answer[-1] == tokenizer.eos_token_id


def test_chat_template_puts_prompt_and_answer_in_turns(tokenizer) -> None:
    enc = encode(config(use_chat_template=True), tokenizer, {"phrase": "I lost my keys", "tone": "Sad"})
    n_prompt = enc["labels"].count(-100)
    prompt = tokenizer.decode(enc["input_ids"][:n_prompt])
    answer = tokenizer.decode(enc["input_ids"][n_prompt:])
    assert prompt.endswith("<|im_start|>user\nI lost my keys<|im_end|>\n<|im_start|>assistant\n")
    assert answer == "Sad<|im_end|>\n"


def test_text_template_takes_loss_on_all_text_and_truncates(tokenizer) -> None:
    text = FinetuneConfig(text_template="{phrase} -> {tone}", max_seq_len=8)
    enc = encode(text, tokenizer, {"phrase": "one two three four five six seven eight nine", "tone": "Joy"})
    assert len(enc["input_ids"]) == 8
    assert enc["labels"] == enc["input_ids"]


def test_preview_renders_rows_and_counts_tokens() -> None:
    shown = preview({"model_name_or_path": "tiny-llama", "data_name": "tones", "use_chat_template": True,
                     "max_seq_len": 128}, n=3)
    assert len(shown.rows) == 3 and shown.train_rows + shown.eval_rows == 320
    first = shown.rows[0]
    assert first["phrase"] in first["prompt"] and first["response"].startswith(first["tone"])
    stats = shown.token_stats
    assert 0 < stats["min"] <= stats["median"] <= stats["max"] <= 128
    assert shown.truncated == 0 and shown.dropped == 0
    assert "tokens per example" in str(shown)
