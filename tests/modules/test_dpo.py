"""The ``preference_pairs`` view and DPOModule (ALGORITHMS.md section 8) on the tiny preset: items and batches built
by hand from the tokenizer, log 2 at the first step, learning a consistent preference, a reference that never moves
(and is restored from checkpoints), and an export that loads as a plain Hugging Face causal LM."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM

from lit_safe.data_modules.policy import IGNORE_INDEX, PreferencePairView, SFTView
from lit_safe.data_modules.preparation import SplitReport
from lit_safe.models.text import encode_prompts
from lit_safe.models.tokenizer import load_tokenizer, tokenizer_fingerprint
from lit_safe.modules.dpo import DEFAULT_OPTIMIZER, DPOModule

TEMPLATE = "Rewrite this video prompt: {prompt} Detailed prompt:"
MAX_LENGTH = 64


def rewrite_pairs(row: dict) -> list[tuple[str, str, str]]:
    return [(row["prompt_text"], row["winner"], row["loser"])]


def _prompt_ids(tok, prompt: str) -> list[int]:
    return tok(TEMPLATE.replace("{prompt}", prompt))["input_ids"]


def _response_ids(tok, response: str) -> list[int]:
    return tok(response, add_special_tokens=False)["input_ids"]


# ----------------------------------------------------------------------------------------------------------- view
def test_preference_pair_view_items_and_drops(tiny_tokenizer):
    tok = tiny_tokenizer
    long_prompt = " ".join(["please"] * 80)
    rows = [
        (0, {"prompt_text": "a cat", "winner": "a calm cat in a sunny garden", "loser": "a cat"}),
        (1, {"prompt_text": "a dog", "winner": "a dog", "loser": "a dog"}),  # identical rewrites
        (2, {"prompt_text": long_prompt, "winner": "fine", "loser": "bad"}),  # no room for a response
        (3, {"prompt_text": "a bird", "winner": " ".join(["a blue bird"] * 30), "loser": "a bird"}),  # cut
        (4, {"prompt_text": "a fox", "winner": " ".join(["a red fox"] * 30) + " one",
             "loser": " ".join(["a red fox"] * 30) + " two"}),  # equal once both are cut
    ]
    assert len(_prompt_ids(tok, long_prompt)) >= MAX_LENGTH
    view = PreferencePairView(rewrite_pairs)
    report = SplitReport()
    items = list(view.encode(rows, tok, TEMPLATE, MAX_LENGTH, report))

    assert view.name == "preference_pairs"
    assert [i["row"] for i in items] == [0, 3]
    assert report.kept == 2
    assert report.dropped == {"identical_responses": 1, "prompt_too_long": 1, "identical_after_truncation": 1}
    assert report.notes["truncated_sequences"] == 3  # row 3's winner, both of row 4's rewrites

    eos = tok.eos_token_id
    first = items[0]
    p = _prompt_ids(tok, "a cat")
    assert first["chosen"].dtype == np.int32 and first["rejected"].dtype == np.int32
    assert first["prompt_length"] == len(p)
    assert first["chosen"].tolist() == [*p, *_response_ids(tok, "a calm cat in a sunny garden"), eos]
    assert first["rejected"].tolist() == [*p, *_response_ids(tok, "a cat"), eos]
    assert encode_prompts(tok, ["a cat"], TEMPLATE)[0].tolist() == p  # generation starts from the same ids

    cut = items[1]
    p = _prompt_ids(tok, "a bird")
    assert len(cut["chosen"]) == MAX_LENGTH and cut["chosen"][-1] == eos
    room = MAX_LENGTH - 1 - len(p)
    assert cut["chosen"].tolist() == [*p, *_response_ids(tok, " ".join(["a blue bird"] * 30))[:room], eos]
    assert cut["rejected"][: len(p)].tolist() == p
    assert view.length(cut) == MAX_LENGTH


def test_preference_pair_view_collate_chosen_first_and_labels_mask(tiny_tokenizer):
    tok = tiny_tokenizer
    rows = [
        (5, {"prompt_text": "a cat", "winner": "a calm cat in a sunny garden", "loser": "a cat"}),
        (9, {"prompt_text": "two horses running", "winner": "two horses", "loser": "two horses in a storm at night"}),
    ]
    view = PreferencePairView(rewrite_pairs)
    items = list(view.encode(rows, tok, TEMPLATE, MAX_LENGTH, SplitReport()))
    batch = view.collate(items, tok.pad_token_id, multiple_of=8)

    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert ids.shape == mask.shape == labels.shape and ids.shape[0] == 4 and ids.shape[1] % 8 == 0
    assert batch["row"].tolist() == [5, 9]
    sequences = [items[0]["chosen"], items[1]["chosen"], items[0]["rejected"], items[1]["rejected"]]
    prompt_lengths = [items[0]["prompt_length"], items[1]["prompt_length"]] * 2
    for b, (seq, n) in enumerate(zip(sequences, prompt_lengths)):
        length = len(seq)
        assert ids[b, :length].tolist() == seq.tolist()
        assert ids[b, length:].eq(tok.pad_token_id).all()
        assert mask[b, :length].eq(1).all() and mask[b, length:].eq(0).all()
        expected = [IGNORE_INDEX] * n + seq[n:].tolist() + [IGNORE_INDEX] * (ids.size(1) - length)
        assert labels[b].tolist() == expected


def test_preference_pair_view_encode_inputs_is_the_sft_tokenisation(tiny_tokenizer):
    tok = tiny_tokenizer
    pairs = PreferencePairView(rewrite_pairs).encode_inputs(tok, ["a cat"], ["a calm cat"], TEMPLATE, MAX_LENGTH)
    sft = SFTView(lambda row: []).encode_inputs(tok, ["a cat"], ["a calm cat"], TEMPLATE, MAX_LENGTH)
    assert pairs[1] == sft[1] == 0 and pairs[0][0].tolist() == sft[0][0].tolist()
    with pytest.raises(ValueError, match="no room"):
        PreferencePairView(rewrite_pairs).encode_inputs(tok, ["word " * 80], ["x"], TEMPLATE, MAX_LENGTH)


# --------------------------------------------------------------------------------------------------------- module
SUBJECTS = ["a cat", "two dogs", "a red car", "an old man", "a city street", "a small boat", "a forest", "a child"]


def _pairs(tok) -> list[dict]:
    """A consistent preference: the winning rewrite always adds a calm scene, the losing one a violent one."""
    rows = [(i, {"prompt_text": s, "winner": f"{s} in a calm sunny garden, soft light, peaceful",
                 "loser": f"{s} covered in blood, violent fight, gore"}) for i, s in enumerate(SUBJECTS)]
    return list(PreferencePairView(rewrite_pairs).encode(rows, tok, TEMPLATE, MAX_LENGTH, SplitReport()))


def _loader(tok, items, batch_size=4):
    return DataLoader(items, batch_size=batch_size, shuffle=False,
                      collate_fn=lambda batch: PreferencePairView.collate(batch, tok.pad_token_id))


def _trainer(tmp_path, steps: int) -> Trainer:
    return Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                   num_sanity_val_steps=0)


def _module(**kwargs) -> DPOModule:
    seed_everything(0, verbose=False)
    module = DPOModule(backbone="tiny", **kwargs)
    module.configure_model()
    return module


def _state(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in network.state_dict().items()}


def test_reference_is_a_frozen_copy_of_the_initial_policy():
    module = _module()
    assert tokenizer_fingerprint(module.tokenizer) == tokenizer_fingerprint(load_tokenizer("tiny"))
    policy, reference = module.model.state_dict(), module.reference.state_dict()
    assert policy.keys() == reference.keys()
    for key in policy:
        assert torch.equal(policy[key], reference[key]), key
        assert policy[key].data_ptr() != reference[key].data_ptr()  # a copy, not shared storage
    assert all(p.requires_grad for p in module.model.parameters())
    assert not any(p.requires_grad for p in module.reference.parameters())
    module.train()
    assert module.model.training and not module.reference.training


def test_first_step_loss_is_log_2(tiny_tokenizer):
    module = _module(beta=0.1)
    batch = next(iter(_loader(tiny_tokenizer, _pairs(tiny_tokenizer))))
    values = module.model_step(batch)
    assert values["loss"].item() == pytest.approx(math.log(2.0), abs=1e-6)
    assert values["reward_chosen"].item() == pytest.approx(0.0, abs=1e-6)
    assert values["reward_margin"].item() == pytest.approx(0.0, abs=1e-6)
    assert values["accuracy"].item() == 0.0  # strictly higher: ties do not count
    assert values["logps_chosen"].item() < 0 and values["logps_rejected"].item() < 0
    values["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.model.parameters())
    assert all(p.grad is None for p in module.reference.parameters())


def test_model_step_rejects_batches_without_pairs(tiny_tokenizer):
    module = _module()
    sft = SFTView(lambda row: [(row["prompt_text"], row["winner"])])
    rows = [(0, {"prompt_text": "a cat", "winner": "a calm cat"}), (1, {"prompt_text": "a dog", "winner": "a dog"})]
    batch = sft.collate(list(sft.encode(rows, tiny_tokenizer, TEMPLATE, MAX_LENGTH, SplitReport())), 0)
    with pytest.raises(ValueError, match="preference_pairs"):
        module.model_step(batch)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A few steps of DPO on the consistent preference; returns (module, initial policy state, path of a
    checkpoint, the fixed batch, its metrics before training)."""
    tmp = tmp_path_factory.mktemp("dpo")
    tok = load_tokenizer("tiny")
    items = _pairs(tok)
    module = _module(beta=0.5, optimizer=replace(DEFAULT_OPTIMIZER, lr=3e-3, weight_decay=0.0, warmup_ratio=0.0,
                                               lr_schedule="constant"))
    initial = _state(module.model)
    batch = next(iter(_loader(tok, items, batch_size=len(items))))
    with torch.no_grad():
        before = module.model_step(batch)
    trainer = _trainer(tmp, steps=12)
    trainer.fit(module, train_dataloaders=_loader(tok, items), val_dataloaders=_loader(tok, items))
    checkpoint = tmp / "last.ckpt"
    trainer.save_checkpoint(checkpoint)
    return module, initial, checkpoint, batch, before, trainer


