"""Hugging Face TRL's PPOTrainer on the CPU: the TRL side of ``benchmarks/ppo_vs_trl.py``.

Run it with the python of a separate environment that has trl (trl 1.12.0, the last release with PPO, keeps it in
``trl.experimental.ppo``; ``benchmarks/README.md`` says how to make that environment). It imports trl, transformers,
accelerate and datasets, and nothing of lit_safe, which that environment does not have.

It trains ``--policy`` (a causal LM folder with its tokenizer) with TRL's PPO as TRL's own example sets it up: the
value model initialised from the reward model folder, the reference a second copy of the policy, the reward model
frozen. The prompts are the rendered strings of ``--prompts`` (a JSON file ``{"prompts": [...], "input_ids":
[...]}`` that ``ppo_vs_trl.py`` writes from lit_safe's own prompt encoding), tokenised here with the policy's tokenizer
(left-padded) and checked to give exactly the ids lit_safe trains on. No stop token: every response has
``--max-new-tokens`` tokens (a random policy rarely samples EOS, and TRL without ``stop_token`` never stops early).
fp32, no gradient checkpointing, no gradient accumulation, no bf16, no saving, no evaluation, no sample
generations, ``report_to: none``.

Measured in this process: the wall time between TRL's consecutive ``on_step_end`` callbacks (one per PPO iteration:
generation, scoring, ``--ppo-epochs`` x ``--num-minibatches`` updates, logging); the first ``--warmup`` iterations are
not timed. Rollouts/s = prompts of the timed iterations / their wall time. A phase split (generation; scoring: the
reference, value and reward forwards and GAE; update: PPO epochs, logging and TRL's per-iteration ``gc.collect``),
taken by wrapping two functions of TRL's PPO module (``batch_generation``, which ends generation, and
``masked_whiten`` of the advantages, which ends scoring). Then the peak RSS (``ru_maxrss``), and, after that, whether
the policy's weights moved (against the ``--policy`` folder) and TRL's logged loss and KL per iteration.

    /work/trl_env/bin/python benchmarks/trl_ppo.py --policy work/actor --reward-model work/reward \\
        --prompts work/prompts_rendered.json --out trl.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from ppo_settings import add_iteration_settings  # benchmarks/ppo_settings.py: a script's own folder is on sys.path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--policy", required=True, help="the policy: a causal LM folder with its tokenizer")
    parser.add_argument("--reward-model", required=True, help="a *ForSequenceClassification reward model folder")
    parser.add_argument("--value-model", default=None, help="initialises the value model (default: the reward model)")
    parser.add_argument("--prompts", required=True,
                        help='JSON {"prompts": [rendered strings], "input_ids": [the ids lit_safe trains on]}')
    add_iteration_settings(parser)
    parser.add_argument("--kl-coef", type=float, default=0.05, help="TRL's kl_coef (its default 0.05)")
    parser.add_argument("--learning-rate", type=float, default=3e-6, help="TRL's learning_rate (its default 3e-6)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default=None, help="append the JSON line to this file too")
    args = parser.parse_args()
    if args.warmup < 0 or args.iterations < 1:
        parser.error("--warmup must be >= 0 and --iterations >= 1")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import resource

    import accelerate
    import datasets
    import torch
    import transformers
    import trl
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer, ppo_trainer

    torch.set_num_threads(args.threads)
    spec = json.loads(Path(args.prompts).read_text(encoding="utf-8"))
    needed = args.batch * (args.warmup + args.iterations)
    prompts = spec["prompts"][:needed]
    if len(prompts) < needed:
        raise SystemExit(f"{args.prompts}: {len(prompts)} prompts, need {needed} (--batch x (--warmup + --iterations))")
    tokenizer = AutoTokenizer.from_pretrained(args.policy, padding_side="left")
    input_ids = tokenizer(prompts, add_special_tokens=True)["input_ids"]
    expected = spec.get("input_ids")
    if expected is not None:
        for row, (ids, want) in enumerate(zip(input_ids, expected[:needed], strict=True)):
            if ids != want:
                raise SystemExit(f"{args.prompts}: prompt {row}: the policy's tokenizer gives other ids than lit_safe "
                                 f"trains on ({ids[:8]}... vs {want[:8]}...)")
    train_dataset = datasets.Dataset.from_dict({"input_ids": input_ids})

    dtype = torch.float32
    policy = AutoModelForCausalLM.from_pretrained(args.policy, dtype=dtype)
    reference = AutoModelForCausalLM.from_pretrained(args.policy, dtype=dtype)
    reward_model = AutoModelForSequenceClassification.from_pretrained(args.reward_model, num_labels=1, dtype=dtype)
    value_model = AutoModelForSequenceClassification.from_pretrained(args.value_model or args.reward_model,
                                                                     num_labels=1, dtype=dtype)
    work = Path(tempfile.mkdtemp(prefix="trl_ppo_"))
    config = PPOConfig(
        output_dir=str(work), per_device_train_batch_size=args.batch, gradient_accumulation_steps=1,
        num_mini_batches=args.num_minibatches, num_ppo_epochs=args.ppo_epochs, total_episodes=needed,
        local_rollout_forward_batch_size=args.batch, response_length=args.max_new_tokens,
        temperature=args.temperature, stop_token=None, stop_token_id=None, kl_coef=args.kl_coef,
        learning_rate=args.learning_rate, bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True,
        report_to="none", save_strategy="no", eval_strategy="no", num_sample_generations=0, logging_steps=1,
        dataloader_num_workers=0, disable_tqdm=True, seed=args.seed, push_to_hub=False,
    )

    class IterationClock(TrainerCallback):
        """Wall time at the start of training and at the end of every PPO iteration (TRL's ``on_step_end``)."""

        def __init__(self) -> None:
            self.start: float | None = None
            self.cpu_start: float | None = None
            self.ends: list[float] = []
            self.cpu_ends: list[float] = []
            self.steps: list[int] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.start, self.cpu_start = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())
            self.cpu_ends.append(time.process_time())
            self.steps.append(state.global_step)

    marks: dict[str, list[float]] = {"generation_start": [], "generation_end": [], "scoring_end": []}
    batch_generation, masked_whiten = ppo_trainer.batch_generation, ppo_trainer.masked_whiten

    def timed_generation(*a, **kw):
        marks["generation_start"].append(time.perf_counter())
        out = batch_generation(*a, **kw)
        marks["generation_end"].append(time.perf_counter())
        return out

    def timed_whiten(*a, **kw):  # TRL whitens the advantages last, just before the PPO epochs
        out = masked_whiten(*a, **kw)
        marks["scoring_end"].append(time.perf_counter())
        return out

    ppo_trainer.batch_generation, ppo_trainer.masked_whiten = timed_generation, timed_whiten
    clock = IterationClock()
    trainer = PPOTrainer(args=config, processing_class=tokenizer, model=policy, ref_model=reference,
                         reward_model=reward_model, train_dataset=train_dataset, value_model=value_model,
                         callbacks=[clock])
    trainer.train()
    peak_rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    iterations = len(clock.ends)
    if iterations != args.warmup + args.iterations or len(marks["scoring_end"]) != iterations:
        raise SystemExit(f"TRL ran {iterations} iterations ({len(marks['scoring_end'])} whitened), expected "
                         f"{args.warmup + args.iterations}")
    bounds = [clock.start, *clock.ends]
    seconds = [b - a for a, b in zip(bounds, bounds[1:])]
    timed = seconds[args.warmup:]
    cpu_bounds = [clock.cpu_start, *clock.cpu_ends]
    cpu_timed = [b - a for a, b in zip(cpu_bounds, cpu_bounds[1:])][args.warmup:]
    generation = [e - s for s, e in zip(marks["generation_start"], marks["generation_end"])][args.warmup:]
    scoring = [s - g for g, s in zip(marks["generation_end"], marks["scoring_end"])][args.warmup:]
    rest = [e - s for s, e in zip(marks["scoring_end"], clock.ends)][args.warmup:]
    initial = AutoModelForCausalLM.from_pretrained(args.policy, dtype=dtype).state_dict()
    trained = trainer.accelerator.unwrap_model(trainer.model).policy.state_dict()
    change = max(float((trained[k] - v).abs().max()) for k, v in initial.items())
    history = [h for h in trainer.state.log_history if "objective/kl" in h]

    def series(key: str) -> list[float]:
        return [round(h[key], 6) for h in history]

    params = sum(p.numel() for p in policy.parameters())
    result = {
        "benchmark": "trl_ppo", "side": "trl", "algorithm": "ppo", "policy": args.policy,
        "reward_model": args.reward_model, "value_model": args.value_model or args.reward_model,
        "prompts": args.prompts, "actor_params": params, "threads": args.threads, "dtype": "float32",
        "attn_implementation": policy.config._attn_implementation, "batch_prompts": args.batch,
        "max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": 1.0, "top_k": None,
        "stop_token": None, "ppo_epochs": args.ppo_epochs, "num_minibatches": args.num_minibatches,
        "kl_coef": args.kl_coef, "learning_rate": args.learning_rate, "warmup_iterations": args.warmup,
        "timed_iterations": args.iterations, "updates": args.ppo_epochs * args.num_minibatches * iterations,
        "global_steps": clock.steps[-1], "prompt_tokens": [len(ids) for ids in input_ids[:1]][0],
        "rollouts_per_s": round(args.batch * len(timed) / sum(timed), 4),
        "cpu_rollouts_per_s": round(args.batch * len(cpu_timed) / sum(cpu_timed), 4),
        "best_iteration_rollouts_per_s": round(args.batch / min(timed), 4),
        "seconds_per_iteration": round(statistics.median(timed), 4),
        "iteration_seconds": [round(s, 4) for s in seconds],
        "iteration_cpu_seconds": [round(b - a, 4) for a, b in zip(cpu_bounds, cpu_bounds[1:])],
        "generation_seconds": round(statistics.median(generation), 4),
        "scoring_seconds": round(statistics.median(scoring), 4),
        "update_seconds": round(statistics.median(rest), 4),
        "peak_rss_gb": round(peak_rss_gb, 3),
        "policy_weights_max_change": change, "policy_weights_changed": change > 0,
        "kl": series("objective/kl"), "policy_loss": series("loss/policy_avg"), "value_loss": series("loss/value_avg"),
        "scores": series("objective/scores"), "eos_tokens": [int(h["val/num_eos_tokens"]) for h in history],
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
                     "accelerate": accelerate.__version__, "datasets": datasets.__version__},
        "loadavg_1m": os.getloadavg()[0],
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.python_version()}",
    }
    line = json.dumps(result)
    print(line)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
