from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from slmnb.config import FinetuneConfig
from slmnb.data import encode, load_data, preview, prompt_ids, select_split, with_default_templates
from slmnb.datafiles import read_splits
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


HOUSE_STYLE = re.compile(r"(Added|Changed|Fixed|Removed|Improved): \S[^\n]*?( \(#(\d+)\))?\.")


def test_bundled_changelog_loads_by_name_with_unseen_test_rows() -> None:
    data = load_data(with_default_templates(FinetuneConfig(data_name="changelog", eval_split="test")))
    assert len(data.train) >= 300 and len(data.eval) >= 40 and data.columns == ["note", "entry"]
    notes = [r["note"].strip().lower() for r in data.train]
    assert len(set(notes)) == len(notes)
    assert not set(notes) & {r["note"].strip().lower() for r in data.eval}


def test_changelog_entries_keep_the_house_style() -> None:
    # Every reference is one line "Kind: what changed[ on Platform][ (#n)]." that carries the ticket number exactly
    # when the note names one: the style the fine-tune learns must be the same in every row, or ROUGE against the
    # references measures noise.
    for split, rows in read_splits(FinetuneConfig(data_name="changelog")).items():
        kinds = set()
        for row in rows:
            match = HOUSE_STYLE.fullmatch(row["entry"])
            assert match, f"{split}: {row['entry']!r}"
            kinds.add(match[1])
            named = re.findall(r"(?:#|ticket |issue |gh-)(\d+)", row["note"])
            assert named == ([match[3]] if match[3] else []), f"{split}: {row}"
        assert kinds == {"Added", "Changed", "Fixed", "Removed", "Improved"}


def test_changelog_templates_render_and_fit_the_demo_sequence_length() -> None:
    from slmnb.demo import GENERATION_DEMO_CONFIG

    # tiny-llama has the embedded model's tokenizer; train+test so that no row of either split is cut
    shown = preview({**GENERATION_DEMO_CONFIG, "model_name_or_path": "tiny-llama", "train_split": "train+test"}, n=2)
    first = shown.rows[0]
    assert first["prompt"].rstrip().endswith(f"{first['note']}<|im_end|>\n<|im_start|>assistant")
    assert first["response"] == f"{first['entry']}<|im_end|>\n"
    assert shown.truncated == 0 and shown.token_stats["max"] <= GENERATION_DEMO_CONFIG["max_seq_len"]


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
        ({"data_name": "no-such-set"}, "neither a bundled dataset (changelog, tones)"),
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


@pytest.mark.parametrize("system_prompt", [None, "", "Name the tone in one word."])
def test_system_prompt_is_rendered_alike_in_training_and_prompts(tokenizer, system_prompt) -> None:
    chat = config(use_chat_template=True, system_prompt=system_prompt)
    row = {"phrase": "I lost my keys", "tone": "Sad"}
    enc = encode(chat, tokenizer, row)
    n_prompt = enc["labels"].count(-100)
    # What generation, evaluation and the ONNX comparison send is exactly what training put before the answer.
    assert prompt_ids(chat, tokenizer, row) == enc["input_ids"][:n_prompt]
    assert prompt_ids(chat, tokenizer, "I lost my keys") == enc["input_ids"][:n_prompt]
    prompt = tokenizer.decode(enc["input_ids"][:n_prompt])
    default = "You are a helpful AI assistant named SmolLM"  # SmolLM2's template adds it when no system turn is given
    if system_prompt is None:
        assert default in prompt
    else:
        assert default not in prompt
        assert prompt.startswith(f"<|im_start|>system\n{system_prompt}<|im_end|>\n<|im_start|>user\nI lost my keys")
    if system_prompt == "":
        assert n_prompt < len(prompt_ids(config(use_chat_template=True), tokenizer, row)) - 10
    shots = tokenizer.decode(prompt_ids(chat, tokenizer, row, examples=[row]))
    assert shots.count("<|im_start|>system") == 1 and shots.count("<|im_start|>user") == 2


def test_system_prompt_needs_a_chat_template_and_keeps_empty_text() -> None:
    assert FinetuneConfig.from_text('use_chat_template: true\nsystem_prompt: ""').system_prompt == ""
    assert FinetuneConfig.from_text("use_chat_template: true\nsystem_prompt:").system_prompt is None
    with pytest.raises(ConfigError, match="^system_prompt is the chat template's system message: set "
                                          "use_chat_template: true"):
        FinetuneConfig(prompt_template="{phrase}", response_template="{tone}", system_prompt="Be brief.")