def test_training_learns_the_preference(trained):
    module, _, _, batch, before, trainer = trained
    assert trainer.global_step == 12
    module.eval()
    with torch.no_grad():
        after = module.model_step(batch)
    assert before["loss"].item() == pytest.approx(math.log(2.0), abs=1e-6)
    assert after["loss"].item() < before["loss"].item() - 0.2
    assert after["accuracy"].item() == 1.0 and before["accuracy"].item() == 0.0
    assert after["reward_margin"].item() > 0.5
    logged = trainer.callback_metrics
    for key in ("train/loss", "train/accuracy", "train/reward_margin", "train/reward_chosen", "train/reward_rejected",
                "train/logps_chosen", "train/logps_rejected", "val/loss", "val/accuracy", "val/reward_margin"):
        assert key in logged, key
    assert float(logged["val/accuracy"]) == 1.0


def test_reference_is_unchanged_and_gets_no_gradient(trained):
    module, initial, _, _, _, _ = trained
    for key, value in module.reference.state_dict().items():
        assert torch.equal(value, initial[key]), key
    assert all(p.grad is None and not p.requires_grad for p in module.reference.parameters())
    assert not module.reference.training
    moved = [k for k, v in module.model.state_dict().items() if not torch.equal(v, initial[k])]
    assert moved  # the policy did train
    optimizer = module.trainer.optimizers[0]
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert in_optimizer == {id(p) for p in module.model.parameters()}


