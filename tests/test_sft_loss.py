"""Tests of lit_safe.losses.sft_loss (causal-LM cross entropy on the response tokens) against numbers worked out by
hand with math.log / math.exp, and of how it reads the labels that the ``sft`` view collates."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import math

import numpy as np
import pytest
import torch

from lit_safe.data_modules.policy import IGNORE_INDEX, SFTView
from lit_safe.losses import sft_loss

X = -100  # written out (not imported) so that a change of the ignore index is caught


def nll(row: list[float], target: int) -> float:
    """-log softmax(row)[target] = log(sum_j e^{row_j}) - row[target], written out with math."""
    return math.log(sum(math.exp(v) for v in row)) - row[target]


# Two sequences, L = 4, V = 3. Token t + 1 is predicted from logits[t].
#   sequence 0: a 2-token prompt, then 2 response tokens (2, 1)  -> targets at t = 1 (2) and t = 2 (1)
#   sequence 1: a 1-token prompt, 2 response tokens (0, 1), then padding -> targets at t = 0 (0) and t = 1 (1)
LOGITS = [
    [[5.0, -1.0, 3.0], [0.0, 2.0, 1.0], [0.5, 1.5, -1.0], [9.0, 9.0, -9.0]],
    [[2.0, 0.0, 0.0], [1.0, 0.0, 3.0], [-4.0, 7.0, 0.0], [0.3, 0.2, 0.1]],
]
LABELS = [[X, X, 2, 1], [X, 0, 1, X]]


def _by_hand() -> tuple[float, int, int]:
    terms = [
        nll([0.0, 2.0, 1.0], 2),  # b0 t1 -> label 2; argmax 1: wrong
        nll([0.5, 1.5, -1.0], 1),  # b0 t2 -> label 1; argmax 1: right
        nll([2.0, 0.0, 0.0], 0),  # b1 t0 -> label 0; argmax 0: right
        nll([1.0, 0.0, 3.0], 1),  # b1 t1 -> label 1; argmax 2: wrong
    ]
    return sum(terms) / len(terms), len(terms), 2


def test_ignore_index_is_minus_100():
    assert IGNORE_INDEX == X


def test_sft_loss_by_hand():
    loss, count, correct = sft_loss(torch.tensor(LOGITS), torch.tensor(LABELS))
    expected, n, right = _by_hand()
    # the terms, spelt out once more: log(1 + e^2 + e) - 1, log(e^.5 + e^1.5 + e^-1) - 1.5, log(e^2 + 2) - 2,
    # log(e + 1 + e^3)
    spelt = (
        math.log(1 + math.exp(2) + math.exp(1)) - 1
        + math.log(math.exp(0.5) + math.exp(1.5) + math.exp(-1)) - 1.5
        + math.log(math.exp(2) + 2) - 2
        + math.log(math.exp(1) + 1 + math.exp(3))
    ) / 4
    assert expected == pytest.approx(spelt, rel=1e-12)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert loss.dim() == 0 and loss.dtype == torch.float32
    assert int(count) == n == 4
    assert int(correct) == right == 2


def test_sft_loss_single_sequence_by_hand():
    # B = 1: prompt of 1 token, response of 3 (the last of which is EOS = 2)
    logits = [[[0.0, 1.0, 0.0], [2.0, 0.0, -2.0], [0.0, 0.0, 4.0], [1.0, 1.0, 1.0]]]
    labels = [[X, 1, 0, 2]]
    loss, count, correct = sft_loss(torch.tensor(logits), torch.tensor(labels))
    terms = [nll(logits[0][0], 1), nll(logits[0][1], 0), nll(logits[0][2], 2)]
    assert loss.item() == pytest.approx(sum(terms) / 3, rel=1e-6)
    assert int(count) == 3
    assert int(correct) == 3  # every argmax is the next label


def test_sft_loss_is_a_token_mean_not_a_mean_of_sequence_means():
    # sequence 0 has 1 labelled target, sequence 1 has 3: the mean weighs each token equally
    logits = [[[3.0, 0.0, 0.0]] * 4, [[0.0, 0.0, 0.0]] * 4]
    labels = [[X, X, X, 1], [X, 0, 1, 2]]
    loss, count, _ = sft_loss(torch.tensor(logits), torch.tensor(labels))
    per_token = [nll([3.0, 0.0, 0.0], 1)] + [math.log(3.0)] * 3
    assert int(count) == 4
    assert loss.item() == pytest.approx(sum(per_token) / 4, rel=1e-6)
    sequence_means = (per_token[0] + sum(per_token[1:]) / 3) / 2
    assert abs(loss.item() - sequence_means) > 0.1


def test_all_ignored_labels_give_zero_loss_and_zero_count():
    logits = torch.tensor(LOGITS, requires_grad=True)
    labels = torch.full((2, 4), X)
    loss, count, correct = sft_loss(logits, labels)
    assert not torch.isnan(loss)
    assert loss.item() == 0.0
    assert int(count) == 0 and int(correct) == 0
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert (logits.grad == 0).all()

    # only the first position labelled: it is never a target (nothing predicts it), so also nothing to learn
    first_only = torch.tensor([[0, X, X, X], [1, X, X, X]])
    loss, count, correct = sft_loss(torch.tensor(LOGITS), first_only)
    assert loss.item() == 0.0 and int(count) == 0 and int(correct) == 0


def test_logits_whose_next_label_is_ignored_do_not_matter():
    base, base_count, base_correct = sft_loss(torch.tensor(LOGITS), torch.tensor(LABELS))
    changed = torch.tensor(LOGITS)
    # positions whose next label is ignored (b0 t0, b1 t2) and the last position (it predicts nothing)
    for b, t in [(0, 0), (1, 2), (0, 3), (1, 3)]:
        changed[b, t] = torch.tensor([-50.0, 40.0, 123.0])
    loss, count, correct = sft_loss(changed, torch.tensor(LABELS))
    assert loss.item() == base.item()
    assert int(count) == int(base_count) and int(correct) == int(base_correct)

    # ... whereas a position whose next label is kept does change it
    changed[0, 1] = torch.tensor([0.0, 0.0, 10.0])
    assert sft_loss(changed, torch.tensor(LABELS))[0].item() != pytest.approx(base.item())


def test_gradients_by_hand():
    logits = torch.tensor(LOGITS, requires_grad=True)
    loss, count, _ = sft_loss(logits, torch.tensor(LABELS))
    loss.backward()
    n = int(count)
    expected = torch.zeros(2, 4, 3, dtype=torch.float64)
    # d/dz of -log softmax(z)[y] is softmax(z) - onehot(y), divided by the number of labelled targets
    for b, t, y in [(0, 1, 2), (0, 2, 1), (1, 0, 0), (1, 1, 1)]:
        row = LOGITS[b][t]
        total = sum(math.exp(v) for v in row)
        for j, v in enumerate(row):
            expected[b, t, j] = (math.exp(v) / total - (1.0 if j == y else 0.0)) / n
    assert torch.allclose(logits.grad.double(), expected, atol=1e-6)


def test_low_precision_logits_are_computed_in_float32():
    loss, count, correct = sft_loss(torch.tensor(LOGITS, dtype=torch.bfloat16), torch.tensor(LABELS))
    expected, n, right = _by_hand()  # every logit above is exact in bfloat16
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert int(count) == n and int(correct) == right


def test_custom_ignore_index():
    labels = [[-1, -1, 2, 1], [-1, 0, 1, -1]]
    loss, count, correct = sft_loss(torch.tensor(LOGITS), torch.tensor(labels), ignore_index=-1)
    expected, n, right = _by_hand()
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert int(count) == n and int(correct) == right


def test_collated_sft_batch_counts_exactly_the_response_tokens():
    """The view's labels and the loss agree: labelled targets are the response tokens (EOS included), never the
    prompt nor padding; a model that puts all its mass on the true next token has loss ~0 and is always right."""
    eos, pad, vocab = 2, 0, 12
    items = [
        {"input_ids": np.asarray([1, 5, 6, 7, 8, 9, eos], dtype=np.int32), "prompt_length": 4, "row": 0},
        {"input_ids": np.asarray([1, 5, 10, eos], dtype=np.int32), "prompt_length": 2, "row": 1},
        {"input_ids": np.asarray([1, 11, 3, eos], dtype=np.int32), "prompt_length": 3, "row": 2},
    ]
    batch = SFTView.collate(items, pad_id=pad, multiple_of=4)
    ids, labels = batch["input_ids"], batch["labels"]
    assert ids.shape == (3, 8)
    response_tokens = sum(len(i["input_ids"]) - i["prompt_length"] for i in items)
    assert response_tokens == 3 + 2 + 1

    # an "oracle": at every position the logit of the true next token is 30, the others 0
    logits = torch.zeros(3, 8, vocab)
    for b in range(3):
        for t in range(7):
            logits[b, t, ids[b, t + 1]] = 30.0
    loss, count, correct = sft_loss(logits, labels)
    assert int(count) == response_tokens
    assert int(correct) == response_tokens
    assert loss.item() == pytest.approx(math.log(1 + (vocab - 1) * math.exp(-30.0)), abs=1e-6)

    # uniform logits: every labelled target costs log(V)
    loss, count, _ = sft_loss(torch.zeros(3, 8, vocab), labels)
    assert loss.item() == pytest.approx(math.log(vocab), rel=1e-6)
    assert int(count) == response_tokens