def test_a_chat_template_without_a_system_turn_is_one_sentence(tokenizer) -> None:
    import copy

    strict = copy.deepcopy(tokenizer)
    strict.chat_template = ("{% if messages[0]['role'] == 'system' %}"
                            "{{ raise_exception('System role not supported') }}{% endif %}"
                            "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}")
    row = {"phrase": "I lost my keys", "tone": "Sad"}
    assert encode(config(use_chat_template=True), strict, row)["input_ids"]
    with pytest.raises(ConfigError, match=r"^This tokenizer's chat template refuses a system message \(System role "
                                          r"not supported\): leave system_prompt empty"):
        encode(config(use_chat_template=True, system_prompt=""), strict, row)


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


# --- bad input: each case once, by name (tests/test_bad_input.py generates many more) -----------------------


def refused(**values) -> str:
    with pytest.raises(ConfigError) as info:
        load_data(config(**values))
    text = str(info.value)
    assert "\n" not in text and text.endswith("."), text
    for internal in ("Error", "[Errno", "codec", "Traceback"):
        assert internal not in text, text
    return text


def with_cell(value, row: int = 3, column: str = "tone") -> list[dict]:
    rows = [dict(r) for r in ROWS]
    rows[row - 1][column] = value
    return rows


@pytest.mark.parametrize(
    ("value", "problem"),
    [(None, "has no value in column 'tone': fill it in or remove the row."),
     (float("nan"), "has no value in column 'tone'"),
     (["Joy", 1], "has a list in column 'tone', which a template needs as text: write it as text or remove the row."),
     ({"a": 1}, "has a mapping in column 'tone'"),
     (b"x", "has bytes in column 'tone'"),
     (True, "has true/false in column 'tone'"),
     ("J\0y", "has text with a NUL character"),
     ("\ud800", "has text with a lone surrogate")],
    ids=["None", "nan", "list", "mapping", "bytes", "bool", "nul", "surrogate"],
)
def test_cells_that_are_not_text_are_refused_naming_row_and_column(tmp_path, value, problem: str) -> None:
    rows = with_cell(value)
    inline = refused(rows=rows)  # inline rows: the config itself refuses text it could not write to config.yaml
    assert inline.startswith("Row 3 of") and problem.removeprefix("has ").removeprefix("text with ") in inline
    if not isinstance(value, bytes):  # the same from a file, where the config cannot look at the rows
        (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        assert f"Row 3 of train_split 'train' {problem}" in refused(data_files=str(tmp_path / "rows.jsonl"))


def test_a_row_without_a_templated_column_is_refused_by_number() -> None:
    rows = [dict(r) for r in ROWS]
    del rows[6]["phrase"]
    assert refused(rows=rows) == "Row 7 of train_split 'train' has no value in column 'phrase': fill it in or remove " \
                                 "the row."


def test_bad_cells_in_the_eval_split_are_refused_too(tmp_path) -> None:
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_list(ROWS), "test": Dataset.from_list(with_cell(None, row=2))}).save_to_disk(
        str(tmp_path / "saved"))
    assert "Row 2 of eval_split 'test' has no value in column 'tone'" in refused(
        data_name=str(tmp_path / "saved"), eval_split="test")


def test_numbers_in_cells_render_as_text_and_unused_columns_are_not_checked() -> None:
    rows = [{"phrase": i, "tone": 1.5, "extra": None} for i in range(10)]
    data = load_data(config(rows=rows, eval_size=0))
    assert len(data.train) == 10
    from slmnb.data import render

    assert render("{phrase} is {tone}", rows[3]) == "3 is 1.5"
    with pytest.raises(ConfigError, match=r"response_template uses \{tone\}, which holds a list in this row"):
        render("{tone}", {"tone": ["Joy"]}, "response_template")


