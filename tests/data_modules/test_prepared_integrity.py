"""Prepared datasets are checked before they are streamed: nothing in one runs code, damage is named or repaired.

- a crafted prepared directory whose ``index.json`` stores an item with ``pickle`` is refused before any item is
  read (the payload would create a file), even when it carries a matching ``manifest.json``, locally and remotely;
- a directory without ``manifest.json`` was not written by lit_safe and is refused;
- a truncated or altered chunk: a reused preparation is prepared again (and streams every item), a prepared
  ``source`` is an error naming the chunk file;
- the staging directory of a killed preparation is removed by the next one (a live one is kept);
- loader settings that cannot work (``batch_size 0``...) fail in ``__init__``;
- lit_safe itself never writes an item litdata would pickle.
"""

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from litdata.streaming.writer import BinaryWriter
from litdata.utilities.env import _DistributedEnv

from lit_safe.data_modules.pku_saferlhf import PKUSafeRLHFDataModule
from lit_safe.data_modules.preparation import write_split

ROWS = 64


class _Touch:
    """Pickles as "create this file": what a crafted item could do (anything else, in a real attack)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def __reduce__(self):
        return (Path.touch, (self.path,))


def _module(source, prepared_dir, **kwargs) -> PKUSafeRLHFDataModule:
    kwargs.setdefault("num_workers", 0)
    kwargs.setdefault("batch_size", 8)
    return PKUSafeRLHFDataModule(tokenizer="tiny", source=str(source), prepared_dir=str(prepared_dir),
                                 synthetic_rows=ROWS, **kwargs)


def _streamed_rows(dm: PKUSafeRLHFDataModule) -> int:
    return sum(len(batch["row"]) for batch in dm.train_dataloader())


def _chunk(location: str | Path, split: str = "train") -> Path:
    (chunk,) = sorted((Path(location) / split).glob("chunk-*.bin"))
    return chunk


def _record(path: Path) -> dict:
    return {"bytes": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def _forge_manifest(directory: Path) -> None:
    """A manifest that matches the files, as anyone can write one: it proves integrity, not safety."""
    splits = {}
    for split in ("train", "val", "test"):
        index = directory / split / "index.json"
        if index.is_file():
            chunks = json.loads(index.read_text())["chunks"]
            splits[split] = {"index": _record(index),
                             "chunks": {c["filename"]: _record(directory / split / c["filename"]) for c in chunks}}
    manifest = {"written_by": "lit_safe", "manifest_version": 1, "fingerprint": None, "splits": splits,
                "files": {name: _record(directory / name) for name in ("report.json", "meta.json")}}
    (directory / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A genuine preparation of the synthetic source (copy it before damaging it)."""
    dm = _module("synthetic", tmp_path_factory.mktemp("cache"))
    dm.prepare()
    return Path(dm.prepared_location())


