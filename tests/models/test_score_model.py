"""Tests of lit_safe.models.score_model: end index, pad == eos, normaliser, Hugging Face save/load."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import json

import pytest
import torch
import transformers
from safetensors import safe_open
from transformers import PreTrainedTokenizerFast

from lit_safe.models.backbone import load_backbone
from lit_safe.models.score_model import (
    ScoreModel,
    ScoreNormalizer,
    build_score_model,
    checkpoint_layout,
    first_attended_index,
    last_attended_index,
    last_non_pad_index,
    score_texts,
)
from lit_safe.models.tokenizer import BOS, EOS, load_tokenizer

TEXTS = [
    "BEGINNING OF CONVERSATION: USER: hi ASSISTANT:hello",
    "BEGINNING OF CONVERSATION: USER: How do I bake bread? ASSISTANT:Mix flour, water and yeast.",
    "ok",
]


def _ids_with_eos(tokenizer, texts):
    return [tokenizer(t).input_ids + [tokenizer.eos_token_id] for t in texts]


def _pad(sequences, pad_id, side):
    length = max(map(len, sequences))
    ids, mask = [], []
    for seq in sequences:
        n = length - len(seq)
        if side == "right":
            ids.append(seq + [pad_id] * n)
            mask.append([1] * len(seq) + [0] * n)
        else:
            ids.append([pad_id] * n + seq)
            mask.append([0] * n + [1] * len(seq))
    return torch.tensor(ids), torch.tensor(mask)


@pytest.fixture(scope="module")
def model(tiny_tokenizer):
    torch.manual_seed(0)
    return ScoreModel(load_backbone("tiny", tiny_tokenizer)).eval()


# --------------------------------------------------------------------------------------------- end index


def test_last_attended_index():
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    assert last_attended_index(right).tolist() == [2, 4, 0]
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert last_attended_index(left).tolist() == [4, 4, 4]
    none = torch.ones(2, 3, dtype=torch.long)
    out = last_attended_index(none)
    assert out.tolist() == [2, 2] and out.dtype == torch.long
    assert last_attended_index(torch.tensor([[True, True, False]])).tolist() == [1]


def test_last_attended_index_rejects_empty_row():
    with pytest.raises(ValueError, match="no attended token"):
        last_attended_index(torch.tensor([[1, 1, 0], [0, 0, 0]]))


def test_first_attended_index():
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert first_attended_index(right).tolist() == [0, 0]
    left = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert first_attended_index(left).tolist() == [2, 4]
    with pytest.raises(ValueError, match="no attended token"):
        first_attended_index(torch.tensor([[0, 0, 0]]))


def test_last_non_pad_index_is_the_transformers_rule():
    pad = 9
    # right padding with pad == EOS: row 0 ends "... 5 9" then padding, transformers reads the 5 (index 1)
    ids = torch.tensor([[4, 5, 9, 9, 9], [4, 5, 6, 7, 8], [9, 9, 4, 5, 9]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    assert last_non_pad_index(ids, mask, pad).tolist() == [1, 4, 3]
    assert last_attended_index(mask).tolist() == [2, 4, 4]
    assert last_non_pad_index(ids, mask, None).tolist() == [2, 4, 4]  # no pad token: the last attended one
    # a masked token is never read, whatever its id; a row of pad tokens only falls back to its last attended one
    assert last_non_pad_index(torch.tensor([[4, 5, 3], [9, 9, 1]]), torch.tensor([[1, 1, 0], [1, 1, 0]]),
                              pad).tolist() == [1, 1]

def test_score_head_init(model):
    assert isinstance(model.score_head, torch.nn.Linear)
    assert model.score_head.weight.shape == (1, 64)
    assert torch.count_nonzero(model.score_head.bias) == 0
    assert torch.count_nonzero(model.score_head.weight) > 0
    assert model.score_type == "reward" and model.do_normalize is False


def test_bad_score_type(tiny_tokenizer):
    with pytest.raises(ValueError, match="score_type"):
        ScoreModel(load_backbone("tiny", tiny_tokenizer), score_type="value")


def test_end_scores_right_and_left_padding(model, tiny_tokenizer):
    seqs = _ids_with_eos(tiny_tokenizer, TEXTS)
    lengths = [len(s) for s in seqs]
    ids_r, mask_r = _pad(seqs, tiny_tokenizer.pad_token_id, "right")
    ids_l, mask_l = _pad(seqs, tiny_tokenizer.pad_token_id, "left")
    with torch.no_grad():
        right = model(ids_r, mask_r)
        left = model(ids_l, mask_l)
        alone = [model(torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long)) for s in seqs]
    length = ids_r.shape[1]
    assert right.scores.shape == (3, length) and right.scores.dtype == torch.float32
    # right padding: the end index is the EOS of each sequence; left padding: the last column
    assert right.end_index.tolist() == [n - 1 for n in lengths]
    assert all(ids_r[i, right.end_index[i]] == tiny_tokenizer.eos_token_id for i in range(3))
    assert left.end_index.tolist() == [length - 1] * 3
    torch.testing.assert_close(right.end_scores, right.scores[torch.arange(3), right.end_index])
    # The same sequence scores the same under right padding, left padding and alone. Left padding moves the
    # positions (HF Llama takes position ids 0..L-1 when none are given), but RoPE attention depends only on
    # relative positions, so the end scores agree up to float rounding.
    torch.testing.assert_close(left.end_scores, right.end_scores, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([a.end_scores for a in alone]), right.end_scores, atol=1e-5, rtol=1e-5)
    # Right padding is exact on the real tokens (causal attention never sees the padding after them).
    for i, n in enumerate(lengths):
        torch.testing.assert_close(right.scores[i, :n], alone[i].scores[0], atol=1e-5, rtol=1e-5)


def test_pad_equal_to_eos(tiny_tokenizer, tmp_path):
    pe = PreTrainedTokenizerFast(
        tokenizer_object=tiny_tokenizer.backend_tokenizer, bos_token=BOS, eos_token=EOS, pad_token=EOS
    )
    pe.save_pretrained(tmp_path)
    tok = load_tokenizer(str(tmp_path))
    assert tok.pad_token_id == tok.eos_token_id
    torch.manual_seed(0)
    model = ScoreModel(load_backbone("tiny", tok)).eval()
    seqs = _ids_with_eos(tok, TEXTS)
    ids, mask = _pad(seqs, tok.pad_token_id, "right")
    with torch.no_grad():
        out = model(ids, mask)
    eos_positions = [len(s) - 1 for s in seqs]
    assert out.end_index.tolist() == eos_positions
    assert all(ids[i, eos_positions[i]] == tok.eos_token_id for i in range(3))
    # The trap: a mask from ids != pad hides the EOS and would read the token before it.
    naive = last_attended_index((ids != tok.pad_token_id).long())
    assert naive.tolist() == [p - 1 for p in eos_positions]
    assert not torch.allclose(out.end_scores, out.scores[torch.arange(3), naive])
    torch.testing.assert_close(out.end_scores, out.scores[torch.arange(3), torch.tensor(eos_positions)])


def test_gradients_reach_backbone_and_head(tiny_tokenizer):
    torch.manual_seed(0)
    model = ScoreModel(load_backbone("tiny", tiny_tokenizer))
    ids, mask = _pad(_ids_with_eos(tiny_tokenizer, TEXTS[:2]), tiny_tokenizer.pad_token_id, "right")
    model(ids, mask).end_scores.sum().backward()
    assert model.score_head.bias.grad.item() == pytest.approx(2.0)  # d(sum of 2 end scores)/d bias
    assert model.score_head.weight.grad.abs().sum() > 0
    assert model.backbone.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------------- normaliser


def test_normalizer_exact_running_stats():
    norm = ScoreNormalizer("reward")
    assert (norm.mean.item(), norm.var.item(), norm.count.item()) == (0.0, 1.0, 0.0)
    norm.update(torch.tensor([1.0, 2.0, 3.0]))
    # mean 2, population variance (1 + 0 + 1) / 3
    assert norm.mean.item() == pytest.approx(2.0)
    assert norm.var.item() == pytest.approx(2 / 3)
    norm.update(torch.tensor([4.0, 10.0]))
    # concatenated [1, 2, 3, 4, 10]: mean 20 / 5 = 4; variance (9 + 4 + 1 + 0 + 36) / 5 = 10
    assert norm.mean.item() == pytest.approx(4.0, abs=1e-12)
    assert norm.var.item() == pytest.approx(10.0, abs=1e-12)
    assert norm.count.item() == 5.0
    norm.update(torch.tensor([]))  # empty batch: no change
    assert norm.count.item() == 5.0 and norm.mean.item() == pytest.approx(4.0)


def test_normalizer_exact_stats_match_concatenation_random():
    torch.manual_seed(0)
    chunks = [torch.randn(n) * 3 + 1 for n in (7, 1, 13, 4)]
    norm = ScoreNormalizer("cost")
    for chunk in chunks:
        norm.update(chunk)
    data = torch.cat(chunks).double()
    assert norm.mean.item() == pytest.approx(data.mean().item(), abs=1e-10)
    assert norm.var.item() == pytest.approx(data.var(unbiased=False).item(), abs=1e-10)
    assert norm.count.item() == 25


def test_normalizer_ema():
    norm = ScoreNormalizer("reward", momentum=0.9)
    norm.update(torch.tensor([1.0, 2.0, 3.0]))
    # the first batch initialises the statistics (mean 2, var 2/3)
    assert norm.mean.item() == pytest.approx(2.0) and norm.var.item() == pytest.approx(2 / 3)
    norm.update(torch.tensor([4.0, 10.0]))
    # batch mean 7, batch var ((4-7)^2 + (10-7)^2) / 2 = 9
    # mean = 0.9 * 2 + 0.1 * 7 = 2.5; var = 0.9 * 2/3 + 0.1 * 9 = 1.5
    assert norm.mean.item() == pytest.approx(2.5, abs=1e-12)
    assert norm.var.item() == pytest.approx(1.5, abs=1e-12)
    assert norm.count.item() == 5.0


def test_normalizer_stats_stay_float64_when_model_is_cast(tiny_tokenizer):
    # Lightning's bf16-true precision calls module.to(torch.bfloat16): the statistics must stay exact.
    torch.manual_seed(0)
    model = ScoreModel(load_backbone("tiny", tiny_tokenizer)).to(torch.bfloat16)
    assert model.score_head.weight.dtype == torch.bfloat16
    norm = model.normalizer
    assert {norm.mean.dtype, norm.var.dtype, norm.count.dtype} == {torch.float64}
    for i in range(300):  # one score at a time: in bfloat16 the count would stop at 256
        norm.update(torch.tensor([float(i)]))  # end scores are float32
    # 0..299: mean 149.5, population variance (300^2 - 1) / 12
    assert norm.count.item() == 300.0
    assert norm.mean.item() == pytest.approx(149.5, abs=1e-9)
    assert norm.var.item() == pytest.approx((300**2 - 1) / 12, rel=1e-12)
    assert ScoreNormalizer().half().mean.dtype == torch.float64


def test_normalizer_forward_by_score_type():
    scores = torch.tensor([-2.0, 0.0, 2.0, 6.0])
    for kind in ("reward", "cost", "critic"):
        norm = ScoreNormalizer(kind)
        norm.mean.fill_(2.0)
        norm.var.fill_(4.0)  # sigma = 2
        out = norm(scores)
        if kind == "reward":  # (s - 2) / 2: affine
            torch.testing.assert_close(out, torch.tensor([-2.0, -1.0, 0.0, 2.0]))
        elif kind == "cost":  # s / 2: the sign (safe / unsafe) survives
            torch.testing.assert_close(out, torch.tensor([-1.0, 0.0, 1.0, 3.0]))
            assert torch.equal(torch.sign(out), torch.sign(scores))
        else:
            torch.testing.assert_close(out, scores)
    # keeps the dtype of the scores
    assert ScoreNormalizer("reward")(torch.zeros(2, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_do_normalize_applies_to_scores(tiny_tokenizer):
    torch.manual_seed(0)
    model = ScoreModel(load_backbone("tiny", tiny_tokenizer), score_type="reward", do_normalize=True).eval()
    ids, mask = _pad(_ids_with_eos(tiny_tokenizer, TEXTS), tiny_tokenizer.pad_token_id, "right")
    with torch.no_grad():
        model.do_normalize = False
        raw = model(ids, mask)
        model.do_normalize = True
        model.normalizer.mean.fill_(0.5)
        model.normalizer.var.fill_(4.0)
        normed = model(ids, mask)
    torch.testing.assert_close(normed.end_scores, (raw.end_scores - 0.5) / 2.0)
    torch.testing.assert_close(normed.scores, (raw.scores - 0.5) / 2.0)
    assert torch.equal(normed.end_index, raw.end_index)


# --------------------------------------------------------------------------------------------- HF format


@pytest.fixture(scope="module")
def saved(tiny_tokenizer, tmp_path_factory):
    """A cost model with non-trivial normaliser statistics, saved to disk."""
    torch.manual_seed(3)
    model = ScoreModel(load_backbone("tiny", tiny_tokenizer), score_type="cost", do_normalize=True).eval()
    torch.nn.init.normal_(model.score_head.bias)  # a non-zero bias, so that loading it is checked
    model.normalizer.update(torch.tensor([1.0, 2.0, 3.0, 6.0]))  # mean 3, var (4 + 1 + 0 + 9) / 4 = 3.5
    path = tmp_path_factory.mktemp("cost_model")
    model.save_pretrained(path, tokenizer=tiny_tokenizer)
    return model, path


def _batch(tokenizer):
    return _pad(_ids_with_eos(tokenizer, TEXTS), tokenizer.pad_token_id, "right")


def test_save_writes_hf_layout(saved):
    model, path = saved
    names = {p.name for p in path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    config = json.loads((path / "config.json").read_text())
    assert config["score_type"] == "cost"
    assert config["do_normalize"] is True
    assert config["mean"] == pytest.approx(3.0) and config["var"] == pytest.approx(3.5)
    assert config["count"] == 4.0
    assert config["score_dim"] == 1 and config["normalizer_type"] == "RunningMeanStd"
    assert config["text_encoding"] == "append_eos" and config["cost_sign"] == "positive means unsafe"
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForScore"]
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        torch.testing.assert_close(f.get_tensor("score_head.bias"), model.score_head.bias.detach())
    assert {"score_head.weight", "score_head.bias", "model.embed_tokens.weight", "model.norm.weight"} <= keys
    assert all(k.startswith("model.") or k.startswith("score_head.") for k in keys)
    backbone_keys = {f"model.{k}" for k in model.backbone.state_dict()}
    assert keys - {"score_head.weight", "score_head.bias"} == backbone_keys


def test_round_trip_gives_identical_scores(saved, tiny_tokenizer):
    model, path = saved
    loaded = ScoreModel.from_pretrained(path).eval()
    assert loaded.score_type == "cost" and loaded.do_normalize is True
    assert loaded.normalizer.score_type == "cost" and loaded.normalizer.momentum is None
    assert loaded.normalizer.mean.item() == pytest.approx(3.0)
    assert loaded.normalizer.var.item() == pytest.approx(3.5)
    assert loaded.normalizer.count.item() == 4.0
    torch.testing.assert_close(loaded.score_head.bias, model.score_head.bias)
    ids, mask = _batch(tiny_tokenizer)
    with torch.no_grad():
        a, b = model(ids, mask), loaded(ids, mask)
    torch.testing.assert_close(b.scores, a.scores, rtol=0, atol=0)
    torch.testing.assert_close(b.end_scores, a.end_scores, rtol=0, atol=0)
    # the tokenizer saved beside it is the same tokenizer
    tok = load_tokenizer(str(path))
    assert tok(TEXTS[1]).input_ids == tiny_tokenizer(TEXTS[1]).input_ids
    # and the directory is an ordinary HF checkpoint of the backbone
    plain = transformers.AutoModel.from_pretrained(path).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            plain(input_ids=ids, attention_mask=mask).last_hidden_state,
            model.backbone(input_ids=ids, attention_mask=mask).last_hidden_state,
        )


def test_ema_normalizer_round_trip(tiny_tokenizer, tmp_path):
    torch.manual_seed(0)
    model = ScoreModel(load_backbone("tiny", tiny_tokenizer), score_type="reward", normalizer_momentum=0.9)
    model.normalizer.update(torch.tensor([1.0, 3.0]))
    model.normalizer.update(torch.tensor([5.0]))
    model.save_pretrained(tmp_path)  # without tokenizer
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["normalizer_type"] == "ExponentialMovingAverage" and config["momentum"] == 0.9
    assert not (tmp_path / "tokenizer.json").exists()
    loaded = ScoreModel.from_pretrained(tmp_path)
    assert loaded.normalizer.momentum == 0.9 and loaded.do_normalize is False
    # mean 0.9 * 2 + 0.1 * 5 = 2.3
    assert loaded.normalizer.mean.item() == pytest.approx(2.3)


def test_checkpoint_layout_of_lit_safe_and_reference_checkpoints(saved, tiny_tokenizer, tmp_path):
    _, path = saved
    assert checkpoint_layout(str(path), transformers.AutoConfig.from_pretrained(path)) == "score_head"
    # a reference-style checkpoint whose config says neither score_type nor architectures: found by its weights
    config = json.loads((path / "config.json").read_text())
    for key in ("score_type", "architectures"):
        config.pop(key)
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text(json.dumps(config))
    (bare / "model.safetensors").write_bytes((path / "model.safetensors").read_bytes())
    assert checkpoint_layout(str(bare), transformers.AutoConfig.from_pretrained(bare)) == "score_head"
    loaded = ScoreModel.from_pretrained(bare)
    assert loaded.layout is None and loaded.score_type == "reward" and loaded.text_encoding == "append_eos"
    torch.testing.assert_close(loaded.score_head.bias, saved[0].score_head.bias)
    plain = tmp_path / "plain"
    load_backbone("tiny", tiny_tokenizer).save_pretrained(plain)
    assert checkpoint_layout(str(plain), transformers.AutoConfig.from_pretrained(plain)) is None


def test_score_texts_appends_eos_for_lit_safe_models(saved, tiny_tokenizer):
    model, _ = saved
    ids, mask = _batch(tiny_tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(score_texts(model, tiny_tokenizer, TEXTS, 64), model(ids, mask).end_scores,
                                   rtol=0, atol=1e-6)


def test_from_pretrained_rejects_plain_backbone(tiny_tokenizer, tmp_path):
    torch.manual_seed(0)
    load_backbone("tiny", tiny_tokenizer).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="score_type"):
        ScoreModel.from_pretrained(tmp_path)


def test_build_score_model_from_saved_dir(saved, tiny_tokenizer):
    model, path = saved
    built = build_score_model(str(path), tiny_tokenizer, "cost", do_normalize=True).eval()
    assert built.score_type == "cost"
    assert built.normalizer.mean.item() == pytest.approx(3.0)
    ids, mask = _batch(tiny_tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(built(ids, mask).end_scores, model(ids, mask).end_scores, rtol=0, atol=0)


def test_build_score_model_critic_override(saved, tiny_tokenizer, tmp_path):
    model, path = saved
    critic = build_score_model(str(path), tiny_tokenizer, "critic").eval()
    assert critic.score_type == "critic" and critic.normalizer.score_type == "critic"
    assert critic.do_normalize is False
    torch.testing.assert_close(critic.score_head.weight, model.score_head.weight)
    ids, mask = _batch(tiny_tokenizer)
    with torch.no_grad():
        model.do_normalize = False
        try:
            raw = model(ids, mask).end_scores
        finally:
            model.do_normalize = True
        torch.testing.assert_close(critic(ids, mask).end_scores, raw, rtol=0, atol=0)
    critic.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["score_type"] == "critic"
    # the override also works on ScoreModel.from_pretrained
    assert ScoreModel.from_pretrained(path, score_type="reward").score_type == "reward"


def test_build_score_model_from_preset(saved, tiny_tokenizer):
    model, _ = saved
    torch.manual_seed(0)
    fresh = build_score_model("tiny", tiny_tokenizer, "reward", normalizer_momentum=0.5)
    assert isinstance(fresh, ScoreModel) and fresh.score_type == "reward"
    assert fresh.normalizer.momentum == 0.5 and fresh.normalizer.count.item() == 0
    assert torch.count_nonzero(fresh.score_head.bias) == 0
    assert not torch.equal(fresh.score_head.weight, model.score_head.weight)
    assert fresh.backbone.get_input_embeddings().num_embeddings == len(tiny_tokenizer)
    torch.manual_seed(0)
    again = build_score_model("tiny", tiny_tokenizer, "reward")
    torch.testing.assert_close(again.score_head.weight, fresh.score_head.weight)
    ckpt = build_score_model("tiny", tiny_tokenizer, "cost", gradient_checkpointing=True)
    flag = (
        "is_activation_checkpointing"
        if hasattr(ckpt.backbone, "is_activation_checkpointing")
        else ("is_gradient_checkpointing")
    )
    assert getattr(ckpt.backbone, flag)


def test_sharded_save_round_trip(saved, tiny_tokenizer, tmp_path):
    model, _ = saved
    model.save_pretrained(tmp_path, max_shard_size="200KB")
    shards = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "model.safetensors.index.json").is_file()
    weight_map = json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"]
    assert "score_head.weight" in weight_map and "model.embed_tokens.weight" in weight_map
    loaded = ScoreModel.from_pretrained(tmp_path).eval()
    ids, mask = _batch(tiny_tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, mask).scores, model(ids, mask).scores, rtol=0, atol=0)


def test_raw_end_scores_are_the_unnormalised_ones(tiny_tokenizer):
    """The running statistics must be fed raw scores, also when the model returns normalised ones."""
    torch.manual_seed(0)
    model = ScoreModel(load_backbone("tiny", tiny_tokenizer), score_type="reward", do_normalize=True).eval()
    model.normalizer.update(torch.tensor([1.0, 3.0, 5.0]))  # mean 3, var 8/3
    ids = torch.randint(3, 100, (3, 9))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        out = model(ids, mask)
        model.do_normalize = False
        plain = model(ids, mask)
    torch.testing.assert_close(out.raw_end_scores, plain.end_scores)
    torch.testing.assert_close(out.end_scores, (plain.end_scores - 3.0) / (8.0 / 3.0 + 1e-8) ** 0.5)


def test_loading_a_saved_score_model_prints_no_load_report_and_says_missing_backbone_weights(tmp_path, tiny_tokenizer,
                                                                                              capfd):
    """transformers lists the saved head as UNEXPECTED on every AutoModel load of a score checkpoint: lit_safe's
    loader keeps that off the screen, but a backbone weight the checkpoint lacks is still said."""
    import json
    import warnings

    from safetensors.torch import load_file, save_file

    from lit_safe.models.score_model import ScoreModel, build_score_model

    model = build_score_model("tiny", tiny_tokenizer, "reward")
    model.save_pretrained(tmp_path / "rm", tokenizer=tiny_tokenizer)
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ScoreModel.from_pretrained(tmp_path / "rm")
    out = capfd.readouterr()
    assert "LOAD REPORT" not in out.out + out.err
    assert not [w for w in caught if "backbone weights" in str(w.message)]

    weights = load_file(tmp_path / "rm" / "model.safetensors")
    dropped = sorted(k for k in weights if k.endswith("layers.1.mlp.up_proj.weight"))
    save_file({k: v for k, v in weights.items() if k not in dropped}, tmp_path / "rm" / "model.safetensors",
              metadata={"format": "pt"})
    assert json.loads((tmp_path / "rm" / "config.json").read_text())["score_type"] == "reward"
    with pytest.warns(UserWarning, match=r"backbone weights missing \(they start random\): layers.1.mlp.up_proj"):
        ScoreModel.from_pretrained(tmp_path / "rm")
