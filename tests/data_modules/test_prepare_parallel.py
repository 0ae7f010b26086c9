"""Preparation streams, in blocks, on several processes and nodes, with exact reports and the same result every way.

- 1 and 2 worker processes write byte-identical chunks, index, report and meta (the same fingerprint: reused either
  way); a file read in one block or in blocks of 7 rows gives the same bytes, for every view (repeats are found
  across blocks);
- the report counts are exact on a file whose bad rows, repeats, blanks and identical responses are spread through it
  (``on_bad_row: skip``), and ``on_bad_row: error`` names the first ten bad rows in file order and counts the rest,
  before anything is written;
- a preparation killed with SIGKILL (its workers too) in the middle of writing, rerun, gives the same items;
- two "nodes" (one after the other, one shared directory) prepare one dataset whose items, report and label summary
  are those of a single node; the node that finishes last merges the shards;
- :class:`~lit_safe.data_modules.preparation.Workers` answers in task order, raises a worker's error as it is, and
  turns a killed worker into an error instead of a hang.
"""

import copy
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from litdata import StreamingDataset

from lit_safe.data_modules import preparation
from lit_safe.data_modules.pku_saferlhf import PKUSafeRLHFDataModule
from lit_safe.data_modules.preparation import WorkerDied, Workers
from lit_safe.data_modules.schemas import response_sha256
from lit_safe.data_modules.sources import DataValidationError
from lit_safe.data_modules.synthetic import generate_pku_saferlhf_rows

VIEWS = ("preference", "safety", "moderation", "sft", "prompts", "preference_pairs")


def _module(source, prepared_dir, workers=1, block_rows=None, **kwargs) -> PKUSafeRLHFDataModule:
    dm = PKUSafeRLHFDataModule(tokenizer="tiny", source=str(source), prepared_dir=str(prepared_dir),
                               prepare_workers=workers, num_workers=0, **kwargs)
    if block_rows is not None:
        dm.prepare_block_rows = block_rows
    return dm


def _items(location: str | Path, split: str) -> list[dict]:
    dataset = StreamingDataset(str(Path(location) / split), shuffle=False)
    return [{k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in item.items()} for item in dataset]


def _write_lines(path: Path, rows: list) -> Path:
    with open(path, "wb") as f:
        for row in rows:
            f.write(row if isinstance(row, bytes) else json.dumps(row).encode() + b"\n")
    return path


def _swapped(row: dict) -> dict:
    """The same pair with its responses (and their labels) in the other order: a repeat of the ordered pair."""
    out = dict(row)
    for name in ("response_{}", "is_response_{}_safe", "response_{}_harm_category", "response_{}_severity_level",
                 "response_{}_sha256"):
        out[name.format(0)], out[name.format(1)] = row[name.format(1)], row[name.format(0)]
    out["better_response_id"], out["safer_response_id"] = 1 - row["better_response_id"], 1 - row["safer_response_id"]
    return out


def _rehashed(row: dict) -> dict:
    for k in (0, 1):
        row[f"response_{k}_sha256"] = response_sha256(row["prompt"], row[f"response_{k}"])
    return row


def _spread_file(path: Path, rows: int = 240) -> tuple[Path, dict]:
    """``rows`` valid synthetic rows with, spread through them, whole-row repeats, swapped repeats, rows missing a
    label, lines that are not JSON, blank prompts and identical responses; returns the file and how many of each."""
    base = generate_pku_saferlhf_rows(rows, seed=1)
    lines: list = []
    made = {"copy": 0, "swap": 0, "missing": 0, "json": 0, "blank": 0, "identical": 0}
    for i, row in enumerate(base):
        lines.append(row)
        if i % 17 == 3:
            lines.append(copy.deepcopy(row))
            made["copy"] += 1
        if i % 23 == 5:
            lines.append(_swapped(row))
            made["swap"] += 1
        if i % 19 == 7:
            lines.append({k: v for k, v in row.items() if k != "better_response_id"})
            made["missing"] += 1
        if i % 29 == 11:
            lines.append(b'{"prompt": "cut off\n')
            made["json"] += 1
        if i % 31 == 13:
            lines.append(_rehashed({**row, "prompt": "  "}))
            made["blank"] += 1
        if i % 37 == 17:
            lines.append(_rehashed({**row, "response_1": row["response_0"]}))
            made["identical"] += 1
    return _write_lines(path, lines), made


@pytest.fixture(scope="module")
def spread(tmp_path_factory) -> tuple[Path, dict]:
    return _spread_file(tmp_path_factory.mktemp("spread") / "rows.jsonl")


