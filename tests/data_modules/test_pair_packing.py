"""Pair packing: one row per preference pair, the shared prompt computed once, with exactly the scores (and
gradients) of two separate sequences."""

import lightning as L
import numpy as np
import pytest
import torch

from lit_safe.data_modules.pku_saferlhf import PKUSafeRLHFDataModule, PreferenceView
from lit_safe.models.text import pack_pair, pair_attention, shared_prefix_length
from lit_safe.modules.reward import RewardModule


def test_shared_prefix_keeps_each_eos():
    eos = 2
    assert shared_prefix_length(np.array([1, 5, 6, 7, eos]), np.array([1, 5, 6, 9, eos])) == 3
    # one response is a prefix of the other: the shorter keeps its EOS out of the shared part
    assert shared_prefix_length(np.array([1, 5, eos]), np.array([1, 5, eos, 8, eos])) == 2
    assert shared_prefix_length(np.array([1, 5]), np.array([3, 5])) == 0


def test_pack_pair_layout_and_mask_by_hand():
    chosen, rejected = np.array([1, 5, 6, 2]), np.array([1, 5, 9, 9, 2])
    ids, positions, shared, n_chosen = pack_pair(chosen, rejected)
    assert ids.tolist() == [1, 5, 6, 2, 9, 9, 2]
    assert positions.tolist() == [0, 1, 2, 3, 2, 3, 4]
    assert (shared, n_chosen) == (2, 4)
    mask = pair_attention([7], [shared], [n_chosen], width=8)[0, 0].int()
    expected = torch.tensor([
        # keys: 0  1  2  3  4  5  6  pad
        [1, 0, 0, 0, 0, 0, 0, 0],  # 0 prompt
        [1, 1, 0, 0, 0, 0, 0, 0],  # 1 prompt
        [1, 1, 1, 0, 0, 0, 0, 0],  # 2 chosen
        [1, 1, 1, 1, 0, 0, 0, 0],  # 3 chosen EOS
        [1, 1, 0, 0, 1, 0, 0, 0],  # 4 rejected: the prompt and itself, never the chosen tokens
        [1, 1, 0, 0, 1, 1, 0, 0],  # 5 rejected
        [1, 1, 0, 0, 1, 1, 1, 0],  # 6 rejected EOS
        [1, 0, 0, 0, 0, 0, 0, 0],  # padding query: key 0 only (no NaN)
    ])
    assert torch.equal(mask, expected)


@pytest.fixture(scope="module")
def batches(tmp_path_factory):
    prepared = tmp_path_factory.mktemp("packing")
    kwargs = dict(tokenizer="tiny", synthetic_rows=160, batch_size=8, group_size=4, num_workers=0,
                  prepared_dir=str(prepared))
    plain = PKUSafeRLHFDataModule(**kwargs)
    packed = PKUSafeRLHFDataModule(pack_pairs=True, **kwargs)
    plain.setup("fit")
    packed.setup("fit")
    return list(plain.val_dataloader()), list(packed.val_dataloader())


def test_packed_and_unpacked_scores_and_gradients_agree(tmp_path):
    data = PKUSafeRLHFDataModule(tokenizer="tiny", synthetic_rows=160, num_workers=0, prepared_dir=str(tmp_path))
    data.setup("fit")
    dataset = data._dataset("val")
    items = [dataset[i] for i in range(8)]
    pad = data.tokenizer.pad_token_id
    plain, packed = PreferenceView(False).collate(items, pad), PreferenceView(True).collate(items, pad)
    assert torch.equal(plain["row"], packed["row"])

    L.seed_everything(0)
    module = RewardModule(backbone="tiny")
    module.configure_model()
    results = []
    for batch in (plain, packed):
        module.zero_grad()
        loss, chosen, rejected, _ = module.model_step(batch)
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in module.model.parameters()])
        results.append((loss.detach(), chosen.detach(), rejected.detach(), grads))
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_packing_computes_fewer_tokens_with_less_padding(batches):
    plain, packed = batches
    computed = lambda bs: sum(b["attention_mask"].numel() for b in bs)  # noqa: E731
    real = lambda bs: sum(int(b["attention_mask"].sum()) for b in bs)  # noqa: E731
    assert real(packed) < 0.9 * real(plain)  # the prompt is computed once per pair
    assert 1 - real(packed) / computed(packed) < 1 - real(plain) / computed(plain)
    assert computed(packed) < 0.85 * computed(plain)


def test_token_wise_loss_refuses_packed_batches(batches):
    _, packed = batches
    module = RewardModule(backbone="tiny", loss_type="token")
    module.configure_model()
    with pytest.raises(ValueError, match="pack_pairs"):
        module.model_step(packed[0])
