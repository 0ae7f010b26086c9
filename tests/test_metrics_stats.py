"""The stats protocol of lit_safe.metrics: weighted means by hand (one weight or one per metric), NaN where nothing
was counted, the score name in ScoreStats' keys, checkpointed states, and every stats class's update/compute/reset."""

import math

import pytest
import torch

from lit_safe.metrics import CostStats, MeanStats, ModerationStats, ScoreStats, StageStats, TokenStats


def test_mean_stats_weighted_by_hand():
    stats = MeanStats(["loss", "accuracy"])
    stats.update({"loss": torch.tensor(1.0), "accuracy": torch.tensor(0.5)}, 2)
    stats.update({"loss": torch.tensor(4.0), "accuracy": torch.tensor(1.0)}, weight={"loss": 1, "accuracy": 6})
    values = stats.compute()
    assert list(values) == ["loss", "accuracy"]
    assert float(values["loss"]) == pytest.approx((2 * 1.0 + 4.0) / 3)
    assert float(values["accuracy"]) == pytest.approx((2 * 0.5 + 6 * 1.0) / 8)


def test_mean_stats_nan_where_nothing_counted_and_reset():
    stats = MeanStats(["a", "b"])
    stats.update({"a": torch.tensor(3.0)}, torch.tensor(2.0))  # a batch may average some metrics only
    with pytest.warns(UserWarning):  # torchmetrics: "compute called before update" for b
        values = stats.compute()
    assert float(values["a"]) == 3.0 and math.isnan(float(values["b"]))
    stats.reset()
    stats.update({"a": torch.tensor(1.0), "b": torch.tensor(2.0)}, 1)
    assert {k: float(v) for k, v in stats.compute().items()} == {"a": 1.0, "b": 2.0}


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric MeanMetric")  # states loaded, not updated
def test_mean_stats_states_are_checkpointed():
    stats = MeanStats(["loss"])
    stats.update({"loss": torch.tensor(2.0)}, 3)
    state = stats.state_dict()
    assert set(state) == {"means.loss.mean_value", "means.loss.weight"}
    again = MeanStats(["loss"])
    again.load_state_dict(state)
    assert float(again.compute()["loss"]) == 2.0


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric MeanMetric")
def test_score_stats_name_in_the_keys():
    stats = ScoreStats("cost")
    stats.update(torch.tensor(0.7), torch.tensor([2.0, 1.0]), torch.tensor([0.0, 3.0]))
    values = stats.compute()
    assert list(values) == ["loss", "accuracy", "cost_mean", "cost_std", "cost_margin"]
    assert float(values["accuracy"]) == 0.5
    assert float(values["cost_mean"]) == pytest.approx(1.5)
    assert float(values["cost_std"]) == pytest.approx(math.sqrt((4 + 1 + 0 + 9) / 4 - 1.5**2))
    assert float(values["cost_margin"]) == pytest.approx((2.0 - 2.0) / 2)
    assert list(ScoreStats().compute().keys())[2:] == ["reward_mean", "reward_std", "reward_margin"]


def test_token_stats_skip_a_batch_without_tokens():
    stats = TokenStats()
    stats.update(torch.tensor(2.0), torch.tensor(0), torch.tensor(0))
    stats.update(torch.tensor(math.log(3.0)), torch.tensor(4), torch.tensor(3))
    values = stats.compute()
    assert float(values["perplexity"]) == pytest.approx(3.0)
    assert float(values["token_accuracy"]) == 0.75


@pytest.mark.parametrize("make", [lambda: MeanStats(["x"]), ScoreStats, CostStats, TokenStats,
                                  lambda: ModerationStats(["a"], ["safe", "unsafe"], 0)])
def test_every_stats_class_follows_the_protocol(make):
    stats = make()
    for method in ("update", "compute", "reset"):
        assert callable(getattr(stats, method))
    assert isinstance(stats, torch.nn.Module)
    assert all(hasattr(StageStats, m) for m in ("update", "compute", "reset"))
