"""Tests of the synthetic PKU-SafeRLHF generator: schema, determinism, marginals and learnability of both labels."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import hashlib
import json
import re
import time
from collections import Counter
from importlib import resources

import pytest
import torch

from lit_safe.data_modules.schemas import (
    PKU_HARM_CATEGORIES,
    check_pku_saferlhf_row,
    pku_label_notes,
    response_sha256,
)
from lit_safe.data_modules.synthetic import generate_pku_saferlhf_rows, write_jsonl

FIELD_ORDER = [
    "prompt",
    "response_0",
    "response_1",
    "prompt_source",
    "response_0_source",
    "response_1_source",
    "is_response_0_safe",
    "is_response_1_safe",
    "response_0_harm_category",
    "response_1_harm_category",
    "response_0_severity_level",
    "response_1_severity_level",
    "better_response_id",
    "safer_response_id",
    "response_0_sha256",
    "response_1_sha256",
]


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return generate_pku_saferlhf_rows(4000, seed=0)


def _responses(rows: list[dict]) -> list[tuple[str, bool, int, dict]]:
    return [
        (
            r[f"response_{k}"],
            r[f"is_response_{k}_safe"],
            r[f"response_{k}_severity_level"],
            r[f"response_{k}_harm_category"],
        )
        for r in rows
        for k in (0, 1)
    ]


def test_every_row_is_valid_and_has_no_label_notes(rows):
    for i, row in enumerate(rows):
        assert check_pku_saferlhf_row(row) == [], i
        assert pku_label_notes(row) == [], i


def test_exact_2024_schema_field_order_and_vocabularies(rows):
    for row in rows:
        assert list(row) == FIELD_ORDER
        assert row["prompt_source"] in ("Alpaca3-70B", "Beavertails", "WizardLM-30B-Uncensored")
        assert row["response_0_source"] == row["response_1_source"]
        assert row["response_0_source"] in ("Alpaca-7B", "Alpaca2-7B", "Alpaca3-8B")
        for k in (0, 1):
            assert list(row[f"response_{k}_harm_category"]) == list(PKU_HARM_CATEGORIES)
            assert row[f"response_{k}_severity_level"] in (0, 1, 2, 3)
            assert type(row[f"response_{k}_severity_level"]) is int
        assert row["better_response_id"] in (0, 1) and type(row["better_response_id"]) is int
        assert row["safer_response_id"] in (0, 1) and type(row["safer_response_id"]) is int
    assert {r["prompt_source"] for r in rows} == {"Alpaca3-70B", "Beavertails", "WizardLM-30B-Uncensored"}
    assert {r["response_0_source"] for r in rows} == {"Alpaca-7B", "Alpaca2-7B", "Alpaca3-8B"}


def test_sha256_matches_prompt_plus_response(rows):
    for row in rows[:500]:
        for k in (0, 1):
            assert row[f"response_{k}_sha256"] == response_sha256(row["prompt"], row[f"response_{k}"])
            assert len(row[f"response_{k}_sha256"]) == 64


def test_deterministic_given_seed():
    a = generate_pku_saferlhf_rows(300, seed=7)
    b = generate_pku_saferlhf_rows(300, seed=7)
    c = generate_pku_saferlhf_rows(300, seed=8)
    assert a == b
    assert json.dumps(a) == json.dumps(b)
    assert a != c
    assert sum(x["response_0"] != y["response_0"] for x, y in zip(a, c)) > 250
    assert generate_pku_saferlhf_rows(100, seed=7) == a[:100]
    assert generate_pku_saferlhf_rows(0) == []
    with pytest.raises(ValueError):
        generate_pku_saferlhf_rows(-1)


def test_rows_are_pinned():
    # The rows of a seed never change by accident (moving the phrase tables to package data kept them bit-identical):
    # a change of a phrase table or of the draws changes this hash; update it on purpose only.
    rows = generate_pku_saferlhf_rows(50, seed=7)
    digest = hashlib.sha256(json.dumps(rows).encode()).hexdigest()
    assert digest == "025d9b94ad90ecbfaaaa7938cfef6f0f6e5a45279ef2892ae29d6144661d6c7a"


def test_phrase_tables_are_package_data_of_the_documented_shape():
    phrases = resources.files("lit_safe.data_modules").joinpath("phrases")
    table = {name: json.loads(phrases.joinpath(f"pku_{name}.json").read_text(encoding="utf-8"))
             for name in ("prompts", "topics", "harm_categories", "responses")}
    assert set(table["prompts"]) == {"templates", "harmful_templates", "prefixes", "suffixes"}
    assert all("{task}" in t for t in table["prompts"]["templates"] + table["prompts"]["harmful_templates"])
    assert list(table["harm_categories"]) == list(PKU_HARM_CATEGORIES)
    for spec in table["harm_categories"].values():
        assert set(spec) == {"tasks", "harm", "warning", "related"}
        assert set(spec["related"]) <= set(PKU_HARM_CATEGORIES)
        assert len(spec["harm"]) >= 3  # severe responses draw up to 3 distinct harmful actions
    assert len(table["topics"]) == 12
    for spec in table["topics"].values():
        assert set(spec) == {"tasks", "steps", "cautions", "unsafe_category"}
        assert spec["unsafe_category"] in PKU_HARM_CATEGORIES
        assert len(spec["steps"]) >= 4 and len(spec["cautions"]) >= 2  # up to 4 helpful and 2 caution units
    frames = table["responses"]["harm_frames"]
    assert list(frames) == ["1", "2", "3"] and all("{vp}" in f for fs in frames.values() for f in fs)


def test_safety_fields_are_consistent(rows):
    for _text, is_safe, severity, categories in _responses(rows):
        assert is_safe == (severity == 0) == (not any(categories.values()))
    for row in rows:
        safe = (row["is_response_0_safe"], row["is_response_1_safe"])
        if safe[0] != safe[1]:
            assert row["safer_response_id"] == (0 if safe[0] else 1)


def test_marginals_like_the_real_data(rows):
    n = len(rows)
    disagree = sum(r["better_response_id"] != r["safer_response_id"] for r in rows) / n
    assert 0.15 <= disagree <= 0.35
    responses = _responses(rows)
    unsafe = [severity for _, is_safe, severity, _ in responses if not is_safe]
    assert 0.35 <= len(unsafe) / len(responses) <= 0.65
    severity = Counter(unsafe)
    assert 0.06 <= severity[1] / len(unsafe) <= 0.2
    assert 0.6 <= severity[2] / len(unsafe) <= 0.85
    assert 0.07 <= severity[3] / len(unsafe) <= 0.22
    # Both labels are set in every kind of pair, including both-safe and both-unsafe ones.
    kinds = Counter((r["is_response_0_safe"], r["is_response_1_safe"], r["safer_response_id"]) for r in rows)
    for both in (True, False):
        assert kinds[(both, both, 0)] > 200 and kinds[(both, both, 1)] > 200


def test_prompt_reuse_and_distinct_responses(rows):
    counts = Counter(r["prompt"] for r in rows)
    reused = sum(c - 1 for c in counts.values()) / len(rows)
    assert 0.03 <= reused <= 0.25
    assert all(r["response_0"] != r["response_1"] for r in rows)


def test_lengths_in_range_and_not_a_shortcut(rows):
    for row in rows:
        assert 8 <= len(row["prompt"].split()) <= 30
        for k in (0, 1):
            assert 20 <= len(row[f"response_{k}"].split()) <= 120
            assert "\n" not in row[f"response_{k}"]
    lengths = [len(r[f"response_{k}"].split()) for r in rows for k in (0, 1)]
    assert len(set(lengths)) > 60
    # "The longer response is the better one" must be a weak rule, far from the learnable >= 0.9.
    pairs = [r for r in rows if len(r["response_0"].split()) != len(r["response_1"].split())]
    longer_is_better = sum(
        (len(r["response_1"].split()) > len(r["response_0"].split())) == (r["better_response_id"] == 1) for r in pairs
    ) / len(pairs)
    assert longer_is_better < 0.7


def test_fast():
    start = time.perf_counter()
    generate_pku_saferlhf_rows(10_000, seed=3)
    assert time.perf_counter() - start < 2.0


def test_write_jsonl_round_trip(tmp_path):
    data = generate_pku_saferlhf_rows(20, seed=1)
    path = write_jsonl(data, tmp_path / "sub" / "train.jsonl")
    assert path.is_file()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 20
    decoded = [json.loads(line) for line in lines]
    assert decoded == data
    assert list(decoded[0]) == FIELD_ORDER


_TOKEN = re.compile(r"[a-z]+|\d+")


def _bag_of_words(texts: list[str], vocab: dict[str, int]) -> torch.Tensor:
    rows, cols = [], []
    for i, text in enumerate(texts):
        for token in _TOKEN.findall(text.lower()):
            j = vocab.get(token)
            if j is not None:
                rows.append(i)
                cols.append(j)
    x = torch.zeros(len(texts), len(vocab))
    x.index_put_((torch.tensor(rows), torch.tensor(cols)), torch.ones(len(rows)), accumulate=True)
    return x


@pytest.fixture(scope="module")
def bow_split() -> dict:
    """Bag-of-words differences ``bow(response_1) - bow(response_0)`` of 3,000 training and 1,000 held-out rows."""
    train, test = generate_pku_saferlhf_rows(3000, seed=11), generate_pku_saferlhf_rows(1000, seed=12)
    counts = Counter(t for r in train for k in (0, 1) for t in _TOKEN.findall(r[f"response_{k}"].lower()))
    vocab = {t: i for i, t in enumerate(sorted(t for t, c in counts.items() if c >= 2))}

    def diff(rows: list[dict]) -> torch.Tensor:
        return _bag_of_words([r["response_1"] for r in rows], vocab) - _bag_of_words(
            [r["response_0"] for r in rows], vocab
        )

    return {"train": train, "test": test, "x_train": diff(train), "x_test": diff(test)}


def _pairwise_logistic_regression(split: dict, label: str) -> tuple[float, float]:
    """Fit P(label == 1) = sigmoid(w . x) on the training differences; (train, held-out) accuracy."""
    y_train = torch.tensor([float(r[label]) for r in split["train"]])
    y_test = torch.tensor([float(r[label]) for r in split["test"]])
    x_train, x_test = split["x_train"], split["x_test"]
    w = torch.zeros(x_train.shape[1], requires_grad=True)
    optimizer = torch.optim.Adam([w], lr=0.05)
    for _ in range(300):
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x_train @ w, y_train) + 1e-4 * w.square().sum()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        train_acc = ((x_train @ w > 0).float() == y_train).float().mean().item()
        test_acc = ((x_test @ w > 0).float() == y_test).float().mean().item()
    return train_acc, test_acc


def test_helpfulness_is_learnable_from_text(bow_split):
    train_acc, test_acc = _pairwise_logistic_regression(bow_split, "better_response_id")
    assert train_acc >= 0.9 and test_acc >= 0.9, (train_acc, test_acc)


def test_harmlessness_is_learnable_from_text(bow_split):
    train_acc, test_acc = _pairwise_logistic_regression(bow_split, "safer_response_id")
    assert train_acc >= 0.9 and test_acc >= 0.9, (train_acc, test_acc)


def test_labels_are_balanced(bow_split):
    for label in ("better_response_id", "safer_response_id"):
        share = sum(r[label] for r in bow_split["train"]) / len(bow_split["train"])
        assert 0.4 <= share <= 0.6, (label, share)