# ------------------------------------------------------------------------------------------ the same result
def test_one_and_two_workers_write_the_same_bytes(prepared_files, spread, tmp_path, capsys):
    path, _ = spread
    one = _module(path, tmp_path, workers=1, block_rows=16, on_bad_row="skip")
    two = _module(path, tmp_path, workers=2, block_rows=16, on_bad_row="skip")
    assert one.prepared_location() == two.prepared_location()  # the workers are not in the fingerprint
    one.prepare()
    assert "(in this process)" in capsys.readouterr().out
    files = prepared_files(one.prepared_location())
    assert {"train/chunk-0-0.bin", "val/chunk-0-0.bin", "test/chunk-0-0.bin", "report.json", "meta.json"} <= set(files)
    two.prepare()  # reused whatever the workers: one worker's preparation serves a module with two
    assert "Reusing an identical earlier preparation" in capsys.readouterr().out
    two.prepare(force=True)
    assert "(2 worker processes)" in capsys.readouterr().out
    assert prepared_files(two.prepared_location()) == files  # chunks, index, report and meta: the same bytes


@pytest.mark.parametrize("view", VIEWS)
def test_one_block_or_many_give_the_same_bytes(prepared_files, view, spread, tmp_path):
    path, _ = spread
    whole = _module(path, tmp_path, block_rows=10**6, view=view, on_bad_row="skip")
    whole.prepare()
    files, summary = prepared_files(whole.prepared_location()), whole.label_summary("train")
    blocks = _module(path, tmp_path, workers=2, block_rows=7, view=view, on_bad_row="skip")
    blocks.prepare(force=True)
    assert prepared_files(blocks.prepared_location()) == files
    assert blocks.report.to_dict()["splits"] == whole.report.to_dict()["splits"]
    if view == "moderation":  # the label summary of meta.json, summed over blocks
        assert blocks.label_summary("train") == summary
        assert summary["items"] == blocks.report.splits["train"].kept and summary["severity_levels"] == 4


# ------------------------------------------------------------------------------------------------ exact counts
@pytest.mark.parametrize("workers", [1, 2])
def test_the_report_counts_every_row_of_a_file_with_bad_rows_spread_through_it(workers, tmp_path):
    path, made = _spread_file(tmp_path / "rows.jsonl")
    dm = _module(path, tmp_path / "prepared", workers=workers, block_rows=13, on_bad_row="skip", val_fraction=0,
                 test_split=None)
    report = dm.prepare().splits["train"]
    lines = sum(1 for _ in open(path, "rb"))
    assert report.rows_read == lines == 240 + sum(made.values())
    assert dict(report.dropped) == {
        "duplicate_pair": made["copy"] + made["swap"],  # a whole-row repeat is also a repeated pair
        "invalid:better_response_id": made["missing"],
        "invalid:<row>": made["json"],
        "empty_prompt": made["blank"],
        "identical_responses": made["identical"],
    }
    assert dict(report.notes) == {"duplicate_rows": made["copy"], "truncated_sequences": 0}
    assert report.kept == 240 == report.rows_read - sum(report.dropped.values())
    assert list(dm.report.splits) == ["train"]
    rows = [item["row"] for item in _items(dm.prepared_location(), "train")]
    assert rows == sorted(rows) and len(rows) == 240  # in file order, each kept row's own position


def test_on_bad_row_error_names_the_first_ten_bad_rows_and_writes_nothing(spread, tmp_path):
    path, made = spread
    prepared = tmp_path / "prepared"
    dm = _module(path, prepared, workers=2, block_rows=9)
    with pytest.raises(DataValidationError) as raised:
        dm.prepare()
    message = str(raised.value)
    bad = made["missing"] + made["json"]
    assert message.startswith(f"{bad} invalid row(s) in {path}:\n")
    named = [int(line.split(": line ")[1].split(":")[0]) for line in message.splitlines()[1:11]]
    expected = [number for number, line in enumerate(open(path, "rb"), start=1)
                if b'"better_response_id"' not in line or not line.rstrip().endswith(b"}")][:10]
    assert named == expected  # the first ten in file order, whatever block or worker found them
    assert f"... and {bad - 10} more" in message
    assert not prepared.exists() or not any(prepared.iterdir())  # nothing written, nothing staged


