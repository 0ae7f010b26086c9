"""lit_safe's PPO and PPO-Lagrangian against Hugging Face TRL's PPOTrainer, side by side on the CPU (issue 14).

Builds one work folder that both sides read: a randomly initialised ``LlamaForCausalLM`` policy (``--hidden`` 256,
``--layers`` 4, ``--heads`` 4, ``--intermediate`` 672: 4.16M parameters) and two randomly initialised
``LlamaForSequenceClassification(num_labels=1)`` models, the reward model (seed 1) and the cost model (seed 2), each
saved with ``save_pretrained`` beside the project's ``tiny`` tokenizer (vocabulary 2,048); and the prompts: distinct
synthetic PKU-SafeRLHF prompts whose Safe RLHF rendering is ``--prompt-tokens`` tokens long (equal lengths, so that
neither side's batching adds padding the other does not), as PKU-SafeRLHF rows for lit_safe's ``--data`` and as the
rendered strings (with the ids lit_safe encodes them to) for TRL. There are exactly ``--batch`` x (``--warmup`` +
``--iterations``) prompts: each side goes through all of them once.

Then, for each of ``--rounds`` rounds, one after another, each in a fresh subprocess: TRL
(``benchmarks/trl_ppo.py`` under ``--trl-python``), lit_safe ``algorithm: ppo`` (reward model, reward critic, no cost
model) and lit_safe ``algorithm: ppo_lagrangian`` (plus the cost model, a cost critic and lambda), both by
``benchmarks/ppo_throughput.py``. Interleaving spreads the machine's load over all three alike. Each side measures
itself between its per-iteration hooks: rollouts/s of wall clock over the timed iterations (the figure), rollouts
per CPU second of the process and the best iteration's rollouts/s (both less moved by other jobs on a shared
machine), and the peak RSS. Every run's JSON line, then one summary line (medians over rounds, lit_safe / TRL ratios
per round and of the medians, the settings, versions, the git commit, whether the tree was dirty and whether it
changed during the run) are appended to ``--out``.

    python benchmarks/ppo_vs_trl.py --trl-python /work/trl_env/bin/python --rounds 3
    python benchmarks/ppo_vs_trl.py --trl-python /work/trl_env/bin/python --rounds 1 --sides trl ppo_lagrangian
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from ppo_settings import add_iteration_settings  # benchmarks/ppo_settings.py: a script's own folder is on sys.path

ROOT = Path(__file__).resolve().parents[1]
SIDES = ("trl", "ppo", "ppo_lagrangian")
# lit_safe's options that change results (off by default), as further sides: --sides ... ppo_lagrangian_shared
OPTION_SIDES = {"ppo_lora": ("ppo", ["--reference", "lora"]),
                "ppo_lagrangian_shared": ("ppo_lagrangian", ["--shared-critic"]),
                "ppo_lagrangian_lora_shared": ("ppo_lagrangian", ["--shared-critic", "--reference", "lora"])}
# per run: wall-clock rollouts/s (the figure), rollouts per CPU second of the process and the best iteration's
# rollouts/s (both less moved by other jobs on a shared machine), peak RSS
FIGURES = ("rollouts_per_s", "cpu_rollouts_per_s", "best_iteration_rollouts_per_s", "peak_rss_gb")


def build_work(work: Path, args: argparse.Namespace) -> dict:
    """Write the policy, reward and cost models and the prompts into ``work``; returns the settings recorded."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    from lit_safe.data_modules.synthetic import generate_pku_saferlhf_rows
    from lit_safe.models.text import SAFE_RLHF_TEMPLATE, encode_prompts, render_prompts
    from lit_safe.models.tokenizer import load_tokenizer

    tokenizer = load_tokenizer("tiny")
    arch = {"hidden_size": args.hidden, "intermediate_size": args.intermediate, "num_hidden_layers": args.layers,
            "num_attention_heads": args.heads, "num_key_value_heads": args.heads}
    options = dict(vocab_size=len(tokenizer), max_position_embeddings=1024, tie_word_embeddings=False,
                   pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                   eos_token_id=tokenizer.eos_token_id, **arch)
    torch.manual_seed(0)
    actor = LlamaForCausalLM(LlamaConfig(**options))
    actor.save_pretrained(work / "actor")
    tokenizer.save_pretrained(work / "actor")
    for seed, kind in ((1, "reward"), (2, "cost")):
        torch.manual_seed(seed)
        LlamaForSequenceClassification(LlamaConfig(**options, num_labels=1)).save_pretrained(work / kind)
        tokenizer.save_pretrained(work / kind)

    needed = args.batch * (args.warmup + args.iterations)
    rows, seen, candidates = [], set(), generate_pku_saferlhf_rows(num_rows=max(2000, 40 * needed), seed=7)
    for row in candidates:
        if row["prompt"] in seen:
            continue
        seen.add(row["prompt"])
        if args.prompt_tokens == 0 or len(encode_prompts(tokenizer, [row["prompt"]], SAFE_RLHF_TEMPLATE)[0]) == \
                args.prompt_tokens:
            rows.append(row)
        if len(rows) == needed:
            break
    if len(rows) < needed:
        raise SystemExit(f"only {len(rows)} distinct synthetic prompts of {args.prompt_tokens} tokens, need {needed}: "
                         f"choose another --prompt-tokens (about 30-38 are common) or 0 (any length)")
    with open(work / "prompts.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    prompts = [row["prompt"] for row in rows]
    rendered = render_prompts(tokenizer, prompts, SAFE_RLHF_TEMPLATE)
    ids = [a.tolist() for a in encode_prompts(tokenizer, prompts, SAFE_RLHF_TEMPLATE)]
    (work / "prompts_rendered.json").write_text(json.dumps({"template": SAFE_RLHF_TEMPLATE, "prompts": rendered,
                                                            "input_ids": ids}))
    return {"model_config": {**arch, "vocab_size": len(tokenizer), "tie_word_embeddings": False,
                             "max_position_embeddings": 1024},
            "actor_params": sum(p.numel() for p in actor.parameters()), "tokenizer": "lit_safe tiny (BPE, 2048)",
            "prompts_source": f"synthetic PKU-SafeRLHF (seed 7), Safe RLHF template, {args.prompt_tokens or 'any'} "
                              f"tokens each", "num_prompts": needed,
            "prompt_token_lengths": sorted({len(i) for i in ids})}


def run_side(side: str, work: Path, args: argparse.Namespace, log: Path) -> dict:
    """One run of one side in a fresh subprocess; its JSON line."""
    out = work / f"{side}.jsonl"
    out.unlink(missing_ok=True)
    common = ["--threads", str(args.threads), "--batch", str(args.batch), "--max-new-tokens", str(args.max_new_tokens),
              "--ppo-epochs", str(args.ppo_epochs), "--num-minibatches", str(args.num_minibatches),
              "--temperature", str(args.temperature), "--warmup", str(args.warmup),
              "--iterations", str(args.iterations), "--out", str(out)]
    if side == "trl":
        command = [args.trl_python, str(ROOT / "benchmarks" / "trl_ppo.py"), "--policy", str(work / "actor"),
                   "--reward-model", str(work / "reward"), "--prompts", str(work / "prompts_rendered.json"),
                   "--kl-coef", str(args.kl_coeff), "--learning-rate", str(args.learning_rate), *common]
    else:
        algorithm, options = OPTION_SIDES.get(side, (side, []))
        command = [sys.executable, str(ROOT / "benchmarks" / "ppo_throughput.py"), "--algorithm", algorithm,
                   "--actor", str(work / "actor"), "--reward-model", str(work / "reward"),
                   "--data", str(work / "prompts.jsonl"), *options, *common]
        if algorithm == "ppo_lagrangian":
            command += ["--cost-model", str(work / "cost")]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"\n$ {' '.join(command)}\n")
        f.flush()
        done = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    if done.returncode != 0 or not out.exists():
        tail = log.read_text(encoding="utf-8").splitlines()[-15:]
        raise SystemExit(f"the {side} run failed (exit code {done.returncode}); its output is in {log}:\n"
                         + "\n".join(tail))
    return json.loads(out.read_text(encoding="utf-8").splitlines()[-1])


