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
from lit_safe.models.tokenizer import load_tokenizer


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


# ------------------------------------------------------------------------------------------------ chat templates
CHAT_PROMPTS = ["How do I bake bread?", "Say hi", "What is two plus two?"]


def _chat_ids(tok, messages, generation=False) -> list[int]:
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
    return tok(text, add_special_tokens=False)["input_ids"]


def _conversation(prompt: str, response: str) -> list[dict]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


@pytest.fixture(scope="module")
def chat_models(tmp_path_factory, chat_tokenizer_dir):
    """Two tiny policies, a lit_safe reward model and a Hugging Face LlamaForSequenceClassification cost model, all
    saved with the tiny tokenizer given the Llama-3 chat template."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    root = tmp_path_factory.mktemp("arena_chat_models")
    tok = load_tokenizer(chat_tokenizer_dir("llama3"))
    for seed, name in ((0, "policy_a"), (1, "policy_b")):
        torch.manual_seed(seed)
        load_backbone("tiny", tok, causal_lm=True).save_pretrained(root / name)
        tok.save_pretrained(root / name)
    torch.manual_seed(2)
    ScoreModel(load_backbone("tiny", tok), score_type="reward").save_pretrained(root / "reward", tokenizer=tok)
    torch.manual_seed(3)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, num_labels=1,
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    hf = LlamaForSequenceClassification(config)
    torch.nn.init.normal_(hf.score.weight)
    hf.save_pretrained(root / "cost")
    tok.save_pretrained(root / "cost")
    return root


class _Replying(torch.nn.Module):
    """A stand-in policy whose ``generate`` records its arguments and appends a fixed reply to every prompt."""

    def __init__(self, reply: list[int]) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.reply, self.calls = torch.tensor([reply]), []

    def generate(self, input_ids, attention_mask, **kwargs):
        self.calls.append({"input_ids": input_ids, "attention_mask": attention_mask, **kwargs})
        return torch.cat([input_ids, self.reply.expand(input_ids.size(0), -1)], dim=1)


def test_generate_with_a_chat_template_starts_from_the_generation_prompt_and_stops_at_end_of_turn(chat_tokenizer_dir):
    from lit_safe.arena import generate

    tok = load_tokenizer(chat_tokenizer_dir("llama3"))
    tok.padding_side = "left"
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    policy = _Replying(tok("Knead it.", add_special_tokens=False)["input_ids"] + [eot, tok.pad_token_id])
    answers = generate(policy, tok, CHAT_PROMPTS, "chat", max_new_tokens=8, batch_size=2)
    assert answers == ["Knead it."] * 3  # the end of turn and padding are not part of the answer
    call = policy.calls[0]
    assert call["generation_config"].eos_token_id == [tok.eos_token_id, eot]
    for row, prompt in enumerate(CHAT_PROMPTS[:2]):
        n = int(call["attention_mask"][row].sum())
        assert call["input_ids"][row, -n:].tolist() == _chat_ids(tok, [{"role": "user", "content": prompt}], True)
    # the Safe RLHF template as before: the prompt in the template with BOS, stopping at EOS alone
    generate(policy, tok, CHAT_PROMPTS[:1], "safe_rlhf", max_new_tokens=8, batch_size=2)
    assert policy.calls[-1]["generation_config"].eos_token_id == tok.eos_token_id
    assert policy.calls[-1]["input_ids"][0].tolist() == tok(
        "BEGINNING OF CONVERSATION: USER: How do I bake bread? ASSISTANT:")["input_ids"]


def test_score_reads_the_conversation_each_model_was_trained_on(chat_models):
    from transformers import AutoModelForSequenceClassification

    from lit_safe.arena import score

    responses = ["Mix flour and water.  ", "hi", "Four."]
    tok = load_tokenizer(str(chat_models / "reward"))
    # a lit_safe score model: the ids its pair view trains on (the rendered conversation, no second BOS)
    reward = ScoreModel.from_pretrained(str(chat_models / "reward")).eval()
    got = score(reward, tok, CHAT_PROMPTS, responses, "chat", 512, batch_size=2)
    for i, (prompt, response) in enumerate(zip(CHAT_PROMPTS, responses)):
        ids = torch.tensor([_chat_ids(tok, _conversation(prompt, response))])
        with torch.no_grad():
            expected = reward(ids, torch.ones_like(ids)).end_scores
        assert got[i].item() == pytest.approx(expected.item(), abs=1e-5)
    # a Hugging Face reward model: its own forward on the conversation rendered by its tokenizer's template
    cost = ScoreModel.from_pretrained(str(chat_models / "cost")).eval()
    hf = AutoModelForSequenceClassification.from_pretrained(chat_models / "cost").eval()
    got = score(cost, tok, CHAT_PROMPTS, responses, "chat", 512, batch_size=2)
    for i, (prompt, response) in enumerate(zip(CHAT_PROMPTS, responses)):
        ids = torch.tensor([_chat_ids(tok, _conversation(prompt, response))])
        assert ids[0, 0] == tok.bos_token_id and (ids[0] == tok.bos_token_id).sum() == 1
        with torch.no_grad():
            expected = hf(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, 0]
        assert got[i].item() == pytest.approx(expected.item(), abs=1e-5)
    assert len(set(got.tolist())) == 3


def test_lit_safe_arena_with_chat_templates(chat_models, tmp_path):
    from lit_safe.arena import score

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in CHAT_PROMPTS))
    out = tmp_path / "arena"
    summary = run(["arena", "--policy_a", str(chat_models / "policy_a"), "--policy_b", str(chat_models / "policy_b"),
                   "--reward_model", str(chat_models / "reward"), "--cost_model", str(chat_models / "cost"),
                   "--prompts", str(prompts), "--max_new_tokens", "6", "--prompt_template", "chat",
                   "--output", str(out)])
    assert summary["prompts"] == 3
    rows = json.loads((out / "arena.json").read_text())["answers"]
    reward = ScoreModel.from_pretrained(str(chat_models / "reward")).eval()
    again = score(reward, load_tokenizer(str(chat_models / "reward")), [r["prompt"] for r in rows],
                  [r["response_a"] for r in rows], "chat", 512, batch_size=3)
    assert [r["reward_a"] for r in rows] == pytest.approx(again.tolist(), abs=1e-5)


def test_lit_safe_arena_chat_needs_every_tokenizer_to_have_a_template(tiny_models, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "hi"}) + "\n")
    with pytest.raises(ValueError, match=f"tokenizer '{tiny_models / 'policy_a'}' has none"):
        run(["arena", "--policy_a", str(tiny_models / "policy_a"), "--policy_b", str(tiny_models / "policy_b"),
             "--reward_model", str(tiny_models / "reward"), "--cost_model", str(tiny_models / "cost"),
             "--prompts", str(prompts), "--prompt_template", "chat", "--output", str(tmp_path / "out")])


def test_video_arena_rewriter_with_a_chat_template_is_asked_to_rewrite(chat_models):
    from transformers import AutoModelForCausalLM

    from lit_safe.arena import generate
    from lit_safe.models.text import rewrite_request
    from lit_safe.models.tokenizer import load_tokenizer
    from lit_safe.video_arena import rewrite

    path = str(chat_models / "policy_a")
    got = rewrite(path, CHAT_PROMPTS, "chat", max_new_tokens=5, batch_size=2, temperature=0.0,
                  device=torch.device("cpu"))
    tok = load_tokenizer(path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    requests = [rewrite_request(p) for p in CHAT_PROMPTS]
    assert requests[0].startswith("Rewrite the user's request") and requests[0].endswith("Video prompt:")
    expected = generate(model, tok, requests, "chat", 5, 2)
    assert got == [e.strip() or p for e, p in zip(expected, CHAT_PROMPTS)]
    assert got != [e.strip() or p for e, p in zip(generate(model, tok, CHAT_PROMPTS, "chat", 5, 2), CHAT_PROMPTS)]
