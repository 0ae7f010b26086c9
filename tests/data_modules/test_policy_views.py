"""The policy views of PKU-SafeRLHF: ``sft`` (prompt + response + EOS, prompt masked in the labels) and ``prompts``
(distinct prompts, left-padded for generation). Token ids are recomputed here from the tokenizer and the template,
independently of lit_safe.data_modules.policy; real rows are checked against the raw file."""

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from litdata import StreamingDataset

from lit_safe.data_modules.pku_saferlhf import PKUSafeRLHFDataModule, pku_sft_pairs
from lit_safe.data_modules.policy import IGNORE_INDEX, PromptView, SFTView, encode_sft
from lit_safe.data_modules.preparation import SplitReport
from lit_safe.data_modules.synthetic import generate_pku_saferlhf_rows
from lit_safe.models.text import encode_prompts

# Written out here (not imported) so that a change of the modules' default template is caught.
TEMPLATE = "BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:"
SEED = 42
MAX_LENGTH = 512


# -------------------------------------------------------------------------------------------------- helpers
def _rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _items(location: str, split: str) -> list[dict]:
    dataset = StreamingDataset(f"{location}/{split}", shuffle=False)
    return [dataset[i] for i in range(len(dataset))]


def _module(source, prepared_dir, **kwargs) -> PKUSafeRLHFDataModule:
    kwargs.setdefault("num_workers", 0)
    return PKUSafeRLHFDataModule(tokenizer="tiny", source=str(source), prepared_dir=str(prepared_dir), **kwargs)


