"""Tree generation with KV-cache reuse against independent sampling, on the CPU (Qiu et al., arXiv 2402.10184).

For each model (a preset, ``tiny`` or ``small``, randomly initialised and seeded; or a local causal LM folder or hub
id: eval mode, fp32) and each ``(depth, branching,
segment_tokens)`` setting, grows one response tree per prompt with :func:`lit_safe.models.tree_generation.grow_tree`
and then samples as many independent responses as the tree has leaves, two ways:

* ``independent`` (:func:`~lit_safe.models.tree_generation.sample_independent`): the ordinary batched sampling, one
  prefill of the prompt, all responses decoded as one batch from its cache (the "chain" pool of the data pipeline);
* ``naive``: every response on its own, batch 1, with its own prefill (on the first ``--naive-prompts`` prompts only,
  it is slow), which is what ``independent_tokens`` counts.

Prompts are the ``prompt`` fields of the synthetic PKU-SafeRLHF rows (``generate_pku_saferlhf_rows``) in the Safe RLHF
conversation template (``format_prompt``), tokenised with the model's tokenizer (BOS included). A random model
rarely emits EOS, so nearly every response runs to ``--max-new-tokens``: the figures are for full-length responses.

One JSON line per (model, setting), also appended to ``--out``:

* ``leaves_per_tree``, ``response_tokens_per_leaf`` (tree and independent), ``finished_fraction``;
* forwarded tokens per leaf: ``tree_forwarded_per_leaf`` (prefill + every decode position, wasted rows included),
  ``independent_tokens_per_leaf`` (the tree's ``meta["independent_tokens"]``: prompt + response + EOS per leaf),
  ``batched_independent_forwarded_per_leaf`` and ``naive_forwarded_per_leaf`` (measured), and the ratios
  ``forwarded_ratio`` (tree / independent_tokens) and ``forwarded_ratio_vs_batched`` (tree / batched independent);
* ``tree_wasted_fraction``: the share of the tree's forwarded positions computed for rows that had already stopped;
* wall seconds per leaf: ``tree_s_per_leaf``, ``independent_s_per_leaf``, ``naive_s_per_leaf``, and the speed-ups
  ``speedup_vs_independent`` and ``speedup_vs_naive`` (> 1: the tree is faster per leaf);
* ``decode_steps_tree`` / ``decode_steps_independent``: sequential forward calls per prompt (what bounds the wall
  time when a step costs the same at any batch size, i.e. when decoding is memory-bound);
* ``threads``, ``torch``, ``transformers``, ``machine``.

    python benchmarks/tree_generation.py                                  # tiny + small, 3 prompts, 3 settings
    python benchmarks/tree_generation.py --presets small --prompts 8 --settings 2,4,16 3,2,16 --naive-prompts 0
    python benchmarks/tree_generation.py --separators . "\\n" --out /tmp/tree.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def per_leaf(acc: dict[str, list[float]], key: str, leaves_key: str = "leaves") -> float | None:
    """Sum of ``acc[key]`` over all prompts per leaf (``None`` when it was not measured)."""
    return sum(acc[key]) / sum(acc[leaves_key]) if key in acc else None


def _setting(text: str) -> tuple[int, int, int]:
    parts = [int(p) for p in text.split(",")]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"a setting is depth,branching,segment_tokens; got {text!r}")
    return parts[0], parts[1], parts[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"],
                        help="presets (tiny, small), local causal LM folders or hub ids")
    parser.add_argument("--prompts", type=int, default=3, help="prompts (one tree each) per setting")
    parser.add_argument("--settings", nargs="+", type=_setting, default=[(2, 4, 16), (3, 3, 12), (3, 2, 16)],
                        metavar="D,B,S", help="depth,branching,segment_tokens")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--separators", nargs="*", default=None, help="segment separators (default: none)")
    parser.add_argument("--naive-prompts", type=int, default=1, help="prompts on which to run the batch-1 baseline")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="append the JSON lines to this file")
    args = parser.parse_args()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    import torch
    import transformers

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")

    from lit_safe.data_modules.synthetic import generate_pku_saferlhf_rows
    from lit_safe.models.backbone import load_backbone
    from lit_safe.models.text import format_prompt
    from lit_safe.models.tokenizer import load_tokenizer
    from lit_safe.models.tree_generation import grow_tree, sample_independent

    prompts = [row["prompt"] for row in generate_pku_saferlhf_rows(args.prompts, seed=args.seed)]
    sampling = dict(top_p=args.top_p, max_new_tokens=args.max_new_tokens)
    for preset in args.presets:
        tokenizer = load_tokenizer(preset)
        torch.manual_seed(args.seed)
        model = load_backbone(preset, tokenizer, causal_lm=True).eval()
        prompt_ids = [tokenizer(format_prompt(p)).input_ids for p in prompts]
        sample_independent(model, tokenizer, "warm-up", prompt_ids[0], "w", responses=2, max_new_tokens=8)
        for depth, branching, segment in args.settings:
            acc: dict[str, list[float]] = defaultdict(list)
            for i, (prompt, ids) in enumerate(zip(prompts, prompt_ids)):
                generator = torch.Generator().manual_seed(args.seed * 1000 + i)
                start = time.perf_counter()
                tree = grow_tree(model, tokenizer, prompt, ids, f"p{i}", depth=depth, branching=branching,
                                 segment_tokens=segment, separators=args.separators, temperatures=args.temperature,
                                 generator=generator, **sampling)
                tree_s = time.perf_counter() - start
                leaves = tree.leaves()
                start = time.perf_counter()
                pool = sample_independent(model, tokenizer, prompt, ids, f"p{i}", responses=len(leaves),
                                          temperature=args.temperature, generator=generator, **sampling)
                pool_s = time.perf_counter() - start
                acc["leaves"].append(len(leaves))
                acc["prompt_tokens"].append(len(ids))
                acc["tree_forwarded"].append(tree.meta["tokens_forwarded"])
                acc["tree_wasted"].append(tree.meta["wasted_tokens"])
                acc["independent_tokens"].append(tree.meta["independent_tokens"])
                acc["pool_forwarded"].append(pool.meta["tokens_forwarded"])
                acc["tree_s"].append(tree_s)
                acc["pool_s"].append(pool_s)
                acc["tree_response"].append(sum(len(tree.response_tokens(n)) for n in leaves))
                acc["pool_response"].append(sum(len(pool.nodes[n].tokens) for n in pool.leaves()))
                acc["finished"].append(sum(tree.nodes[n].finished for n in leaves))
                acc["pool_leaves"].append(len(pool.leaves()))
                acc["steps_tree"].append(tree.meta["decode_steps"])
                acc["steps_pool"].append(pool.meta["decode_steps"])
                if i < args.naive_prompts:
                    start = time.perf_counter()
                    singles = [sample_independent(model, tokenizer, prompt, ids, f"p{i}-{k}", responses=1,
                                                  temperature=args.temperature, generator=generator, **sampling)
                               for k in range(len(leaves))]
                    acc["naive_s"].append(time.perf_counter() - start)
                    acc["naive_forwarded"].append(sum(s.meta["tokens_forwarded"] for s in singles))
                    acc["naive_leaves"].append(len(leaves))

            tree_fw, pool_fw = per_leaf(acc, "tree_forwarded"), per_leaf(acc, "pool_forwarded")
            ind_fw = per_leaf(acc, "independent_tokens")
            tree_s, pool_s = per_leaf(acc, "tree_s"), per_leaf(acc, "pool_s")
            naive_s = per_leaf(acc, "naive_s", "naive_leaves")
            record = {
                "benchmark": "tree_generation",
                "preset": preset,
                "depth": depth,
                "branching": branching,
                "segment_tokens": segment,
                "separators": args.separators,
                "max_new_tokens": args.max_new_tokens,
                "temperature": args.temperature,
                "top_p": args.top_p,
                "prompts": len(prompts),
                "prompt_tokens_mean": round(statistics.mean(acc["prompt_tokens"]), 1),
                "leaves_per_tree": round(statistics.mean(acc["leaves"]), 2),
                "response_tokens_per_leaf_tree": round(per_leaf(acc, "tree_response"), 1),
                "response_tokens_per_leaf_independent": round(per_leaf(acc, "pool_response", "pool_leaves"), 1),
                "finished_fraction": round(per_leaf(acc, "finished"), 3),
                "tree_forwarded_per_leaf": round(tree_fw, 1),
                "independent_tokens_per_leaf": round(ind_fw, 1),
                "batched_independent_forwarded_per_leaf": round(pool_fw, 1),
                "naive_forwarded_per_leaf": (round(per_leaf(acc, "naive_forwarded", "naive_leaves"), 1)
                                             if "naive_forwarded" in acc else None),
                "forwarded_ratio": round(tree_fw / ind_fw, 3),
                "forwarded_ratio_vs_batched": round(tree_fw / pool_fw, 3),
                "tree_wasted_fraction": round(sum(acc["tree_wasted"]) / sum(acc["tree_forwarded"]), 4),
                "decode_steps_tree": round(statistics.mean(acc["steps_tree"]), 1),
                "decode_steps_independent": round(statistics.mean(acc["steps_pool"]), 1),
                "tree_s_per_leaf": round(tree_s, 5),
                "independent_s_per_leaf": round(pool_s, 5),
                "naive_s_per_leaf": round(naive_s, 5) if naive_s is not None else None,
                "speedup_vs_independent": round(pool_s / tree_s, 3),
                "speedup_vs_naive": round(naive_s / tree_s, 3) if naive_s is not None else None,
                "naive_prompts": min(args.naive_prompts, len(prompts)),
                "threads": args.threads,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "machine": f"{platform.machine()} {os.cpu_count()} cpus",
            }
            line = json.dumps(record)
            print(line, flush=True)
            if args.out:
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                with open(args.out, "a", encoding="utf-8") as f:
                    f.write(line + "\n")


if __name__ == "__main__":
    main()
