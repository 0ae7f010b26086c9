"""Tests of lit_safe.models.tokenizer and lit_safe.models.backbone (presets, special tokens, save/load)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch
import transformers
from transformers import PreTrainedTokenizerFast
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from lit_safe.models.backbone import hidden_size, load_backbone, preset_config, sampling_config, transformer_blocks
from lit_safe.models.tokenizer import (
    ADDED_PAD,
    BOS,
    EOS,
    PAD,
    PRESET_VOCAB_SIZES,
    _trained_preset_json,
    load_tokenizer,
    preset_tokenizer,
    tokenizer_fingerprint,
)

SENTENCE = "BEGINNING OF CONVERSATION: USER: How do I bake bread? ASSISTANT:Mix flour and water."


def _batch(tokenizer, texts):
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


# ------------------------------------------------------------------------------------------------- tokenizer


def test_tiny_tokenizer_is_deterministic(tiny_tokenizer):
    again = load_tokenizer("tiny")
    assert again is not tiny_tokenizer
    assert again(SENTENCE).input_ids == tiny_tokenizer(SENTENCE).input_ids
    assert again.get_vocab() == tiny_tokenizer.get_vocab()
    assert len(tiny_tokenizer) == 2048
    # Training the BPE again from the shipped corpus (bypassing the cache) gives the same tokenizer.
    assert _trained_preset_json.__wrapped__(2048) == _trained_preset_json(2048)


def test_tiny_tokenizer_special_tokens(tiny_tokenizer):
    tok = tiny_tokenizer
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (BOS, EOS, PAD)
    assert tok.pad_token_id != tok.eos_token_id
    assert len({tok.pad_token_id, tok.bos_token_id, tok.eos_token_id}) == 3
    assert tok.padding_side == "right"
    ids = tok(SENTENCE).input_ids
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert tok.eos_token_id not in ids  # the caller appends EOS
    assert tok(SENTENCE, add_special_tokens=False).input_ids == ids[1:]
    assert load_tokenizer("tiny", padding_side="left").padding_side == "left"


@pytest.mark.parametrize(
    "text", ["héllo wörld — naïve café", "emoji 🙂🚀 and 日本語のテキスト", "  spaces\tand\nnewlines  ", "Ω≈ç√∫"]
)
def test_unicode_round_trip(tiny_tokenizer, text):
    ids = tiny_tokenizer(text).input_ids
    assert tiny_tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tiny_tokenizer.unk_token_id not in ids if tiny_tokenizer.unk_token_id is not None else True


def test_fingerprint(tiny_tokenizer):
    small = load_tokenizer("small")
    # The presets' vocabularies are reached exactly (the shipped corpus has enough text for their merges).
    assert (len(tiny_tokenizer), len(small)) == (PRESET_VOCAB_SIZES["tiny"], PRESET_VOCAB_SIZES["small"])
    assert small.eos_token_id == tiny_tokenizer.eos_token_id and small.pad_token_id == tiny_tokenizer.pad_token_id
    assert tokenizer_fingerprint(tiny_tokenizer) == tokenizer_fingerprint(load_tokenizer("tiny"))
    assert tokenizer_fingerprint(tiny_tokenizer) != tokenizer_fingerprint(small)
    assert len(tokenizer_fingerprint(tiny_tokenizer)) == 16


def test_unknown_tokenizer_preset():
    with pytest.raises(ValueError, match="unknown tokenizer preset"):
        preset_tokenizer("huge")


def test_pad_equal_to_eos_is_kept(tiny_tokenizer, tmp_path):
    pe = PreTrainedTokenizerFast(
        tokenizer_object=tiny_tokenizer.backend_tokenizer, bos_token=BOS, eos_token=EOS, pad_token=EOS
    )
    pe.save_pretrained(tmp_path)
    loaded = load_tokenizer(str(tmp_path))
    assert loaded.pad_token == EOS and loaded.pad_token_id == loaded.eos_token_id == tiny_tokenizer.eos_token_id
    assert len(loaded) == len(tiny_tokenizer)  # nothing added
    assert loaded(SENTENCE).input_ids == tiny_tokenizer(SENTENCE).input_ids  # BOS still prepended
    assert tokenizer_fingerprint(loaded) != tokenizer_fingerprint(tiny_tokenizer)


def _tokenizer_without_pad() -> PreTrainedTokenizerFast:
    """A small byte-level BPE whose vocabulary has BOS and EOS but no pad token at all."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=[BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator([SENTENCE, "the quick brown fox jumps over the lazy dog"] * 5, trainer=trainer)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, backend.token_to_id(BOS))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=BOS, eos_token=EOS)


def test_missing_pad_is_added_and_embeddings_resized(tmp_path):
    raw = _tokenizer_without_pad()
    assert raw.pad_token is None
    vocab = len(raw)
    assert ADDED_PAD not in raw.get_vocab()
    # A "hub" model whose embedding matches the tokenizer without pad.
    torch.manual_seed(0)
    config = preset_config("tiny", raw)
    assert config.vocab_size == vocab and config.pad_token_id is None
    transformers.LlamaModel(config).save_pretrained(tmp_path)
    raw.save_pretrained(tmp_path)

    tok = load_tokenizer(str(tmp_path))
    assert tok.pad_token == ADDED_PAD
    assert len(tok) == vocab + 1 and tok.pad_token_id == vocab
    assert tok.pad_token_id != tok.eos_token_id

    model = load_backbone(str(tmp_path), tok)
    emb = model.get_input_embeddings().weight
    assert emb.shape[0] == len(tok)
    assert model.config.pad_token_id == tok.pad_token_id
    # the new row starts (numerically) at the mean of the old rows
    torch.testing.assert_close(emb[-1].detach(), emb[:-1].detach().mean(0), atol=1e-3, rtol=0)
    # and the padded batch runs
    ids, mask = _batch(tok, ["the quick fox", "bread"])
    assert (ids == tok.pad_token_id).any()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert out.shape == (2, ids.shape[1], 64) and torch.isfinite(out).all()


