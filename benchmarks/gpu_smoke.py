"""GPU smoke run: the reward trainer with FSDP2 and bf16 on a real accelerator, with throughput and MFU.

Two parts, each printing one JSON line (and appending it to ``--out``):

1. ``quickstart``: ``lit-safe fit`` on ``configs/quickstart/reward.yaml`` + ``configs/trainer/fsdp2.yaml``
   (ModelParallelStrategy, ``fully_shard`` per block, bf16-mixed) on the GPUs present; reports held-out accuracy.
2. ``throughput``: a randomly initialised Llama of about 1.0B parameters, saved as a local Hugging Face checkpoint
   and loaded through the same path as a hub model, trained as a reward model with FSDP2 + bf16 for a fixed number
   of steps on synthetic pairs; reports pairs/s, real tokens/s, padding share, data-wait share, peak GPU memory,
   the measured bf16 matmul peak and MFU = 6 * N * real tokens/s / peak.

    python benchmarks/gpu_smoke.py --out gpu_smoke.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def emit(record: dict, out: Path | None) -> None:
    line = json.dumps(record, sort_keys=True)
    print(line, flush=True)
    if out is not None:
        with out.open("a") as f:
            f.write(line + "\n")


def bf16_peak_tflops(n: int = 8192, repeats: int = 10) -> float:
    import torch

    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12


def quickstart(work: Path, out: Path | None, devices: int) -> None:
    from lit_safe.cli import run

    cli = run([
        "fit", "--config", str(ROOT / "configs/quickstart/reward.yaml"),
        "--config", str(ROOT / "configs/trainer/fsdp2.yaml"),
        "--trainer.devices", str(devices), "--trainer.enable_progress_bar", "false",
        "--data.init_args.prepared_dir", str(work / "prepared"),
    ])
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("val/")}
    emit({"part": "quickstart", "strategy": "fsdp2", "precision": "bf16-mixed", "devices": devices,
          "global_step": cli.trainer.global_step, **metrics}, out)


def throughput(
    work: Path, out: Path | None, devices: int, steps: int, batch_size: int, pack_pairs: bool, warmup: int = 5
) -> None:
    import torch
    from lightning.pytorch import Callback, Trainer, seed_everything
    from lightning.pytorch.strategies import ModelParallelStrategy
    from transformers import AutoModel, LlamaConfig

    from lit_safe.data_modules.pku_saferlhf import PKUSafeRLHFDataModule
    from lit_safe.models.tokenizer import load_tokenizer
    from lit_safe.modules.reward import DEFAULT_OPTIMIZER, RewardModule

    class Window(Callback):
        """Counts tokens and wall time of the steps after ``warmup`` (GPU synchronised at both ends)."""

        def __init__(self) -> None:
            self.t0 = self.last_end = None
            self.real = self.padded = 0
            self.wait = 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            now = time.perf_counter()
            if self.t0 is None and trainer.global_step == warmup:
                torch.cuda.synchronize()
                self.t0 = now = time.perf_counter()
            elif self.t0 is not None and self.last_end is not None:
                self.wait += now - self.last_end

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if self.t0 is not None:
                self.real += int(batch["attention_mask"].sum())
                self.padded += batch["attention_mask"].numel()
                self.last_end = time.perf_counter()

        def on_train_end(self, trainer, pl_module) -> None:
            torch.cuda.synchronize()
            self.elapsed = time.perf_counter() - self.t0

    seed_everything(0)
    tokenizer = load_tokenizer("small")
    path = work / "llama-1b"
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=2048, intermediate_size=5632, num_hidden_layers=20,
                         num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=2048,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    if not path.exists():
        AutoModel.from_config(config).save_pretrained(path)
        tokenizer.save_pretrained(path)

    rows = max(4000, (steps + warmup + 5) * batch_size * devices * 2)
    data = PKUSafeRLHFDataModule(tokenizer=str(path), synthetic_rows=rows, max_length=512, batch_size=batch_size,
                                 num_workers=2, group_size=64, pad_to_multiple_of=8, pack_pairs=pack_pairs,
                                 prepared_dir=str(work / "prepared"))
    model = RewardModule(backbone=str(path), optimizer=replace(DEFAULT_OPTIMIZER, lr=1e-5, warmup_ratio=0.0))
    window = Window()
    trainer = Trainer(accelerator="gpu", devices=devices, precision="bf16-mixed",
                      strategy=ModelParallelStrategy(data_parallel_size=devices, tensor_parallel_size=1),
                      max_steps=warmup + steps, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, limit_val_batches=0, num_sanity_val_steps=0, callbacks=[window])
    torch.cuda.reset_peak_memory_stats()
    trainer.fit(model, data)
    params = sum(p.numel() for p in model.model.parameters())  # DTensor numel is the global size
    peak = bf16_peak_tflops()
    tokens_per_s = window.real * devices / window.elapsed
    emit({"part": "throughput", "model": "llama-1.0b (random init, local HF dir)", "strategy": "fsdp2",
          "precision": "bf16-mixed", "devices": devices, "batch_pairs_per_device": batch_size, "timed_steps": steps,
          "pack_pairs": pack_pairs,
          "params": params, "pairs_per_s": steps * batch_size * devices / window.elapsed,
          "real_tokens_per_s": tokens_per_s, "padding_share": 1 - window.real / window.padded,
          "data_wait_share": window.wait / window.elapsed,
          "peak_gpu_mem_gib": torch.cuda.max_memory_allocated() / 2**30, "bf16_matmul_peak_tflops": peak,
          "mfu": 6 * params * tokens_per_s / (peak * 1e12 * devices),
          "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="several throughput runs")
    parser.add_argument("--pack-pairs", type=int, nargs="+", default=[1], help="1 packed, 0 unpacked; both: 1 0")
    parser.add_argument("--parts", nargs="+", default=["quickstart", "throughput"])
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("gpu_smoke.py needs a CUDA GPU")
    devices = torch.cuda.device_count()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "quickstart" in args.parts:
            quickstart(work, args.out, devices)
        if "throughput" in args.parts:
            for batch_size in args.batch_sizes or [args.batch_size]:
                for pack in args.pack_pairs:
                    throughput(work, args.out, devices, args.steps, batch_size, bool(pack))


if __name__ == "__main__":
    main()
