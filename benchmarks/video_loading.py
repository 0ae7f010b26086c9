"""Video data loading: decode, prepare and stream SafeSora pairs, frames stored decoded vs as mp4 clips (issues 5, 15).

``--mode stream`` (the default): for each ``--storage`` (``frames``: decoded uint8 frames in the litdata chunks;
``mp4``: an H.264 clip of exactly the sampled, resized frames, decoded by the loader workers) it prepares the
``preference`` view of a synthetic SafeSora dataset (``--pairs`` pairs, ``--num-frames`` x ``--frame-size``) with the
default ``prepare_workers`` and streams one epoch of the training split through
``SafeSoraDataModule.train_dataloader()``, the loader training uses, for each ``--num-workers``. It also times the raw
decode of the source mp4 files (PyAV, uniform sampling, resize), i.e. what decoding on the fly from the original
videos would cost.

``--mode prepare``: preparation at several sizes and worker counts, to show its time and that its memory does not grow
with the rows. For each ``--pairs`` size (a synthetic dataset of that many pairs, generated once) and each
``--prepare-workers`` count, one fresh subprocess (under ``/usr/bin/time -v`` where it exists) prepares ``--view``
into an empty directory; the parent samples the memory of the child's whole process tree (the preparation process
and its forked workers) every 0.1 s.

One JSON line per measurement on stdout (and appended to ``--out``):

    python benchmarks/video_loading.py                                # 224 px, 8 frames, 200 pairs
    python benchmarks/video_loading.py --frame-size 32 --pairs 400 --num-workers 0 2
    python benchmarks/video_loading.py --mode prepare --pairs 64 512 --prepare-workers 1 2 --storages frames

Fields (stream mode): ``kind`` (``decode_source``, ``prepare``, ``stream``), ``storage``, ``num_workers``,
``prepare_workers``, ``videos``, ``frames_per_s`` (sampled frames delivered per second), ``videos_per_s``,
``seconds``, ``bytes_per_video`` (the prepared chunks' size per stored video), ``frame_size``, ``num_frames``,
``threads``. Prepare mode (``kind: prepare_memory``): ``pairs``, ``view``, ``storage``, ``prepare_workers``,
``block_rows`` and ``decode_threads`` (as the DataModule chose them), ``rows_read``, ``kept``, ``dropped`` (per split),
``videos`` (decoded), ``prepare_s`` (``prepare()`` alone), ``videos_per_s``, ``wall_s`` (the whole child, imports
included), ``chunk_bytes``, ``max_rss_self_mib`` (the preparation process), ``time_v_max_rss_mib`` (GNU time's
"Maximum resident set size": the largest single process of the tree), ``peak_tree_rss_mib`` and
``peak_tree_pss_mib`` (the sampled peak of the tree's summed RSS, and of its PSS, which counts the pages forked
workers share with their parent once), ``loadavg_1m``, ``machine``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from child_process import run_sampled  # benchmarks/child_process.py: a script's own folder is on sys.path

ROOT = Path(__file__).resolve().parents[1]
CHILD_FLAG = "--_prepare-child"
RESULT_PREFIX = "@@RESULT "
TIME = Path("/usr/bin/time")


def _emit(record: dict, out: Path | None) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a") as f:
            f.write(line + "\n")


def _quiet(threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    import torch

    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore")


# ------------------------------------------------------------------------------------------------- stream mode
def stream_mode(args: argparse.Namespace) -> None:
    from lit_safe.data_modules.safesora import SafeSoraDataModule
    from lit_safe.models.frames import read_video

    common = {"frame_size": args.frame_size, "num_frames": args.num_frames, "threads": args.threads}
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared"
        base = SafeSoraDataModule(tokenizer="tiny", source="synthetic", view="preference", synthetic_rows=args.pairs,
                                  num_frames=args.num_frames, frame_size=args.frame_size, prepared_dir=str(prepared),
                                  num_workers=0)
        root = base.synthetic_dataset()
        videos = sorted(root.glob("videos/*/*.mp4"))
        start = time.perf_counter()
        for path in videos:
            read_video(path, args.num_frames, args.frame_size)
        seconds = time.perf_counter() - start
        _emit({"kind": "decode_source", "storage": "source_mp4", "num_workers": 0, "videos": len(videos),
               "seconds": round(seconds, 3), "videos_per_s": round(len(videos) / seconds, 1),
               "frames_per_s": round(len(videos) * args.num_frames / seconds, 1),
               "source_bytes_per_video": round(sum(p.stat().st_size for p in videos) / len(videos)), **common},
              args.out)
        for storage in args.storages:
            settings = {"tokenizer": "tiny", "source": "synthetic", "view": "preference", "synthetic_rows": args.pairs,
                        "num_frames": args.num_frames, "frame_size": args.frame_size, "prepared_dir": str(prepared),
                        "video_storage": storage, "batch_size": args.batch_size, "val_fraction": 0.0}
            dm = SafeSoraDataModule(**settings, num_workers=0)
            start = time.perf_counter()
            report = dm.prepare()
            seconds = time.perf_counter() - start
            stored = 2 * sum(split.kept for split in report.splits.values())
            size = sum(p.stat().st_size for p in Path(dm.prepared_location()).rglob("chunk-*.bin"))
            _emit({"kind": "prepare", "storage": storage, "prepare_workers": dm.prepare_workers, "videos": stored,
                   "seconds": round(seconds, 3), "videos_per_s": round(stored / seconds, 1),
                   "frames_per_s": round(stored * args.num_frames / seconds, 1),
                   "bytes_per_video": round(size / stored), **common}, args.out)
            for workers in args.num_workers:
                dm = SafeSoraDataModule(**settings, num_workers=workers)  # the preparation above is reused
                dm.setup("fit")
                loader = dm.train_dataloader()
                count = 0
                start = time.perf_counter()
                for batch in loader:
                    count += batch["frames"].shape[0]
                seconds = time.perf_counter() - start
                _emit({"kind": "stream", "storage": storage, "num_workers": workers, "videos": count,
                       "seconds": round(seconds, 3), "videos_per_s": round(count / seconds, 1),
                       "frames_per_s": round(count * args.num_frames / seconds, 1),
                       "bytes_per_video": round(size / stored), **common}, args.out)


# ------------------------------------------------------------------------------------------------ prepare mode
def _settings(cfg: dict[str, Any]) -> dict[str, Any]:
    return {"tokenizer": "tiny", "source": "synthetic", "view": cfg["view"], "synthetic_rows": cfg["pairs"],
            "num_frames": cfg["num_frames"], "frame_size": cfg["frame_size"], "video_storage": cfg["storage"],
            "prepared_dir": cfg["prepared_dir"], "num_workers": 0}


def _prepare_child(cfg: dict[str, Any]) -> dict[str, Any]:
    """In the child: prepare ``cfg``'s view of the synthetic dataset (already generated) with ``prepare_workers``."""
    import resource

    from lit_safe.data_modules.safesora import SafeSoraDataModule

    dm = SafeSoraDataModule(**_settings(cfg), prepare_workers=cfg["prepare_workers"])
    start = time.perf_counter()
    report = dm.prepare(force=True)
    seconds = time.perf_counter() - start
    kept = {name: split.kept for name, split in report.splits.items()}
    per_row = 1 if cfg["view"] == "moderation" else 2
    videos = per_row * sum(kept.values())
    location = Path(dm.prepared_location())
    return {
        "prepare_workers": dm.prepare_workers,
        "block_rows": dm.prepare_block_rows,
        "decode_threads": dm.view.reader.threads,
        "rows_read": sum(split.rows_read for split in report.splits.values()),
        "kept": kept,
        "dropped": {name: dict(split.dropped) for name, split in report.splits.items()},
        "videos": videos,
        "prepare_s": round(seconds, 2),
        "videos_per_s": round(videos / seconds, 1),
        "chunk_bytes": sum(p.stat().st_size for p in location.rglob("chunk-*.bin")),
        "max_rss_self_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    from importlib import metadata

    import psutil

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), None) if Path("/proc/cpuinfo").is_file() else None
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True)
    return {"host": platform.node(), "cpu": cpu, "cores": os.cpu_count(),
            "cores_available": len(os.sched_getaffinity(0)),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1), "python": platform.python_version(),
            "torch": metadata.version("torch"), "av": metadata.version("av"), "litdata": metadata.version("litdata"),
            "commit": commit.stdout.strip() or None, "dirty": bool(dirty.stdout.strip())}