# ------------------------------------------------------------------------------------------------- backbone


def test_preset_backbone_matches_tokenizer(tiny_tokenizer):
    torch.manual_seed(0)
    model = load_backbone("tiny", tiny_tokenizer)
    assert isinstance(model, transformers.LlamaModel)
    assert model.training
    assert model.get_input_embeddings().num_embeddings == len(tiny_tokenizer)
    assert model.config.pad_token_id == tiny_tokenizer.pad_token_id
    assert model.config.eos_token_id == tiny_tokenizer.eos_token_id
    assert hidden_size(model) == 64
    blocks = transformer_blocks(model)
    assert len(blocks) == 2 and all(isinstance(b, LlamaDecoderLayer) for b in blocks)
    assert blocks[0] is model.layers[0] and blocks[1] is model.layers[1]

    lm = load_backbone("tiny", tiny_tokenizer, causal_lm=True)
    assert isinstance(lm, transformers.LlamaForCausalLM)
    assert hidden_size(lm) == 64
    assert len(transformer_blocks(lm)) == 2
    assert lm.get_output_embeddings().weight.shape == (len(tiny_tokenizer), 64)


def test_transformer_blocks_needs_no_split_modules():
    with pytest.raises(ValueError, match="_no_split_modules"):
        transformer_blocks(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_preset_seeding(tiny_tokenizer):
    torch.manual_seed(1)
    a = load_backbone("tiny", tiny_tokenizer)
    torch.manual_seed(1)
    b = load_backbone("tiny", tiny_tokenizer)
    torch.manual_seed(2)
    c = load_backbone("tiny", tiny_tokenizer)
    wa, wb, wc = (m.layers[0].self_attn.q_proj.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_save_and_reload_gives_identical_hidden_states(tiny_tokenizer, tmp_path):
    torch.manual_seed(0)
    model = load_backbone("tiny", tiny_tokenizer).eval()
    model.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").is_file() and (tmp_path / "model.safetensors").is_file()

    tok = load_tokenizer(str(tmp_path))
    assert tok(SENTENCE).input_ids == tiny_tokenizer(SENTENCE).input_ids
    assert tokenizer_fingerprint(tok) == tokenizer_fingerprint(tiny_tokenizer)
    reloaded = load_backbone(str(tmp_path), tok).eval()
    plain = transformers.AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(plain, transformers.LlamaModel)

    ids, mask = _batch(tiny_tokenizer, [SENTENCE, "short one"])
    assert (mask == 0).any()
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).last_hidden_state
        out = reloaded(input_ids=ids, attention_mask=mask).last_hidden_state
        out_plain = plain(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(out_plain, ref)


def test_bad_names_and_dtypes(tiny_tokenizer):
    with pytest.raises(ValueError, match="unknown backbone preset 'huge'"):
        preset_config("huge", tiny_tokenizer)
    with pytest.raises(ValueError, match="unknown dtype 'float64'"):
        load_backbone("tiny", tiny_tokenizer, dtype="float64")


def test_bfloat16_preset(tiny_tokenizer):
    model = load_backbone("tiny", tiny_tokenizer, dtype="bfloat16")
    assert model.get_input_embeddings().weight.dtype == torch.bfloat16


def test_sampling_config_draws_from_the_whole_distribution(tiny_tokenizer, tmp_path):
    """Temperature 1, top_p 1 samples every token, not only transformers' default top_k = 50 that a plain
    ``generate(do_sample=True, temperature=1.0, top_p=1.0)`` keeps (PPO's old log-probs are those of the whole
    distribution; lit_safe's rollouts and arena sampled from the top 50 before)."""
    torch.manual_seed(0)
    model = load_backbone("tiny", tiny_tokenizer, causal_lm=True)
    torch.nn.init.normal_(model.lm_head.weight, std=1e-4)  # a nearly uniform next-token distribution, no ties
    model.save_pretrained(tmp_path)  # as a policy is loaded: from a folder (e.g. the SFT export)
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    ids = torch.full((600, 3), 7)
    config = sampling_config(1, 1.0, 1.0, tiny_tokenizer.pad_token_id, [tiny_tokenizer.eos_token_id])
    drawn = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)[:, -1]
    # 600 nearly uniform draws from 2,048 tokens: about 2048 (1 - exp(-600 / 2048)) = 520 distinct
    assert drawn.unique().numel() > 400
    capped = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=1, do_sample=True,
                            temperature=1.0, top_p=1.0, pad_token_id=tiny_tokenizer.pad_token_id)[:, -1]
    assert capped.unique().numel() <= 50
    greedy = sampling_config(4, 0.0, 1.0, tiny_tokenizer.pad_token_id, [1, 2])
    assert greedy.do_sample is False and greedy.eos_token_id == [1, 2] and greedy.max_new_tokens == 4
