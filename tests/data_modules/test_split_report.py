"""The prepare report says where every split came from and why (issue 13: a single file silently gave 5% + 5% of
its prompts to validation and test)."""

from __future__ import annotations

import json
from pathlib import Path

from lit_safe.data_modules.pku_saferlhf import PKUSafeRLHFDataModule
from lit_safe.data_modules.preparation import parse_report


def _pair(i: int) -> dict:
    return {"prompt": f"question number {i}?", "chosen": f"a helpful answer {i}", "rejected": f"a bad answer {i}"}


def _file(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_single_file_names_the_carved_splits(tmp_path, capsys):
    source = _file(tmp_path / "pairs.jsonl", [_pair(i) for i in range(200)])
    dm = PKUSafeRLHFDataModule(tokenizer="tiny", source=str(source), prepared_dir=str(tmp_path / "prepared"),
                               num_workers=0)
    report = dm.prepare()
    printed = capsys.readouterr().out
    assert report.row_format == "prompt_chosen_rejected"
    assert report.origins["train"] == "source split 'train', less the prompts carved for the held-out splits"
    assert report.origins["val"].startswith("carved from 'train': prompts whose seeded hash (seed 42) falls in the "
                                            "first 5.0% (val_split is not set, val_fraction 0.05)")
    assert "the source has no split 'test'; test_fraction 0.05" in report.origins["test"]
    assert "next 5.0%" in report.origins["test"]
    for origin in report.origins.values():
        assert f"from    {origin}" in printed
    assert "format: prompt_chosen_rejected" in printed
    saved = json.loads((Path(dm.prepared_location()) / "report.json").read_text())
    assert saved["origins"] == report.origins and saved["row_format"] == "prompt_chosen_rejected"
    assert parse_report(json.dumps(saved), "report.json").origins == report.origins


def test_given_splits_are_named_as_source_splits(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    _file(folder / "train.jsonl", [_pair(i) for i in range(40)])
    _file(folder / "test.jsonl", [_pair(i) for i in range(100, 120)])
    dm = PKUSafeRLHFDataModule(tokenizer="tiny", source=str(folder), prepared_dir=str(tmp_path / "prepared"),
                               val_fraction=0.0, num_workers=0)
    report = dm.prepare()
    assert report.origins == {"train": "source split 'train'", "test": "source split 'test'"}
    assert "val" not in report.splits
