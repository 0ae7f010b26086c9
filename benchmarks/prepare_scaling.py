"""Preparation at scale and streaming from a large prepared dataset (issue 15).

Preparation: for every size in ``--sizes`` (rows of a local JSONL of synthetic PKU-SafeRLHF rows, written block by
block with :func:`~lit_safe.data_modules.synthetic.generate_pku_saferlhf_rows`, never held in memory) and every count
in ``--workers`` (the DataModule's ``prepare_workers``, passed only when the DataModule has that argument), one fresh
subprocess builds the reward quickstart's DataModule (``configs/quickstart/reward.yaml``: the ``preference`` view,
the ``tiny`` tokenizer of its ``tiny`` backbone, its ``max_length``) on that file and runs ``prepare(force=True)``
into an empty directory. Each run prints one JSON line: wall time, rows per second, prepared bytes on disk, and peak
memory of the whole process tree (the preparation process and every worker it starts).

Streaming: from the prepared dataset of the largest size (or, with ``--replicate N``, from a dataset of ``N`` pairs
made by repeating the training items of the smallest one: no preparation of ``N`` rows needed), one subprocess trains
the reward quickstart (its model, data loader settings and callbacks, ``TokenThroughput`` included; no progress bar;
logs and checkpoints in a temporary directory) for ``--stream-steps`` steps and measures the time from ``fit`` to
the first training batch, what that time was spent on, and the data-wait share. It then checks a mid-epoch resume at
that scale: a run stopped with a checkpoint after half the steps and resumed from it must train on exactly the
batches of the uninterrupted run.

    python benchmarks/prepare_scaling.py --sizes 10000 100000 --workers 1
    python benchmarks/prepare_scaling.py --sizes 10000 --workers 1 --replicate 1000000 --stream-steps 300
    python benchmarks/prepare_scaling.py                         # 10k, 100k and 1M rows, 1 and 2 workers

The fields are described in ``benchmarks/README.md`` (section ``prepare_scaling``);
``benchmarks/plot_prepare_scaling.py`` plots a results file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from child_process import run_sampled  # benchmarks/child_process.py: a script's own folder is on sys.path

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart" / "reward.yaml"
CHILD_FLAG = "--_child"
RESULT_PREFIX = "@@RESULT "
BLOCK_ROWS = 10_000  # rows generated per seed: the generator's memory stays that of one block


# ----------------------------------------------------------------------------------------------------- the source
def write_synthetic_jsonl(path: Path, rows: int, seed: int) -> Path:
    """Write ``rows`` synthetic PKU-SafeRLHF rows to ``path``, block by block (block ``k`` is
    ``generate_pku_saferlhf_rows(BLOCK_ROWS, seed * 1_000_003 + k)``), atomically; an existing file is kept."""
    if path.is_file():
        return path
    from lit_safe.data_modules.synthetic import generate_pku_saferlhf_rows

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    with tmp.open("w", encoding="utf-8") as handle:
        for block, start in enumerate(range(0, rows, BLOCK_ROWS)):
            for row in generate_pku_saferlhf_rows(min(BLOCK_ROWS, rows - start), seed * 1_000_003 + block):
                handle.write(json.dumps(row) + "\n")
    os.replace(tmp, path)
    return path


def quickstart_config() -> dict[str, Any]:
    import yaml

    return yaml.safe_load(QUICKSTART.read_text())


# -------------------------------------------------------------------------------------------------- the children
def _child_env(threads: int) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def _disk_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def _prepare_child(cfg: dict[str, Any]) -> dict[str, Any]:
    """Prepare ``cfg["source"]`` as the reward quickstart does, with ``cfg["workers"]`` preparation processes."""
    import inspect
    import resource

    from lit_safe.data_modules.base import PreparedDataModule
    from lit_safe.data_modules.pku_saferlhf import PKUSafeRLHFDataModule

    config = quickstart_config()
    data_args = {k: v for k, v in config["data"]["init_args"].items() if k not in ("source", "synthetic_rows")}
    data_args.update(tokenizer=config["model"]["init_args"]["backbone"], source=cfg["source"],
                     prepared_dir=cfg["prepared_dir"])
    accepts = "prepare_workers" in inspect.signature(PreparedDataModule.__init__).parameters
    if accepts:
        data_args["prepare_workers"] = cfg["workers"]
    elif cfg["workers"] != 1:
        return {"skipped": "the DataModule has no prepare_workers argument (one preparation process only)"}
    start = time.perf_counter()
    data = PKUSafeRLHFDataModule(**data_args)
    report = data.prepare(force=True)
    wall = time.perf_counter() - start
    location = Path(data.prepared_location())
    read = sum(split.rows_read for split in report.splits.values())
    kept = {name: split.kept for name, split in report.splits.items()}
    return {
        "prepare_workers_argument": accepts,
        "prepare_s": round(wall, 2),
        "rows_read": read,
        "kept": kept,
        "rows_per_s": round(read / wall, 1),
        "disk_bytes": _disk_bytes(location),
        "prepared": str(location),
        "max_rss_self_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "max_rss_children_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
    }


def _replicate_child(cfg: dict[str, Any]) -> dict[str, Any]:
    """A prepared dataset of ``cfg["rows"]`` training pairs at ``cfg["target"]``: the training items of the prepared
    dataset ``cfg["source"]`` repeated in order (``row`` renumbered 0, 1, ...), its ``val`` and ``test`` splits
    copied, ``report.json`` counting the new rows, and a manifest, as a preparation writes them."""
    from litdata import StreamingDataset

    from lit_safe.data_modules.preparation import META_FILE, REPORT_FILE, write_manifest, write_split

    source, target, rows = Path(cfg["source"]), Path(cfg["target"]), int(cfg["rows"])
    items = list(StreamingDataset(str(source / "train"), shuffle=False))

    def repeated():
        for i in range(rows):
            yield {**items[i % len(items)], "row": i}

    start = time.perf_counter()
    tmp = target.with_name(f".{target.name}-building")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_split(repeated(), tmp / "train")
    for split in ("val", "test"):
        if (source / split).is_dir():
            shutil.copytree(source / split, tmp / split)
    report = json.loads((source / REPORT_FILE).read_text())
    report["source"] = f"{report['source']} (training items repeated to {rows} pairs by benchmarks/prepare_scaling.py)"
    report["output_dir"] = str(target)
    report["splits"]["train"].update(rows_read=rows, kept=rows, dropped={})
    (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    meta = json.loads((source / META_FILE).read_text())
    meta["replicated_from"] = str(source)
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    write_manifest(tmp)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return {"replicate_s": round(time.perf_counter() - start, 1), "rows": rows, "distinct_items": len(items),
            "disk_bytes": _disk_bytes(target)}


def _stream_child(cfg: dict[str, Any]) -> dict[str, Any]:
    """Train the reward quickstart from the prepared dataset ``cfg["source"]``; time its start, its data waits, and
    check a mid-epoch resume."""
    start_imports = time.perf_counter()
    import resource

    import yaml
    from lightning.pytorch.callbacks import Callback

    from lit_safe.callbacks.throughput import TokenThroughput
    from lit_safe.cli import LitSafeCLI
    from lit_safe.data_modules import preparation

    imports_s = time.perf_counter() - start_imports
    work = Path(cfg["work"])
    source = Path(cfg["source"])

    class Timeline(Callback):
        """Hook times of one fit: when the epoch started, when each training batch started and ended, its rows."""

        def __init__(self) -> None:
            self.epoch_start: float | None = None
            self.starts: list[float] = []
            self.ends: list[float] = []
            self.rows: list[int] = []

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            if self.epoch_start is None:
                self.epoch_start = time.perf_counter()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.starts.append(time.perf_counter())
            self.rows += batch["row"].tolist()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.ends.append(time.perf_counter())

    class StopAfter(Callback):
        """Save a checkpoint after ``step`` and stop, as a run killed right after that checkpoint would."""

        def __init__(self, step: int, path: Path) -> None:
            self.step, self.path = step, path

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.global_step >= self.step and not self.path.exists():
                trainer.save_checkpoint(self.path)
                trainer.should_stop = True

    def config_file(name: str, steps: int) -> Path:
        config = yaml.safe_load(QUICKSTART.read_text())
        trainer = config["trainer"]
        trainer.update(max_steps=steps, enable_progress_bar=False, enable_model_summary=False,
                       default_root_dir=str(work / name))
        trainer["logger"]["init_args"]["save_dir"] = str(work / name / "logs")
        for callback in trainer["callbacks"]:
            if "dirpath" in callback.get("init_args", {}):
                callback["init_args"]["dirpath"] = str(work / name / Path(callback["init_args"]["dirpath"]).name)
        data = config["data"]["init_args"]
        data.pop("synthetic_rows", None)
        data.update(source=str(source), prepared_dir=str(work / "prepared"))
        if cfg.get("num_workers") is not None:
            data["num_workers"] = int(cfg["num_workers"])
        path = work / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config))
        return path

    def fit(name: str, steps: int, stop_after: int | None = None, ckpt_path: Path | None = None) -> dict[str, Any]:
        """One fit of the quickstart, timed: phases before the first batch, waits and steps after it."""
        cli = LitSafeCLI(args=["--config", str(config_file(name, steps))], run=False)
        timeline = Timeline()
        cli.trainer.callbacks.append(timeline)
        if stop_after is not None:
            cli.trainer.callbacks.append(StopAfter(stop_after, work / name / "stopped.ckpt"))
        windows: list[float] = []  # perf/data_wait_share of every window TokenThroughput logs
        for callback in cli.trainer.callbacks:
            if isinstance(callback, TokenThroughput):
                def flush(pl_module, _original=callback._flush, _callback=callback):
                    w = _callback.window
                    if w["wait_s"] + w["step_s"] > 0:
                        windows.append(round(w["wait_s"] / (w["wait_s"] + w["step_s"]), 5))
                    _original(pl_module)

                callback._flush = flush
        phases: dict[str, float] = {}
        data = cli.datamodule

        def timed(hook: str) -> None:
            original = getattr(data, hook)

            def run(*args, **kwargs):
                began = time.perf_counter()
                try:
                    return original(*args, **kwargs)
                finally:
                    phases[hook] = phases.get(hook, 0.0) + time.perf_counter() - began

            setattr(data, hook, run)

        for hook in ("prepare_data", "setup", "train_dataloader", "train_batches"):
            timed(hook)
        began = time.perf_counter()
        cli.trainer.fit(cli.model, data, ckpt_path=None if ckpt_path is None else str(ckpt_path))
        waits = [s - e for s, e in zip(timeline.starts[1:], timeline.ends[:-1])]
        steps_s = [e - s for s, e in zip(timeline.starts, timeline.ends)]
        steady = sum(waits) + sum(steps_s[1:])
        first = timeline.starts[0] if timeline.starts else float("nan")
        return {
            "first_batch_s": round(first - began, 3),
            "phases_s": {k: round(v, 3) for k, v in phases.items()},
            "epoch_start_to_first_batch_s": round(first - (timeline.epoch_start or first), 3),
            "data_wait_share": round(sum(waits) / steady, 5) if steady > 0 else None,
            "max_wait_s": round(max(waits), 4) if waits else None,
            "step_s": round(sum(steps_s[1:]) / max(1, len(steps_s) - 1), 4),
            "pairs_per_s": round((len(timeline.rows) - int(cfg["batch_size"])) / steady, 1) if steady > 0 else None,
            "throughput_callback_windows": windows,
            "batches": len(timeline.starts),
            "rows": timeline.rows,
            "global_step": cli.trainer.global_step,
            "epoch_batches": cli.trainer.num_training_batches,
        }

    steps = int(cfg["steps"])
    full = fit("full", steps)
    result: dict[str, Any] = {k: v for k, v in full.items() if k != "rows"}
    result["imports_s"] = round(imports_s, 2)
    if cfg.get("resume", True):
        stop = steps // 2
        first = fit("cut", steps, stop_after=stop)
        resumed = fit("cut", steps, ckpt_path=work / "cut" / "stopped.ckpt")
        result["resume"] = {
            "stopped_after": stop,
            "first_batch_s": resumed["first_batch_s"],
            "phases_s": resumed["phases_s"],
            "exact": first["rows"] + resumed["rows"] == full["rows"],  # the same batches, none repeated or lost
            "global_step": resumed["global_step"],
        }
    manifest = json.loads((source / preparation.MANIFEST_FILE).read_text())
    chunk_bytes = sum(int(r["bytes"]) for entry in manifest["splits"].values() for r in entry["chunks"].values())
    verify = {}
    for label, checksums in (("sizes", False), ("default", None), ("checksums", True)):
        began = time.perf_counter()
        preparation.verify_prepared(source, checksums=checksums)
        verify[label] = round(time.perf_counter() - began, 3)
    result.update(
        chunk_bytes=chunk_bytes,
        chunks=sum(len(entry["chunks"]) for entry in manifest["splits"].values()),
        checksum_max_bytes=getattr(preparation, "CHECKSUM_MAX_BYTES", None),
        verify_s=verify,
        max_rss_self_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    )
    return result


# ------------------------------------------------------------------------------------------------------ the parent
def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import psutil

    def version(name: str) -> str | None:
        from importlib import metadata

        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    cpu = None
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True)
    return {
        "host": platform.node(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_available": len(os.sched_getaffinity(0)),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "torch": version("torch"),
        "litdata": version("litdata"),
        "commit": commit.stdout.strip() or None,
        "dirty": bool(dirty.stdout.strip()),
    }


def run_child(kind: str, cfg: dict[str, Any], threads: int, log: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run one child; returns its result and, from sampling its process tree every 0.1 s, the peak total RSS and
    PSS (the child and every process it started) and the wall time."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    command = [sys.executable, str(Path(__file__).resolve()), CHILD_FLAG, kind, json.dumps({**cfg, "threads": threads})]
    result, returncode, wall, peak_rss, peak_pss = run_sampled(command, env, log, RESULT_PREFIX, ROOT)
    if returncode != 0 or result is None:
        raise RuntimeError(f"{kind} child failed (exit {returncode}); its stderr is in {log}")
    return result, {"wall_s": round(wall, 2), "peak_rss_mib": round(peak_rss / 2**20, 1),
                    "peak_pss_mib": round(peak_pss / 2**20, 1), "loadavg_1m": round(os.getloadavg()[0], 2)}


def emit(line: dict[str, Any], out: Path | None) -> None:
    text = json.dumps(line)
    print(text, flush=True)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a") as handle:
            handle.write(text + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000, 1_000_000],
                        help="rows of the synthetic JSONL to prepare (none: no preparation, with --stream-from)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="prepare_workers values")
    parser.add_argument("--repeats", type=int, default=1, help="preparations per (size, workers)")
    parser.add_argument("--threads", type=int, default=1, help="OMP/MKL threads of every child")
    parser.add_argument("--seed", type=int, default=0, help="seeds the synthetic rows")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="where the JSONL files and prepared datasets go (default: a temporary directory, deleted "
                             "at the end); JSONL files already there are reused")
    parser.add_argument("--stream-steps", type=int, default=200,
                        help="training steps of the streaming measurement (0: no streaming measurement)")
    parser.add_argument("--stream-workers", type=int, default=None,
                        help="litdata loader workers when streaming (default: the quickstart's num_workers)")
    parser.add_argument("--replicate", type=int, default=None,
                        help="stream from a dataset of this many pairs made by repeating the training items of the "
                             "smallest prepared size, instead of from the largest prepared size")
    parser.add_argument("--stream-from", type=Path, default=None,
                        help="stream from this prepared dataset (a directory with manifest.json) instead")
    parser.add_argument("--no-resume", action="store_true", help="skip the mid-epoch resume check when streaming")
    parser.add_argument("--note", default=None, help="free text saved in every line (e.g. which code was measured)")
    parser.add_argument("--out", type=Path, default=None, help="also append every JSON line to this file")
    args = parser.parse_args(argv)

    temporary = args.work_dir is None
    work = Path(tempfile.mkdtemp(prefix="prepare_scaling-")) if temporary else args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    log = work / "children.log"
    host = machine()
    config = quickstart_config()
    quick = config["data"]["init_args"]
    common = {"tokenizer": config["model"]["init_args"]["backbone"], "view": quick.get("view", "preference"),
              "max_length": quick["max_length"], "threads": args.threads, "machine": host, "note": args.note}
    streamed: Path | None = None
    try:
        prepared: dict[int, Path] = {}
        for rows in sorted(args.sizes):
            began = time.perf_counter()
            source = write_synthetic_jsonl(work / f"pku_synthetic_{rows}_seed{args.seed}.jsonl", rows, args.seed)
            print(f"source: {source} ({source.stat().st_size / 2**20:.0f} MiB, {time.perf_counter() - began:.0f} s)",
                  file=sys.stderr)
            for workers in args.workers:
                for repeat in range(args.repeats):
                    target = work / f"prepared-{rows}-w{workers}-r{repeat}"
                    shutil.rmtree(target, ignore_errors=True)
                    cfg = {"source": str(source), "prepared_dir": str(target), "workers": workers}
                    result, measured = run_child("prepare", cfg, args.threads, log)
                    if "skipped" in result:
                        print(f"rows {rows}, workers {workers}: skipped: {result['skipped']}", file=sys.stderr)
                        shutil.rmtree(target, ignore_errors=True)
                        break
                    emit({"kind": "prepare", "rows": rows, "workers": workers, "repeat": repeat,
                          "source_bytes": source.stat().st_size, **result, **measured, **common}, args.out)
                    keep = rows == max(args.sizes) or (args.replicate and rows == min(args.sizes))
                    if keep and rows not in prepared:
                        prepared[rows] = Path(result["prepared"])
                    else:
                        shutil.rmtree(target, ignore_errors=True)
        if args.stream_steps > 0 and (prepared or args.stream_from):
            replicated_from = None
            if args.stream_from is not None:
                streamed = args.stream_from.resolve()
            elif args.replicate:
                replicated_from = prepared[min(prepared)]
                streamed = work / f"replicated-{args.replicate}"
                result, measured = run_child("replicate", {"source": str(replicated_from), "target": str(streamed),
                                                           "rows": args.replicate}, args.threads, log)
                print(f"replicated {replicated_from} to {args.replicate} pairs: {result}, {measured}", file=sys.stderr)
            else:
                streamed = prepared[max(prepared)]
            report = json.loads((streamed / "report.json").read_text())
            cfg = {"source": str(streamed), "steps": args.stream_steps, "resume": not args.no_resume,
                   "num_workers": args.stream_workers, "batch_size": quick["batch_size"],
                   "work": str(work / "stream")}
            result, measured = run_child("stream", cfg, args.threads, log)
            emit({"kind": "stream", "dataset": str(streamed), "train_pairs": report["splits"]["train"]["kept"],
                  "replicated_from": None if replicated_from is None else str(replicated_from),
                  "steps": args.stream_steps,
                  "num_workers": quick["num_workers"] if args.stream_workers is None else args.stream_workers,
                  "batch_size": quick["batch_size"], "group_size": quick["group_size"],
                  "pack_pairs": quick.get("pack_pairs", False), **result, **measured, **common}, args.out)
    finally:
        if temporary:
            shutil.rmtree(work, ignore_errors=True)
        else:
            shutil.rmtree(work / "stream", ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == CHILD_FLAG:
        kind, child_cfg = sys.argv[2], json.loads(sys.argv[3])
        _child_env(int(child_cfg.get("threads", 1)))
        child = {"prepare": _prepare_child, "replicate": _replicate_child, "stream": _stream_child}[kind]
        print(RESULT_PREFIX + json.dumps(child(child_cfg)), flush=True)
    else:
        main()
