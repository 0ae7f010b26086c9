"""Video data loading: decode, prepare and stream SafeSora pairs, frames stored decoded vs as mp4 clips (issue 5).

For each ``--storage`` (``frames``: decoded uint8 frames in the litdata chunks; ``mp4``: an H.264 clip of exactly the
sampled, resized frames, decoded by the loader workers) and each ``--num-workers``, it prepares the ``preference``
view of a synthetic SafeSora dataset (``--pairs`` pairs, ``--num-frames`` x ``--frame-size``) and streams one epoch
of the training split through ``SafeSoraDataModule.train_dataloader()``, the loader training uses. It also times
the raw decode of the source mp4 files (PyAV, uniform sampling, resize), i.e. what decoding on the fly from the
original videos would cost. One JSON line per measurement on stdout (and appended to ``--out``):

    python benchmarks/video_loading.py                                # 224 px, 8 frames, 200 pairs
    python benchmarks/video_loading.py --frame-size 32 --pairs 400 --num-workers 0 2

Fields: ``kind`` (``decode_source``, ``prepare``, ``stream``), ``storage``, ``num_workers``, ``videos``,
``frames_per_s`` (sampled frames delivered per second), ``videos_per_s``, ``seconds``, ``bytes_per_video`` (the
prepared chunks' size per stored video), ``frame_size``, ``num_frames``, ``threads``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def _emit(record: dict, out: Path | None) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a") as f:
            f.write(line + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--num-frames", type=int, default=8)
    parser.add_argument("--frame-size", type=int, default=224)
    parser.add_argument("--storages", nargs="+", default=["frames", "mp4"])
    parser.add_argument("--num-workers", nargs="+", type=int, default=[0, 2])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
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
            for workers in args.num_workers:
                dm = SafeSoraDataModule(tokenizer="tiny", source="synthetic", view="preference",
                                        synthetic_rows=args.pairs, num_frames=args.num_frames,
                                        frame_size=args.frame_size, prepared_dir=str(prepared / f"{storage}-{workers}"),
                                        video_storage=storage,
                                        num_workers=workers, batch_size=args.batch_size, val_fraction=0.0)
                start = time.perf_counter()
                report = dm.prepare()
                seconds = time.perf_counter() - start
                stored = 2 * sum(split.kept for split in report.splits.values())
                size = sum(p.stat().st_size for p in Path(dm.prepared_location()).rglob("chunk-*.bin"))
                _emit({"kind": "prepare", "storage": storage, "num_workers": workers, "videos": stored,
                       "seconds": round(seconds, 3), "videos_per_s": round(stored / seconds, 1),
                       "frames_per_s": round(stored * args.num_frames / seconds, 1),
                       "bytes_per_video": round(size / stored), **common}, args.out)
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


if __name__ == "__main__":
    sys.exit(main())