# --------------------------------------------------------------------------------------------- killed, rerun
def test_a_preparation_killed_while_writing_reruns_to_the_same_items(prepared_files, tmp_path, capsys):
    source = tmp_path / "rows.jsonl"
    _write_lines(source, generate_pku_saferlhf_rows(1500, seed=3))
    reference = _module(source, tmp_path / "reference", block_rows=64)
    reference.prepare()
    cache = tmp_path / "cache"
    script = textwrap.dedent(f"""
        from lit_safe.data_modules import preparation
        from lit_safe.data_modules.pku_saferlhf import PKUSafeRLHFDataModule
        preparation.CHUNK_BYTES = 1 << 15  # small chunks: files are written all along
        dm = PKUSafeRLHFDataModule(tokenizer="tiny", source={str(source)!r}, prepared_dir={str(cache)!r},
                                   prepare_workers=2, num_workers=0)
        dm.prepare_block_rows = 64
        dm.prepare()
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, start_new_session=True)
    name = Path(reference.prepared_location()).name
    deadline = time.time() + 240
    while not list(cache.glob(f".{name}-*/train/chunk-*.bin")) and process.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)  # the preparation and its workers, as a preemption would
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == -9, stderr.decode()[-2000:]
    (killed,) = cache.glob(f".{name}-*")
    assert list(killed.glob("train/chunk-*.bin")) and not (killed / "train" / "index.json").exists()
    assert not (cache / name).exists()

    rerun = _module(source, cache, workers=2, block_rows=64)
    capsys.readouterr()
    rerun.prepare()
    assert f"Removed {killed}: the staging directory of an interrupted preparation" in capsys.readouterr().out
    assert not killed.exists()
    splits = {k: v for k, v in prepared_files(reference.prepared_location()).items() if "/" in k}  # chunks and indexes
    assert {k: v for k, v in prepared_files(rerun.prepared_location()).items() if "/" in k} == splits
    assert rerun.report.to_dict()["splits"] == reference.report.to_dict()["splits"]


# ------------------------------------------------------------------------------------------------ two nodes
def test_two_nodes_prepare_one_dataset_with_the_items_of_one(spread, tmp_path, capsys):
    path, _ = spread
    single = _module(path, tmp_path / "single", block_rows=11, view="moderation", on_bad_row="skip")
    single.prepare()
    shared = tmp_path / "shared"
    nodes = [_module(path, shared, workers=2, block_rows=11, view="moderation", on_bad_row="skip",
                     prepare_nodes=2, prepare_node_rank=rank) for rank in (1, 0)]
    final = Path(nodes[0].prepared_location())
    assert final.name == Path(single.prepared_location()).name  # nodes change no fingerprint

    first = nodes[0].prepare()  # node 1 finishes first: it waits for node 0
    assert first.pending is not None and "waiting for node(s) [0]" in first.pending
    assert not final.exists() and (shared / f"{final.name}.shards" / "node-1-of-2" / "shard.json").is_file()
    with pytest.raises(ValueError, match="not prepared yet"):
        nodes[0].setup("fit")

    merged = nodes[1].prepare()  # the last node merges
    assert merged.pending is None and final.is_dir() and not (shared / f"{final.name}.shards").exists()
    assert merged.to_dict()["splits"] == single.report.to_dict()["splits"]
    for split in ("train", "val", "test"):
        assert _items(final, split) == _items(single.prepared_location(), split)
    assert {p.name.split("-")[1] for p in final.glob("train/chunk-*.bin")} == {"0", "1"}  # both nodes' chunks
    assert nodes[1].label_summary("train") == single.label_summary("train")
    preparation.verify_prepared(final, checksums=True)

    capsys.readouterr()
    nodes[0].prepare()  # after the merge every node reuses the dataset
    assert "Reusing an identical earlier preparation" in capsys.readouterr().out


def test_spread_settings_are_checked(tmp_path):
    with pytest.raises(ValueError, match=r"^prepare_workers must be an integer >= 0, got -1$"):
        _module("synthetic", tmp_path, workers=-1)
    with pytest.raises(ValueError, match=r"^prepare_node_rank 2 is not one of the 2 nodes \(0 to 1\)$"):
        _module("synthetic", tmp_path, prepare_nodes=2, prepare_node_rank=2)
    default = PKUSafeRLHFDataModule(tokenizer="tiny", prepared_dir=str(tmp_path))
    assert default.prepare_workers == len(os.sched_getaffinity(0))


# --------------------------------------------------------------------------------------------------- workers
def _square(state: int, task: int) -> int:
    if task == 7:
        raise DataValidationError(f"task {task} is bad (state {state})")
    return state + task * task


def _die(state: int, task: int) -> int:
    if task == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return task


def test_workers_answer_in_task_order_and_raise_what_a_worker_raised(monkeypatch):
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")
    with Workers(2, 100) as workers:
        assert list(workers.map(_square, range(7))) == [100 + t * t for t in range(7)]
        assert os.environ["TOKENIZERS_PARALLELISM"] == "false"  # what the workers were forked with
        with pytest.raises(DataValidationError, match=r"^task 7 is bad \(state 100\)$"):
            list(workers.map(_square, range(20)))
    assert os.environ["TOKENIZERS_PARALLELISM"] == "true"
    with Workers(0, 5) as workers:
        assert list(workers.map(_square, [3])) == [14] and workers.processes == 1


def test_a_killed_worker_is_an_error_not_a_hang():
    with Workers(2, 0) as workers, pytest.raises(WorkerDied, match="worker process died"):
        list(workers.map(_die, range(8)))
