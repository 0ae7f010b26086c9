"""PPO-Lagrangian (or plain PPO) throughput on the CPU: rollouts/s, peak memory, and where an iteration's time goes.

Builds randomly initialised ``--preset`` networks (actor, and reward and cost score models of the same preset; the
reference and the critics are copies, as in a real run), or takes the user's own (``--actor``, ``--reward-model``,
``--cost-model``: local folders or hub ids; any Hugging Face sequence-classification reward model works), and runs
``PPOLagrangianModule`` with ``--algorithm`` (``ppo_lagrangian``: reward and cost models, two critics, lambda;
``ppo``: the reward model and its critic, and a cost model only if ``--cost-model`` is given, for the logs) through a
real Lightning ``Trainer`` (cpu, fp32, TensorBoard logging every step, no checkpointing, no progress bar) on the
prompts of ``--data`` (default: synthetic) for ``--warmup`` + ``--iterations`` iterations (rollouts) of ``--batch``
prompts, each ``--ppo-epochs`` x ``--num-minibatches`` actor updates. A random actor rarely emits EOS, so every
response has ``--max-new-tokens`` tokens: the figures are for full-length responses.

One JSON line (also appended to ``--out``) with:

- wall clock, measured by a callback between the ``on_train_batch_end`` of consecutive training steps (one step is one
  iteration: generation, scoring, lambda, the updates, logging, and the loop's own work between steps), over the
  timed iterations: ``rollouts_per_s`` (prompts per second) and ``wall_seconds_per_iteration``; beside them
  ``cpu_rollouts_per_s`` (prompts per CPU second of the process, which other jobs on a shared machine move less) and
  ``best_iteration_rollouts_per_s``; and the peak RSS of the process (``ru_maxrss``, taken right after training);
- the phase split that the module logs (``perf/*``): medians over the timed iterations of the seconds spent
  generating (sampling with the KV cache), scoring (the rest of the rollout: the reference, reward and cost models,
  and the actor and critics where the module runs them there, forward over the whole sequences, then GAE) and
  updating (the actor and critic steps), their shares, rollout tokens/s and
  update samples/s (``seconds_per_iteration`` is their sum, without logging and the loop);
- checks: the iterations and actor updates (``global_step``) run, and whether the actor's weights moved.

    python benchmarks/ppo_throughput.py                       # small preset, 1 thread, 16 prompts x 64 tokens
    python benchmarks/ppo_throughput.py --preset tiny --threads 2 --algorithm ppo
    python benchmarks/ppo_throughput.py --actor my-sft-model --reward-model my-rm --cost-model my-cm --data my.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
from pathlib import Path

from ppo_settings import add_iteration_settings  # benchmarks/ppo_settings.py: a script's own folder is on sys.path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="small", choices=("tiny", "small"))
    parser.add_argument("--algorithm", default="ppo_lagrangian", choices=("ppo_lagrangian", "ppo"),
                        help="ppo_lagrangian (reward and cost models, two critics, lambda) or ppo (reward model and "
                             "its critic; a cost model only if --cost-model is given, scoring for the logs)")
    parser.add_argument("--actor", default=None, help="the policy (default: a random --preset actor)")
    parser.add_argument("--reward-model", default=None, help="the reward model (default: a random --preset one)")
    parser.add_argument("--cost-model", default=None,
                        help="the cost model (default: a random --preset one for ppo_lagrangian, none for ppo)")
    parser.add_argument("--data", default="synthetic", help="the prompts' source (any PKU-SafeRLHF DataModule source)")
    parser.add_argument("--prompt-template", default=None, help="the data's template (e.g. chat; default: Safe RLHF)")
    add_iteration_settings(parser, batch=16, max_new_tokens=64, ppo_epochs=2, num_minibatches=2, iterations=3)
    parser.add_argument("--reference", default="copy", choices=("copy", "lora"),
                        help="the module's reference option: a frozen copy, or LoRA adapters switched off")
    parser.add_argument("--lora-rank", type=int, default=8, help="LoRA rank with --reference lora")
    parser.add_argument("--shared-critic", action="store_true",
                        help="(ppo_lagrangian) the cost values as a second head on the reward critic")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ppo_throughput_cpu.jsonl"))
    args = parser.parse_args()
    if args.warmup < 0 or args.iterations < 1:
        parser.error("--warmup must be >= 0 and --iterations >= 1")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import resource
    import time

    import lightning
    import torch
    import transformers
    import yaml
    from lightning.pytorch import Callback
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    torch.set_num_threads(args.threads)
    from lit_safe.cli import LitSafeCLI, quiet_known_noise
    from lit_safe.models.backbone import load_backbone
    from lit_safe.models.score_model import ScoreModel
    from lit_safe.models.tokenizer import load_tokenizer

    class IterationClock(Callback):
        """Wall time at the start of training and at the end of every training step (one PPO iteration), with the
        actor updates (``global_step``) and prompts done by then."""

        def __init__(self) -> None:
            self.start: float | None = None
            self.cpu_start: float | None = None
            self.ends: list[float] = []
            self.cpu_ends: list[float] = []
            self.steps: list[int] = []
            self.prompts: list[int] = []

        def on_train_start(self, trainer, pl_module) -> None:
            self.start, self.cpu_start = time.perf_counter(), time.process_time()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.ends.append(time.perf_counter())
            self.cpu_ends.append(time.process_time())
            self.steps.append(trainer.global_step)
            self.prompts.append(int(outputs["rollout"].sequences.size(0)))

    work = Path(tempfile.mkdtemp(prefix="ppo_bench_"))
    tokenizer = load_tokenizer(args.preset)
    uses_cost = args.algorithm == "ppo_lagrangian" or args.cost_model is not None
    networks = {"actor": args.actor, "reward": args.reward_model, "cost": args.cost_model}
    if args.actor is None:
        torch.manual_seed(0)
        load_backbone(args.preset, tokenizer, causal_lm=True).save_pretrained(work / "actor")
        tokenizer.save_pretrained(work / "actor")
        networks["actor"] = str(work / "actor")
    for seed, kind in ((1, "reward"), (2, "cost")):
        if networks[kind] is None and (kind == "reward" or uses_cost):
            torch.manual_seed(seed)
            ScoreModel(load_backbone(args.preset, tokenizer), score_type=kind).save_pretrained(work / kind,
                                                                                                tokenizer=tokenizer)
            networks[kind] = str(work / kind)
    config = yaml.safe_load((ROOT / "configs" / "quickstart" / "ppo_lagrangian.yaml").read_text())
    updates_per_iteration = args.ppo_epochs * args.num_minibatches
    iterations = args.warmup + args.iterations
    config["trainer"].update({"max_steps": iterations * updates_per_iteration, "max_epochs": -1,
                              "enable_progress_bar": False, "enable_checkpointing": False})
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(work / "runs")
    config["trainer"]["callbacks"] = []
    config["model"]["init_args"].update({
        "backbone": networks["actor"], "reward_model": networks["reward"], "cost_model": networks["cost"],
        "algorithm": args.algorithm, "max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
        "top_p": 1.0, "ppo_epochs": args.ppo_epochs, "num_minibatches": args.num_minibatches,
        "reference": args.reference, "lora_rank": args.lora_rank, "shared_critic": args.shared_critic,
    })
    # every prompt of --data trains (nothing carved for validation or test): the run needs iterations x batch
    config["data"]["init_args"].update({"source": args.data, "batch_size": args.batch, "num_workers": 0,
                                        "val_fraction": 0.0, "test_split": None,
                                        "prepared_dir": str(work / "prepared")})
    if args.prompt_template is not None:
        config["data"]["init_args"]["prompt_template"] = args.prompt_template
    (work / "ppo.yaml").write_text(yaml.safe_dump(config))
    quiet_known_noise()
    cli = LitSafeCLI(args=["--config", str(work / "ppo.yaml")], run=False)
    clock = IterationClock()
    cli.trainer.callbacks.append(clock)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    peak_rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    if len(clock.ends) != iterations or clock.steps[-1] != iterations * updates_per_iteration:
        raise SystemExit(f"ran {len(clock.ends)} iterations and {clock.steps[-1] if clock.steps else 0} actor updates, "
                         f"expected {iterations} and {iterations * updates_per_iteration} (does --data hold "
                         f"{iterations} x {args.batch} prompts?)")
    updates = [b - a for a, b in zip([0, *clock.steps], clock.steps)]
    bounds = [clock.start, *clock.ends]
    wall = [b - a for a, b in zip(bounds, bounds[1:])]
    timed_wall = wall[args.warmup:]
    cpu_bounds = [clock.cpu_start, *clock.cpu_ends]
    cpu = [b - a for a, b in zip(cpu_bounds, cpu_bounds[1:])]
    timed_prompts = clock.prompts[args.warmup:]
    events = sorted((work / "runs").rglob("events.out.tfevents.*"))
    accumulator = EventAccumulator(str(events[-1].parent)).Reload()

    def timed(tag: str) -> float:
        values = [e.value for e in accumulator.Scalars(tag)][args.warmup:]
        return statistics.median(values)

    phases = {name: timed(f"perf/{name}_seconds") for name in ("generation", "scoring", "update")}
    total = sum(phases.values())
    from transformers import AutoModelForCausalLM

    initial = AutoModelForCausalLM.from_pretrained(networks["actor"]).state_dict()
    trained = cli.model.model.state_dict()
    if cli.model.lora_scaling is not None:  # the adapted policy as its export writes it
        from lit_safe.models.lora import merge_lora_state_dict

        trained = merge_lora_state_dict(trained, cli.model.lora_scaling)
    change = max(float((trained[k] - v).abs().max()) for k, v in initial.items())
    params = sum(v.numel() for v in initial.values())
    result = {
        "benchmark": "ppo_throughput", "side": "lit_safe", "algorithm": args.algorithm,
        "preset": args.preset if args.actor is None else None,
        "actor": args.actor, "reward_model": args.reward_model, "cost_model": args.cost_model if uses_cost else None,
        "data": args.data, "prompt_template": args.prompt_template, "actor_params": params, "threads": args.threads,
        "dtype": "float32", "batch_prompts": args.batch, "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature, "top_p": 1.0, "ppo_epochs": args.ppo_epochs,
        "num_minibatches": args.num_minibatches, "reference": args.reference,
        "lora_rank": args.lora_rank if args.reference == "lora" else None, "shared_critic": args.shared_critic,
        "kl_coeff": config["model"]["init_args"]["kl_coeff"],
        "actor_lr": config["model"]["init_args"]["actor_lr"], "critic_lr": config["model"]["init_args"]["critic_lr"],
        "warmup_iterations": args.warmup, "timed_iterations": args.iterations,
        "updates_per_iteration": sorted(set(updates)), "global_steps": clock.steps[-1],
        "rollouts_per_s": round(sum(timed_prompts) / sum(timed_wall), 4),
        "cpu_rollouts_per_s": round(sum(timed_prompts) / sum(cpu[args.warmup:]), 4),
        "best_iteration_rollouts_per_s": round(max(n / s for n, s in zip(timed_prompts, timed_wall)), 4),
        "wall_seconds_per_iteration": round(statistics.median(timed_wall), 4),
        "iteration_seconds": [round(s, 4) for s in wall],
        "iteration_cpu_seconds": [round(s, 4) for s in cpu],
        "seconds_per_iteration": round(total, 3),
        **{f"{name}_seconds": round(value, 3) for name, value in phases.items()},
        **{f"{name}_share": round(value / total, 3) for name, value in phases.items()},
        "rollout_tokens_per_s": round(timed("perf/rollout_tokens_per_s"), 1),
        "update_samples_per_s": round(timed("perf/update_samples_per_s"), 2),
        "mean_generated_length": round(timed("train/mean_generated_length"), 2),
        "peak_rss_gb": round(peak_rss_gb, 3),
        "actor_weights_max_change": change, "actor_weights_changed": change > 0,
        "kl": [round(e.value, 6) for e in accumulator.Scalars("train/kl")],
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "lightning": lightning.__version__},
        "loadavg_1m": os.getloadavg()[0],
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.python_version()}",
    }
    line = json.dumps(result)
    print(line)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a", encoding="utf-8") as f:
        f.write(line + "\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