def _copy(prepared: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy" / prepared.name
    shutil.copytree(prepared, target)
    return target


def _crafted(prepared: Path, tmp_path: Path, marker: Path) -> Path:
    """A copy of a genuine preparation whose training items carry a pickled payload that creates ``marker``."""
    crafted = _copy(prepared, tmp_path)
    shutil.rmtree(crafted / "train")
    writer = BinaryWriter(str(crafted / "train"), chunk_bytes="64MB")
    writer._distributed_env = _DistributedEnv(world_size=1, global_rank=0, num_nodes=1)
    writer._rank = 0
    for i in range(8):
        ids = np.arange(1, 6, dtype=np.int32)
        writer[i] = {"chosen": ids, "rejected": ids, "row": _Touch(marker)}
    writer.done()
    writer.merge()
    assert "pickle" in json.loads((crafted / "train" / "index.json").read_text())["config"]["data_format"]
    _forge_manifest(crafted)
    return crafted


# ------------------------------------------------------------------------------------------ nothing runs code
def test_a_prepared_dir_with_a_pickled_item_is_refused_and_its_code_never_runs(prepared, tmp_path):
    marker = tmp_path / "payload-ran"
    crafted = _crafted(prepared, tmp_path, marker)
    dm = _module(crafted, tmp_path / "unused")
    with pytest.raises(ValueError, match=r"train/index\.json: refusing to load items stored with \['pickle'\]"):
        dm.prepare_data()
        dm.setup("fit")
        next(iter(dm.train_dataloader()))
    assert not marker.exists()
    with pytest.raises(ValueError, match="pickle"):  # asking for the loader directly is refused as well
        dm.train_dataloader()
    assert not marker.exists()


def test_a_remote_prepared_dataset_with_a_pickled_item_is_refused(prepared, tmp_path, monkeypatch):
    """A URL (litdata's local:// stands in for s3://) is checked on the index litdata downloads."""
    import litdata.utilities.dataset_utilities as dataset_utilities

    monkeypatch.setattr(dataset_utilities, "_LITDATA_CACHE_DIR", str(tmp_path / "litdata-cache"))
    marker = tmp_path / "payload-ran"
    crafted = _crafted(prepared, tmp_path, marker)
    (crafted / "manifest.json").unlink()  # remote datasets are not checked against a manifest
    dm = _module(f"local://{crafted}", tmp_path / "unused")
    dm.prepare_data()
    dm.setup("fit")
    with pytest.raises(ValueError, match=r"refusing to load items stored with \['pickle'\]"):
        next(iter(dm.train_dataloader()))
    assert not marker.exists()
    # the genuine preparation streams through the same route
    genuine = _module(f"local://{prepared}", tmp_path / "unused")
    genuine.setup("fit")
    assert _streamed_rows(genuine) == json.loads((prepared / "report.json").read_text())["splits"]["train"]["kept"]


def test_a_prepared_dir_without_manifest_is_refused(prepared, tmp_path):
    copy = _copy(prepared, tmp_path)
    (copy / "manifest.json").unlink(missing_ok=True)
    dm = _module(copy, tmp_path / "unused")
    with pytest.raises(ValueError, match=r"was not written by lit_safe \(no manifest\.json\); prepare it with "
                                         r"lit-safe prepare"):
        dm.prepare_data()
        dm.setup("fit")
        next(iter(dm.train_dataloader()))


def test_a_bare_litdata_dir_is_refused_as_a_source(prepared, tmp_path):
    """Only a split's index.json, no report: still recognised as a prepared dataset, and refused."""
    bare = tmp_path / "bare"
    shutil.copytree(prepared / "train", bare / "train")
    dm = _module(bare, tmp_path / "unused")
    with pytest.raises(ValueError, match="was not written by lit_safe"):
        dm.prepare()


def test_a_genuine_prepared_dir_streams_as_a_source(prepared, tmp_path):
    dm = _module(prepared, tmp_path / "unused")
    dm.prepare_data()
    dm.setup("fit")
    assert _streamed_rows(dm) == dm.report.splits["train"].kept > 0


# ---------------------------------------------------------------------------------------------------- damage
def test_a_truncated_chunk_of_a_reused_preparation_is_prepared_again(tmp_path, capsys):
    first = _module("synthetic", tmp_path / "cache")
    kept = first.prepare().splits["train"].kept
    chunk = _chunk(first.prepared_location())
    size = chunk.stat().st_size
    with open(chunk, "r+b") as handle:
        handle.truncate(size // 2)
    capsys.readouterr()

    again = _module("synthetic", tmp_path / "cache")
    again.prepare()
    out = capsys.readouterr().out
    assert chunk.stat().st_size == size  # rewritten, not reused
    assert f"damaged: {chunk}: {size // 2} bytes" in out and "Reusing" not in out
    again.setup("fit")
    assert _streamed_rows(again) == kept

    # damage found where a rank that skipped prepare_data opens the data: prepared again there as well
    with open(chunk, "r+b") as handle:
        handle.truncate(10)
    third = _module("synthetic", tmp_path / "cache")
    third.setup("fit")
    assert chunk.stat().st_size == size
    assert _streamed_rows(third) == kept


def test_a_truncated_chunk_in_a_prepared_source_is_an_error_naming_it(prepared, tmp_path):
    copy = _copy(prepared, tmp_path)
    chunk = _chunk(copy)
    with open(chunk, "r+b") as handle:
        handle.truncate(chunk.stat().st_size - 100)
    dm = _module(copy, tmp_path / "unused")
    with pytest.raises(ValueError, match=rf"{chunk}: \d+ bytes, manifest\.json says \d+ \(truncated or damaged\)"):
        dm.prepare()
    with pytest.raises(ValueError, match="truncated or damaged"):  # also without prepare (other ranks)
        _module(copy, tmp_path / "unused").setup("fit")


def test_an_altered_chunk_of_the_same_size_is_found_by_its_checksum(prepared, tmp_path):
    copy = _copy(prepared, tmp_path)
    chunk = _chunk(copy, "val")
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"{chunk}: its sha256 differs from manifest\.json"):
        _module(copy, tmp_path / "unused").prepare()


def test_an_edited_index_is_found_even_when_it_stays_safe(prepared, tmp_path):
    copy = _copy(prepared, tmp_path)
    index_path = copy / "train" / "index.json"
    index = json.loads(index_path.read_text())
    index["chunks"][0]["chunk_size"] += 1  # one item more than the chunk holds
    index_path.write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"train/index\.json: \d+ bytes, manifest\.json says|sha256 differs"):
        _module(copy, tmp_path / "unused").prepare()