def test_checkpoint_restores_policy_and_reference(trained):
    module, initial, checkpoint, _, _, _ = trained
    seed_everything(123, verbose=False)  # a different random preset init: everything must come from the checkpoint
    restored = DPOModule.load_from_checkpoint(checkpoint, map_location="cpu")
    for key, value in restored.reference.state_dict().items():
        assert torch.equal(value, initial[key]), key
    trained_policy = module.model.state_dict()
    for key, value in restored.model.state_dict().items():
        assert torch.equal(value, trained_policy[key]), key
    assert not any(p.requires_grad for p in restored.reference.parameters())
    assert restored.hparams.beta == 0.5


def test_export_pretrained_loads_as_a_causal_lm(trained, tmp_path):
    module, _, _, batch, _, _ = trained
    path = module.export_pretrained(tmp_path / "augmenter")
    loaded = AutoModelForCausalLM.from_pretrained(path).eval()
    module.eval()
    with torch.no_grad():
        ours = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        theirs = loaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(theirs, ours)
    tok = load_tokenizer(str(path))
    assert tokenizer_fingerprint(tok) == tokenizer_fingerprint(module.tokenizer)
    # the exported policy can start a new DPO run, its own reference
    again = DPOModule(backbone=str(path))
    again.configure_model()
    for key, value in again.reference.state_dict().items():
        assert torch.equal(value, again.model.state_dict()[key]), key


def test_predict_step_gives_per_pair_columns(trained):
    module, _, _, batch, _, _ = trained
    module.eval()
    with torch.no_grad():
        out = module.predict_step(batch, 0)
        values = module.model_step(batch)
    assert set(out) == {"row", "reward_chosen", "reward_rejected", "logps_chosen", "logps_rejected"}
    assert all(v.shape == batch["row"].shape for v in out.values())
    torch.testing.assert_close(out["reward_chosen"].mean(), values["reward_chosen"])
    torch.testing.assert_close((out["reward_chosen"] - out["reward_rejected"]).mean(), values["reward_margin"])
