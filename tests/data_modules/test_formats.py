"""Preference data in the formats users have (lit_safe.data_modules.formats) through PKUSafeRLHFDataModule: TRL
explicit-prompt rows, TRL conversational rows (explicit and implicit prompt), Anthropic HH transcripts, each prepared
and streamed to exactly the items and batches of the equivalent PKU-SafeRLHF rows; multi-turn prompts in the Safe
RLHF template; column mapping; detection; safety labels required only by the views that read them; bad rows named
(file, line, the file's own column) or counted."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from litdata import StreamingDataset

from lit_safe.data_modules.formats import (
    FORMATS,
    LabelNeeds,
    check_columns,
    label_needs,
    map_columns,
    normalise_row,
    parse_hh,
    render_prompt,
    row_formats,
)
from lit_safe.data_modules.pku_saferlhf import PKUSafeRLHFDataModule
from lit_safe.data_modules.schemas import PKU_HARM_CATEGORIES
from lit_safe.data_modules.sources import DataValidationError
from lit_safe.data_modules.synthetic import generate_pku_saferlhf_rows

# Written out here (not imported) so that a change of the module's default template is caught.
TEMPLATE = "BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:"
ONE_SPLIT = {"val_fraction": 0.0, "test_fraction": 0.0}


# ------------------------------------------------------------------------------------------------------ helpers
def _write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows),
                    encoding="utf-8")
    return path


def _module(source, tmp_path, **kwargs) -> PKUSafeRLHFDataModule:
    kwargs.setdefault("num_workers", 0)
    kwargs.setdefault("max_length", 256)
    return PKUSafeRLHFDataModule(tokenizer="tiny", source=str(source), prepared_dir=str(tmp_path / "prepared"),
                                 **kwargs)


def _items(dm: PKUSafeRLHFDataModule) -> dict[str, list[dict]]:
    """Every prepared item of every split, in stored order, as plain lists."""
    out = {}
    for split in dm.report.splits:
        if not (Path(dm.prepared_location()) / split / "index.json").is_file():
            continue
        dataset = StreamingDataset(f"{dm.prepared_location()}/{split}", shuffle=False)
        out[split] = [{k: np.asarray(v).tolist() for k, v in dataset[i].items()} for i in range(len(dataset))]
    return out


def _batches(dm: PKUSafeRLHFDataModule) -> list[dict[str, torch.Tensor]]:
    dm.setup("fit")
    return list(dm.train_dataloader())


def _same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            assert torch.equal(x[key], y[key]), key


def _prepared(source, tmp_path, **kwargs) -> tuple[PKUSafeRLHFDataModule, dict[str, list[dict]]]:
    dm = _module(source, tmp_path, **kwargs)
    dm.prepare()
    return dm, _items(dm)


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    rows = generate_pku_saferlhf_rows(30, seed=5)
    assert {r["better_response_id"] for r in rows} == {0, 1}  # both orders occur
    assert any(r["is_response_0_safe"] != r["is_response_1_safe"] for r in rows)
    assert any(r["is_response_0_safe"] == r["is_response_1_safe"] for r in rows)
    return rows


def _sides(row: dict) -> tuple[int, int]:
    """(id of the chosen response, id of the rejected one) of a PKU row."""
    better = row["better_response_id"]
    return better, 1 - better


def _trl(row: dict, labels: bool = False) -> dict:
    """The PKU row as a TRL explicit-prompt row (chosen = the better response), with its labels if asked."""
    c, r = _sides(row)
    out = {"prompt": row["prompt"], "chosen": row[f"response_{c}"], "rejected": row[f"response_{r}"]}
    if labels:
        out.update({
            "chosen_safe": row[f"is_response_{c}_safe"], "rejected_safe": row[f"is_response_{r}_safe"],
            "safer": "chosen" if row["safer_response_id"] == c else "rejected",
            "chosen_harm_category": row[f"response_{c}_harm_category"],
            "rejected_harm_category": row[f"response_{r}_harm_category"],
            "chosen_severity_level": row[f"response_{c}_severity_level"],
            "rejected_severity_level": row[f"response_{r}_severity_level"],
        })
    return out


def _pku_equivalent(row: dict) -> dict:
    """The PKU row with the chosen response first (so per-response items come in the same order)."""
    c, r = _sides(row)
    out = {"prompt": row["prompt"], "better_response_id": 0, "safer_response_id": 0 if row["safer_response_id"] == c
           else 1}
    for k, side in ((0, c), (1, r)):
        for name in ("response_{}", "is_response_{}_safe", "response_{}_harm_category", "response_{}_severity_level",
                     "response_{}_sha256"):
            out[name.format(k)] = row[name.format(side)]
    return out


def _conversational(row: dict) -> dict:
    c, r = _sides(row)
    return {"prompt": [{"role": "user", "content": row["prompt"]}],
            "chosen": [{"role": "assistant", "content": row[f"response_{c}"]}],
            "rejected": [{"role": "assistant", "content": row[f"response_{r}"]}]}


def _conversational_implicit(row: dict) -> dict:
    c, r = _sides(row)
    user = {"role": "user", "content": row["prompt"]}
    return {"chosen": [user, {"role": "assistant", "content": row[f"response_{c}"]}],
            "rejected": [user, {"role": "assistant", "content": row[f"response_{r}"]}]}


def _hh(row: dict) -> dict:
    c, r = _sides(row)
    head = f"\n\nHuman: {row['prompt']}\n\nAssistant:"
    return {"chosen": f"{head} {row[f'response_{c}']}", "rejected": f"{head} {row[f'response_{r}']}"}


CONVERTERS = {
    "prompt_chosen_rejected": _trl,
    "conversational": _conversational,
    "conversational_implicit": _conversational_implicit,
    "hh": _hh,
}


# ----------------------------------------------------------------------------- every format = its PKU rows
@pytest.mark.parametrize("shape", sorted(CONVERTERS))
def test_each_format_prepares_and_streams_as_its_pku_rows(shape, rows, tmp_path, capsys):
    pku = _write_jsonl(tmp_path / "pku.jsonl", rows)
    other = _write_jsonl(tmp_path / f"{shape}.jsonl", [CONVERTERS[shape](r) for r in rows])
    # default split carving (a seeded hash of the prompt): the same rows land in the same splits
    settings = {"val_fraction": 0.2, "test_fraction": 0.2, "batch_size": 4}
    pku_dm, expected = _prepared(pku, tmp_path, **settings)
    capsys.readouterr()
    dm, items = _prepared(other, tmp_path, **settings)

    fmt = shape.removesuffix("_implicit")
    assert dm.row_format == fmt
    assert f"Format: {fmt} (detected from {other}: line 1)" in capsys.readouterr().out
    meta = json.loads((Path(dm.prepared_location()) / "meta.json").read_text())
    assert meta["row_format"] == fmt and meta["row_format_detected"] is True
    assert set(items) == {"train", "val", "test"}
    assert items == expected  # token ids, labels and source row numbers, split by split
    assert sum(len(v) for v in items.values()) == len(rows)
    _same_batches(_batches(dm), _batches(pku_dm))


@pytest.mark.parametrize("view,pku_settings", [
    ("safety", {}),
    ("moderation", {}),
    ("prompts", {}),
    ("preference_pairs", {}),
    ("sft", {"sft_responses": "better"}),  # the chosen/rejected formats fine-tune on the chosen response by default
])
def test_labelled_trl_rows_give_every_view_the_pku_items(view, pku_settings, rows, tmp_path):
    pku = _write_jsonl(tmp_path / "pku.jsonl", [_pku_equivalent(r) for r in rows])
    trl = _write_jsonl(tmp_path / "trl.jsonl", [_trl(r, labels=True) for r in rows])
    pku_dm, expected = _prepared(pku, tmp_path, view=view, batch_size=4, **ONE_SPLIT, **pku_settings)
    dm, items = _prepared(trl, tmp_path, view=view, batch_size=4, **ONE_SPLIT)
    assert dm.report.splits["train"].to_dict() == pku_dm.report.splits["train"].to_dict()
    assert items == expected and len(items["train"]) > 0
    _same_batches(_batches(dm), _batches(pku_dm))
    if view == "safety":  # the cost signs come from chosen_safe / rejected_safe
        signs = {(i["unsafer_sign"], i["safer_sign"]) for i in items["train"]}
        assert signs == {(1, -1), (-1, -1), (1, 1)}


def test_sft_defaults_follow_the_format(rows, tmp_path):
    pku = _write_jsonl(tmp_path / "pku.jsonl", rows)
    trl = _write_jsonl(tmp_path / "trl.jsonl", [_trl(r) for r in rows])
    assert len(_prepared(pku, tmp_path, view="sft", **ONE_SPLIT)[1]["train"]) == 2 * len(rows)  # both responses
    assert len(_prepared(trl, tmp_path, view="sft", **ONE_SPLIT)[1]["train"]) == len(rows)  # the chosen ones
    assert len(_prepared(trl, tmp_path, view="sft", sft_responses="both", **ONE_SPLIT)[1]["train"]) == 2 * len(rows)


# ---------------------------------------------------------------------------------------- multi-turn prompts
TURNS = [("user", "How do I bake bread?"), ("assistant", "Mix flour, water and yeast."),
         ("user", "And how long do I knead it?")]
CHOSEN, REJECTED = "About ten minutes, until it is smooth.", "No idea."


def _messages(turns):
    return [{"role": role, "content": content} for role, content in turns]


MULTI_TURN = {
    "conversational": {"prompt": _messages(TURNS), "chosen": _messages([("assistant", CHOSEN)]),
                       "rejected": _messages([("assistant", REJECTED)])},
    "conversational_implicit": {"chosen": _messages([*TURNS, ("assistant", CHOSEN)]),
                                "rejected": _messages([*TURNS, ("assistant", REJECTED)])},
    "hh": {"chosen": "\n\nHuman: How do I bake bread?\n\nAssistant: Mix flour, water and yeast.\n\nHuman: And how long "
                     f"do I knead it?\n\nAssistant: {CHOSEN}",
           "rejected": "\n\nHuman: How do I bake bread?\n\nAssistant: Mix flour, water and yeast.\n\nHuman: And how "
                       f"long do I knead it?\n\nAssistant: {REJECTED}"},
}


@pytest.mark.parametrize("shape", sorted(MULTI_TURN))
def test_multi_turn_prompts_continue_the_safe_rlhf_template(shape, tmp_path, tiny_tokenizer):
    path = _write_jsonl(tmp_path / "multi.jsonl", [MULTI_TURN[shape]])
    dm, items = _prepared(path, tmp_path, test_split=None, **ONE_SPLIT)
    (item,) = items["train"]
    conversation = ("BEGINNING OF CONVERSATION: USER: How do I bake bread? ASSISTANT:Mix flour, water and yeast. "
                    "USER: And how long do I knead it? ASSISTANT:")
    eos = tiny_tokenizer.eos_token_id
    assert item["chosen"] == tiny_tokenizer(conversation + CHOSEN)["input_ids"] + [eos]
    assert item["rejected"] == tiny_tokenizer(conversation + REJECTED)["input_ids"] + [eos]
    # the prompts view generates from the same multi-turn prompt
    prompts = _prepared(path, tmp_path, view="prompts", test_split=None, **ONE_SPLIT)[1]["train"]
    assert prompts[0]["input_ids"] == tiny_tokenizer(conversation)["input_ids"]


def test_normalised_rows_keep_the_messages():
    row = {"prompt": _messages([("system", "Be brief."), *TURNS]),
           "chosen": _messages([("assistant", "Ten minutes."), ("user", "Thanks!"), ("assistant", "Enjoy.")]),
           "rejected": _messages([("assistant", "No idea.")])}
    out, problems = normalise_row(row, "conversational")
    assert problems == []
    assert out["prompt"] == ("Be brief.\n\nHow do I bake bread? ASSISTANT:Mix flour, water and yeast. USER: And how "
                             "long do I knead it?")
    assert out["response_0"] == "Ten minutes. USER: Thanks! ASSISTANT:Enjoy."
    assert out["response_1"] == "No idea." and out["better_response_id"] == 0
    assert out["prompt_messages"] == row["prompt"]
    assert out["response_0_messages"] == row["chosen"] and out["response_1_messages"] == row["rejected"]
    # a string prompt is one user turn; a PKU-SafeRLHF row is used as it is
    trl, _ = normalise_row({"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away."}, "prompt_chosen_rejected")
    assert trl["prompt_messages"] == [{"role": "user", "content": "Hi?"}]
    pku = {"prompt": "p", "response_0": "a", "response_1": "b", "better_response_id": 1}
    assert normalise_row(pku, "pku_saferlhf") == (pku, [])
    assert normalise_row(pku, "pku_saferlhf")[0] is pku


def test_a_string_prompt_beside_messages():
    """TRL rows with a string prompt and assistant turns; ultrafeedback_binarized rows with a string prompt beside
    whole conversations (which hold it): both give the pair of the explicit conversational row."""
    user = {"role": "user", "content": "Hi?"}
    good, bad = {"role": "assistant", "content": "Hello."}, {"role": "assistant", "content": "Go away."}
    explicit, _ = normalise_row({"prompt": [user], "chosen": [good], "rejected": [bad]}, "conversational")
    assert normalise_row({"prompt": "Hi?", "chosen": [good], "rejected": [bad]}, "conversational") == (explicit, [])
    whole = {"prompt": "Hi?", "chosen": [user, good], "rejected": [user, bad], "score_chosen": 8.0}
    assert normalise_row(whole, "conversational") == (explicit, [])
    _, problems = normalise_row({"prompt": 3, "chosen": [good], "rejected": [bad]}, "conversational")
    assert problems == [("prompt", "expected a list of {role, content} messages, got int 3")]


def test_hh_transcripts_split_at_the_last_shared_assistant_turn():
    turns = parse_hh("\n\nHuman: a\n\nAssistant:  b \n\nHuman: c")
    assert turns == _messages([("user", "a"), ("assistant", "b"), ("user", "c")])
    assert parse_hh("Human: a") == _messages([("user", "a")])  # the leading blank line is optional
    assert parse_hh("preamble\n\nHuman: a") is None
    # the two transcripts share the first answer: the prompt ends before the last shared "Assistant:"
    row = {"chosen": "\n\nHuman: q\n\nAssistant: same start, then good", "rejected": "\n\nHuman: q\n\nAssistant: "
                                                                                    "same start, then bad"}
    out, problems = normalise_row(row, "hh")
    assert problems == [] and out["prompt"] == "q"
    assert (out["response_0"], out["response_1"]) == ("same start, then good", "same start, then bad")
    assert render_prompt(out["prompt_messages"]) == "q"


# ------------------------------------------------------------------------------------------------- columns
def test_column_mapping_reads_a_file_with_its_own_names(rows, tmp_path):
    columns = {"prompt": "question", "chosen": "answer_good", "rejected": "answer_bad"}
    renamed = [{"question": t["prompt"], "answer_good": t["chosen"], "answer_bad": t["rejected"], "id": n}
               for n, t in enumerate(_trl(r) for r in rows)]
    trl = _write_jsonl(tmp_path / "trl.jsonl", [_trl(r) for r in rows])
    mine = _write_jsonl(tmp_path / "mine.jsonl", renamed)
    expected = _prepared(trl, tmp_path, **ONE_SPLIT)[1]
    dm, items = _prepared(mine, tmp_path, columns=columns, **ONE_SPLIT)
    assert dm.row_format == "prompt_chosen_rejected" and items == expected
    # without the mapping the file fits no format: one error listing the accepted formats and the fields found
    with pytest.raises(DataValidationError) as err:
        _module(mine, tmp_path, **ONE_SPLIT).prepare()
    message = str(err.value)
    assert f"{mine}: line 1: unknown preference format" in message
    assert "['answer_bad', 'answer_good', 'id', 'question']" in message
    assert all(f"  {name}: " in message for name in FORMATS)
    # a bad row names the file's column, not the field it stands for
    renamed[3]["answer_good"] = 7
    bad = _write_jsonl(tmp_path / "bad.jsonl", renamed)
    with pytest.raises(DataValidationError, match=r"line 4: field 'answer_good': expected str, got int 7"):
        _module(bad, tmp_path, columns=columns, **ONE_SPLIT).prepare()


def test_columns_are_checked_and_may_swap():
    with pytest.raises(ValueError, match="unknown field 'answer'"):
        check_columns({"answer": "text"})
    with pytest.raises(ValueError, match=r"\['text'\] stand for more than one field"):
        check_columns({"chosen": "text", "rejected": "text"})
    with pytest.raises(ValueError, match="non-empty string"):
        check_columns({"prompt": ""})
    swapped = map_columns({"chosen": "b", "rejected": "a", "prompt": "p"}, {"chosen": "rejected", "rejected": "chosen"})
    assert swapped == {"chosen": "a", "rejected": "b", "prompt": "p"}


def test_format_and_columns_are_part_of_the_fingerprint(rows, tmp_path):
    path = _write_jsonl(tmp_path / "trl.jsonl", [_trl(r) for r in rows])
    auto = _module(path, tmp_path)
    declared = _module(path, tmp_path, format="prompt_chosen_rejected")
    mapped = _module(path, tmp_path, columns={"prompt": "prompt"})
    assert len({auto.prepared_location(), declared.prepared_location(), mapped.prepared_location()}) == 3
    assert "format" not in auto._settings() and "columns" not in auto._settings()  # PKU sources keep theirs
    assert declared._settings()["format"] == "prompt_chosen_rejected"


def test_the_synthetic_source_is_pku_saferlhf(tmp_path):
    with pytest.raises(ValueError, match="synthetic source writes pku_saferlhf rows"):
        _module("synthetic", tmp_path, format="hh")
    with pytest.raises(ValueError, match="format must be auto or one of"):
        _module("x.jsonl", tmp_path, format="alpaca")


# ----------------------------------------------------------------------------------------------- detection
def test_detection_by_fields():
    assert row_formats({"prompt": "p", "response_0": "a", "response_1": "b"}) == ["pku_saferlhf"]
    assert row_formats({"prompt": "p", "chosen": "a", "rejected": "b"}) == ["prompt_chosen_rejected"]
    assert row_formats({"chosen": [], "rejected": []}) == ["conversational"]
    assert row_formats({"chosen": "a", "rejected": "b"}) == ["hh"]
    assert row_formats({"prompt": "p", "chosen": "a"}) == []
    assert row_formats({"response_0": "a", "response_1": "b", "chosen": "a", "rejected": "b"}) == [
        "pku_saferlhf", "hh"]


def test_detection_passes_over_bad_first_rows_that_validation_then_names(rows, tmp_path, capsys):
    trl = [_trl(r) for r in rows[:6]]
    lines = ['{"prompt": "cut', {"prompt": "p", "chosen": "a"}, *trl]  # invalid JSON, then no 'rejected'
    path = _write_jsonl(tmp_path / "trl.jsonl", lines)
    with pytest.raises(DataValidationError) as err:
        _module(path, tmp_path, **ONE_SPLIT).prepare()
    assert f"Format: prompt_chosen_rejected (detected from {path}: line 3)" in capsys.readouterr().out
    message = str(err.value)
    assert "2 invalid row(s)" in message
    assert f"{path}: line 1: field '<row>': invalid JSON" in message
    assert f"{path}: line 2: field 'rejected': missing required field" in message
    train = _module(path, tmp_path, on_bad_row="skip", **ONE_SPLIT).prepare().splits["train"]
    assert train.rows_read == 8 and train.kept == 6
    assert dict(train.dropped) == {"invalid:<row>": 1, "invalid:rejected": 1}


def test_ambiguous_rows_are_one_error(rows, tmp_path):
    row = {**rows[0], "chosen": rows[0]["response_0"], "rejected": rows[0]["response_1"]}
    path = _write_jsonl(tmp_path / "both.jsonl", [row])
    with pytest.raises(DataValidationError) as err:
        _module(path, tmp_path, **ONE_SPLIT).prepare()
    message = str(err.value)
    assert f"{path}: line 1: ambiguous preference format" in message
    assert "pku_saferlhf and prompt_chosen_rejected" in message
    # declaring the format settles it: the PKU fields are read, the others ignored
    dm = _module(path, tmp_path, format="pku_saferlhf", test_split=None, **ONE_SPLIT)
    assert dm.prepare().splits["train"].kept == 1


def test_a_declared_format_is_used_as_declared(rows, tmp_path, capsys):
    path = _write_jsonl(tmp_path / "trl.jsonl", [_trl(r) for r in rows[:4]])
    dm = _module(path, tmp_path, format="prompt_chosen_rejected", test_split=None, **ONE_SPLIT)
    assert dm.prepare().splits["train"].kept == 4
    assert "Format: prompt_chosen_rejected (declared)" in capsys.readouterr().out
    # the wrong format for the file: every row is named
    with pytest.raises(DataValidationError) as err:
        _module(path, tmp_path, format="conversational", **ONE_SPLIT).prepare()
    assert "4 invalid row(s)" in str(err.value)
    assert f"{path}: line 1: field 'chosen': expected a list of {{role, content}} messages, got str" in str(err.value)


# ----------------------------------------------------------------------------------------------- safety labels
def test_label_needs_per_view():
    assert label_needs("preference") == label_needs("prompts") == label_needs("preference_pairs") == LabelNeeds()
    assert label_needs("sft", "both") == LabelNeeds() and label_needs("sft", "safer") == LabelNeeds(safer=True)
    assert label_needs("safety") == LabelNeeds(safety=True, safer=True)
    assert label_needs("moderation") == LabelNeeds(safety=True, categories=True)


@pytest.mark.parametrize("view,settings,missing", [
    ("safety", {}, "chosen_safe, rejected_safe"),
    ("moderation", {}, "chosen_safe, rejected_safe, chosen_harm_category, rejected_harm_category"),
    ("sft", {"sft_responses": "safer"}, "chosen_safe, rejected_safe, safer"),
])
def test_a_view_that_needs_missing_labels_is_one_error_before_preparing(view, settings, missing, rows, tmp_path):
    path = _write_jsonl(tmp_path / "trl.jsonl", [_trl(r) for r in rows])
    dm = _module(path, tmp_path, view=view, **settings)
    with pytest.raises(DataValidationError) as err:
        dm.prepare()
    message = str(err.value)
    assert message.startswith(f"{path}: the {view} view")
    assert f"needs safety labels ({missing})" in message
    assert f"its first row ({path}: line 1) has only ['chosen', 'prompt', 'rejected']" in message
    assert "\n" not in message  # one error, not one per row
    assert not (tmp_path / "prepared").exists() or not any((tmp_path / "prepared").iterdir())
    if view == "safety":  # the same file trains a reward model, a DPO policy, an SFT policy, and gives prompts
        for other in ("preference", "preference_pairs", "sft", "prompts"):
            assert _module(path, tmp_path, view=other, **ONE_SPLIT).prepare().splits["train"].kept > 0


def test_missing_label_names_use_the_files_columns(rows, tmp_path):
    path = _write_jsonl(tmp_path / "trl.jsonl", [_trl(r) for r in rows[:3]])
    with pytest.raises(DataValidationError, match=r"needs safety labels \(good_is_safe, rejected_safe\)"):
        _module(path, tmp_path, view="safety", columns={"chosen_safe": "good_is_safe"}).prepare()


def test_the_safer_response_is_implied_by_differing_labels():
    row = {"prompt": "p", "chosen": "a", "rejected": "b"}
    safety = label_needs("safety")
    out, problems = normalise_row({**row, "chosen_safe": False, "rejected_safe": True}, "prompt_chosen_rejected",
                                  safety)
    assert problems == [] and out["safer_response_id"] == 1
    assert (out["is_response_0_safe"], out["is_response_1_safe"]) == (False, True)
    out, problems = normalise_row({**row, "chosen_safe": True, "rejected_safe": True, "safer": "rejected"},
                                  "prompt_chosen_rejected", safety)
    assert problems == [] and out["safer_response_id"] == 1
    # equal labels and no 'safer': a valid row that the safety view cannot rank (it drops and counts it, see below);
    # the sft view's `safer` responses need the field; the preference view does not care
    out, problems = normalise_row({**row, "chosen_safe": True, "rejected_safe": True}, "prompt_chosen_rejected",
                                  safety)
    assert problems == [] and "safer_response_id" not in out
    _, problems = normalise_row({**row, "chosen_safe": True, "rejected_safe": True}, "prompt_chosen_rejected",
                                label_needs("sft", "safer"))
    assert [field for field, _ in problems] == ["safer"]
    out, problems = normalise_row({**row, "chosen_safe": True, "rejected_safe": True}, "prompt_chosen_rejected")
    assert problems == [] and "safer_response_id" not in out


def test_bad_labelled_rows_are_named_or_counted(rows, tmp_path):
    good = [_trl(r, labels=True) for r in rows[:8]]
    bad = [
        {**good[0], "rejected": 3},  # line 9
        {**good[1], "chosen_safe": "yes"},  # line 10
        {**good[2], "prompt": "Another prompt?", "chosen_safe": True, "rejected_safe": True, "safer": None},  # l. 11
        {**good[3], "safer": "both"},  # line 12
        {**good[4], "prompt": "A new prompt?", "chosen_safe": False, "rejected_safe": True, "safer": "chosen"},
    ]
    path = _write_jsonl(tmp_path / "trl.jsonl", good + bad)
    with pytest.raises(DataValidationError) as err:
        _module(path, tmp_path, view="safety", **ONE_SPLIT).prepare()
    message = str(err.value)
    assert "3 invalid row(s)" in message
    assert f"{path}: line 9: field 'rejected': expected str, got int 3" in message
    assert f"{path}: line 10: field 'chosen_safe': expected bool, got str 'yes'" in message
    assert "line 11" not in message  # both labelled safe, no `safer`: valid, but the safety view cannot order it
    assert f"{path}: line 12: field 'safer': expected 'chosen' or 'rejected'" in message
    train = _module(path, tmp_path, view="safety", on_bad_row="skip", **ONE_SPLIT).prepare().splits["train"]
    assert dict(train.dropped) == {"invalid:rejected": 1, "invalid:chosen_safe": 1, "invalid:safer": 1,
                                   "safer_unknown": 1,  # line 11: the view's drop
                                   "safety_label_contradiction": 1}  # the safer one labelled unsafe: a view's drop
    assert train.notes["safety_label_contradiction"] == 1
    assert train.rows_read == 13 and train.kept == 8
    # the preference view reads neither label: only the broken text is a problem
    train = _module(path, tmp_path, on_bad_row="skip", **ONE_SPLIT).prepare().splits["train"]
    assert dict(train.dropped) == {"invalid:rejected": 1, "invalid:chosen_safe": 1, "invalid:safer": 1}
    assert train.kept == 10


def test_harm_categories_are_checked_with_the_pku_vocabulary(rows):
    row = _trl(rows[0], labels=True)
    row["rejected_harm_category"] = {**row["rejected_harm_category"], "Jaywalking": True}
    _, problems = normalise_row(row, "prompt_chosen_rejected", label_needs("moderation"))
    assert problems == [("rejected_harm_category", "unknown harm categories ['Jaywalking']")]
    row = _trl(rows[0], labels=True)
    row["chosen_severity_level"] = 4
    _, problems = normalise_row(row, "prompt_chosen_rejected")
    assert problems == [("chosen_severity_level", "expected a severity level 0-3, got 4")]
    assert len(row["chosen_harm_category"]) == len(PKU_HARM_CATEGORIES)


@pytest.mark.parametrize("row,field,message", [
    ({"prompt": [{"role": "bot", "content": "hi"}], "chosen": [{"role": "assistant", "content": "a"}],
      "rejected": [{"role": "assistant", "content": "b"}]}, "prompt[0].role",
     "expected one of system, user, assistant"),
    ({"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": ["a"]}],
      "rejected": [{"role": "assistant", "content": "b"}]}, "chosen[0].content", "expected str, got list"),
    ({"prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
      "chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]},
     "prompt[1].role", "expected 'user': the prompt ends with the user turn"),
    ({"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "user", "content": "a"}],
      "rejected": [{"role": "assistant", "content": "b"}]}, "chosen[0].role", "expected 'assistant'"),
    ({"chosen": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a"}],
      "rejected": [{"role": "user", "content": "q2"}, {"role": "assistant", "content": "b"}]},
     "chosen", "shares no user turn with 'rejected'"),
    ({"chosen": [{"role": "user", "content": "q"}], "rejected": [{"role": "user", "content": "q"},
                                                               {"role": "assistant", "content": "b"}]},
     "chosen", "has no assistant turn after the prompt"),
])
def test_bad_conversations_name_the_message(row, field, message):
    _, problems = normalise_row(row, "conversational")
    assert problems[0][0] == field and message in problems[0][1], problems


@pytest.mark.parametrize("row,field,message", [
    ({"chosen": "Human: q Assistant: a", "rejected": "Human: q Assistant: b"}, "chosen",
     "shares no '\\n\\nAssistant:'"),
    ({"chosen": "intro\n\nHuman: q\n\nAssistant: a", "rejected": "intro\n\nHuman: q\n\nAssistant: b"}, "chosen",
     "does not start with a '\\n\\nHuman:' turn"),
    ({"chosen": "\n\nAssistant: a", "rejected": "\n\nAssistant: b"}, "chosen", "has no user turn"),
    ({"chosen": ["\n\nHuman: q"], "rejected": "b"}, "chosen", "expected an HH transcript (str), got list"),
])
def test_bad_hh_transcripts_are_named(row, field, message):
    _, problems = normalise_row(row, "hh")
    assert problems[0][0] == field and message in problems[0][1], problems


def test_bad_hh_rows_are_counted_in_the_report(rows, tmp_path):
    lines = [_hh(r) for r in rows[:5]] + [{"chosen": "no turns here", "rejected": "none either"}]
    path = _write_jsonl(tmp_path / "hh.jsonl", lines)
    train = _module(path, tmp_path, on_bad_row="skip", **ONE_SPLIT).prepare().splits["train"]
    assert train.rows_read == 6 and train.kept == 5 and dict(train.dropped) == {"invalid:chosen": 1}