# ---------------------------------------------------------------------------------------------------- staging
def test_the_staging_dir_of_a_killed_preparation_is_removed_by_the_next_one(tmp_path, capsys):
    cache = tmp_path / "cache"
    script = textwrap.dedent(f"""
        import os, signal
        from lit_safe.data_modules import preparation
        from lit_safe.data_modules.pku_saferlhf import PKUSafeRLHFDataModule
        real = preparation.SplitWriter.finish
        def write_then_die(self):
            real(self)
            os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer or a cluster's preemption would
        preparation.SplitWriter.finish = write_then_die
        PKUSafeRLHFDataModule(tokenizer="tiny", source="synthetic", prepared_dir={str(cache)!r},
                              synthetic_rows={ROWS}, num_workers=0).prepare()
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == -9, result.stderr[-2000:]
    dm = _module("synthetic", cache)
    name = Path(dm.prepared_location()).name
    (killed,) = cache.glob(f".{name}-*")
    assert _chunk(killed).is_file()  # the split it wrote before it died

    live = cache / f".{name}-live"  # a preparation still running in this very process: never touched
    live.mkdir()
    (live / ".lit_safe_staging.json").write_text(json.dumps(
        {"host": socket.gethostname(), "pid": os.getpid(), "started": None}))
    legacy = cache / f".{name}-legacy"  # from a version that wrote no owner record, untouched for two hours
    legacy.mkdir()
    two_hours_ago = time.time() - 7200
    os.utime(legacy, (two_hours_ago, two_hours_ago))
    capsys.readouterr()

    dm.prepare()
    assert not killed.exists() and not legacy.exists()
    assert live.is_dir()
    out = capsys.readouterr().out
    assert f"Removed {killed}: the staging directory of an interrupted preparation" in out
    assert sorted(p.name for p in cache.iterdir()) == sorted([name, live.name])
    dm.setup("fit")
    assert _streamed_rows(dm) == dm.report.splits["train"].kept


# ---------------------------------------------------------------------------------------------- loader settings
@pytest.mark.parametrize("setting, value", [("batch_size", 0), ("batch_size", -4), ("eval_batch_size", 0),
                                            ("num_workers", -1), ("group_size", 0), ("pad_to_multiple_of", 0)])
def test_loader_settings_that_cannot_work_fail_in_init(setting, value, tmp_path):
    # the tokenizer does not exist: the error must come first, before anything is loaded or built
    with pytest.raises(ValueError, match=rf"^{setting} must be an integer >= \d, got {value}$"):
        PKUSafeRLHFDataModule(tokenizer="no/such-tokenizer", source="synthetic", prepared_dir=str(tmp_path),
                              **{setting: value})


# -------------------------------------------------------------------------------------------------- writing
def test_lit_safe_never_writes_an_item_that_would_be_pickled(tmp_path):
    items = [{"input_ids": np.arange(4, dtype=np.int32), "labels": {1, 2}} for _ in range(3)]
    with pytest.raises(TypeError, match=r"'labels': 'pickle'.*never pickle"):
        write_split(items, tmp_path / "train")


def test_the_index_check_refuses_what_litdata_would_route_to_code(prepared):
    from lit_safe.data_modules.preparation import PreparedDatasetError, check_index

    index = json.loads((prepared / "train" / "index.json").read_text())
    check_index(index, "genuine")  # lit_safe's own index passes
    for data_format in (["pickle"], ["numpy:pickle"], ["graph"], ["video"], ["file"], [7]):
        bad = json.loads(json.dumps(index))
        bad["config"]["data_format"] = data_format
        with pytest.raises(PreparedDatasetError, match="refusing to load items stored with"):
            check_index(bad, "crafted")
    # a defaultdict node makes litdata import the module it names
    bad = json.loads(json.dumps(index))
    spec = json.loads(bad["config"]["data_spec"])
    spec[1]["type"] = "collections.defaultdict"
    bad["config"]["data_spec"] = json.dumps(spec)
    with pytest.raises(PreparedDatasetError, match="refusing data_spec"):
        check_index(bad, "crafted")
    bad = json.loads(json.dumps(index))
    bad["chunks"][0]["filename"] = "../../elsewhere.bin"
    with pytest.raises(PreparedDatasetError, match="bad chunk file name"):
        check_index(bad, "crafted")


def test_staging_dirs_whose_owner_cannot_be_checked_are_kept_until_long_untouched(tmp_path):
    from lit_safe.data_modules.preparation import FOREIGN_STALE_AFTER_S, _where, clean_stale_staging

    final = tmp_path / "pku_saferlhf-preference-0123456789abcdef"
    here = _where()
    dead_pid = 2**22 + 12345  # above the default pid_max: no such process here

    def staging(name: str, age_s: float = 0.0, **owner) -> Path:
        path = tmp_path / f".{final.name}-{name}"
        path.mkdir()
        (path / ".lit_safe_staging.json").write_text(json.dumps({**here, "pid": dead_pid, "started": None, **owner}))
        then = time.time() - age_s
        for item in (path / ".lit_safe_staging.json", path):
            os.utime(item, (then, then))
        return path

    dead_here = staging("dead-here")
    other_pidns = staging("other-container", pidns="pid:[1]")  # its pid means nothing in this namespace
    other_host_recent = staging("other-host-recent", host="elsewhere", age_s=60)
    other_host_old = staging("other-host-old", host="elsewhere", age_s=FOREIGN_STALE_AFTER_S + 60)
    assert sorted(clean_stale_staging(final)) == sorted([dead_here, other_host_old])
    assert other_pidns.is_dir() and other_host_recent.is_dir()
