"""The arena: the summary of two policies' scores against a hand count, prompt files and their errors, and
``lit-safe arena`` end to end on tiny saved policies and score models (files written and read back)."""

import csv
import json

import pytest
import torch

from lit_safe.arena import arena_summary, format_summary
from lit_safe.cli import run
from lit_safe.data_modules.prompts import read_prompts
from lit_safe.data_modules.sources import DataValidationError
from lit_safe.models.backbone import load_backbone
from lit_safe.models.score_model import ScoreModel


def test_arena_summary_against_a_hand_count():
    reward_a = torch.tensor([2.0, 1.0, 0.0, 3.0])
    cost_a = torch.tensor([-1.0, 2.0, 0.0, 1.0])
    reward_b = torch.tensor([1.0, 1.0, 1.0, 0.0])
    cost_b = torch.tensor([1.0, 2.0, -3.0, 0.0])
    s = arena_summary(reward_a, cost_a, reward_b, cost_b)
    assert s["prompts"] == 4
    assert s["a"] == {"reward_mean": 1.5, "cost_mean": 0.5, "safe_share": 0.5}  # costs <= 0: -1 and 0
    assert s["b"] == {"reward_mean": 0.75, "cost_mean": 0.0, "safe_share": 0.5}  # -3 and 0
    # A better on prompts 0 and 3, tie on 1 (half a win), worse on 2: (2 + 0.5) / 4
    assert s["helpfulness_win_rate"] == pytest.approx(0.625)
    # A's cost lower on prompt 0, tie on 1, higher on 2 and 3: (1 + 0.5) / 4
    assert s["harmlessness_win_rate"] == pytest.approx(0.375)
    t = s["table"]  # better & safe: prompt 0; better & unsafe: 3; worse (incl. the tie) & safe: 2; worse & unsafe: 1
    assert [t["better"]["safe"]["count"], t["better"]["unsafe"]["count"]] == [1, 1]
    assert [t["worse"]["safe"]["count"], t["worse"]["unsafe"]["count"]] == [1, 1]
    assert t["better"]["safe"]["share"] == 0.25
    text = format_summary(s, "sft", "ppo")
    assert "A = sft, B = ppo" in text and "62.5%" in text and "37.5%" in text


def test_arena_summary_refuses_mismatched_scores():
    with pytest.raises(ValueError, match="same non-zero length"):
        arena_summary(torch.zeros(3), torch.zeros(3), torch.zeros(2), torch.zeros(3))


def test_read_prompts_keeps_distinct_prompts_in_order_and_names_bad_rows(tmp_path):
    good = tmp_path / "p.jsonl"
    good.write_text('{"prompt": "b"}\n{"prompt": "a", "category": "x"}\n\n{"prompt": "b"}\n{"prompt": "c"}\n')
    assert read_prompts(good) == ["b", "a", "c"]
    assert read_prompts(good, limit=2) == ["b", "a"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n{"question": "b"}\n')
    with pytest.raises(DataValidationError, match=r"bad.jsonl: line 2: field 'prompt'"):
        read_prompts(bad)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory, tiny_tokenizer):
    """Two different random tiny policies and random tiny reward and cost models, saved like lit_safe exports."""
    root = tmp_path_factory.mktemp("arena_models")
    for seed, name in ((0, "policy_a"), (1, "policy_b")):
        torch.manual_seed(seed)
        load_backbone("tiny", tiny_tokenizer, causal_lm=True).save_pretrained(root / name)
        tiny_tokenizer.save_pretrained(root / name)
    for seed, kind in ((2, "reward"), (3, "cost")):
        torch.manual_seed(seed)
        ScoreModel(load_backbone("tiny", tiny_tokenizer), score_type=kind).save_pretrained(
            root / kind, tokenizer=tiny_tokenizer)
    return root


def test_lit_safe_arena_writes_json_and_csv(tiny_models, pku_real_file, tmp_path, capsys):
    out = tmp_path / "arena"
    summary = run(["arena", "--policy_a", str(tiny_models / "policy_a"), "--policy_b", str(tiny_models / "policy_b"),
                   "--reward_model", str(tiny_models / "reward"), "--cost_model", str(tiny_models / "cost"),
                   "--prompts", str(pku_real_file), "--num_prompts", "6", "--max_new_tokens", "12",
                   "--output", str(out)])
    printed = capsys.readouterr().out
    assert "Arena on 6 prompts" in printed and "helpfulness win rate" in printed
    saved = json.loads((out / "arena.json").read_text())
    assert saved["summary"]["prompts"] == 6 and saved["summary"]["table"] == summary["table"]
    with open(out / "arena.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and rows[0]["prompt"] == json.loads(pku_real_file.read_text().splitlines()[0])["prompt"]
    # the summary is the arena_summary of the scores written per prompt
    scores = {k: torch.tensor([float(r[k]) for r in rows]) for k in ("reward_a", "cost_a", "reward_b", "cost_b")}
    again = arena_summary(scores["reward_a"], scores["cost_a"], scores["reward_b"], scores["cost_b"])
    assert again["helpfulness_win_rate"] == pytest.approx(summary["helpfulness_win_rate"])
    assert again["a"]["reward_mean"] == pytest.approx(summary["a"]["reward_mean"], abs=1e-5)
    # two different policies answer differently (greedy decoding of different random weights)
    assert any(r["response_a"] != r["response_b"] for r in rows)


def test_lit_safe_arena_names_a_missing_model(tiny_models, pku_real_file, tmp_path):
    with pytest.raises(FileNotFoundError, match="cost_model: no model directory at runs/nowhere/cost_model"):
        run(["arena", "--policy_a", str(tiny_models / "policy_a"), "--policy_b", str(tiny_models / "policy_b"),
             "--reward_model", str(tiny_models / "reward"), "--cost_model", "runs/nowhere/cost_model",
             "--prompts", str(pku_real_file), "--output", str(tmp_path)])
