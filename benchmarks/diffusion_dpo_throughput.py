"""Diffusion-DPO training throughput: pairs/s and the time split of one step (issue 5).

Builds ``DiffusionDPOModule`` (``--model``: ``tiny`` or a diffusers text-to-video checkpoint) and times full
optimiser steps on random uint8 video pairs of the configured size, outside Lightning's loop so that the split can be
measured: ``encode`` (text encoder + VAE, frame by frame, no grad), ``reference`` (the frozen denoiser's forward),
``policy`` (forward + backward) and ``optimizer``. Variants: ``--references copy lora`` and ``--objectives dpo sft``.
One JSON line per configuration on stdout (and appended to ``--out``):

    python benchmarks/diffusion_dpo_throughput.py                          # tiny, 2 pairs x 8 frames x 32 px
    python benchmarks/diffusion_dpo_throughput.py --frames 16 --size 64 --pairs 1 --steps 3
    python benchmarks/diffusion_dpo_throughput.py --model ali-vilab/text-to-video-ms-1.7b --size 256 --device cuda \\
        --dtype bfloat16 --pairs 1 --frames 16                              # on a GPU, with the real checkpoint

Fields: ``model``, ``objective``, ``reference``, ``pairs``, ``frames``, ``size``, ``device``, ``dtype``,
``step_s`` (median), ``pairs_per_s``, ``frames_per_s`` (video frames through the policy per second, both videos),
``split_s`` (median seconds per part), ``peak_mem_gb`` (CUDA only), ``unet_params``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
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
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--objectives", nargs="+", default=["dpo", "sft"])
    parser.add_argument("--references", nargs="+", default=["copy", "lora"])
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import warnings

    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    from lit_safe.losses import diffusion_dpo_loss
    from lit_safe.models.video_diffusion import pair_noise
    from lit_safe.modules.diffusion_dpo import DiffusionDPOModule

    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    for objective in args.objectives:
        for reference in args.references if objective == "dpo" else ["none"]:
            module = DiffusionDPOModule(backbone=args.model, objective=objective,
                                        reference=reference if reference != "none" else "copy")
            module.configure_model()
            module.to(device)
            model = module.model
            trainable = [p for p in module.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(trainable, lr=1e-5)
            b = args.pairs
            generator = torch.Generator().manual_seed(0)
            frames = torch.randint(0, 256, (2 * b, args.frames, 3, args.size, args.size), dtype=torch.uint8,
                                   generator=generator).to(device)
            ids, mask = model.tokenize(["a red square moving right in a park"] * b)
            ids, mask = ids.to(device), mask.to(device)
            times: dict[str, list[float]] = {"encode": [], "reference": [], "policy": [], "optimizer": [], "step": []}

            def tick() -> float:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                return time.perf_counter()

            for step in range(args.warmup + args.steps):
                t0 = tick()
                with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                    text = model.encode_text(ids, mask)
                    latents = model.encode_video(frames)
                t1 = tick()
                if objective == "dpo":
                    noise, t = pair_noise(latents[:b], model.num_train_timesteps)
                    noise, t = noise.to(device), t.to(device)
                else:
                    latents = latents[:b]
                    noise = torch.randn(latents.shape, device=device)
                    t = torch.randint(0, model.num_train_timesteps, (b,), device=device)
                noisy, target = model.noise_latents(latents, noise, t)
                texts = text.repeat(2, 1, 1) if objective == "dpo" else text
                with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                    if objective == "dpo":
                        with torch.no_grad():
                            if reference == "lora":
                                with model.adapters_disabled():
                                    ref = model.denoise(noisy, t, texts).float()
                            else:
                                ref = model.denoise(noisy, t, texts, unet=module.reference).float()
                        t2 = tick()
                        pred = model.denoise(noisy, t, texts).float()
                        err = ((pred - target) ** 2).flatten(1).mean(1)
                        ref_err = ((ref - target) ** 2).flatten(1).mean(1)
                        loss, _ = diffusion_dpo_loss(err[:b], err[b:], ref_err[:b], ref_err[b:], beta=5000.0)
                    else:
                        t2 = tick()
                        loss = ((model.denoise(noisy, t, texts).float() - target) ** 2).mean()
                loss.backward()
                t3 = tick()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                t4 = tick()
                if step >= args.warmup:
                    for name, value in (("encode", t1 - t0), ("reference", t2 - t1), ("policy", t3 - t2),
                                        ("optimizer", t4 - t3), ("step", t4 - t0)):
                        times[name].append(value)
            step_s = statistics.median(times["step"])
            videos = 2 * b if objective == "dpo" else b
            _emit({
                "model": args.model, "objective": objective, "reference": reference, "pairs": b,
                "frames": args.frames, "size": args.size, "device": str(device), "dtype": args.dtype,
                "threads": args.threads, "steps": args.steps, "step_s": round(step_s, 4),
                "pairs_per_s": round(b / step_s, 3), "frames_per_s": round(videos * args.frames / step_s, 2),
                "split_s": {k: round(statistics.median(v), 4) for k, v in times.items() if k != "step"},
                "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None,
                "unet_params": sum(p.numel() for p in model.unet.parameters()),
            }, args.out)


if __name__ == "__main__":
    sys.exit(main())