def run_child(cfg: dict[str, Any], threads: int, log: Path) -> dict[str, Any]:
    """Run one preparation child (under GNU time when present); its result with the peaks of its process tree."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    command = [sys.executable, str(Path(__file__).resolve()), CHILD_FLAG, json.dumps({**cfg, "threads": threads})]
    timing = log.with_suffix(".time")
    if TIME.is_file():
        command = [str(TIME), "-v", "-o", str(timing), *command]
    result, returncode, wall, peak_rss, peak_pss = run_sampled(command, env, log, RESULT_PREFIX, ROOT)
    if returncode != 0 or result is None:
        raise RuntimeError(f"the preparation child failed (exit {returncode}); its stderr is in {log}")
    time_v = None
    if timing.is_file():
        found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", timing.read_text())
        time_v = round(int(found.group(1)) / 1024, 1) if found else None
    return {**result, "wall_s": round(wall, 2), "time_v_max_rss_mib": time_v,
            "peak_tree_rss_mib": round(peak_rss / 2**20, 1), "peak_tree_pss_mib": round(peak_pss / 2**20, 1),
            "loadavg_1m": round(os.getloadavg()[0], 2)}


def prepare_mode(args: argparse.Namespace) -> None:
    from lit_safe.data_modules.safesora import SafeSoraDataModule

    host = machine()
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        for pairs in args.pairs:
            base = Path(tmp) / f"pairs-{pairs}"
            prepared = base / "prepared"
            SafeSoraDataModule(tokenizer="tiny", source="synthetic", synthetic_rows=pairs,
                               prepared_dir=str(prepared)).synthetic_dataset()  # generated once, outside the timing
            for storage in args.storages:
                for workers in args.prepare_workers:
                    shutil.rmtree(prepared, ignore_errors=True)
                    cfg = {"pairs": pairs, "view": args.view, "storage": storage, "prepare_workers": workers,
                           "num_frames": args.num_frames, "frame_size": args.frame_size,
                           "prepared_dir": str(prepared)}
                    result = run_child(cfg, args.threads, Path(tmp) / "child.log")
                    _emit({"kind": "prepare_memory", "pairs": pairs, "view": args.view, "storage": storage,
                           **result, "frame_size": args.frame_size, "num_frames": args.num_frames,
                           "threads": args.threads, "machine": host}, args.out)
            shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [CHILD_FLAG]:
        cfg = json.loads(argv[1])
        _quiet(cfg["threads"])
        print(RESULT_PREFIX + json.dumps(_prepare_child(cfg)), flush=True)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("stream", "prepare"), default="stream")
    parser.add_argument("--pairs", type=int, nargs="+", default=None,
                        help="pairs of the synthetic dataset (stream: one size, default 200; prepare: default 64 512)")
    parser.add_argument("--num-frames", type=int, default=8)
    parser.add_argument("--frame-size", type=int, default=224)
    parser.add_argument("--storages", nargs="+", default=["frames", "mp4"])
    parser.add_argument("--num-workers", nargs="+", type=int, default=[0, 2], help="stream: loader workers")
    parser.add_argument("--prepare-workers", nargs="+", type=int, default=[1, 2], help="prepare: worker processes")
    parser.add_argument("--view", default="preference", choices=("preference", "safety", "moderation"),
                        help="prepare: the view prepared")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work-dir", type=Path, default=None, help="prepare: where the datasets are written")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.mode == "stream":
        if args.pairs is not None and len(args.pairs) != 1:
            parser.error("--mode stream takes one --pairs size")
        args.pairs = 200 if args.pairs is None else args.pairs[0]
        _quiet(args.threads)
        stream_mode(args)
    else:
        args.pairs = args.pairs or [64, 512]
        prepare_mode(args)


if __name__ == "__main__":
    sys.exit(main())
