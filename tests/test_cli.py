"""The lit-safe command line end to end: fit on the quickstart config, validate/test/predict from the checkpoint,
prepare, the Hugging Face export, and a parse check of every YAML under configs/."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_safe.cli import main, run
from lit_safe.models.score_model import ScoreModel
from lit_safe.modules.reward import RewardModule

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))
FRAGMENTS = [p for p in CONFIGS if p.parent.name == "trainer"]
# Configs of the project subcommands that are not Lightning's (tree-grow, tree-pairs, tree-experiment) have no
# model section; tests/test_cli_tree.py parses them with their own command.
FULL = [p for p in CONFIGS if p.parent.name != "trainer" and "model" in yaml.safe_load(p.read_text())]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, quickstart_config):
    tmp = tmp_path_factory.mktemp("cli")
    config = quickstart_config("reward", tmp)
    cli = run(["fit", "--config", str(config)])
    return tmp, config, cli


def test_fit_trains_logs_checkpoints_and_exports(fitted):
    tmp, _, cli = fitted
    metrics = cli.trainer.callback_metrics
    assert float(metrics["val/accuracy"]) >= 0.8  # one short epoch on 1,200 synthetic pairs
    assert (tmp / "checkpoints" / "last.ckpt").is_file()
    events = list((tmp / "runs").rglob("events.out.tfevents.*"))
    assert events
    accumulator = EventAccumulator(str(events[0].parent)).Reload()
    scalars = set(accumulator.Tags()["scalars"])
    assert {"train/loss", "train/accuracy", "val/accuracy", "val/reward_mean", "val/reward_std"} <= scalars
    assert {"perf/real_tokens_per_s", "perf/padding_share", "perf/data_wait_share"} <= scalars
    losses = [e.value for e in accumulator.Scalars("train/loss")]
    assert losses[-1] < losses[0]
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (tmp / "reward_model" / name).is_file()


def test_validate_from_checkpoint_reproduces_the_final_validation(fitted):
    tmp, config, fit_cli = fitted
    cli = run(["validate", "--config", str(config), "--ckpt_path", str(tmp / "checkpoints" / "last.ckpt")])
    assert float(cli.trainer.callback_metrics["val/accuracy"]) == pytest.approx(
        float(fit_cli.trainer.callback_metrics["val/accuracy"]), abs=1e-6
    )


def test_test_and_predict_from_checkpoint(fitted):
    tmp, config, _ = fitted
    ckpt = str(tmp / "checkpoints" / "last.ckpt")
    cli = run(["test", "--config", str(config), "--ckpt_path", ckpt])
    assert float(cli.trainer.callback_metrics["test/accuracy"]) >= 0.8
    out = tmp / "predictions.jsonl"
    cli = run(["predict", "--config", str(config), "--ckpt_path", ckpt,
               "--trainer.callbacks+=lit_safe.callbacks.predictions.JsonlPredictionWriter",
               "--trainer.callbacks.output_path", str(out)])
    predictions = cli.trainer.predict_loop.predictions
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(written) == sum(len(p["row"]) for p in predictions)
    assert set(written[0]) == {"row", "chosen_score", "rejected_score"}
    assert sum(r["chosen_score"] > r["rejected_score"] for r in written) >= 0.8 * len(written)
    rows = torch.cat([p["row"] for p in predictions])
    assert len(rows) == len(set(rows.tolist())) > 0
    chosen = torch.cat([p["chosen_score"] for p in predictions])
    rejected = torch.cat([p["rejected_score"] for p in predictions])
    assert (chosen > rejected).float().mean() >= 0.8


def test_exported_model_round_trips_with_identical_scores(fitted):
    tmp, _, _ = fitted
    module = RewardModule.load_from_checkpoint(tmp / "checkpoints" / "last.ckpt", map_location="cpu").eval()
    exported = ScoreModel.from_pretrained(tmp / "reward_model").eval()
    batch = module.tokenizer(
        ["BEGINNING OF CONVERSATION: USER: How do I boil an egg? ASSISTANT:Put it in boiling water.<|eos|>",
         "BEGINNING OF CONVERSATION: USER: Hi ASSISTANT:Hello!<|eos|>"],
        return_tensors="pt", padding=True,
    )
    with torch.no_grad():
        expected = module.model(batch["input_ids"], batch["attention_mask"]).end_scores
        got = exported(batch["input_ids"], batch["attention_mask"]).end_scores
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert exported.score_type == "reward"


def test_prepare_subcommand_prints_and_saves_the_report(tmp_path, capsys, quickstart_config):
    config = quickstart_config("reward", tmp_path, synthetic_rows=300)
    assert main(["prepare", "--config", str(config)]) is None  # the console entry point
    out = capsys.readouterr().out
    output_dir = Path(out.split(" -> ")[1].splitlines()[0])
    saved = json.loads((output_dir / "report.json").read_text())
    assert saved["splits"]["train"]["kept"] > 200 and saved["splits"]["val"]["kept"] > 0
    assert f"kept {saved['splits']['train']['kept']:>7}" in out
    report = run(["prepare", "--config", str(config)])  # the same settings again: reused, not rewritten
    assert "Reusing" in capsys.readouterr().out
    assert report.to_dict() == saved


def test_a_typo_in_an_option_fails_loudly(tmp_path, quickstart_config):
    config = quickstart_config("reward", tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run(["fit", "--config", str(config), "--model.init_args.learning_rate", "0.1"])
    assert exit_info.value.code != 0


@pytest.mark.parametrize("path", FULL, ids=lambda p: str(p.relative_to(REPO)))
def test_every_full_config_parses(path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(["fit", "--config", str(path), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"].startswith("lit_safe.modules.")
    assert printed["data"]["class_path"].startswith("lit_safe.data_modules.")
    for callback in printed["trainer"]["callbacks"] or []:
        if callback["class_path"].endswith("ModelCheckpoint") and callback["init_args"]["save_last"]:
            # a rerun must overwrite last.ckpt: with the version counter it writes last-v1.ckpt, and the documented
            # `test --ckpt_path .../last.ckpt` silently evaluates the previous run
            assert callback["init_args"]["enable_version_counter"] is False


@pytest.mark.parametrize("path", FRAGMENTS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_trainer_fragment_composes_with_the_quickstart(path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(["fit", "--config", str(REPO / "configs/quickstart/reward.yaml"), "--config", str(path), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    fragment = yaml.safe_load(path.read_text())["trainer"]
    for key, value in fragment.items():
        if isinstance(value, dict) and "class_path" in value:
            assert printed["trainer"][key]["class_path"] == value["class_path"]
        elif not isinstance(value, dict):
            assert printed["trainer"][key] == value


def test_a_run_prints_none_of_lightnings_repeated_noise(tmp_path, quickstart_config, caplog):
    """No LeafSpec deprecation, IterableDataset-length caution or logger advertisement on a plain fit; other
    warnings still show."""
    import logging
    import warnings

    config = quickstart_config("reward", tmp_path, synthetic_rows=200)
    caplog.set_level(logging.INFO)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(["fit", "--config", str(config), "--trainer.max_steps", "2"])
        warnings.warn("a warning of the user's own", UserWarning, stacklevel=2)
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "LeafSpec" in m or "`IterableDataset` has `__len__`" in m], messages
    assert "a warning of the user's own" in messages
    assert not [r for r in caplog.records if "litlogger" in r.getMessage()]