def _prompt_ids(tok, prompt: str) -> list[int]:
    """BOS + the prompt in the template (the tokenizer's own special tokens; the tiny one adds no EOS)."""
    ids = tok(TEMPLATE.replace("{prompt}", prompt))["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] != tok.eos_token_id
    return ids


def _response_ids(tok, response: str) -> list[int]:
    return tok(response, add_special_tokens=False)["input_ids"]


def _sft_ids(tok, prompt: str, response: str, max_length: int = MAX_LENGTH) -> tuple[list[int], int] | None:
    """(prompt ids + response ids cut to the room left + EOS, prompt length), or None when no room is left."""
    p = _prompt_ids(tok, prompt)
    room = max_length - 1 - len(p)
    if room < 1:
        return None
    return [*p, *_response_ids(tok, response)[:room], tok.eos_token_id], len(p)


def _last_template_token(tok) -> int:
    return _response_ids(tok, " ASSISTANT:")[-1]


def _sha(prompt: str, response: str) -> str:
    return hashlib.sha256((prompt + response).encode("utf-8")).hexdigest()


def _pku_row(base: dict, prompt: str, response_0: str, response_1: str) -> dict:
    """A valid 2024-schema row: ``base``'s labels with new texts (and their sha256)."""
    return {**base, "prompt": prompt, "response_0": response_0, "response_1": response_1,
            "response_0_sha256": _sha(prompt, response_0), "response_1_sha256": _sha(prompt, response_1)}


def _check_sft_batch(batch: dict, items_by_row: dict, tok) -> int:
    """Checks a collated sft batch against expected items; returns how many sequences it held."""
    ids, mask, labels, rows = batch["input_ids"], batch["attention_mask"], batch["labels"], batch["row"]
    assert ids.shape == mask.shape == labels.shape
    assert ids.dtype == labels.dtype == torch.long
    for b in range(ids.size(0)):
        length = int(mask[b].sum())
        assert mask[b, :length].eq(1).all() and mask[b, length:].eq(0).all()  # right padding
        assert ids[b, length:].eq(tok.pad_token_id).all()
        candidates = items_by_row[int(rows[b])]
        seq = ids[b, :length].tolist()
        matches = [p for s, p in candidates if s == seq]
        assert matches, f"row {int(rows[b])}: batch ids match none of its expected sequences"
        prompt_length = matches[0]
        expected_labels = [IGNORE_INDEX] * prompt_length + seq[prompt_length:] + [-100] * (ids.size(1) - length)
        assert labels[b].tolist() == expected_labels
    return ids.size(0)


# --------------------------------------------------------------------------------------- encoding, by hand
def test_encode_prompts_is_bos_and_template(tiny_tokenizer):
    tok = tiny_tokenizer
    prompts = ["How do I bake bread?", "Say hi", "ünïcödé and 2 spaces  here"]
    encoded = encode_prompts(tok, prompts, TEMPLATE)
    assert len(encoded) == 3
    for ids, prompt in zip(encoded, prompts):
        assert isinstance(ids, np.ndarray) and ids.dtype == np.int32
        assert ids.tolist() == _prompt_ids(tok, prompt)
        assert ids[0] == tok.bos_token_id
        assert ids[-1] == _last_template_token(tok) and tok.eos_token_id not in ids.tolist()
    assert encode_prompts(tok, [], TEMPLATE) == []


def test_encode_sft_prompt_then_response_then_eos(tiny_tokenizer):
    tok = tiny_tokenizer
    prompts = ["How do I bake bread?", "Say hi", "Say hi"]
    responses = ["Knead the dough, let it rise, then bake it.", "Hi!", ""]
    encoded, cut = encode_sft(tok, prompts, responses, TEMPLATE, MAX_LENGTH)
    assert cut == 0
    for (ids, prompt_length), prompt, response in zip(encoded, prompts, responses):
        assert ids.dtype == np.int32
        p, r = _prompt_ids(tok, prompt), _response_ids(tok, response)
        assert prompt_length == len(p)
        assert ids.tolist() == [*p, *r, tok.eos_token_id]
    assert encoded[2][0].tolist() == [*_prompt_ids(tok, "Say hi"), tok.eos_token_id]  # an empty response: EOS only
    assert encode_sft(tok, [], [], TEMPLATE, MAX_LENGTH) == ([], 0)


def test_encode_sft_length_boundaries(tiny_tokenizer):
    tok = tiny_tokenizer
    prompt, response = "How do I bake bread?", "Knead the dough, let it rise, then bake it."
    p, r, eos = _prompt_ids(tok, prompt), _response_ids(tok, response), tok.eos_token_id
    assert len(r) > 3

    def one(max_length):
        encoded, cut = encode_sft(tok, [prompt], [response], TEMPLATE, max_length)
        return encoded[0], cut

    # exactly fits: not cut
    (ids, n), cut = one(len(p) + len(r) + 1)
    assert cut == 0 and ids.tolist() == [*p, *r, eos] and n == len(p)
    # one token short: the response loses its last token, EOS stays
    (ids, n), cut = one(len(p) + len(r))
    assert cut == 1 and ids.tolist() == [*p, *r[:-1], eos] and len(ids) == len(p) + len(r)
    # room for a single response token
    (ids, n), cut = one(len(p) + 2)
    assert cut == 1 and ids.tolist() == [*p, r[0], eos]
    # the prompt leaves no room for a response token: None (not cut, not kept)
    item, cut = one(len(p) + 1)
    assert item is None and cut == 0
    item, cut = one(len(p) - 3)
    assert item is None and cut == 0


class _WordTokenizer:
    """Splits on whitespace only, so that text glued to the template's end ("ASSISTANT:Sure") is ONE token when the
    conversation is tokenised as a whole; BOS first and, like some tokenizers, EOS last with special tokens."""

    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def id(self, word: str) -> int:
        return self.vocab.setdefault(word, len(self.vocab) + 10)

    def __call__(self, texts, add_special_tokens=True):
        out = [[self.id(w) for w in t.split()] for t in texts]
        if add_special_tokens:
            out = [[self.bos_token_id, *ids, self.eos_token_id] for ids in out]
        return {"input_ids": out}


def test_prompt_and_response_are_tokenised_separately():
    tok = _WordTokenizer()
    prompt, response = "hello there", "Sure thing"
    (ids, prompt_length), = encode_sft(tok, [prompt], [response], TEMPLATE, 64)[0]
    p = [1] + [tok.id(w) for w in TEMPLATE.replace("{prompt}", prompt).split()]  # the EOS it adds is dropped
    r = [tok.id("Sure"), tok.id("thing")]
    assert prompt_length == len(p)
    assert ids.tolist() == [*p, *r, 2]
    assert tok.id("ASSISTANT:Sure") not in ids.tolist()  # what tokenising the whole conversation would give
    assert encode_prompts(tok, [prompt], TEMPLATE)[0].tolist() == p  # the very ids generation starts from


def test_sft_view_encode_counts_and_encode_inputs(tiny_tokenizer):
    tok = tiny_tokenizer
    long_prompt = " ".join(["please"] * 60)
    rows = [
        (0, {"prompt": "Say hi", "a": "Hi!", "b": "Hello."}),
        (1, {"prompt": "Say hi", "a": "Hi!", "b": "Hey."}),  # ("Say hi", "Hi!") again
        (2, {"prompt": long_prompt, "a": "Fine.", "b": "Sure."}),
        (3, {"prompt": "Tell a story", "a": " ".join(["once upon a time"] * 30), "b": "No."}),
    ]
    view = SFTView(lambda row: [(row["prompt"], row["a"]), (row["prompt"], row["b"])])
    report = SplitReport()
    max_length = 40
    assert len(_prompt_ids(tok, long_prompt)) > max_length
    items = list(view.encode(rows, tok, TEMPLATE, max_length, report))
    assert report.kept == len(items) == 5
    assert dict(report.dropped) == {"duplicate_response": 1, "prompt_too_long": 2}
    assert dict(report.notes) == {"truncated_sequences": 1}
    pairs = [(0, "Say hi", "Hi!"), (0, "Say hi", "Hello."), (1, "Say hi", "Hey."),
             (3, "Tell a story", rows[3][1]["a"]), (3, "Tell a story", "No.")]
    for item, (row, prompt, response) in zip(items, pairs):
        ids, prompt_length = _sft_ids(tok, prompt, response, max_length)
        assert int(item["row"]) == row
        assert item["input_ids"].tolist() == ids and int(item["prompt_length"]) == prompt_length
        assert view.length(item) == len(ids)
    assert len(items[3]["input_ids"]) == max_length and items[3]["input_ids"][-1] == tok.eos_token_id

    ids, cut = view.encode_inputs(tok, ["Say hi", "Tell a story"], ["Hi!", rows[3][1]["a"]], TEMPLATE, max_length)
    assert cut == 1
    assert [s.tolist() for s in ids] == [_sft_ids(tok, "Say hi", "Hi!", max_length)[0],
                                         _sft_ids(tok, "Tell a story", rows[3][1]["a"], max_length)[0]]
    with pytest.raises(ValueError, match="no room"):
        view.encode_inputs(tok, ["Say hi", long_prompt], ["Hi!", "Fine."], TEMPLATE, max_length)


def test_prompt_view_encode_dedup_and_room(tiny_tokenizer):
    tok = tiny_tokenizer
    short, other = "Say hi", "How do I bake bread?"
    rows = [(0, {"prompt": short}), (1, {"prompt": other}), (2, {"prompt": short}), (5, {"prompt": other})]
    n_short = len(_prompt_ids(tok, short))
    assert len(_prompt_ids(tok, other)) > n_short
    # max_length = len(short prompt) + 1: one token of room for it, none for the longer one
    report = SplitReport()
    items = list(PromptView().encode(rows, tok, TEMPLATE, n_short + 1, report))
    assert [(int(i["row"]), i["input_ids"].tolist()) for i in items] == [(0, _prompt_ids(tok, short))]
    assert report.kept == 1
    assert dict(report.dropped) == {"duplicate_prompt": 2, "prompt_too_long": 1}
    # max_length = its own length: no room left to generate
    report = SplitReport()
    assert list(PromptView().encode(rows[:1], tok, TEMPLATE, n_short, report)) == []
    assert dict(report.dropped) == {"prompt_too_long": 1}


def test_collates_by_hand():
    eos, pad = 2, 0
    items = [
        {"input_ids": np.asarray([1, 5, 6, 7, eos], dtype=np.int32), "prompt_length": 3, "row": 4},
        {"input_ids": np.asarray([1, 8, eos], dtype=np.int32), "prompt_length": 2, "row": 9},
    ]
    batch = SFTView.collate(items, pad_id=pad, multiple_of=4)
    assert batch["input_ids"].tolist() == [[1, 5, 6, 7, eos, 0, 0, 0], [1, 8, eos, 0, 0, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0, 0]]
    x = -100
    assert batch["labels"].tolist() == [[x, x, x, 7, eos, x, x, x], [x, x, eos, x, x, x, x, x]]
    assert batch["row"].tolist() == [4, 9]

    prompts = [{"input_ids": np.asarray([1, 5, 6], dtype=np.int32), "row": 3},
               {"input_ids": np.asarray([1, 7, 8, 9, 10], dtype=np.int32), "row": 0}]
    batch = PromptView.collate(prompts, pad_id=pad)
    assert batch["input_ids"].tolist() == [[0, 0, 1, 5, 6], [1, 7, 8, 9, 10]]
    assert batch["attention_mask"].tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert batch["row"].tolist() == [3, 0]


# ----------------------------------------------------------------------------------- sft, synthetic source
def test_sft_items_and_batches_synthetic(tmp_path, tiny_tokenizer):
    tok = tiny_tokenizer
    rows = generate_pku_saferlhf_rows(60, seed=SEED)  # the synthetic source's training rows
    dm = _module("synthetic", tmp_path, view="sft", synthetic_rows=60, val_fraction=0.0, test_split=None,
                 batch_size=8, group_size=2)
    train = dm.prepare().splits["train"]
    assert train.rows_read == 60

    # every distinct (prompt, response) pair once, in the order the rows give them
    expected, seen = [], set()
    for n, row in enumerate(rows):
        for k in (0, 1):
            pair = (row["prompt"], row[f"response_{k}"])
            if pair not in seen:
                seen.add(pair)
                expected.append((n, *_sft_ids(tok, *pair)))
    duplicates = 2 * len(rows) - len(expected)
    assert train.kept == len(expected)
    assert dict(train.dropped) == ({"duplicate_response": duplicates} if duplicates else {})
    assert train.notes["truncated_sequences"] == 0

    items = _items(dm.prepared_location(), "train")
    assert [(int(i["row"]), i["input_ids"].tolist(), int(i["prompt_length"])) for i in items] == expected
    for item in items:
        ids, n = item["input_ids"], int(item["prompt_length"])
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        assert ids[n - 1] == _last_template_token(tok)
        assert ids[:n].tolist() == _prompt_ids(tok, rows[int(item["row"])]["prompt"])
    # the response part is the raw response's own tokens (one of the row's two)
    for item in items:
        row, n = rows[int(item["row"])], int(item["prompt_length"])
        assert item["input_ids"][n:-1].tolist() in [_response_ids(tok, row["response_0"]),
                                                    _response_ids(tok, row["response_1"])]

    # the training loader streams exactly these items, collated with labels masked on prompt and padding
    by_row: dict[int, list] = {}
    for n, ids, prompt_length in expected:
        by_row.setdefault(n, []).append((ids, prompt_length))
    total = sum(_check_sft_batch(batch, by_row, tok) for batch in dm.train_dataloader())
    assert total == len(expected)

    # padding to a multiple: the extra columns are padding, labelled IGNORE_INDEX
    batch = SFTView.collate(items[:5], tok.pad_token_id, multiple_of=16)
    assert batch["input_ids"].size(1) % 16 == 0
    assert _check_sft_batch(batch, by_row, tok) == 5


def test_sft_prompt_ids_are_the_prompts_view_ids(tmp_path):
    common = dict(synthetic_rows=60, val_fraction=0.0, test_split=None)
    sft = _module("synthetic", tmp_path, view="sft", **common)
    prompts = _module("synthetic", tmp_path, view="prompts", **common)
    sft.prepare()
    prompts.prepare()
    assert sft.prepared_location() != prompts.prepared_location()
    rows = generate_pku_saferlhf_rows(60, seed=SEED)
    prompt_items = {rows[int(i["row"])]["prompt"]: i["input_ids"].tolist()
                    for i in _items(prompts.prepared_location(), "train")}
    assert len(prompt_items) == len({r["prompt"] for r in rows})
    sft_items = _items(sft.prepared_location(), "train")
    assert {rows[int(i["row"])]["prompt"] for i in sft_items} == set(prompt_items)
    for item in sft_items:
        n = int(item["prompt_length"])
        assert item["input_ids"][:n].tolist() == prompt_items[rows[int(item["row"])]["prompt"]]


# -------------------------------------------------------------------------------------------- truncation
def test_sft_truncation_and_prompt_too_long(tmp_path, tiny_tokenizer):
    tok = tiny_tokenizer
    base = generate_pku_saferlhf_rows(3, seed=0)
    long_response = " ".join(["knead the dough and let it rise"] * 12)
    long_prompt = " ".join(["please explain in great detail"] * 10)
    rows = [
        _pku_row(base[0], "How do I bake bread?", long_response, "Knead it."),
        _pku_row(base[1], long_prompt, "Fine.", "Sure."),
        _pku_row(base[2], "Say hi", "Hi!", "Hi!"),
    ]
    max_length = 32
    assert len(_prompt_ids(tok, "How do I bake bread?")) + len(_response_ids(tok, long_response)) + 1 > max_length
    assert len(_prompt_ids(tok, long_prompt)) > max_length
    path = _write_jsonl(tmp_path / "rows.jsonl", rows)
    dm = _module(path, tmp_path / "prepared", view="sft", max_length=max_length, val_fraction=0.0, test_split=None)
    train = dm.prepare().splits["train"]
    assert train.rows_read == 3
    assert train.kept == 3
    assert dict(train.dropped) == {"prompt_too_long": 2, "duplicate_response": 1}
    assert dict(train.notes) == {"truncated_sequences": 1}

    items = _items(dm.prepared_location(), "train")
    got = [(int(i["row"]), i["input_ids"].tolist(), int(i["prompt_length"])) for i in items]
    p = _prompt_ids(tok, "How do I bake bread?")
    cut = [*p, *_response_ids(tok, long_response)[: max_length - 1 - len(p)], tok.eos_token_id]
    assert got == [(0, cut, len(p)), (0, *_sft_ids(tok, "How do I bake bread?", "Knead it.")),
                   (2, *_sft_ids(tok, "Say hi", "Hi!"))]
    assert len(items[0]["input_ids"]) == max_length
    assert items[0]["input_ids"][-1] == tok.eos_token_id
    assert tok.eos_token_id not in items[0]["input_ids"][:-1].tolist()


# ------------------------------------------------------------------------------- sft_responses, real rows
@pytest.fixture
def real_dir(pku_real_file, tmp_path) -> Path:
    """A directory holding only train.jsonl: a copy of the real rows."""
    _write_jsonl(tmp_path / "src" / "train.jsonl", _rows(pku_real_file))
    return tmp_path / "src"


def _real_module(real_dir: Path, prepared: Path, **kwargs) -> PKUSafeRLHFDataModule:
    return _module(real_dir, prepared, test_split=None, val_fraction=0.0, **kwargs)


def test_sft_responses_on_real_rows(real_dir, tmp_path, tiny_tokenizer):
    tok = tiny_tokenizer
    rows = _rows(real_dir / "train.jsonl")
    assert len(rows) == 200
    picks = {
        "both": lambda row: [0, 1],
        "better": lambda row: [row["better_response_id"]],
        "safer": lambda row: [row["safer_response_id"]],
    }
    locations = {}
    for which, pick in picks.items():
        pairs = [(n, row["prompt"], row[f"response_{k}"]) for n, row in enumerate(rows) for k in pick(row)]
        counts = Counter((p, r) for _, p, r in pairs)
        repeated = sum(c - 1 for c in counts.values())
        first, seen = [], set()
        for n, p, r in pairs:
            if (p, r) not in seen:
                seen.add((p, r))
                first.append((n, p, r))
        expected = [(n, *_sft_ids(tok, p, r)) for n, p, r in first]
        truncated = sum(len(_prompt_ids(tok, p)) + len(_response_ids(tok, r)) + 1 > MAX_LENGTH for _, p, r in first)

        dm = _real_module(real_dir, tmp_path / "prepared", view="sft", sft_responses=which)
        report = dm.prepare()
        assert set(report.splits) == {"train"}
        train = report.splits["train"]
        assert train.rows_read == 200
        assert train.kept == len(first) == len(pairs) - repeated
        assert train.dropped["duplicate_response"] == repeated
        assert sum(train.dropped.values()) == repeated
        assert train.notes["truncated_sequences"] == truncated
        if which == "both":
            assert repeated >= 1 and train.kept == 2 * 200 - repeated
            assert truncated > 0  # some real responses are longer than 512 tokens
        else:
            assert train.kept == 200 - repeated

        items = _items(dm.prepared_location(), "train")
        assert [(int(i["row"]), i["input_ids"].tolist(), int(i["prompt_length"])) for i in items] == expected
        # a few items decoded: the prompt part is the template around the raw prompt, the response part a prefix
        # of the raw response that was picked
        for item in items[:: max(1, len(items) // 8)]:
            row, n = rows[int(item["row"])], int(item["prompt_length"])
            assert item["input_ids"][-1] == tok.eos_token_id
            text = tok.decode(item["input_ids"][n:-1].tolist())
            picked = [row[f"response_{k}"] for k in pick(row)]
            assert any(r.replace(" ", "").startswith(text.replace(" ", "")) for r in picked), (which, text[:60])
        locations[which] = dm.prepared_location()
        assert dm.prepared_location() == _real_module(real_dir, tmp_path / "prepared", view="sft",
                                                      sft_responses=which).prepared_location()

    # the three settings prepare three different datasets (sft_responses is part of the fingerprint)
    assert len(set(locations.values())) == 3
    for which, location in locations.items():
        meta = json.loads((Path(location) / "meta.json").read_text())
        assert meta["settings"]["sft_responses"] == which
    # better and safer differ on the rows where the two ids differ
    differ = sum(r["better_response_id"] != r["safer_response_id"] for r in rows)
    assert differ > 0


def test_pku_sft_pairs():
    row = {"prompt": "p", "response_0": "r0", "response_1": "r1", "better_response_id": 1, "safer_response_id": 0}
    assert pku_sft_pairs(row, "both") == [("p", "r0"), ("p", "r1")]
    assert pku_sft_pairs(row, "better") == [("p", "r1")]
    assert pku_sft_pairs(row, "safer") == [("p", "r0")]


@pytest.mark.parametrize("value", ["all", "Better", "", None])
def test_invalid_sft_responses_raises(tmp_path, value):
    with pytest.raises(ValueError, match="sft_responses"):
        _module("synthetic", tmp_path, view="sft", sft_responses=value)


def test_sft_responses_not_in_other_views_fingerprint(tmp_path):
    # the setting changes nothing for other views: the same prepared dataset is reused
    a = _module("synthetic", tmp_path, view="prompts", synthetic_rows=60, sft_responses="both")
    b = _module("synthetic", tmp_path, view="prompts", synthetic_rows=60, sft_responses="safer")
    assert a.prepared_location() == b.prepared_location()


# ------------------------------------------------------------------------------------- prompts, real rows
def test_prompts_view_on_real_rows(real_dir, tmp_path, tiny_tokenizer):
    tok = tiny_tokenizer
    rows = _rows(real_dir / "train.jsonl")
    first: dict[str, int] = {}
    for n, row in enumerate(rows):
        first.setdefault(row["prompt"], n)
    assert len(first) < len(rows)  # the sample repeats a few prompts

    dm = _real_module(real_dir, tmp_path / "prepared", view="prompts", batch_size=16, group_size=4)
    train = dm.prepare().splits["train"]
    assert train.rows_read == len(rows)
    assert train.kept == len(first)
    assert dict(train.dropped) == {"duplicate_prompt": len(rows) - len(first)}

    items = _items(dm.prepared_location(), "train")
    assert sorted(int(i["row"]) for i in items) == sorted(first.values())
    for item in items:
        assert item["input_ids"].tolist() == _prompt_ids(tok, rows[int(item["row"])]["prompt"])

    last = _last_template_token(tok)
    seen = []
    for batch in dm.train_dataloader():
        ids, mask = batch["input_ids"], batch["attention_mask"]
        assert ids.shape == mask.shape and ids.size(0) == batch["row"].size(0)
        assert mask[:, -1].eq(1).all()  # left padding: every row ends at the last column
        assert ids[:, -1].eq(last).all()  # ... with the template's last token, no EOS
        for b in range(ids.size(0)):
            length = int(mask[b].sum())
            pad = ids.size(1) - length
            assert mask[b, :pad].eq(0).all() and mask[b, pad:].eq(1).all()
            assert ids[b, :pad].eq(tok.pad_token_id).all()
            n = int(batch["row"][b])
            assert ids[b, pad:].tolist() == _prompt_ids(tok, rows[n]["prompt"])
            assert tok.eos_token_id not in ids[b, pad:].tolist()
            seen.append(n)
        if mask.size(0) > 1 and not mask.eq(1).all():
            assert mask[:, 0].eq(0).any()  # a shorter row starts with padding
    assert sorted(seen) == sorted(first.values())
