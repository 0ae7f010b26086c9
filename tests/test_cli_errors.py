"""Configuration errors are one clear line from ``lit-safe`` (exit code 2), found before any model is built: a preset
typo, a backbone path that does not exist, a hub id not available offline, a torn or missing ``--ckpt_path``, a
checkpoint of another module type. A resume with other data settings warns. Bugs keep their traceback."""

import json
import shutil
import warnings

import pytest
import torch

from lit_safe.checkpointing import CheckpointError
from lit_safe.cli import LitSafeCLI, main, run


@pytest.fixture(scope="module")
def reward_checkpoint(tmp_path_factory, quickstart_config):
    """A real reward checkpoint from one short fit (300 synthetic rows, batch size 16)."""
    tmp = tmp_path_factory.mktemp("errors")
    config = quickstart_config("reward", tmp, synthetic_rows=300)
    run(["fit", "--config", str(config)])
    ckpt = tmp / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    assert not [p for p in ckpt.parent.iterdir() if ".tmp-" in p.name]  # no temporary left by the atomic writes
    return ckpt


def _fails_with_one_line(args, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("lit-safe: error: ")
    assert "Traceback" not in err
    return lines[0]


def test_a_preset_typo_is_one_line_listing_the_presets_before_anything_is_built(tmp_path, capsys, quickstart_config):
    config = quickstart_config("reward", tmp_path)
    line = _fails_with_one_line(["fit", "--config", str(config), "--model.init_args.backbone", "tinyy"], capsys)
    assert "backbone 'tinyy' is not a preset (tiny, small), a local directory or a hub id" in line
    assert "did you mean 'tiny'?" in line
    assert not (tmp_path / "prepared").exists() and not (tmp_path / "checkpoints").exists()


def test_a_tokenizer_typo_names_the_tokenizer(tmp_path, capsys, quickstart_config):
    config = quickstart_config("reward", tmp_path)
    line = _fails_with_one_line(["fit", "--config", str(config), "--data.init_args.tokenizer", "smal"], capsys)
    assert "tokenizer 'smal' is not a preset (tiny, small)" in line


def test_a_backbone_path_that_does_not_exist_is_named(tmp_path, capsys, quickstart_config):
    config = quickstart_config("reward", tmp_path)
    missing = str(tmp_path / "no" / "such" / "model")
    line = _fails_with_one_line(["fit", "--config", str(config), "--model.init_args.backbone", missing], capsys)
    assert f"backbone '{missing}': no such directory" in line
    line = _fails_with_one_line(["fit", "--config", str(config), "--model.init_args.backbone", "./runs/nope"], capsys)
    assert "backbone './runs/nope': no such directory" in line


def test_a_hub_id_that_is_not_cached_is_not_available_offline(tmp_path, capsys, monkeypatch, quickstart_config):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = quickstart_config("reward", tmp_path)
    line = _fails_with_one_line(
        ["fit", "--config", str(config), "--model.init_args.backbone", "lit-safe-tests/not-a-model"], capsys)
    assert "'lit-safe-tests/not-a-model' is not a local directory, and as a hub id it is not available offline" in line


def test_a_value_error_of_a_data_module_init_is_unwrapped_from_jsonargparse(tmp_path, capsys, quickstart_config):
    config = quickstart_config("reward", tmp_path)
    line = _fails_with_one_line(["fit", "--config", str(config), "--data.init_args.val_fraction", "0.6",
                                 "--data.init_args.test_fraction", "0.6"], capsys)
    assert line == "lit-safe: error: val_fraction 0.6 and test_fraction 0.6 must leave training rows"


def test_run_raises_and_lit_safe_debug_keeps_the_traceback(tmp_path, monkeypatch, quickstart_config):
    config = quickstart_config("reward", tmp_path)
    args = ["fit", "--config", str(config), "--model.init_args.backbone", "tinyy"]
    with pytest.raises(ValueError, match="is not a preset"):
        run(args)
    monkeypatch.setenv("LIT_SAFE_DEBUG", "1")
    with pytest.raises(ValueError, match="is not a preset"):
        main(args)


@pytest.mark.parametrize("bug", [lambda: 1 / 0, lambda: json.loads("{")], ids=["ZeroDivisionError", "ValueError"])
def test_bugs_keep_their_traceback(tmp_path, monkeypatch, quickstart_config, bug):
    # A ValueError raised outside lit_safe's own code (here by the json module) is not a configuration error.
    config = quickstart_config("reward", tmp_path)
    monkeypatch.setattr(LitSafeCLI, "before_instantiate_classes", lambda self: bug())
    with pytest.raises((ZeroDivisionError, ValueError)):
        main(["fit", "--config", str(config)])


def test_a_checkpoint_of_another_module_type_is_named(tmp_path, capsys, quickstart_config, reward_checkpoint):
    config = quickstart_config("cost", tmp_path)
    line = _fails_with_one_line(["fit", "--config", str(config), "--ckpt_path", str(reward_checkpoint)], capsys)
    assert line == (f"lit-safe: error: {reward_checkpoint} is a RewardModule checkpoint, but the config trains "
                    "CostModule")
    with pytest.raises(CheckpointError):
        run(["test", "--config", str(config), "--ckpt_path", str(reward_checkpoint)])


@pytest.mark.parametrize("size", [0, 100_000])
def test_a_torn_checkpoint_is_named_with_its_size(tmp_path, capsys, quickstart_config, reward_checkpoint, size):
    torn = tmp_path / "last.ckpt"
    torn.write_bytes(reward_checkpoint.read_bytes()[:size])
    config = quickstart_config("reward", tmp_path)
    line = _fails_with_one_line(["fit", "--config", str(config), "--ckpt_path", str(torn)], capsys)
    assert line == f"lit-safe: error: {torn} is not a complete checkpoint ({size} bytes; a write was interrupted?)"


def test_a_missing_checkpoint_is_named(tmp_path, capsys, quickstart_config):
    config = quickstart_config("reward", tmp_path)
    line = _fails_with_one_line(["validate", "--config", str(config), "--ckpt_path", str(tmp_path / "x.ckpt")],
                                capsys)
    assert line == f"lit-safe: error: ckpt_path {tmp_path / 'x.ckpt'}: no such file or directory"


class _Stop(Exception):
    pass


def _stop(self):
    raise _Stop


def test_resuming_with_another_batch_size_warns(tmp_path, monkeypatch, quickstart_config, reward_checkpoint):
    config = quickstart_config("reward", tmp_path, synthetic_rows=300)
    ckpt = tmp_path / "last.ckpt"
    shutil.copy(reward_checkpoint, ckpt)
    assert torch.load(ckpt, weights_only=True)["datamodule_hyper_parameters"]["batch_size"] == 16
    monkeypatch.setattr(LitSafeCLI, "instantiate_classes", _stop)  # the checks run before; nothing else is needed
    expected = r"other data settings; resuming with the given ones: batch_size: 16 -> 8 \("  # prepared_dir not listed
    with pytest.warns(UserWarning, match=expected):
        with pytest.raises(_Stop):
            run(["fit", "--config", str(config), "--ckpt_path", str(ckpt), "--data.init_args.batch_size", "8"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(_Stop):  # the same settings: no warning
            run(["fit", "--config", str(config), "--ckpt_path", str(ckpt)])
    assert not [w for w in caught if "other data settings" in str(w.message)]