def git_state() -> dict:
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    dirty = git("status", "--short")
    diff = git("diff", "HEAD")
    return {"git_commit": git("rev-parse", "HEAD"), "git_dirty": bool(dirty),
            "git_dirty_files": dirty.splitlines()[:30],
            "git_diff_sha1": hashlib.sha1(diff.encode()).hexdigest() if diff else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trl-python", required=True, help="the python of an environment with trl 1.12.0")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sides", nargs="+", default=list(SIDES), choices=[*SIDES, *OPTION_SIDES],
                        help="which runs, in round order (the option sides run lit_safe with --reference lora and/or "
                             "--shared-critic)")
    add_iteration_settings(parser)  # the same flags and defaults as both sides' scripts
    parser.add_argument("--kl-coeff", type=float, default=None,
                        help="TRL's kl_coef (default: lit_safe's, kl_coeff of configs/quickstart/ppo_lagrangian.yaml)")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="TRL's learning_rate of policy and value (default: that config's actor_lr)")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--intermediate", type=int, default=672)
    parser.add_argument("--prompt-tokens", type=int, default=35,
                        help="token length of every prompt as rendered (0: the synthetic prompts' own mixed lengths)")
    parser.add_argument("--work", default=None, help="the work folder (default: a new temporary one, removed after)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ppo_vs_trl_cpu.jsonl"))
    args = parser.parse_args()
    lit_safe = yaml.safe_load((ROOT / "configs" / "quickstart" / "ppo_lagrangian.yaml").read_text())["model"]
    args.kl_coeff = lit_safe["init_args"]["kl_coeff"] if args.kl_coeff is None else args.kl_coeff
    args.learning_rate = lit_safe["init_args"]["actor_lr"] if args.learning_rate is None else args.learning_rate
    if not Path(args.trl_python).exists():
        raise SystemExit(f"--trl-python {args.trl_python} does not exist (benchmarks/README.md says how to make it)")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="ppo_vs_trl_"))
    work.mkdir(parents=True, exist_ok=True)
    log = work / "runs.log"
    started, git_before = time.time(), git_state()
    settings = build_work(work, args)
    print(f"work folder {work}; output of the runs in {log}", file=sys.stderr)

    runs: dict[str, list[dict]] = {side: [] for side in args.sides}
    lines = []
    for round_ in range(1, args.rounds + 1):
        for side in args.sides:
            result = {"benchmark": "ppo_vs_trl", "kind": "run", "round": round_, "side": side,
                      **run_side(side, work, args, log)}
            runs[side].append(result)
            lines.append(result)
            print(f"round {round_} {side}: {result['rollouts_per_s']:.3f} rollouts/s (per CPU second "
                  f"{result['cpu_rollouts_per_s']:.3f}), peak RSS {result['peak_rss_gb']:.3f} GB, load "
                  f"{result['loadavg_1m']:.2f}", file=sys.stderr)

    medians = {side: {**{key: statistics.median(r[key] for r in rs) for key in FIGURES},
                      **{f"per_round_{key}": [r[key] for r in rs] for key in FIGURES},
                      "per_round_loadavg_1m": [round(r["loadavg_1m"], 2) for r in rs]} for side, rs in runs.items()}
    ratios = {}
    if "trl" in runs:
        for side in runs:
            if side == "trl":
                continue
            ratios[side] = {}
            for key in FIGURES:
                name = "peak_rss" if key == "peak_rss_gb" else key
                per_round = [a[key] / b[key] for a, b in zip(runs[side], runs["trl"])]
                ratios[side][f"{name}_vs_trl"] = round(medians[side][key] / medians["trl"][key], 3)
                ratios[side][f"{name}_vs_trl_per_round"] = [round(r, 3) for r in per_round]
    import lightning
    import torch
    import transformers

    first = next(iter(runs.values()))[0]
    summary = {
        "benchmark": "ppo_vs_trl", "kind": "summary", "rounds": args.rounds, "order": args.sides,
        **settings, "batch_prompts": args.batch, "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature, "top_p": 1.0, "ppo_epochs": args.ppo_epochs,
        "num_minibatches": args.num_minibatches, "warmup_iterations": args.warmup, "timed_iterations": args.iterations,
        "kl_coeff": args.kl_coeff, "learning_rate": args.learning_rate, "threads": args.threads, "dtype": "float32",
        "medians": medians, "ratios": ratios,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "lightning": lightning.__version__,
                     "trl": runs["trl"][0]["versions"]["trl"] if "trl" in runs else None,
                     "trl_env": runs["trl"][0]["versions"] if "trl" in runs else None},
        **git_before, "tree_changed_during_run": git_state() != git_before,
        "wall_minutes": round((time.time() - started) / 60, 1),
        "loadavg_1m": os.getloadavg()[0], "machine": first["machine"],
    }
    lines.append(summary)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a", encoding="utf-8") as f:
        f.writelines(json.dumps(line) + "\n" for line in lines)
    print(json.dumps(summary))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
