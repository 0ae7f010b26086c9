"""PPO-Lagrangian throughput on the CPU: where an iteration's time goes (generation, scoring, update).

Builds randomly initialised ``--preset`` networks (actor, and reward and cost score models of the same preset; the
reference and the critics are copies, as in a real run), or takes the user's own (``--actor``, ``--reward-model``,
``--cost-model``: local folders or hub ids; any Hugging Face sequence-classification reward model works), and runs
``PPOLagrangianModule`` through a real Lightning ``Trainer`` (cpu, fp32, no checkpointing) on the prompts of
``--data`` (default: synthetic) for ``--warmup`` + ``--rollouts`` rollouts of ``--batch`` prompts. A random actor
rarely emits EOS, so every response has ``--max-new-tokens`` tokens: the figures are for full-length responses. One
JSON line (also appended to ``--out``): medians over the timed rollouts of the seconds spent generating (sampling
with the KV cache), scoring (actor, reference, reward, cost and both critics forward over the whole sequences, then
GAE) and updating (``ppo_epochs`` x ``num_minibatches`` actor and critic steps), their shares, rollout tokens/s,
update samples/s, and the peak RSS.

    python benchmarks/ppo_throughput.py                       # small preset, 1 thread, 16 prompts x 64 tokens
    python benchmarks/ppo_throughput.py --preset tiny --threads 2
    python benchmarks/ppo_throughput.py --actor my-sft-model --reward-model my-rm --cost-model my-cm --data my.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="small", choices=("tiny", "small"))
    parser.add_argument("--actor", default=None, help="the policy (default: a random --preset actor)")
    parser.add_argument("--reward-model", default=None, help="the reward model (default: a random --preset one)")
    parser.add_argument("--cost-model", default=None, help="the cost model (default: a random --preset one)")
    parser.add_argument("--data", default="synthetic", help="the prompts' source (any PKU-SafeRLHF DataModule source)")
    parser.add_argument("--prompt-template", default=None, help="the data's template (e.g. chat; default: Safe RLHF)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16, help="prompts per rollout")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--ppo-epochs", type=int, default=2)
    parser.add_argument("--num-minibatches", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1, help="untimed rollouts")
    parser.add_argument("--rollouts", type=int, default=3, help="timed rollouts")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ppo_throughput_cpu.jsonl"))
    args = parser.parse_args()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import resource

    import torch
    import yaml
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    torch.set_num_threads(args.threads)
    from lit_safe.cli import run
    from lit_safe.models.backbone import load_backbone
    from lit_safe.models.score_model import ScoreModel
    from lit_safe.models.tokenizer import load_tokenizer

    work = Path(tempfile.mkdtemp(prefix="ppo_bench_"))
    tokenizer = load_tokenizer(args.preset)
    networks = {"actor": args.actor, "reward": args.reward_model, "cost": args.cost_model}
    if args.actor is None:
        torch.manual_seed(0)
        load_backbone(args.preset, tokenizer, causal_lm=True).save_pretrained(work / "actor")
        tokenizer.save_pretrained(work / "actor")
        networks["actor"] = str(work / "actor")
    for seed, kind in ((1, "reward"), (2, "cost")):
        if networks[kind] is None:
            torch.manual_seed(seed)
            ScoreModel(load_backbone(args.preset, tokenizer), score_type=kind).save_pretrained(work / kind,
                                                                                                tokenizer=tokenizer)
            networks[kind] = str(work / kind)
    config = yaml.safe_load((ROOT / "configs" / "quickstart" / "ppo_lagrangian.yaml").read_text())
    updates_per_rollout = args.ppo_epochs * args.num_minibatches
    config["trainer"].update({"max_steps": (args.warmup + args.rollouts) * updates_per_rollout,
                              "enable_progress_bar": False, "enable_checkpointing": False})
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(work / "runs")
    config["trainer"]["callbacks"] = []
    config["model"]["init_args"].update({
        "backbone": networks["actor"], "reward_model": networks["reward"], "cost_model": networks["cost"],
        "max_new_tokens": args.max_new_tokens, "ppo_epochs": args.ppo_epochs,
        "num_minibatches": args.num_minibatches,
    })
    config["data"]["init_args"].update({"source": args.data, "batch_size": args.batch, "num_workers": 0,
                                        "prepared_dir": str(work / "prepared")})
    if args.prompt_template is not None:
        config["data"]["init_args"]["prompt_template"] = args.prompt_template
    (work / "ppo.yaml").write_text(yaml.safe_dump(config))
    run(["fit", "--config", str(work / "ppo.yaml")])

    events = sorted((work / "runs").rglob("events.out.tfevents.*"))
    accumulator = EventAccumulator(str(events[-1].parent)).Reload()

    def timed(tag: str) -> float:
        values = [e.value for e in accumulator.Scalars(f"perf/{tag}")][args.warmup:]
        return statistics.median(values)

    phases = {name: timed(f"{name}_seconds") for name in ("generation", "scoring", "update")}
    total = sum(phases.values())
    from transformers import AutoModelForCausalLM

    params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(networks["actor"]).parameters())
    result = {
        "benchmark": "ppo_throughput", "preset": args.preset if args.actor is None else None,
        "actor": args.actor, "reward_model": args.reward_model, "cost_model": args.cost_model, "data": args.data,
        "prompt_template": args.prompt_template, "actor_params": params, "threads": args.threads,
        "batch_prompts": args.batch, "max_new_tokens": args.max_new_tokens, "ppo_epochs": args.ppo_epochs,
        "num_minibatches": args.num_minibatches, "timed_rollouts": args.rollouts,
        "seconds_per_iteration": round(total, 3),
        **{f"{name}_seconds": round(value, 3) for name, value in phases.items()},
        **{f"{name}_share": round(value / total, 3) for name, value in phases.items()},
        "rollout_tokens_per_s": round(timed("rollout_tokens_per_s"), 1),
        "update_samples_per_s": round(timed("update_samples_per_s"), 2),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "loadavg_1m": os.getloadavg()[0],
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}",
    }
    line = json.dumps(result)
    print(line)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a", encoding="utf-8") as f:
        f.write(line + "\n")


if __name__ == "__main__":
    main()
