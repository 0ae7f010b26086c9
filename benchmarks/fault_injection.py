"""Fault injection, all in one place ("nothing silent, nothing lost"): every class of bad input tried with its outcome
(a named error, a counted drop, a repaired preparation), and ``kill -9`` at several points of each trainer with the
resumed result compared tensor by tensor with the uninterrupted one.

Part A (bad input) runs the real code paths: ``PKUSafeRLHFDataModule(...).prepare()`` in this process under both
``on_bad_row`` policies, and ``lit-safe fit`` in a subprocess for what only the CLI sees (a NaN run, a backbone that
does not exist, a preset typo, ``batch_size 0``).

Part B (kill and resume) runs each trainer's shipped quickstart config, shrunk into a temporary directory, with a
``ModelCheckpoint`` that saves every step (``every_n_train_steps: 1``, ``save_last: true``): one uninterrupted
``lit-safe fit`` to ``N`` steps, then for each kill point the same run in a subprocess that gets ``SIGKILL``
(``kill -9``) at one of three moments: ``during_write``, the moment a checkpoint's temporary file is seen (a save
killed mid-write); ``on_checkpoint``, the moment ``step{k}.ckpt`` appears (usually while or just before
``last.ckpt`` is written); ``mid_step``, once ``last.ckpt`` holds step ``k`` (during step ``k+1``). It is then resumed
with ``--ckpt_path <dir>/last.ckpt`` to ``N`` and its final checkpoint compared with the uninterrupted one, tensor by
tensor and value by value: the module's ``state_dict``, every optimizer and scheduler state, the loops' state (the
data loader's position in the epoch) and the extra state the modules save (the training random stream, the
non-finite counters, PPO's lambda, episode-cost window and rollout count). Only the callbacks' state (it names the
run's directory) and the hyperparameters are left out. ``kill_at`` is the step of the checkpoint actually resumed
from, read from it after the kill.

Output: one JSON object per line on stdout (and ``--out FILE``), a markdown summary on stderr.

    OMP_NUM_THREADS=1 python benchmarks/fault_injection.py --out benchmarks/results/fault_injection_cpu.jsonl
    python benchmarks/fault_injection.py --parts B --trainers reward sft --quick
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")

import yaml  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LIT_SAFE = [sys.executable, "-m", "lit_safe.cli"]  # replaced by the console script when it sits next to python
_script = Path(sys.executable).parent / "lit-safe"
if _script.is_file():
    LIT_SAFE = [str(_script)]

OUT_HANDLE = None
STDOUT = sys.stdout  # the JSON lines; whatever the code under test prints goes to stderr (see main)
RESULTS: list[dict] = []


def emit(record: dict) -> None:
    RESULTS.append(record)
    line = json.dumps(record, default=str)
    print(line, file=STDOUT, flush=True)
    if OUT_HANDLE is not None:
        OUT_HANDLE.write(line + "\n")
        OUT_HANDLE.flush()


def log(message: str) -> None:
    print(f"[fault_injection] {message}", file=sys.stderr, flush=True)


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "JSONARGPARSE_DEPRECATION_WARNINGS": "off", "PYTHONUNBUFFERED": "1"}


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def run_cli(args: list[str], timeout: float = 900) -> dict:
    start = time.time()
    proc = subprocess.run(LIT_SAFE + args, env=_env(), capture_output=True, text=True, timeout=timeout, cwd=REPO)
    return {"rc": proc.returncode, "stderr_last_line": _last_line(proc.stderr), "traceback": "Traceback" in proc.stderr,
            "stderr": proc.stderr, "wall_s": round(time.time() - start, 1)}


# =============================================================================================== configs
def shrunk_config(name: str, tmp: Path, trainer: dict | None = None, model: dict | None = None,
                  data: dict | None = None, every_step_checkpoints: bool = False) -> Path:
    """The shipped quickstart config ``name`` with its outputs under ``tmp`` (as the tests' ``quickstart_config``
    fixture does), no progress bar, ``num_workers 0``, no sample callbacks (what is checked here is the training, and
    sample videos cost time) and the given overrides. With ``every_step_checkpoints`` its ``ModelCheckpoint`` saves
    ``step{N}.ckpt`` after every step and ``last.ckpt``, keeping them all."""
    config = yaml.safe_load((REPO / "configs" / "quickstart" / f"{name}.yaml").read_text())
    config["trainer"].update({"max_epochs": 1, "enable_progress_bar": False, "enable_model_summary": False,
                              "log_every_n_steps": 1, **(trainer or {})})
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp / "runs")
    config["trainer"]["callbacks"] = [c for c in config["trainer"]["callbacks"]
                                      if not c["class_path"].startswith("lit_safe.callbacks.samples.")]
    for callback in config["trainer"]["callbacks"]:
        if callback["class_path"].endswith("ModelCheckpoint"):
            if every_step_checkpoints:
                callback["init_args"] = {"dirpath": str(tmp / "checkpoints"), "filename": "step{step}",
                                         "auto_insert_metric_name": False, "monitor": None, "save_top_k": -1,
                                         "every_n_train_steps": 1, "save_last": True,
                                         "enable_version_counter": False}
            else:
                callback["init_args"]["dirpath"] = str(tmp / "checkpoints")
        if callback["class_path"].endswith("ExportPretrained"):
            callback["init_args"]["dirpath"] = str(tmp / "export")
    config["model"]["init_args"].update(model or {})
    config["data"]["init_args"].update({"num_workers": 0, **(data or {})})
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


# ============================================================================================ Part A
ONE_SPLIT = {"val_fraction": 0.0, "test_fraction": 0.0}


def _write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _rehash(row: dict) -> dict:
    from lit_safe.data_modules.schemas import response_sha256

    for k in (0, 1):
        row[f"response_{k}_sha256"] = response_sha256(row["prompt"], row[f"response_{k}"])
    return row


def _edited(rows: list[dict], line: int, edit) -> list:
    out = copy.deepcopy(rows)
    out[line - 1] = edit(out[line - 1])
    return out


def _bad_input_files(rows: list[dict]) -> list[dict]:
    """Each class: how to write it, the line it breaks (1-based, None for file-level), what may happen under each
    policy ("error" named error, "dropped" counted drop) and a drop reason expected under ``skip``."""
    B = 3  # the broken line

    def non_utf8(path: Path):
        lines = [json.dumps(r).encode() for r in rows]
        lines[B - 1] = lines[B - 1].replace(b'"prompt": "', b'"prompt": "caf\xe9 ', 1)
        path.write_bytes(b"\n".join(lines) + b"\n")

    def invalid_json(path: Path):
        lines = [json.dumps(r) for r in rows]
        lines[B - 1] = lines[B - 1][: len(lines[B - 1]) // 2]  # a line cut in half
        path.write_text("\n".join(lines) + "\n")

    def missing(row):
        del row["better_response_id"]
        return row

    def wrong_type(row):
        row["better_response_id"] = "one"
        return row

    def out_of_range(row):
        row["safer_response_id"] = 2
        return row

    def out_of_range_severity(row):
        row["response_0_severity_level"] = 7
        return row

    def empty_prompt(row):
        row["prompt"] = ""
        return _rehash(row)

    def blank_response(row):
        row["response_1"] = "  \n "
        return _rehash(row)

    def identical(row):
        row["response_1"] = row["response_0"]
        return _rehash(row)

    both_invalid = {"error": ["error"], "skip": ["dropped"]}
    return [
        {"class": "empty_file", "write": lambda p: p.write_bytes(b""), "line": None,
         "expect": {"error": ["error"], "skip": ["error"]}, "match": "no rows"},
        {"class": "blank_only_file", "write": lambda p: p.write_bytes(b"\n  \n\t\r\n\n"), "line": None,
         "expect": {"error": ["error"], "skip": ["error"]}, "match": "no rows"},
        {"class": "empty_json_array", "write": lambda p: p.write_text(" [ ]\n"), "line": None, "suffix": ".json",
         "expect": {"error": ["error"], "skip": ["error"]}, "match": "no rows"},
        {"class": "non_utf8_line", "write": non_utf8, "line": B, "expect": both_invalid, "match": "UTF-8"},
        {"class": "invalid_json_line", "write": invalid_json, "line": B, "expect": both_invalid,
         "note": "a JSONL line that is not JSON stops preparation even under on_bad_row: skip (a line that is not "
                 "UTF-8 is dropped and counted as invalid:<row>)"},
        {"class": "missing_field", "write": lambda p: _write_jsonl(p, _edited(rows, B, missing)), "line": B,
         "expect": both_invalid, "match": "better_response_id"},
        {"class": "wrong_type", "write": lambda p: _write_jsonl(p, _edited(rows, B, wrong_type)), "line": B,
         "expect": both_invalid, "match": "better_response_id"},
        {"class": "out_of_range_label", "write": lambda p: _write_jsonl(p, _edited(rows, B, out_of_range)),
         "line": B, "expect": both_invalid, "match": "safer_response_id"},
        {"class": "out_of_range_severity",
         "write": lambda p: _write_jsonl(p, _edited(rows, B, out_of_range_severity)), "line": B,
         "expect": both_invalid, "match": "severity"},
        {"class": "empty_prompt", "write": lambda p: _write_jsonl(p, _edited(rows, B, empty_prompt)), "line": B,
         "expect": {"error": ["dropped", "error"], "skip": ["dropped"]}},
        {"class": "blank_response", "write": lambda p: _write_jsonl(p, _edited(rows, B, blank_response)),
         "line": B, "expect": {"error": ["dropped", "error"], "skip": ["dropped"]}},
        {"class": "duplicate_row", "write": lambda p: _write_jsonl(p, rows + [copy.deepcopy(rows[B - 1])]),
         "line": len(rows) + 1, "expect": {"error": ["dropped"], "skip": ["dropped"]}},
        {"class": "identical_responses", "write": lambda p: _write_jsonl(p, _edited(rows, B, identical)),
         "line": B, "expect": {"error": ["dropped", "error"], "skip": ["dropped"]}},
    ]


def _outcome_of_error(exc: BaseException) -> dict:
    text = str(exc)
    return {"outcome": "error", "error_type": type(exc).__name__, "message": text.splitlines()[0] if text else "",
            "message_lines": len(text.splitlines())}


def _report_fields(report) -> dict:
    rows_read = sum(s.rows_read for s in report.splits.values())
    kept = sum(s.kept for s in report.splits.values())
    dropped: dict[str, int] = {}
    for split in report.splits.values():
        for reason, n in split.dropped.items():
            dropped[reason] = dropped.get(reason, 0) + n
    balanced = all(s.rows_read == s.kept + sum(s.dropped.values()) for s in report.splits.values())
    return {"outcome": "dropped" if dropped else "kept_all", "rows_read": rows_read, "kept": kept,
            "dropped": dropped, "balanced": balanced}


def part_a_files(tmp: Path) -> None:
    from lit_safe.data_modules.pku_saferlhf import PKUSafeRLHFDataModule
    from lit_safe.data_modules.synthetic import generate_pku_saferlhf_rows

    rows = generate_pku_saferlhf_rows(12, seed=3)
    for case in _bad_input_files(rows):
        for policy in ("error", "skip"):
            start = time.time()
            work = tmp / f"{case['class']}-{policy}"
            work.mkdir(parents=True)
            path = work / ("data" + case.get("suffix", ".jsonl"))
            case["write"](path)
            record = {"part": "A", "class": case["class"], "policy": policy, "input": path.name}
            try:
                dm = PKUSafeRLHFDataModule(tokenizer="tiny", source=str(path), prepared_dir=str(work / "prepared"),
                                           num_workers=0, max_length=128, on_bad_row=policy, **ONE_SPLIT)
                record.update(_report_fields(dm.prepare()))
            except Exception as exc:  # noqa: BLE001  (the outcome under test)
                record.update(_outcome_of_error(exc))
                full = str(exc)
                record["names_file"] = str(path) in full
                if case["line"] is not None:
                    record["names_line"] = f"line {case['line']}" in full
            expected = case["expect"][policy]
            ok = record["outcome"] in expected
            if record["outcome"] == "error":
                ok = ok and record["names_file"] and record.get("names_line", True)
                if case.get("match"):
                    ok = ok and case["match"].lower() in str(record["message"]).lower() + full.lower()
                published = list((work / "prepared").glob("pku_saferlhf-*")) if (work / "prepared").exists() else []
                record["published_anything"] = bool(published)
                ok = ok and not published
            elif record["outcome"] == "dropped":
                ok = ok and record["balanced"] and record["rows_read"] == record["kept"] + sum(
                    record["dropped"].values())
            record.update({"expected": expected, "ok": bool(ok), "wall_s": round(time.time() - start, 2)})
            if case.get("note") and not ok:
                record["note"] = case["note"]
            emit(record)


# --------------------------------------------------------------------------------------- prepared dirs
class _Touch:
    """Pickles as "create this file": a harmless stand-in for what a crafted item could do."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def __reduce__(self):
        return (Path.touch, (self.path,))


