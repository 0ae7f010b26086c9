"""Reward-model training throughput and MFU on the CPU (issue 2, item 10).

Trains ``RewardModule(backbone=...)`` on ``PKUSafeRLHFDataModule(source=--data)`` with a real Lightning
``Trainer`` (cpu, fp32, no logger, no checkpointing, no progress bar) for ``--warmup-steps`` untimed optimiser
steps and then ``--steps`` timed ones, once per (backbone, threads, layout, group size, repeat), each run in its own
subprocess so that thread settings and peak RSS are clean. The layout is the data module's ``pack_pairs``
(``unpacked``: ``(2B, L)`` rows; ``packed``: one row per pair, the shared prompt computed once). Every run prints
one JSON line (and appends it to ``--out``):

    python benchmarks/reward_throughput.py        # tiny + small, 1 and 2 threads, unpacked:1/64 and packed:64
    python benchmarks/reward_throughput.py --backbones small --threads 1 --group-sizes 64 --repeats 3
    python benchmarks/reward_throughput.py --backbones small --threads 1 --layouts packed --group-sizes 64 --profile
    python benchmarks/reward_throughput.py --backbones path/to/my-model --data my_pairs.jsonl --prompt-template chat

A backbone is a preset, a local Hugging Face model folder or a hub id, and the data tokenizer is its own; ``--data``
is any source the DataModule reads (a JSONL/parquet file in any accepted preference format, a folder, a hub id).

The fields are described in ``benchmarks/README.md``. MFU = 6 * N * real tokens/s / peak, where the peak is the
best fp32 ``torch.mm`` rate of a square ``--matmul-n`` matrix measured in the same process at the same thread
count (before and after training; the higher one is used, which keeps MFU conservative). ``mfu`` counts every
parameter of the score model (the issue's definition), ``mfu_nonembed`` leaves out the input embedding, whose
lookup is no matmul: the honest figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD_FLAG = "--_child"
RESULT_PREFIX = "@@RESULT "


# ------------------------------------------------------------------------------------------------------ the child
def _child(cfg: dict) -> dict:
    threads = int(cfg["threads"])
    # Thread settings must be in place before torch is imported (the parent also sets them in the environment).
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import resource
    import warnings

    import torch

    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore")

    from lightning.pytorch import Callback, Trainer, seed_everything

    from lit_safe.data_modules.pku_saferlhf import PKUSafeRLHFDataModule
    from lit_safe.modules.reward import RewardModule

    def matmul_peak(n: int, repeats: int) -> float:
        """Best fp32 GFLOP/s of an n x n by n x n ``torch.mm`` (2 n^3 flops) over ``repeats`` timed runs."""
        a, b = torch.randn(n, n), torch.randn(n, n)
        out = torch.empty(n, n)
        torch.mm(a, b, out=out)  # warm-up (MKL/oneDNN kernel selection, page faults)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b, out=out)
            best = min(best, time.perf_counter() - start)
        return 2 * n**3 / best / 1e9

    class StepTimer(Callback):
        """Wall time of the timed steps, split into data wait, forward, backward and optimiser phases."""

        def __init__(self, warmup: int, profile: bool) -> None:
            self.warmup = warmup
            self.profile = profile
            self.prof = None
            self.t = {"wait": 0.0, "forward": 0.0, "backward": 0.0, "optimizer": 0.0}
            self.real = self.padded = self.pairs = self.scored = self.batches = 0
            self.first = self.last_end = None
            self._mark = None

        def on_train_start(self, trainer, pl_module):
            self.last_end = time.perf_counter()

        def _timed(self, trainer) -> bool:
            return trainer.global_step >= self.warmup

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            now = time.perf_counter()
            if self._timed(trainer):
                if self.first is None:
                    self.first = self.last_end  # the end of the last warm-up step
                    if self.profile:
                        self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
                        self.prof.__enter__()
                        now = time.perf_counter()
                        self.first = now
                self.t["wait"] += now - self.last_end
            self._mark = now

        def _phase(self, trainer, name):
            now = time.perf_counter()
            if self._timed(trainer) and self._mark is not None:
                self.t[name] += now - self._mark
            self._mark = now

        def on_before_backward(self, trainer, pl_module, loss):
            self._phase(trainer, "forward")  # zero_grad + training_step (forward, loss, metrics, logging)

        def on_after_backward(self, trainer, pl_module):
            self._phase(trainer, "backward")

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            # global_step was incremented by the optimiser step that just ran: compare with warmup + 1.
            now = time.perf_counter()
            if trainer.global_step > self.warmup:
                self.t["optimizer"] += now - self._mark  # clipping, AdamW, scheduler bookkeeping, hooks
                mask = batch["attention_mask"]
                self.real += int(mask.sum())
                self.padded += int(mask.numel())
                self.pairs += int(batch["row"].numel())
                if "end_index" in batch:  # packed: (B, 2) ends; a sequence's length is its end position + 1
                    self.scored += int((batch["position_ids"].gather(1, batch["end_index"]) + 1).sum())
                else:
                    self.scored += int(mask.sum())
                self.batches += 1
                self.end = now
            self.last_end = now

        def on_train_end(self, trainer, pl_module):
            if self.prof is not None:
                self.prof.__exit__(None, None, None)

    if cfg.get("arch"):  # --arch: try other dimensions for a preset without editing backbone.py
        from lit_safe.models import backbone

        if cfg["backbone"] not in backbone.PRESETS:
            raise ValueError(f"--arch changes a preset's dimensions; {cfg['backbone']!r} is not a preset")
        backbone.PRESETS[cfg["backbone"]] = {**backbone.PRESETS[cfg["backbone"]], **cfg["arch"]}
    seed_everything(int(cfg["seed"]), verbose=False)
    peak_before = matmul_peak(int(cfg["matmul_n"]), int(cfg["matmul_repeats"]))

    layout = cfg["layout"]
    if layout not in ("packed", "unpacked"):
        raise ValueError(f"unknown layout {layout!r}")
    data = PKUSafeRLHFDataModule(
        tokenizer=cfg["backbone"],
        source=cfg["data"],
        prompt_template=cfg["prompt_template"],
        synthetic_rows=int(cfg["synthetic_rows"]),
        max_length=int(cfg["max_length"]),
        batch_size=int(cfg["batch_size"]),
        num_workers=int(cfg["num_workers"]),
        group_size=int(cfg["group_size"]),
        pack_pairs=layout == "packed",
        prepared_dir=cfg["prepared_dir"],
        seed=int(cfg["seed"]),
    )
    module = RewardModule(backbone=cfg["backbone"])
    timer = StepTimer(int(cfg["warmup_steps"]), bool(cfg["profile"]))
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        precision="32-true",
        max_steps=int(cfg["warmup_steps"]) + int(cfg["steps"]),
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(module, datamodule=data)
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    peak_after = matmul_peak(int(cfg["matmul_n"]), int(cfg["matmul_repeats"]))
    peak = max(peak_before, peak_after)

    if timer.batches != int(cfg["steps"]):
        raise RuntimeError(f"timed {timer.batches} steps, expected {cfg['steps']} (too few synthetic rows?)")
    model = module.model
    params = sum(p.numel() for p in model.parameters())
    embed = model.backbone.get_input_embeddings().weight.numel()
    total_s = timer.end - timer.first
    real_tps, padded_tps = timer.real / total_s, timer.padded / total_s
    gflop = lambda n, tps: 6 * n * tps / 1e9  # noqa: E731
    config = model.backbone.config
    result = {
        "backbone": cfg["backbone"],
        "data": cfg["data"],
        "prompt_template": cfg["prompt_template"],
        "threads": threads,
        "group_size": int(cfg["group_size"]),
        "layout": layout,
        "num_workers": int(cfg["num_workers"]),
        "repeat": int(cfg["repeat"]),
        "steps": timer.batches,
        "warmup_steps": int(cfg["warmup_steps"]),
        "batch_pairs": int(cfg["batch_size"]),
        "max_length": int(cfg["max_length"]),
        "arch": {
            "hidden": config.hidden_size,
            "intermediate": config.intermediate_size,
            "layers": config.num_hidden_layers,
            "heads": config.num_attention_heads,
            "kv_heads": config.num_key_value_heads,
            "vocab": config.vocab_size,
        },
        "params": params,
        "params_nonembed": params - embed,
        "pairs_per_s": round(timer.pairs / total_s, 3),
        "real_tokens_per_s": round(real_tps, 1),
        "padded_tokens_per_s": round(padded_tps, 1),
        "scored_tokens_per_s": round(timer.scored / total_s, 1),
        "padding_share": round(1 - timer.real / timer.padded, 4),
        "step_s": round(total_s / timer.batches, 4),
        "data_wait_share": round(timer.t["wait"] / total_s, 4),
        "phase_share": {k: round(v / total_s, 4) for k, v in timer.t.items() if k != "wait"},
        "peak_rss_mib": round(rss_mib, 1),
        "matmul_peak_gflops": round(peak, 2),
        "matmul_peak_before_after": [round(peak_before, 2), round(peak_after, 2)],
        "matmul_n": int(cfg["matmul_n"]),
        "achieved_gflops": round(gflop(params, real_tps), 2),
        "mfu": round(gflop(params, real_tps) / peak, 4),
        "mfu_nonembed": round(gflop(params - embed, real_tps) / peak, 4),
        "hfu_nonembed": round(gflop(params - embed, padded_tps) / peak, 4),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
        "profile": cfg["profile"],
        "arch_override": cfg.get("arch"),
    }
    if timer.prof is not None:
        result["profile_ops"] = _profile_summary(timer.prof, total_s * 1e6)
    return result


# Categories of aten ops for the profile summary (self CPU time, so nested ops are not counted twice).
CATEGORIES = (
    ("gemm", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addmv", "aten::mv")),
    ("attention", ("flash_attention", "scaled_dot_product", "_efficient_attention", "aten::_softmax")),
    ("embedding", ("embedding",)),
    ("optimizer", ("_foreach", "_fused_adam", "aten::lerp", "aten::addcmul", "aten::addcdiv", "aten::sqrt",
                   "aten::norm", "aten::linalg_vector_norm", "aten::clamp", "aten::stack")),
    ("silu", ("silu",)),
    ("norm_pow_mean_rsqrt", ("aten::pow", "aten::mean", "aten::rsqrt")),
    ("elementwise", ("aten::mul", "aten::add", "aten::sub", "aten::neg", "aten::div", "aten::cat", "aten::copy_",
                     "aten::fill_", "aten::zero_", "aten::where", "aten::masked_fill", "aten::sum", "aten::cos",
                     "aten::sin", "aten::to", "aten::_to_copy", "aten::index", "aten::gather", "aten::scatter",
                     "aten::clone", "aten::contiguous", "aten::empty", "aten::ones", "aten::arange", "aten::expand",
                     "aten::view", "aten::reshape", "aten::transpose", "aten::t", "aten::slice", "aten::unsqueeze",
                     "aten::squeeze", "aten::permute", "aten::as_strided", "aten::select", "aten::detach",
                     "aten::empty_like", "aten::zeros", "aten::new_", "aten::logsigmoid", "aten::log_sigmoid")),
)


def _profile_summary(prof, total_us: float) -> dict:
    """Self CPU time per category (share of the timed wall time) and the 15 most expensive ops."""
    shares: dict[str, float] = {}
    ops = []
    for event in prof.key_averages():
        self_us = event.self_cpu_time_total
        if self_us <= 0:
            continue
        ops.append((self_us, event.key, event.count))
        category = next((c for c, keys in CATEGORIES if any(k in event.key for k in keys)), "other")
        shares[category] = shares.get(category, 0.0) + self_us
    ops.sort(reverse=True)
    return {
        "category_share": {k: round(v / total_us, 4) for k, v in sorted(shares.items(), key=lambda kv: -kv[1])},
        "top_ops": [{"op": k, "share": round(us / total_us, 4), "calls": n} for us, k, n in ops[:15]],
    }


# ----------------------------------------------------------------------------------------------------- the parent
def _run(cfg: dict, verbose: bool) -> dict:
    threads = str(cfg["threads"])
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), CHILD_FLAG, json.dumps(cfg)],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"benchmark run failed (exit {proc.returncode}): {cfg}")
    if verbose:
        sys.stderr.write(proc.stderr)
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def main(argv: list[str] | None = None) -> None:
    from lit_safe.models.text import SAFE_RLHF_TEMPLATE

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=["tiny", "small"],
                        help="presets, local model folders or hub ids (each run's data uses that model's tokenizer)")
    parser.add_argument("--data", default="synthetic", help="the data source (default: the synthetic PKU-SafeRLHF)")
    parser.add_argument("--prompt-template", default=SAFE_RLHF_TEMPLATE,
                        help="the conversation template ({prompt}), or 'chat' for the tokenizer's chat template")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--group-sizes", nargs="+", type=int, default=None,
                        help="length-grouping pool sizes in batches (1: no grouping). Without --layouts and "
                             "--group-sizes the runs are unpacked:1, unpacked:64 and packed:64; with either, the "
                             "product of both (default layouts: unpacked packed; group sizes: 1 64)")
    parser.add_argument("--layouts", nargs="+", default=None, choices=["unpacked", "packed"],
                        help="the data module's pack_pairs: unpacked (2B, L) rows, or one row per pair with the "
                             "shared prompt computed once")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed optimiser steps per run (default: 30 for tiny, 5 for other presets)")
    parser.add_argument("--warmup-steps", type=int, default=1, help="untimed optimiser steps before timing")
    parser.add_argument("--repeats", type=int, default=1, help="runs per configuration (report best and median)")
    parser.add_argument("--batch-size", type=int, default=16, help="preference pairs per batch")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--num-workers", type=int, default=0,
                        help="litdata loader workers (0: read in the training process; see README)")
    parser.add_argument("--synthetic-rows", type=int, default=4000)
    parser.add_argument("--matmul-n", type=int, default=2048, help="size of the square fp32 matmul for the peak")
    parser.add_argument("--matmul-repeats", type=int, default=5)
    parser.add_argument("--prepared-dir", default=None, help="where to prepare the data (default: a temp dir)")
    parser.add_argument("--arch", type=json.loads, default=None,
                        help="JSON overriding preset dimensions for exploration, e.g. "
                             "'{\"hidden_size\": 1024, \"num_hidden_layers\": 2}' (applies to every preset run)")
    parser.add_argument("--profile", action="store_true", help="profile the timed steps per op (slower)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default=None, help="append the JSON lines to this file")
    parser.add_argument("--verbose", action="store_true", help="show the runs' stderr")
    args = parser.parse_args(argv)

    if args.layouts is None and args.group_sizes is None:
        variants = [("unpacked", 1), ("unpacked", 64), ("packed", 64)]
    else:
        variants = [(lay, g) for lay in args.layouts or ["unpacked", "packed"] for g in args.group_sizes or [1, 64]]
    with tempfile.TemporaryDirectory(prefix="reward_throughput_") as tmp:
        prepared = args.prepared_dir or tmp  # shared by the runs: each backbone's data is prepared once
        results = []
        for backbone in args.backbones:
            steps = args.steps if args.steps is not None else (30 if backbone == "tiny" else 5)
            for threads in args.threads:
                for layout, group in variants:
                    for repeat in range(args.repeats):
                        cfg = dict(
                            backbone=backbone, data=args.data, prompt_template=args.prompt_template,
                            threads=threads, group_size=group, layout=layout, repeat=repeat,
                            steps=steps,
                            warmup_steps=args.warmup_steps, batch_size=args.batch_size,
                            max_length=args.max_length, num_workers=args.num_workers,
                            synthetic_rows=args.synthetic_rows, matmul_n=args.matmul_n,
                            matmul_repeats=args.matmul_repeats, prepared_dir=prepared, profile=args.profile,
                            seed=args.seed, arch=args.arch,
                        )
                        result = _run(cfg, args.verbose)
                        line = json.dumps(result)
                        print(line, flush=True)
                        if args.out:
                            with open(args.out, "a") as f:
                                f.write(line + "\n")
                        results.append(result)
        if args.repeats > 1:
            _summary(results)


def _summary(results: list[dict]) -> None:
    """Best and median MFU / pairs/s per configuration, on stderr (the JSON lines stay on stdout)."""
    import statistics

    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["backbone"], r["threads"], r["layout"], r["group_size"]), []).append(r)
    for (backbone, threads, layout, group), runs in groups.items():
        stats = {}
        for key in ("mfu", "mfu_nonembed", "pairs_per_s"):
            values = [r[key] for r in runs]
            stats[key] = f"best {max(values):.3f} median {statistics.median(values):.3f}"
        sys.stderr.write(
            f"{backbone:>6} threads={threads} {layout:>8} group={group:<3} runs={len(runs)}  "
            + "  ".join(f"{k} {v}" for k, v in stats.items())
            + "\n"
        )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == CHILD_FLAG:
        print(RESULT_PREFIX + json.dumps(_child(json.loads(sys.argv[2]))), flush=True)
    else:
        main()