def test_data_files_that_are_not_utf8_are_one_sentence(tmp_path) -> None:
    for suffix in ("json", "jsonl", "csv"):
        path = tmp_path / f"latin.{suffix}"
        text = json.dumps(ROWS[0], ensure_ascii=False) if suffix != "csv" else "phrase,tone\ncafé,Joy\n"
        path.write_bytes(text.replace("p0", "café").encode("latin-1"))
        assert refused(data_files=str(path)).endswith(f"latin.{suffix}' is not UTF-8 text: save it as UTF-8.")


def test_a_file_named_parquet_that_is_not_parquet_is_one_sentence(tmp_path) -> None:
    (tmp_path / "fake.parquet").write_text("phrase,tone\nhi,Joy\n")
    assert "fake.parquet' is not a readable Parquet file" in refused(data_files=str(tmp_path / "fake.parquet"))


@pytest.mark.parametrize("damage", ["empty folder", "garbage state", "garbage arrow", "no arrow"])
def test_a_broken_saved_dataset_folder_is_one_sentence(tmp_path, damage: str) -> None:
    from datasets import Dataset

    folder = tmp_path / "saved"
    Dataset.from_list(ROWS).save_to_disk(str(folder))
    arrow = next(folder.glob("*.arrow"))
    if damage == "empty folder":
        for path in folder.iterdir():
            path.unlink()
    elif damage == "garbage state":
        (folder / "state.json").write_text("[1, 2")
    elif damage == "garbage arrow":
        arrow.write_bytes(b"\x00garbage" * 10)
    else:
        arrow.unlink()
    assert "is not a readable folder saved with datasets' save_to_disk" in refused(data_name=str(folder))


def test_a_csv_with_a_byte_order_mark_keeps_its_first_column_name(tmp_path) -> None:
    path = tmp_path / "excel.csv"
    path.write_text("phrase,tone\n" + "".join(f"{r['phrase']},{r['tone']}\n" for r in ROWS), encoding="utf-8-sig")
    assert load_data(config(data_files=str(path), eval_size=0)).columns == ["phrase", "tone"]


@pytest.mark.parametrize(
    ("text", "message"),
    [("phrase,tone\na,Joy,extra\n", "bad.csv row 1 has more fields than the header"),
     ("phrase,tone\na\n", "Row 1 of train_split 'train' has no value in column 'tone'"),
     ("phrase,phrase\na,b\n", "the same column name twice"),
     ("", "The training data has no rows"),
     ('phrase,tone\n"a' + "b" * 200_000 + '",Joy\n', "bad.csv cannot be read as CSV (field larger than field limit")],
)
def test_broken_csv_files_are_one_sentence(tmp_path, text: str, message: str) -> None:
    (tmp_path / "bad.csv").write_text(text)
    assert message in refused(data_files=str(tmp_path / "bad.csv"))


@pytest.mark.parametrize(
    ("text", "message"),
    [("[" * 100_000 + "]" * 100_000, "line 1 is not valid JSON (nested too deeply or a number too long)"),
     ('[{"phrase": "a", "tone": ' + "9" * 5000 + "}]", "line 1 is not valid JSON"),
     ("{}", "the rows have no columns at all"),
     ("[[1, 2]]", "must hold a list of objects or one object per line")],
)
def test_json_that_python_cannot_hold_is_one_sentence(tmp_path, text: str, message: str) -> None:
    (tmp_path / "bad.json").write_text(text)
    assert message in refused(data_files=str(tmp_path / "bad.json"))


def test_data_paths_that_cannot_exist_are_one_sentence(tmp_path) -> None:
    assert "cannot be a file name (too long)" in refused(data_files="x" * 5000 + ".json")
    assert "does not exist" in refused(data_files="~nobody-at-all/rows.json")
    assert "is a folder" in refused(data_files=str(tmp_path))
    assert "is neither a bundled dataset" in refused(data_name="~nobody-at-all/saved")


def test_encode_rows_calls_check_every_64_rows_and_lets_it_abort(tokenizer) -> None:
    from slmnb.data import encode_rows

    calls: list[int] = []

    def check() -> None:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("stop")

    rows = [{"phrase": f"p{i}", "tone": "Joy"} for i in range(300)]
    encoded, dropped = encode_rows(config(), tokenizer, rows[:130], check=lambda: calls.append(1))
    assert len(encoded) == 130 and dropped == 0 and len(calls) == 3  # rows 0, 64 and 128
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        encode_rows(config(), tokenizer, rows, check=check)
    assert len(calls) == 3