def _record_file(path: Path) -> dict:
    return {"bytes": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def _forge_manifest(directory: Path) -> None:
    splits = {}
    for split in ("train", "val", "test"):
        index = directory / split / "index.json"
        if index.is_file():
            chunks = json.loads(index.read_text())["chunks"]
            splits[split] = {"index": _record_file(index),
                             "chunks": {c["filename"]: _record_file(directory / split / c["filename"])
                                        for c in chunks}}
    manifest = {"written_by": "lit_safe", "manifest_version": 1, "fingerprint": None, "splits": splits,
                "files": {name: _record_file(directory / name) for name in ("report.json", "meta.json")
                          if (directory / name).is_file()}}
    (directory / "manifest.json").write_text(json.dumps(manifest))


def _chunk(location: Path, split: str = "train") -> Path:
    return sorted((Path(location) / split).glob("chunk-*.bin"))[0]


def part_a_prepared(tmp: Path) -> None:
    import numpy as np
    from litdata.streaming.writer import BinaryWriter
    from litdata.utilities.env import _DistributedEnv

    from lit_safe.data_modules.pku_saferlhf import PKUSafeRLHFDataModule

    def module(source, prepared_dir, **kwargs):
        return PKUSafeRLHFDataModule(tokenizer="tiny", source=str(source), prepared_dir=str(prepared_dir),
                                     synthetic_rows=64, num_workers=0, batch_size=8, **kwargs)

    def streamed(dm) -> int:
        return sum(len(batch["row"]) for batch in dm.train_dataloader())

    genuine_dm = module("synthetic", tmp / "cache")
    genuine_dm.prepare()
    genuine = Path(genuine_dm.prepared_location())

    def copy_of(tag: str) -> Path:
        target = tmp / tag / genuine.name
        shutil.copytree(genuine, target)
        return target

    def open_all(dm):
        dm.prepare_data()
        dm.setup("fit")
        next(iter(dm.train_dataloader()))

    # a prepared dir without manifest.json, given as source
    start = time.time()
    bare = copy_of("no_manifest")
    (bare / "manifest.json").unlink(missing_ok=True)
    record = {"part": "A", "class": "prepared_dir_without_manifest", "policy": "error"}
    try:
        open_all(module(bare, tmp / "unused"))
        record.update({"outcome": "accepted"})
    except Exception as exc:  # noqa: BLE001
        record.update(_outcome_of_error(exc))
    record["ok"] = record["outcome"] == "error" and "not written by lit_safe" in record.get("message", "") \
        and str(bare) in record.get("message", "")
    record["wall_s"] = round(time.time() - start, 2)
    emit(record)

    # a crafted prepared dir whose items are stored with pickle (with a forged, matching manifest)
    start = time.time()
    marker = tmp / "payload-ran"
    crafted = copy_of("crafted")
    shutil.rmtree(crafted / "train")
    writer = BinaryWriter(str(crafted / "train"), chunk_bytes="64MB")
    writer._distributed_env = _DistributedEnv(world_size=1, global_rank=0, num_nodes=1)
    writer._rank = 0
    for i in range(8):
        ids = np.arange(1, 6, dtype=np.int32)
        writer[i] = {"chosen": ids, "rejected": ids, "row": _Touch(marker)}
    writer.done()
    writer.merge()
    data_format = json.loads((crafted / "train" / "index.json").read_text())["config"]["data_format"]
    _forge_manifest(crafted)
    record = {"part": "A", "class": "prepared_dir_pickle_index", "policy": "error", "data_format": data_format}
    try:
        open_all(module(crafted, tmp / "unused"))
        record["outcome"] = "accepted"
    except Exception as exc:  # noqa: BLE001
        record.update(_outcome_of_error(exc))
    try:  # asking for the loader directly is refused as well
        dm = module(crafted, tmp / "unused")
        dm.train_dataloader()
        record["direct_loader"] = "accepted"
    except Exception as exc:  # noqa: BLE001
        record["direct_loader"] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    record["payload_ran"] = marker.exists()
    record["ok"] = (record["outcome"] == "error" and "pickle" in record.get("message", "")
                    and not record["payload_ran"] and record["direct_loader"] != "accepted")
    record["wall_s"] = round(time.time() - start, 2)
    emit(record)

    # a truncated chunk in a reused preparation: prepared again
    start = time.time()
    first = module("synthetic", tmp / "reuse")
    kept = first.prepare().splits["train"].kept
    chunk = _chunk(Path(first.prepared_location()))
    size = chunk.stat().st_size
    with open(chunk, "r+b") as handle:
        handle.truncate(size // 2)
    record = {"part": "A", "class": "truncated_chunk_reused_preparation", "policy": "error",
              "chunk_bytes": size, "truncated_to": size // 2}
    try:
        again = module("synthetic", tmp / "reuse")
        again.prepare()
        again.setup("fit")
        n = streamed(again)
        record.update({"outcome": "re-prepared", "chunk_bytes_after": chunk.stat().st_size, "streamed": n,
                       "kept": kept})
        record["ok"] = chunk.stat().st_size == size and n == kept
    except Exception as exc:  # noqa: BLE001
        record.update(_outcome_of_error(exc))
        record["ok"] = False
    record["wall_s"] = round(time.time() - start, 2)
    emit(record)

    # a truncated chunk in a prepared dir given as source: a named error
    start = time.time()
    damaged = copy_of("damaged")
    chunk = _chunk(damaged)
    with open(chunk, "r+b") as handle:
        handle.truncate(chunk.stat().st_size - 100)
    record = {"part": "A", "class": "truncated_chunk_prepared_source", "policy": "error"}
    try:
        module(damaged, tmp / "unused").prepare()
        record["outcome"] = "accepted"
    except Exception as exc:  # noqa: BLE001
        record.update(_outcome_of_error(exc))
    record["ok"] = record["outcome"] == "error" and str(chunk) in record.get("message", "") \
        and "truncated or damaged" in record.get("message", "")
    record["wall_s"] = round(time.time() - start, 2)
    emit(record)

    # batch_size 0, in process
    start = time.time()
    record = {"part": "A", "class": "batch_size_0_init", "policy": "error"}
    try:
        PKUSafeRLHFDataModule(tokenizer="tiny", source="synthetic", prepared_dir=str(tmp / "bs0"), batch_size=0)
        record["outcome"] = "accepted"
    except Exception as exc:  # noqa: BLE001
        record.update(_outcome_of_error(exc))
    record["ok"] = record["outcome"] == "error" and "batch_size" in record.get("message", "")
    record["wall_s"] = round(time.time() - start, 2)
    emit(record)


# --------------------------------------------------------------------------------------------- CLI cases
def part_a_cli(tmp: Path) -> None:
    def case(name: str, extra: list[str], expect: list[str], sub: str, config_data: dict | None = None,
             check_export: bool = False, max_steps: int | None = None) -> None:
        work = tmp / name
        trainer = {"max_steps": max_steps} if max_steps else {}
        config = shrunk_config("reward", work, trainer=trainer,
                               data={"synthetic_rows": 300, "prepared_dir": str(work / "prepared"),
                                     **(config_data or {})})
        result = run_cli(["fit", "--config", str(config), *extra])
        line = result["stderr_last_line"]
        record = {"part": "A", "class": name, "policy": "cli", "args": extra, "rc": result["rc"],
                  "stderr_last_line": line[:500], "traceback": result["traceback"], "wall_s": result["wall_s"]}
        ok = result["rc"] != 0 and all(e.lower() in line.lower() for e in expect)
        if check_export:
            exported = (work / "export").exists() and any((work / "export").iterdir())
            record["exported_model"] = exported
            record["checkpoints"] = sorted(p.name for p in (work / "checkpoints").glob("*")) \
                if (work / "checkpoints").exists() else []
            ok = ok and not exported
        record["one_line_error"] = line.startswith("lit-safe: error:") and not result["traceback"]
        record["ok"] = bool(ok)
        if not ok:
            record["stderr_tail"] = result["stderr"][-1500:]
        emit(record)

    case("nan_training", ["--model.init_args.optimizer.lr", "1000", "--trainer.max_steps", "40"], ["step"], "",
         check_export=True)
    missing = str(tmp / "no" / "such" / "model")
    case("backbone_path_missing", ["--model.init_args.backbone", missing], [missing], "")
    case("backbone_preset_typo", ["--model.init_args.backbone", "tinyy"], ["tinyy", "preset"], "")
    case("batch_size_0_cli", ["--data.init_args.batch_size", "0"], ["batch_size"], "")


def part_a(tmp: Path) -> None:
    log("Part A: bad input (files)")
    part_a_files(tmp / "files")
    log("Part A: prepared directories")
    part_a_prepared(tmp / "prepared")
    log("Part A: through lit-safe fit")
    part_a_cli(tmp / "cli")


# ============================================================================================ Part B
TEXT_DATA = {"synthetic_rows": 600, "batch_size": 8, "max_length": 128, "group_size": 4}
VALIDATE = {"val_check_interval": 5, "limit_val_batches": 1, "num_sanity_val_steps": 0}
VIDEO_DATA = {"synthetic_rows": 48, "val_fraction": 0.25, "batch_size": 4, "tokenizer": "tiny"}
TRAINERS = {
    "reward": {"config": "reward", "data": TEXT_DATA, "trainer": VALIDATE},
    "cost": {"config": "cost", "data": TEXT_DATA, "trainer": VALIDATE},
    "moderation": {"config": "moderation", "data": TEXT_DATA, "trainer": VALIDATE},
    "sft": {"config": "sft", "data": TEXT_DATA, "trainer": VALIDATE},
    "ppo_lagrangian": {"config": "ppo_lagrangian", "data": {"synthetic_rows": 600, "batch_size": 4,
                                                             "max_length": 128},
                       "model": {"max_new_tokens": 12, "episode_window": 6}},
    "dpo": {"config": "prompt_augmenter_dpo", "data": VIDEO_DATA, "model": {"backbone": "tiny"}, "trainer": VALIDATE},
    "diffusion_dpo": {"config": "diffusion_dpo", "data": VIDEO_DATA, "model": {"backbone": "tiny"},
                      "trainer": VALIDATE},
}
DEFAULT_TRAINERS = ["reward", "cost", "moderation", "sft", "ppo_lagrangian"]
SKIP_KEYS = {"callbacks", "hyper_parameters", "datamodule_hyper_parameters", "hparams_name",
             "pytorch-lightning_version", "datamodule_hparams_name"}


def _load(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)


def _flatten(value: Any, prefix: str, out: dict) -> None:
    import torch

    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(v, f"{prefix}/{k}", out)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _flatten(v, f"{prefix}/{i}", out)
    elif isinstance(value, torch.Tensor):
        out[prefix] = value
    else:
        out[prefix] = value


def compare_checkpoints(a_path: Path, b_path: Path) -> dict:
    """Every tensor and value of the two checkpoints, outside what names run directories or the loop counters."""
    import torch

    a, b = _load(a_path), _load(b_path)
    fa, fb = {}, {}
    for key in a:
        if key not in SKIP_KEYS:
            _flatten(a[key], key, fa)
    for key in b:
        if key not in SKIP_KEYS:
            _flatten(b[key], key, fb)
    missing = sorted(set(fa) ^ set(fb))
    tensors = [k for k in fa if k in fb and isinstance(fa[k], torch.Tensor)]
    differ, max_abs = [], 0.0
    for k in tensors:
        x, y = fa[k], fb[k]
        if x.shape != y.shape or x.dtype != y.dtype:
            differ.append(k)
            max_abs = float("inf")
            continue
        if not torch.equal(x, y):
            if torch.is_floating_point(x):
                both_nan = torch.isnan(x) & torch.isnan(y)
                if both_nan.any() and torch.equal(x[~both_nan], y[~both_nan]):
                    continue
                max_abs = max(max_abs, float((x.double() - y.double()).abs().max()))
            else:
                max_abs = max(max_abs, float((x.long() - y.long()).abs().max()) if x.numel() else 0.0)
            differ.append(k)
    values = [k for k in fa if k in fb and not isinstance(fa[k], torch.Tensor)]
    values_differ = [k for k in values if fa[k] != fb[k] and not (fa[k] != fa[k] and fb[k] != fb[k])]
    groups: dict[str, list[int]] = {}
    for k in tensors:
        group = k.split("/")[0]
        groups.setdefault(group, [0, 0])[0] += 1
        if k in differ:
            groups[group][1] += 1
    return {"global_step": (a.get("global_step"), b.get("global_step")),
            "tensors_compared": len(tensors), "tensors_differing": len(differ), "max_abs_diff": max_abs,
            "state_dict_tensors": groups.get("state_dict", [0, 0])[0], "groups": groups,
            "values_compared": len(values), "values_differing": values_differ[:10],
            "keys_only_in_one": missing[:10], "differing": differ[:10],
            "extra_state": sorted(k for k in a if k not in SKIP_KEYS and k not in
                                  ("state_dict", "optimizer_states", "lr_schedulers", "global_step"))}


def _ckpt_steps(directory: Path) -> dict[int, Path]:
    out = {}
    for p in directory.glob("step*.ckpt"):
        try:
            out[int(p.stem[4:])] = p
        except ValueError:
            pass
    return out


def _temporaries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob(".*.tmp-*")) if directory.exists() else []


def killed_run(config: Path, ckpt_dir: Path, target: int, mode: str, log_path: Path, timeout: float) -> dict:
    """Start ``lit-safe fit``, SIGKILL it at ``target`` (see the module docstring for ``mode``)."""
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(LIT_SAFE + ["fit", "--config", str(config)], env=_env(), stdout=log_file,
                                stderr=subprocess.STDOUT, cwd=REPO)
    start = time.time()
    seen_step, write_caught = None, None
    try:
        while True:
            if proc.poll() is not None:
                return {"killed": False, "rc": proc.returncode, "note": "the run ended before the kill point"}
            if time.time() - start > timeout:
                proc.kill()
                proc.wait()
                return {"killed": False, "note": "timeout waiting for the kill point"}
            steps = _ckpt_steps(ckpt_dir) if ckpt_dir.exists() else {}
            ready = [s for s in steps if s >= target]
            if mode == "during_write" and ready:
                if _temporaries(ckpt_dir):  # a checkpoint is being written right now
                    seen_step = max(steps) if steps else None
                    write_caught = True
                    break
                if len(ready) >= 3:  # never caught in the act: kill anyway
                    seen_step, write_caught = max(steps), False
                    break
                time.sleep(0.002)
                continue
            if ready:
                seen_step = min(ready)
                if mode == "on_checkpoint":
                    break
                last = ckpt_dir / "last.ckpt"
                try:
                    if (last.stat().st_mtime_ns >= steps[seen_step].stat().st_mtime_ns
                            and not [t for t in _temporaries(ckpt_dir) if t.startswith(".last.ckpt")]):
                        break
                except FileNotFoundError:
                    pass
            time.sleep(0.02)
        temporaries = _temporaries(ckpt_dir)
        os.kill(proc.pid, signal.SIGKILL)  # kill -9
        rc = proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return {"killed": True, "rc": rc, "checkpoint_seen": seen_step, "temporaries_at_kill": temporaries,
            "write_caught": write_caught, "temporaries_after_kill": _temporaries(ckpt_dir),
            "killed_after_s": round(time.time() - start, 1)}


def _read_step(path: Path) -> int | None:
    try:
        return int(_load(path)["global_step"])
    except Exception:  # noqa: BLE001
        return None


def _ensure_ppo_models(tmp: Path, steps: int, exports: dict[str, Path]) -> dict[str, Path]:
    """The SFT, reward and cost exports PPO starts from: those of this run's uninterrupted fits when there are, else a
    short fit of each."""
    for name in ("sft", "reward", "cost"):
        if name in exports and (exports[name] / "config.json").is_file():
            continue
        work = tmp / f"ppo_input_{name}"
        config = shrunk_config(name, work, trainer={"max_steps": steps, "limit_val_batches": 0},
                               data={**TEXT_DATA, "prepared_dir": str(tmp / "prepared")})
        log(f"  training the {name} model PPO starts from")
        result = run_cli(["fit", "--config", str(config)])
        if result["rc"] != 0:
            raise RuntimeError(f"fit of {name} for PPO failed: {result['stderr'][-2000:]}")
        exports[name] = work / "export"
    return exports


def part_b_trainer(name: str, tmp: Path, steps: int, kill_points: list[tuple[int, str]], exports: dict,
                   timeout: float) -> None:
    spec = TRAINERS[name]
    model = dict(spec.get("model", {}))
    data = {**spec.get("data", {}), "prepared_dir": str(tmp / "prepared")}
    if name == "ppo_lagrangian":
        exports = _ensure_ppo_models(tmp, steps, exports)
        model.update({"backbone": str(exports["sft"]), "reward_model": str(exports["reward"]),
                      "cost_model": str(exports["cost"])})
        data["tokenizer"] = str(exports["sft"])
    trainer = {"max_steps": steps, **spec.get("trainer", {})}

    def configure(run: str) -> tuple[Path, Path]:
        work = tmp / name / run
        return shrunk_config(spec["config"], work, trainer=trainer, model=model, data=data,
                             every_step_checkpoints=True), work / "checkpoints"

    log(f"Part B: {name}: uninterrupted run to step {steps}")
    config, full_dir = configure("full")
    result = run_cli(["fit", "--config", str(config)], timeout=timeout)
    full_last = full_dir / "last.ckpt"
    base = {"part": "B", "trainer": name, "steps": steps}
    if result["rc"] != 0 or not full_last.is_file():
        emit({**base, "run": "uninterrupted", "ok": False, "equal": False, "rc": result["rc"],
              "stderr_last_line": result["stderr_last_line"], "stderr_tail": result["stderr"][-2000:]})
        return
    full_step = _read_step(full_last)
    emit({**base, "run": "uninterrupted", "ok": full_step == steps, "final_step": full_step,
          "checkpoints": sorted(_ckpt_steps(full_dir)), "wall_s": result["wall_s"]})
    exports[name] = full_dir.parent / "export"

    for target, mode in kill_points:
        start = time.time()
        run = f"kill{target}-{mode}"
        config, ckpt_dir = configure(run)
        log(f"Part B: {name}: kill -9 at step {target} ({mode})")
        kill = killed_run(config, ckpt_dir, target, mode, ckpt_dir.parent / "killed.log", timeout)
        record = {**base, "run": "killed+resumed", "kill_target": target, "kill_mode": mode, **kill}
        last = ckpt_dir / "last.ckpt"
        if not kill.get("killed"):
            emit({**record, "ok": False, "equal": False, "wall_s": round(time.time() - start, 1)})
            continue
        record["kill_at"] = _read_step(last) if last.is_file() else None
        resume_from = last
        if record["kill_at"] is None:  # no last.ckpt yet (or unreadable: a bug): fall back to the newest step file
            record["last_ckpt_unusable"] = last.is_file()
            complete = _ckpt_steps(ckpt_dir)
            if not complete:
                emit({**record, "ok": False, "equal": False, "note": "no checkpoint to resume from"})
                continue
            resume_from = complete[max(complete)]
            record["kill_at"] = _read_step(resume_from)
        record["resumed_from"] = resume_from.name
        resumed = run_cli(["fit", "--config", str(config), "--ckpt_path", str(resume_from)], timeout=timeout)
        record.update({"resume_rc": resumed["rc"], "temporaries_after_resume": _temporaries(ckpt_dir)})
        if resumed["rc"] != 0 or not last.is_file():
            emit({**record, "ok": False, "equal": False, "stderr_last_line": resumed["stderr_last_line"],
                  "stderr_tail": resumed["stderr"][-2000:], "wall_s": round(time.time() - start, 1)})
            continue
        comparison = compare_checkpoints(full_last, last)
        equal = (comparison["tensors_differing"] == 0 and not comparison["values_differing"]
                 and not comparison["keys_only_in_one"] and comparison["global_step"][1] == steps)
        record.update(comparison)
        record.update({"equal": equal, "ok": equal, "exported": (ckpt_dir.parent / "export" / "config.json").is_file(),
                       "wall_s": round(time.time() - start, 1)})
        emit(record)


def part_b(tmp: Path, trainers: list[str], steps: int, kill_points: list[tuple[int, str]], timeout: float) -> None:
    exports: dict[str, Path] = {}
    order = sorted(trainers, key=lambda t: t == "ppo_lagrangian")  # PPO last: it starts from the others' exports
    for name in order:
        points = kill_points
        try:
            part_b_trainer(name, tmp, steps, points, exports, timeout)
        except Exception as exc:  # noqa: BLE001
            emit({"part": "B", "trainer": name, "ok": False, "equal": False,
                  "error": f"{type(exc).__name__}: {exc}"[:2000], "traceback": traceback.format_exc()[-2000:]})


# ============================================================================================ summary
def summary() -> str:
    lines = ["", "## Part A: bad input", "", "| class | policy | outcome | detail | ok |", "|---|---|---|---|---|"]
    for r in RESULTS:
        if r.get("part") != "A":
            continue
        if r.get("outcome") == "error":
            detail = f"{r.get('error_type')}: {r.get('message', '')}"
        elif r.get("outcome") in ("dropped", "kept_all"):
            detail = f"read {r['rows_read']} = kept {r['kept']} + dropped {r['dropped']}"
        elif r.get("policy") == "cli":
            detail = f"rc {r['rc']}: {r['stderr_last_line']}"
            if "exported_model" in r:
                detail += f" (exported model: {r['exported_model']})"
        else:
            detail = json.dumps({k: r[k] for k in ("streamed", "kept", "chunk_bytes_after") if k in r})
        outcome = r.get("outcome") or ("exit " + str(r.get("rc")))
        detail = detail.replace("|", "\\|").replace("\n", " ")
        if len(detail) > 160:
            detail = detail[:157] + "..."
        lines.append(f"| {r['class']} | {r['policy']} | {outcome} | {detail} | {'yes' if r['ok'] else '**NO**'} |")
    lines += ["", "## Part B: kill -9 and resume", "",
              "| trainer | kill target (mode) | resumed from step | tensors compared | differing | max abs diff | "
              "equal | wall s |", "|---|---|---|---|---|---|---|---|"]
    for r in RESULTS:
        if r.get("part") != "B" or r.get("run") == "uninterrupted" and r.get("ok"):
            continue
        if r.get("run") == "uninterrupted" or "error" in r:
            lines.append(f"| {r['trainer']} | uninterrupted run failed: {r.get('stderr_last_line') or r.get('error')}"
                         f" | | | | | **NO** | |")
            continue
        lines.append(f"| {r['trainer']} | {r.get('kill_target')} ({r.get('kill_mode')}) | {r.get('kill_at')} | "
                     f"{r.get('tensors_compared', '')} | {r.get('tensors_differing', '')} | "
                     f"{r.get('max_abs_diff', '')} | {'yes' if r.get('equal') else '**NO**'} | {r.get('wall_s', '')} |")
    failed = [r for r in RESULTS if not r.get("ok")]
    lines += ["", f"{len(RESULTS) - len(failed)} of {len(RESULTS)} checks held."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    global OUT_HANDLE
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", default=["A", "B"], choices=["A", "B"])
    parser.add_argument("--trainers", nargs="+", default=DEFAULT_TRAINERS, choices=sorted(TRAINERS))
    parser.add_argument("--steps", type=int, default=None, help="N, steps of every run (default 12, --quick 6)")
    parser.add_argument("--quick", action="store_true", help="6 steps, one kill point per trainer")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per subprocess")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--out", type=Path, help="also write the JSON lines to this file (overwritten)")
    args = parser.parse_args(argv)
    steps = args.steps or (6 if args.quick else 12)
    if args.quick:
        kill_points = [(steps // 2, "mid_step")]
    else:
        kill_points = [(max(1, steps // 3), "during_write"), (max(1, steps // 2), "on_checkpoint"),
                       (max(2, 2 * steps // 3), "mid_step")]

    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        OUT_HANDLE = open(args.out, "w")
    tmp = Path(tempfile.mkdtemp(prefix="lit_safe_fault_injection_"))
    start = time.time()
    try:
        with contextlib.redirect_stdout(sys.stderr):
            if "A" in args.parts:
                part_a(tmp / "A")
            if "B" in args.parts:
                part_b(tmp / "B", args.trainers, steps, kill_points, args.timeout)
    finally:
        wall = round(time.time() - start, 1)
        emit({"part": "summary", "checks": len(RESULTS), "failed": sum(not r.get("ok") for r in RESULTS),
              "wall_s": wall, "steps": steps, "kill_points": kill_points, "ok": True})
        print(summary(), file=sys.stderr)
        log(f"total wall time {wall} s; work directory {tmp}" + ("" if args.keep else " (removed)"))
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        if OUT_HANDLE is not None:
            OUT_HANDLE.close()
    return 0 if all(r.get("ok") for r in RESULTS) else 1


if __name__ == "__main__":
    sys.exit(main())
