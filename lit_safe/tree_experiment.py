"""Tree-structured preference data end to end: grow response trees, sample tree and chain pairs at equal label
budgets, label them, train reward models on each, and measure what the topology changes (Qiu et al., "Rethinking
Information Structures in RLHF", arXiv 2402.10184; ALGORITHMS.md section 10).

Three commands of ``lit-safe`` live here:

- ``lit-safe tree-grow``: a policy grows one response tree per prompt
  (:func:`lit_safe.models.tree_generation.grow_tree`, the KV cache of each shared prefix reused by its children) or
  a pool of independent responses per prompt (the chain baseline). JSON lines, one tree per line, appended as they
  finish: a killed run resumes where it stopped; with ``--devices N`` every rank grows its share of the prompts and
  rank 0 merges them in prompt order.
- ``lit-safe tree-pairs``: pairs of one topology at a label budget (:func:`lit_safe.trees.sample_pairs`), labelled by a
  gold scorer with Bradley-Terry noise or deterministically, or by a file of human labels; the output is the tree
  preference format that :class:`~lit_safe.data_modules.tree_preference.TreePreferenceDataModule` trains on.
- ``lit-safe tree-experiment``: the equal-budget experiment. For every budget, seed and topology (``tree``, ``chain``,
  ``chain_equal_responses``) it samples and labels pairs, trains a :class:`~lit_safe.modules.reward.RewardModule` on
  them through a Lightning ``Trainer``, and scores held-out responses. Reported with 95% confidence intervals over
  seeds: pairwise accuracy against the gold scorer on independent held-out pairs, Pearson and Spearman correlation of
  learned and gold rewards, the seed-to-seed variance of standardised reward differences on a fixed probe set (the
  paper's quantity, scale-free as ALGORITHMS.md asks), best-of-N gold reward for N = 2 ... ``best_of_n``, and the
  gold-judged win rate of the tree-RM best-of-N policy against the chain-RM one. Output: ``results.jsonl`` (one line
  per trained reward model; a rerun skips what is done), ``summary.json``, ``summary.md``, PNG plots and TensorBoard
  scalars and images.

Departures from the paper: the labeller is a gold scorer (the synthetic task's ground truth or any saved reward
model) instead of GPT-4, and the downstream policy is best-of-N (the paper's RFT) rather than PPO; PPO-Lagrangian
with a learned reward model is one ``lit-safe fit`` away (``configs/tree``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lit_safe.models.text import SAFE_RLHF_TEMPLATE
from lit_safe.trees import TOPOLOGIES, ResponseTree, Scorer, label_pairs, merge_labels, sample_pairs


# ------------------------------------------------------------------------------------------------- tree files
def tree_id_of(prompt: str) -> str:
    """A stable id per prompt (the same prompt always grows the tree of the same id)."""
    return "t" + hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:12]


def read_trees(path: str | Path) -> list[ResponseTree]:
    """Trees of a ``tree-grow`` output, in file order. A torn last line (a run killed mid-write) is ignored; any other
    bad line is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no tree file at {path}")
    lines = path.read_text(encoding="utf-8").split("\n")
    trees = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            trees.append(ResponseTree.from_json(json.loads(line)))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            if number == len(lines) and not line.endswith("}"):  # the last line, cut by a kill: regrown on resume
                break
            raise ValueError(f"{path}: line {number}: not a response tree ({err})") from err
    if not trees:
        raise ValueError(f"{path}: no trees")
    return trees


def _completed(path: Path) -> dict[str, str]:
    """``tree_id -> line`` of the complete lines of a (possibly torn) tree file."""
    done: dict[str, str] = {}
    if not path.is_file():
        return done
    for line in path.read_text(encoding="utf-8").split("\n"):
        try:
            done[json.loads(line)["tree_id"]] = line
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return done


def load_policy(policy: str, device: torch.device, dtype: str = "float32"):
    """A causal LM (preset, local directory or hub id) and its left-padding tokenizer, in eval mode."""
    from lit_safe.models.backbone import load_backbone
    from lit_safe.models.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(policy, padding_side="left")
    model = load_backbone(policy, tokenizer, causal_lm=True, dtype=dtype).to(device).eval()
    return model, tokenizer


def grow_file(model, tokenizer, prompts: Sequence[str], output: str | Path, *, kind: str, template: str,
              depth: int, branching: int | Sequence[int], segment_tokens: int, separators: Sequence[str] | None,
              temperatures: float | Sequence[float], top_p: float, max_new_tokens: int, responses: int, seed: int,
              rank: int = 0, world_size: int = 1, progress: bool = True) -> Path:
    """Grow a tree (``kind: tree``) or a pool of ``responses`` independent responses (``kind: pool``) for every prompt
    that ``output`` does not hold yet, appending one JSON line each; rank ``r`` of ``world_size`` grows prompts
    ``r, r + world_size, ...`` into ``output.part<r>``. Each tree's sampling is seeded by ``seed`` and its prompt, so
    a resumed or sharded run grows the same trees as an uninterrupted one."""
    from tqdm.auto import tqdm

    from lit_safe.models.text import encode_prompts
    from lit_safe.models.tree_generation import grow_tree, sample_independent

    output = Path(output)
    target = output if world_size == 1 else output.with_name(f"{output.name}.part{rank}")
    target.parent.mkdir(parents=True, exist_ok=True)
    done = set(_completed(output)) | set(_completed(target))
    mine = [p for i, p in enumerate(prompts) if i % world_size == rank]
    todo = [p for p in mine if tree_id_of(p) not in done]
    _drop_torn_line(target)
    device = next(model.parameters()).device
    with open(target, "a", encoding="utf-8") as f, tqdm(total=len(mine), initial=len(mine) - len(todo),
                                                        desc=f"growing {kind}s", disable=not progress) as bar:
        for prompt in todo:
            tid = tree_id_of(prompt)
            ids = encode_prompts(tokenizer, [prompt], template)[0].tolist()
            generator = torch.Generator(device=device)
            generator.manual_seed(int.from_bytes(hashlib.sha256(f"{seed}:{kind}:{tid}".encode()).digest()[:7], "big"))
            if kind == "tree":
                tree = grow_tree(model, tokenizer, prompt, ids, tid, depth=depth, branching=branching,
                                 segment_tokens=segment_tokens, separators=separators, temperatures=temperatures,
                                 top_p=top_p, max_new_tokens=max_new_tokens, generator=generator)
            else:
                tree = sample_independent(model, tokenizer, prompt, ids, tid, responses=responses,
                                          temperature=_first(temperatures),
                                          top_p=top_p, max_new_tokens=max_new_tokens, generator=generator)
            f.write(json.dumps(tree.to_json()) + "\n")
            f.flush()
            bar.update(1)
    return target


def _first(temperatures: float | Sequence[float]) -> float:
    """The temperature of the first level (what independent responses are sampled at)."""
    return temperatures if isinstance(temperatures, (int, float)) else temperatures[0]


def _drop_torn_line(path: Path) -> None:
    """Cut a last line that a kill left without its newline, so appending starts on a fresh line."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def merge_parts(output: str | Path, prompts: Sequence[str], world_size: int) -> Path:
    """Merge the ranks' ``output.part<r>`` files and ``output`` into ``output``, in prompt order."""
    output = Path(output)
    lines = _completed(output)
    parts = [output.with_name(f"{output.name}.part{r}") for r in range(world_size)]
    for part in parts:
        lines.update(_completed(part))
    ordered = [lines[tree_id_of(p)] for p in prompts if tree_id_of(p) in lines]
    tmp = output.with_name(f".{output.name}.tmp")
    tmp.write_text("".join(line + "\n" for line in ordered), encoding="utf-8")
    os.replace(tmp, output)
    for part in parts:
        part.unlink(missing_ok=True)
    return output


def read_prompt_list(prompts: str, num_prompts: int | None, skip: int = 0, prompt_split: str = "train",
                     subset: str | None = None, revision: str | None = None) -> list[str]:
    """Distinct prompts of a file (rows with a ``prompt``), a hub dataset (``prompt_split`` of ``subset`` at
    ``revision``) or ``synthetic``: the prompts of synthetic PKU-SafeRLHF rows (seed 7, never the quickstart's
    training or test rows), after skipping the first ``skip``."""
    from lit_safe.data_modules.prompts import distinct_prompts, read_prompts
    from lit_safe.data_modules.sources import DataValidationError

    wanted = None if num_prompts is None else skip + num_prompts
    if prompts == "synthetic":
        from lit_safe.data_modules.synthetic import generate_pku_saferlhf_rows

        rows = generate_pku_saferlhf_rows(2 * (wanted or 1000), seed=7)
        out = distinct_prompts(((f"synthetic row {i}", r) for i, r in enumerate(rows)), wanted)
    elif not Path(prompts).expanduser().exists() and prompts.count("/") == 1 and not prompts.startswith((".", "~")):
        from lit_safe.data_modules.sources import read_hub

        out = distinct_prompts(read_hub(prompts, prompt_split, subset, revision), wanted)
    else:
        out = read_prompts(prompts, wanted)
    out = out[skip:wanted]
    if num_prompts is not None and len(out) < num_prompts:
        raise DataValidationError(f"{prompts}: {len(out)} distinct prompts after the first {skip}; "
                                  f"{num_prompts} wanted")
    return out


def tree_grow(
    policy: str,
    prompts: str,
    output: str,
    num_prompts: int | None = None,
    skip_prompts: int = 0,
    prompt_split: str = "train",
    prompt_subset: str | None = None,
    prompt_revision: str | None = None,
    kind: str = "tree",
    prompt_template: str = SAFE_RLHF_TEMPLATE,
    depth: int = 3,
    branching: int | list[int] = 3,
    segment_tokens: int = 16,
    separators: list[str] | None = None,
    temperatures: float | list[float] = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 128,
    responses: int = 16,
    seed: int = 42,
    accelerator: str = "auto",
    devices: int = 1,
    precision: str = "32-true",
) -> Path:
    """``lit-safe tree-grow``: one response tree (or pool of independent responses) per prompt, as JSON lines.

    Args:
        policy: the causal LM that generates: a preset, a local Hugging Face folder or a hub id.
        prompts: a JSON/JSONL/parquet file of rows with a ``prompt`` (PKU-SafeRLHF, BeaverTails ...), a hub dataset
            id (``PKU-Alignment/PKU-SafeRLHF``) or ``synthetic``.
        output: the JSONL to write; trees already in it are kept (a killed run resumes).
        num_prompts: the first N distinct prompts (after ``skip_prompts``); all when ``None``.
        skip_prompts: distinct prompts to skip first (to keep held-out prompts apart).
        prompt_split, prompt_subset, prompt_revision: the split, config name and pinned revision of a hub dataset.
        kind: ``tree`` (a prefix tree per prompt) or ``pool`` (``responses`` independent responses per prompt: the
            chain baseline).
        prompt_template: the conversation template (``{prompt}`` is replaced).
        depth: branching levels; the last level's segments run to EOS or ``max_new_tokens``.
        branching: children per node, one number or one per level.
        segment_tokens: longest segment above the last level.
        separators: a segment also ends after a token whose text contains one of these (e.g. ``[".", "\\n"]``).
        temperatures: sampling temperature, one or one per level (higher early keeps branches apart).
        top_p: nucleus sampling mass.
        max_new_tokens: longest response (every path).
        responses: (pool) independent responses per prompt.
        seed: each tree is seeded by this and its prompt.
        accelerator: ``auto``, ``cpu`` or ``cuda``.
        devices: processes (one per GPU); each grows its share of the prompts.
        precision: ``32-true``, ``bf16-true`` or ``16-true`` (the weights' dtype).
    """
    from lightning.fabric import Fabric

    if kind not in ("tree", "pool"):
        raise ValueError(f"kind must be 'tree' or 'pool', got {kind!r}")
    dtype = {"32-true": "float32", "bf16-true": "bfloat16", "16-true": "float16"}.get(precision)
    if dtype is None:
        raise ValueError(f"precision must be 32-true, bf16-true or 16-true, got {precision!r}")
    from lit_safe.models.tree_generation import check_tree_settings

    check_tree_settings(depth=1 if kind == "pool" else depth, branching=branching if kind == "tree" else responses,
                        segment_tokens=segment_tokens, temperatures=temperatures if kind == "tree" else
                        _first(temperatures), top_p=top_p, max_new_tokens=max_new_tokens)
    _check_policy(policy)
    texts = read_prompt_list(prompts, num_prompts, skip_prompts, prompt_split, prompt_subset, prompt_revision)
    fabric = Fabric(accelerator=accelerator, devices=devices, strategy="ddp" if devices > 1 else "auto")
    fabric.launch()
    torch.manual_seed(seed)  # a preset policy is initialised at random: the same seed, the same policy
    model, tokenizer = load_policy(policy, fabric.device, dtype)
    grow_file(model, tokenizer, texts, output, kind=kind, template=prompt_template, depth=depth, branching=branching,
              segment_tokens=segment_tokens, separators=separators, temperatures=temperatures, top_p=top_p,
              max_new_tokens=max_new_tokens, responses=responses, seed=seed, rank=fabric.global_rank,
              world_size=fabric.world_size, progress=fabric.is_global_zero)
    fabric.barrier()
    if fabric.world_size > 1 and fabric.is_global_zero:
        merge_parts(output, texts, fabric.world_size)
    fabric.barrier()
    if fabric.is_global_zero:
        trees = read_trees(output)
        leaves = sum(len(t.leaves()) for t in trees)
        print(f"{len(trees)} {kind}s, {leaves} responses -> {output}")
    return Path(output)


def _check_policy(policy: str, what: str = "policy") -> None:
    """A preset, an existing directory or a hub id that can be had (offline: in the cache); else one clear error."""
    from lit_safe.models.tokenizer import is_preset, resolve_pretrained

    if not is_preset(policy):
        resolve_pretrained(policy, what=what)


# ------------------------------------------------------------------------------------------------ gold scorers
def load_gold_scorer(spec: str, kind: str, template: str = SAFE_RLHF_TEMPLATE, max_length: int = 512,
                     batch_size: int = 32, device: str = "cpu") -> Scorer:
    """A gold scorer ``(prompts, responses) -> scores``.

    Args:
        spec: ``synthetic`` (the synthetic task's ground truth, read from the text:
            :func:`~lit_safe.data_modules.synthetic.synthetic_gold_scores`) or a saved score model (a lit_safe export
            or a reference ``beaver-7b-*`` model).
        kind: ``reward`` or ``cost`` (which of the synthetic scores; a model's own score otherwise).
    """
    if spec == "synthetic":
        from lit_safe.data_modules.synthetic import synthetic_gold_scorer

        index = 0 if kind == "reward" else 1
        return lambda prompts, responses: synthetic_gold_scorer(prompts, responses)[index]
    from lit_safe.arena import score
    from lit_safe.models.score_model import ScoreModel
    from lit_safe.models.tokenizer import load_tokenizer

    _check_policy(spec, what=f"gold {kind} scorer")
    model = ScoreModel.from_pretrained(spec).to(device).eval()
    tokenizer = load_tokenizer(spec)

    def scorer(prompts: list[str], responses: list[str]) -> list[float]:
        return score(model, tokenizer, prompts, responses, template, max_length, batch_size).tolist()

    return scorer


def cached(scorer: Scorer) -> Scorer:
    """The same scorer, remembering each (prompt, response)'s score (gold scores are asked for again and again)."""
    memory: dict[tuple[str, str], float] = {}

    def wrapped(prompts: list[str], responses: list[str]) -> list[float]:
        missing = list(dict.fromkeys(k for k in zip(prompts, responses) if k not in memory))
        if missing:
            memory.update(zip(missing, scorer([p for p, _ in missing], [r for _, r in missing])))
        return [memory[k] for k in zip(prompts, responses)]

    return wrapped


def write_jsonl(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write rows as JSON lines through a temporary file, so that a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp, path)
    return path


def tree_pairs_command(
    trees: str,
    output: str,
    topology: str = "tree",
    budget: int | None = None,
    seed: int = 0,
    pools: str | None = None,
    lca_depths: list[int] | None = None,
    gold_reward: str | None = "synthetic",
    gold_cost: str | None = None,
    beta: float | None = 1.0,
    cost_beta: float | None = 1.0,
    labels: str | None = None,
    prompt_template: str = SAFE_RLHF_TEMPLATE,
    device: str = "cpu",
) -> Path:
    """``lit-safe tree-pairs``: sample one topology's pairs at a label budget and label them.

    Args:
        trees: a ``tree-grow`` output of kind ``tree``.
        output: the JSONL of labelled pairs (the tree preference format).
        topology: ``tree``, ``chain`` or ``chain_equal_responses`` (the last two need ``pools``).
        budget: labelled pairs in all; ``None`` takes every leaf pair of every tree (``tree`` only).
        seed: seeds the pair sampling and the label noise.
        pools: a ``tree-grow`` output of kind ``pool`` for the same prompts.
        lca_depths: (tree) only pairs whose lowest common ancestor has one of these depths (0 = the root).
        gold_reward: ``synthetic``, a saved reward model, or ``None`` for no helpfulness label.
        gold_cost: ``synthetic``, a saved cost model (cost > 0 = unsafe), or ``None`` for no safety labels.
        beta: Bradley-Terry inverse temperature of the reward labels; ``None`` for the deterministic preference.
        cost_beta: the same for the safer-response labels.
        labels: a JSONL of human (or other) labels keyed by ``pair_id`` (``better_response_id``,
            ``safer_response_id``, ``is_response_k_safe``), merged instead of gold labels.
        prompt_template: the template the gold score models read.
        device: where gold score models run.
    """
    from lit_safe.data_modules.sources import read_file

    grown = read_trees(trees)
    pool_trees = read_trees(pools) if pools else []
    if topology != "tree" and not pools:
        raise ValueError(f"topology {topology!r} samples independent responses: give --pools (tree-grow --kind pool)")
    if pools:
        by_prompt = {t.prompt: t for t in pool_trees}
        missing = [t.tree_id for t in grown if t.prompt not in by_prompt]
        if missing:
            raise ValueError(f"{pools} has no pool for {len(missing)} tree prompt(s), e.g. tree {missing[0]}")
        pool_trees = [by_prompt[t.prompt] for t in grown]
    if budget is None:
        if topology != "tree":
            raise ValueError("a budget is needed for chain pairs")
        budget = sum(len(t.leaf_pairs(lca_depths)) for t in grown)
    rows = sample_pairs(topology, grown, pool_trees, budget, seed, lca_depths)
    if labels is not None:
        rows = merge_labels(rows, list(read_file(labels)))
    elif gold_reward is not None or gold_cost is not None:
        reward = load_gold_scorer(gold_reward, "reward", prompt_template, device=device) if gold_reward else None
        cost = load_gold_scorer(gold_cost, "cost", prompt_template, device=device) if gold_cost else None
        rows = label_pairs(rows, reward, seed, beta, cost, cost_beta,
                           source=gold_reward if gold_reward == gold_cost or not gold_cost else f"{gold_reward}|"
                           f"{gold_cost}")
    write_jsonl(rows, output)
    print(f"{len(rows)} {topology} pairs over {len(grown)} prompts -> {output}")
    return Path(output)


# ------------------------------------------------------------------------------------------------- statistics
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def mean_ci(values: Sequence[float]) -> dict[str, float]:
    """Mean and the half-width of its 95% confidence interval (Student t over the values; 0 for one value)."""
    x = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if len(x) == 0:
        return {"mean": float("nan"), "ci95": float("nan"), "n": 0}
    if len(x) == 1:
        return {"mean": float(x[0]), "ci95": 0.0, "n": 1}
    t = _T975[len(x) - 2] if len(x) - 1 <= len(_T975) else 1.96
    return {"mean": float(x.mean()), "ci95": float(t * x.std(ddof=1) / math.sqrt(len(x))), "n": int(len(x))}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    def ranks(x: np.ndarray) -> np.ndarray:
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x), dtype=np.float64)
        for value in np.unique(x):  # ties share their mean rank
            tied = x == value
            r[tied] = r[tied].mean()
        return r

    return pearson(ranks(a), ranks(b))


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64) - np.mean(a), np.asarray(b, np.float64) - np.mean(b)
    denominator = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denominator) if denominator > 0 else float("nan")


def pairwise_accuracy(learned: np.ndarray, gold: np.ndarray, pairs: np.ndarray) -> float:
    """Share of pairs ``(i, j)`` with distinct gold scores that the learned scores order like the gold ones (a learned
    tie counts half)."""
    gi, gj, li, lj = gold[pairs[:, 0]], gold[pairs[:, 1]], learned[pairs[:, 0]], learned[pairs[:, 1]]
    keep = gi != gj
    if not keep.any():
        return float("nan")
    agree = np.sign(li - lj)[keep] * np.sign(gi - gj)[keep]
    return float(np.mean(np.where(agree == 0, 0.5, agree > 0)))


def best_of_n_gold(learned: np.ndarray, gold: np.ndarray, n: int) -> float:
    """Mean over prompts of the gold score of the response the learned scores pick among each prompt's first ``n``.

    Args:
        learned, gold: ``(prompts, responses)`` scores.
    """
    picks = learned[:, :n].argmax(axis=1)
    return float(gold[np.arange(len(gold)), picks].mean())


def win_rate(gold: np.ndarray, learned_a: np.ndarray, learned_b: np.ndarray, n: int) -> float:
    """How often best-of-``n`` with scores A picks a response with a higher gold score than best-of-``n`` with B
    (ties count half), over prompts. ``(prompts, responses)`` arrays."""
    rows = np.arange(len(gold))
    ga = gold[rows, learned_a[:, :n].argmax(axis=1)]
    gb = gold[rows, learned_b[:, :n].argmax(axis=1)]
    return float(np.mean(np.where(ga == gb, 0.5, ga > gb)))


def probe_variance(runs: Sequence[np.ndarray], pairs: np.ndarray) -> dict[str, float]:
    """Seed-to-seed variance of reward differences on probe pairs, scale-free.

    Each run's learned scores (flat, every held-out response) are standardised first (mean 0, std 1), so a model
    that only shrinks its scores does not look more reliable; then ``d = z_i - z_j`` per probe pair, its variance
    across runs (ddof 1), averaged over pairs (with a 95% interval over pairs).
    """
    if len(runs) < 2:
        return {"mean": float("nan"), "ci95": float("nan"), "n": len(runs)}
    diffs = []
    for scores in runs:
        z = (scores - scores.mean()) / max(float(scores.std()), 1e-12)
        diffs.append(z[pairs[:, 0]] - z[pairs[:, 1]])
    per_pair = np.var(np.stack(diffs), axis=0, ddof=1)
    return {"mean": float(per_pair.mean()), "ci95": float(1.96 * per_pair.std(ddof=1) / math.sqrt(len(per_pair))),
            "n": len(runs)}


# ------------------------------------------------------------------------------------------------- training
def train_reward_model(pairs_file: Path, backbone: str, workdir: Path, *, seed: int, epochs: int, batch_size: int,
                       lr: float, max_length: int, template: str, loss_type: str = "sequence",
                       accelerator: str = "auto", precision: str = "32-true", weight_decay: float = 0.01,
                       warmup_ratio: float = 0.03):
    """Train a :class:`~lit_safe.modules.reward.RewardModule` on a pair file through a Lightning ``Trainer``
    (:class:`~lit_safe.data_modules.tree_preference.TreePreferenceDataModule`, no held-out split: the experiment
    evaluates on its own held-out responses). Returns the trained module."""
    from lightning.pytorch import seed_everything

    seed_everything(seed, verbose=False)
    with quiet():
        return _train_reward_model(pairs_file, backbone, workdir, seed=seed, epochs=epochs, batch_size=batch_size,
                                   lr=lr, max_length=max_length, template=template, loss_type=loss_type,
                                   accelerator=accelerator, precision=precision, weight_decay=weight_decay,
                                   warmup_ratio=warmup_ratio)


@contextlib.contextmanager
def quiet():
    """Silence what every one of the experiment's many small runs would repeat (Lightning's device lines and tips,
    transformers' load reports and progress bars, the data report, which ``report.json`` keeps)."""
    import transformers

    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [logger.level for logger in loggers]
    verbosity = transformers.logging.get_verbosity()
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
        transformers.logging.set_verbosity(verbosity)
        transformers.logging.enable_progress_bar()


def _train_reward_model(pairs_file: Path, backbone: str, workdir: Path, *, seed: int, epochs: int, batch_size: int,
                        lr: float, max_length: int, template: str, loss_type: str, accelerator: str, precision: str,
                        weight_decay: float, warmup_ratio: float):
    from lightning.pytorch import Trainer

    from lit_safe.data_modules.tree_preference import TreePreferenceDataModule
    from lit_safe.modules.reward import DEFAULT_OPTIMIZER, RewardModule

    data = TreePreferenceDataModule(tokenizer=backbone, source=str(pairs_file), val_fraction=0.0, test_split=None,
                                    prompt_template=template, max_length=max_length, batch_size=batch_size,
                                    num_workers=0, group_size=8, prepared_dir=str(workdir / "prepared"), seed=seed)
    optimizer = replace(DEFAULT_OPTIMIZER, lr=lr, weight_decay=weight_decay, warmup_ratio=warmup_ratio)
    module = RewardModule(backbone=backbone, loss_type=loss_type, optimizer=optimizer)
    trainer = Trainer(accelerator=accelerator, devices=1, precision=precision, max_epochs=epochs, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, default_root_dir=str(workdir))
    trainer.fit(module, datamodule=data)
    return module.eval()


# ------------------------------------------------------------------------------------------------ the experiment
def _eval_set(pools: Sequence[ResponseTree], n: int) -> tuple[list[str], list[str], np.ndarray]:
    """Held-out (prompts, responses) as flat lists, prompt-major with ``n`` responses each, and the disjoint
    consecutive pairs ``(P * n // 2, 2)`` of each prompt's responses (independent pairs)."""
    prompts, responses = [], []
    for pool in pools:
        leaves = pool.leaves()
        if len(leaves) < n:
            raise ValueError(f"held-out pool {pool.tree_id} has {len(leaves)} responses, {n} needed")
        for leaf in leaves[:n]:
            prompts.append(pool.prompt)
            responses.append(pool.nodes[leaf].text)
    base = np.arange(len(pools))[:, None] * n
    within = np.arange(0, n - 1, 2)[None, :]
    pairs = np.stack([(base + within).ravel(), (base + within + 1).ravel()], axis=1)
    return prompts, responses, pairs


def run_tree_experiment(
    policy: str,
    output: str,
    prompts: str = "synthetic",
    num_prompts: int = 128,
    eval_prompts: int = 32,
    prompt_template: str = SAFE_RLHF_TEMPLATE,
    depth: int = 3,
    branching: int | list[int] = 3,
    segment_tokens: int = 12,
    separators: list[str] | None = None,
    temperatures: float | list[float] = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 96,
    gold_reward: str = "synthetic",
    beta: float | None = 1.0,
    budgets: list[int] | None = None,
    seeds: list[int] | None = None,
    topologies: list[str] | None = None,
    lca_depths: list[int] | None = None,
    reward_backbone: str | None = None,
    loss_type: str = "sequence",
    epochs: int = 3,
    batch_size: int = 16,
    lr: float = 1e-3,
    max_length: int = 256,
    best_of_n: int = 64,
    win_n: int = 16,
    probe_pairs: int = 256,
    generation_seed: int = 42,
    accelerator: str = "auto",
) -> dict[str, Any]:
    """``lit-safe tree-experiment``: tree against chain preference data at equal label budgets (see the module
    docstring for what is measured and written).

    Args:
        policy: the policy that grows trees and samples responses (usually the SFT model).
        output: directory of every file the experiment writes (trees, pairs, results, plots, TensorBoard).
        prompts: a file of rows with a ``prompt``, or ``synthetic``.
        num_prompts: training prompts (one tree and one pool of independent responses each).
        eval_prompts: held-out prompts (after the training ones): ``best_of_n`` independent responses each, scored
            by every trained reward model.
        prompt_template: the conversation template.
        depth, branching, segment_tokens, separators, temperatures, top_p, max_new_tokens: how trees grow
            (``lit-safe tree-grow``); pools and held-out responses use the first temperature.
        gold_reward: the labeller's scorer: ``synthetic`` or a saved reward model.
        beta: Bradley-Terry inverse temperature of the labels (``None``: deterministic).
        budgets: labelled pairs per reward model (default ``[128, 384, 1152]``).
        seeds: one reward model per seed, budget and topology (default ``[0, 1, 2]``); the seed sets the pairs, the
            label noise and the initialisation of the score head.
        topologies: any of ``tree``, ``chain``, ``chain_equal_responses`` (default all three).
        lca_depths: (tree) only pairs whose LCA has one of these depths.
        reward_backbone: the reward models' initial backbone (default: the policy, as Safe RLHF initialises its
            reward model from the SFT model).
        loss_type: ``sequence`` or ``token`` (from the first differing token: the branch point of a tree pair).
        epochs: passes over each pair set (equal budgets get equal optimiser steps).
        batch_size: pairs per step.
        lr: peak learning rate.
        max_length: longest tokenised (prompt, response).
        best_of_n: held-out responses per prompt, and the largest N of the best-of-N curves.
        win_n: N of the best-of-N policies whose win rate is reported.
        probe_pairs: held-out pairs whose reward differences measure the seed-to-seed variance.
        generation_seed: seeds tree growth and sampling (per prompt).
        accelerator: where generation and training run (``auto``, ``cpu``, ``cuda``).

    Returns:
        The summary (also ``summary.json``).
    """
    budgets = budgets or [128, 384, 1152]
    seeds = seeds if seeds is not None else [0, 1, 2]
    topologies = topologies or list(TOPOLOGIES)
    unknown = [t for t in topologies if t not in TOPOLOGIES]
    if unknown:
        raise ValueError(f"unknown topologies {unknown}; expected any of {list(TOPOLOGIES)}")
    if best_of_n < 2 or win_n > best_of_n or best_of_n % 2:
        raise ValueError(f"best_of_n ({best_of_n}) must be even, >= 2 and >= win_n ({win_n})")
    from lit_safe.models.tree_generation import check_tree_settings

    check_tree_settings(depth=depth, branching=branching, segment_tokens=segment_tokens, temperatures=temperatures,
                        top_p=top_p, max_new_tokens=max_new_tokens)
    _check_policy(policy)
    if gold_reward != "synthetic":
        _check_policy(gold_reward, what="gold_reward")
    started = time.perf_counter()
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if accelerator in ("auto", "cuda", "gpu") and torch.cuda.is_available() else "cpu")
    train_prompts = read_prompt_list(prompts, num_prompts)
    held_out = read_prompt_list(prompts, eval_prompts, skip=num_prompts)
    pool_size = 2 * max(math.ceil(b / num_prompts) for b in budgets)
    growth = dict(template=prompt_template, depth=depth, branching=branching, segment_tokens=segment_tokens,
                  separators=separators, temperatures=temperatures, top_p=top_p, max_new_tokens=max_new_tokens,
                  seed=generation_seed)
    settings = {"policy": policy, "prompts": prompts, "num_prompts": num_prompts, "eval_prompts": eval_prompts,
                **growth, "pool_size": pool_size, "best_of_n": best_of_n, "gold_reward": gold_reward}
    _check_settings(out / "generation.json", settings)

    # 1. Trees and pools for the training prompts, independent responses for the held-out ones (resumable).
    gen_started = time.perf_counter()
    torch.manual_seed(generation_seed)  # a preset policy is initialised at random: the same seed, the same policy
    model, tokenizer = load_policy(policy, device)
    grow_file(model, tokenizer, train_prompts, out / "trees.jsonl", kind="tree", responses=0, **growth)
    grow_file(model, tokenizer, train_prompts, out / "pools.jsonl", kind="pool", responses=pool_size, **growth)
    grow_file(model, tokenizer, held_out, out / "eval_pool.jsonl", kind="pool", responses=best_of_n, **growth)
    del model
    generation_s = time.perf_counter() - gen_started
    trees, pools = read_trees(out / "trees.jsonl"), read_trees(out / "pools.jsonl")
    eval_prompt_list, eval_responses, eval_pairs = _eval_set(read_trees(out / "eval_pool.jsonl"), best_of_n)
    gold = cached(load_gold_scorer(gold_reward, "reward", prompt_template, max_length, device=str(device)))
    eval_gold = np.asarray(gold(eval_prompt_list, eval_responses), dtype=np.float64)
    probe = eval_pairs[:probe_pairs]
    tree_tokens = sum(t.meta.get("tokens_forwarded", 0) for t in trees)
    tree_leaves = sum(len(t.leaves()) for t in trees)
    independent = sum(t.meta.get("independent_tokens", 0) for t in trees)
    print(f"Grew {len(trees)} trees ({tree_leaves} leaves, {tree_tokens / max(tree_leaves, 1):.0f} tokens forwarded "
          f"per leaf against {independent / max(tree_leaves, 1):.0f} for independent samples), "
          f"{len(pools)} pools of {pool_size} and {len(held_out)} held-out prompts x {best_of_n} responses "
          f"in {generation_s:.0f} s")

    # 2. One reward model per (budget, seed, topology); finished runs are read back.
    results_file = out / "results.jsonl"
    done = {}
    if results_file.is_file():
        for line in results_file.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                done[row["budget"], row["seed"], row["topology"]] = row
    scores_dir = out / "scores"
    scores_dir.mkdir(exist_ok=True)
    backbone = reward_backbone or policy
    for budget in budgets:
        for seed in seeds:
            for topology in topologies:
                key = (budget, seed, topology)
                name = f"{topology}-b{budget}-s{seed}"
                if key in done and (scores_dir / f"{name}.npy").is_file():
                    continue
                run_started = time.perf_counter()
                rows = sample_pairs(topology, trees, pools, budget, seed, lca_depths)
                rows = label_pairs(rows, gold, seed, beta, source=gold_reward)
                pairs_file = write_jsonl(rows, out / "pairs" / f"{name}.jsonl")
                module = train_reward_model(pairs_file, backbone, out, seed=seed, epochs=epochs,
                                            batch_size=batch_size, lr=lr, max_length=max_length,
                                            template=prompt_template, loss_type=loss_type, accelerator=accelerator)
                learned = _score_with(module, eval_prompt_list, eval_responses, prompt_template, max_length)
                np.save(scores_dir / f"{name}.npy", learned)
                row = _run_metrics(learned, eval_gold, eval_pairs, best_of_n)
                row.update(budget=budget, seed=seed, topology=topology, pairs=len(rows),
                           label_agreement=_label_agreement(rows),
                           distinct_responses=len({(r["tree_id"], tuple(r[f"path_{k}"])) for r in rows
                                                   for k in (0, 1)}),
                           mean_lca_depth=float(np.mean([r["lca_depth"] for r in rows])),
                           annotation_chars=float(np.mean([len(r["response_0"]) + len(r["response_1"])
                                                           - 2 * r["shared_prefix_chars"] for r in rows])),
                           wall_s=round(time.perf_counter() - run_started, 2))
                done[key] = row
                with open(results_file, "a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"  {name}: accuracy {row['accuracy']:.3f}, spearman {row['spearman']:.3f}, "
                      f"best-of-{win_n} gold {row['best_of_n'][str(win_n)]:.3f} ({row['wall_s']:.0f} s)")

    # 3. Aggregate over seeds.
    summary = _summarise(done, scores_dir, eval_gold, eval_pairs, probe, budgets, seeds, topologies, best_of_n, win_n)
    summary.update(settings=settings, generation_s=round(generation_s, 1),
                   tree_tokens_forwarded_per_leaf=tree_tokens / max(tree_leaves, 1),
                   independent_tokens_per_leaf=independent / max(tree_leaves, 1),
                   wall_s=round(time.perf_counter() - started, 1),
                   gold_reward_of_random_response=float(eval_gold.mean()),
                   gold_reward_of_oracle_best_of_n={str(n): float(eval_gold.reshape(-1, best_of_n)[:, :n].max(1).mean())
                                                    for n in _ns(best_of_n)})
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    table = format_table(summary)
    (out / "summary.md").write_text(table + "\n")
    plots = write_plots(summary, out)
    write_tensorboard(summary, out / "tensorboard", plots)
    print(table)
    print(f"Wrote {results_file}, {out / 'summary.json'}, {out / 'summary.md'}, "
          f"{', '.join(str(p) for p in plots)} and TensorBoard logs in {out / 'tensorboard'}")
    return summary


def _check_settings(path: Path, settings: dict[str, Any]) -> None:
    """Generated files belong to the settings that made them: refuse to mix them with others'."""
    text = json.dumps(settings, sort_keys=True, default=str)
    if path.is_file() and path.read_text() != text:
        raise ValueError(f"{path.parent} holds an experiment with other generation settings ({path}); "
                         "use another output directory or delete it")
    path.write_text(text)


def _ns(best_of_n: int) -> list[int]:
    ns, n = [], 2
    while n < best_of_n:
        ns.append(n)
        n *= 2
    return ns + [best_of_n]


def _score_with(module, prompts: list[str], responses: list[str], template: str, max_length: int) -> np.ndarray:
    from lit_safe.arena import score

    model = module.model.eval()
    return score(model, module.tokenizer, prompts, responses, template, max_length, 64).numpy().astype(np.float64)


def _label_agreement(rows: list[dict[str, Any]]) -> float:
    """Share of labels that agree with the gold reward where it is not tied (how noisy the labels were)."""
    agree = [(r["gold_reward_0"] > r["gold_reward_1"]) == (r["better_response_id"] == 0) for r in rows
             if r["gold_reward_0"] != r["gold_reward_1"]]
    return float(np.mean(agree)) if agree else float("nan")


def _run_metrics(learned: np.ndarray, gold: np.ndarray, pairs: np.ndarray, best_of_n: int) -> dict[str, Any]:
    grid_l, grid_g = learned.reshape(-1, best_of_n), gold.reshape(-1, best_of_n)
    return {
        "accuracy": pairwise_accuracy(learned, gold, pairs),
        "pearson": pearson(learned, gold),
        "spearman": spearman(learned, gold),
        "best_of_n": {str(n): best_of_n_gold(grid_l, grid_g, n) for n in _ns(best_of_n)},
    }


def _summarise(done: dict, scores_dir: Path, gold: np.ndarray, pairs: np.ndarray, probe: np.ndarray,
               budgets: list[int], seeds: list[int], topologies: list[str], best_of_n: int,
               win_n: int) -> dict[str, Any]:
    rows = []
    for budget in budgets:
        for topology in topologies:
            runs = [done[budget, s, topology] for s in seeds if (budget, s, topology) in done]
            scores = [np.load(scores_dir / f"{topology}-b{budget}-s{r['seed']}.npy") for r in runs]
            rows.append({
                "budget": budget, "topology": topology, "seeds": len(runs),
                "accuracy": mean_ci([r["accuracy"] for r in runs]),
                "pearson": mean_ci([r["pearson"] for r in runs]),
                "spearman": mean_ci([r["spearman"] for r in runs]),
                "probe_variance": probe_variance(scores, probe),
                "best_of_n": {n: mean_ci([r["best_of_n"][n] for r in runs]) for n in map(str, _ns(best_of_n))},
                "distinct_responses": mean_ci([r["distinct_responses"] for r in runs]),
                "mean_lca_depth": mean_ci([r["mean_lca_depth"] for r in runs]),
                "annotation_chars": mean_ci([r["annotation_chars"] for r in runs]),
                "label_agreement": mean_ci([r["label_agreement"] for r in runs]),
            })
    wins = []
    grid = gold.reshape(-1, best_of_n)
    for budget in budgets:
        for other in [t for t in topologies if t != "tree"] if "tree" in topologies else []:
            rates = []
            for seed in seeds:
                a = scores_dir / f"tree-b{budget}-s{seed}.npy"
                b = scores_dir / f"{other}-b{budget}-s{seed}.npy"
                if a.is_file() and b.is_file():
                    rates.append(win_rate(grid, np.load(a).reshape(-1, best_of_n), np.load(b).reshape(-1, best_of_n),
                                          win_n))
            wins.append({"budget": budget, "against": other, "n": win_n, "win_rate": mean_ci(rates)})
    return {"rows": rows, "win_rates": wins, "best_of_n": best_of_n, "win_n": win_n}


def _fmt(stat: dict[str, float], digits: int = 3) -> str:
    if stat["n"] == 0 or math.isnan(stat["mean"]):
        return "-"
    return f"{stat['mean']:.{digits}f} ± {stat['ci95']:.{digits}f}"


def format_table(summary: dict[str, Any]) -> str:
    """The summary as markdown: one row per (budget, topology), then the win rates. "Characters to read per pair"
    counts both responses after their shared prefix (what a labeller must compare; the paper's annotation-cost
    argument, about 21% less for trees there)."""
    n = str(summary["win_n"])
    lines = [
        f"| budget | topology | seeds | held-out accuracy | Spearman | probe variance | best-of-{n} gold | "
        "distinct responses | mean LCA depth | characters to read per pair |",
        "|---:|---|---:|---|---|---|---|---:|---:|---:|",
    ]
    for row in summary["rows"]:
        lines.append(f"| {row['budget']} | {row['topology']} | {row['seeds']} | {_fmt(row['accuracy'])} | "
                     f"{_fmt(row['spearman'])} | {_fmt(row['probe_variance'])} | {_fmt(row['best_of_n'][n])} | "
                     f"{row['distinct_responses']['mean']:.0f} | {row['mean_lca_depth']['mean']:.2f} | "
                     f"{row['annotation_chars']['mean']:.0f} |")
    if summary["win_rates"]:
        lines += ["", f"| budget | tree RM against | win rate of best-of-{n} (gold judge, ties half) |",
                  "|---:|---|---|"]
        for win in summary["win_rates"]:
            lines.append(f"| {win['budget']} | {win['against']} | {_fmt(win['win_rate'])} |")
    return "\n".join(lines)


def write_plots(summary: dict[str, Any], out: Path) -> list[Path]:
    """PNGs: accuracy and probe variance against the budget, best-of-N curves at each budget. Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    topologies = list(dict.fromkeys(r["topology"] for r in summary["rows"]))
    budgets = sorted({r["budget"] for r in summary["rows"]})
    by = {(r["budget"], r["topology"]): r for r in summary["rows"]}
    paths = []
    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    for topology in topologies:
        for ax, metric in zip(axes, ("accuracy", "spearman", "probe_variance")):
            stats = [by[b, topology][metric] for b in budgets]
            ax.errorbar(budgets, [s["mean"] for s in stats], yerr=[s["ci95"] for s in stats], marker="o",
                        capsize=3, label=topology)
    for ax, title in zip(axes, ("held-out pairwise accuracy (gold)", "Spearman with gold reward",
                                "seed-to-seed variance of reward differences")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("labelled pairs")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    figure.tight_layout()
    paths.append(out / "accuracy_variance_vs_budget.png")
    figure.savefig(paths[-1], dpi=110)
    plt.close(figure)

    ns = [int(n) for n in summary["rows"][0]["best_of_n"]]
    figure, axes = plt.subplots(1, len(budgets), figsize=(5 * len(budgets), 4), squeeze=False)
    for ax, budget in zip(axes[0], budgets):
        for topology in topologies:
            stats = [by[budget, topology]["best_of_n"][str(n)] for n in ns]
            ax.errorbar(ns, [s["mean"] for s in stats], yerr=[s["ci95"] for s in stats], marker="o", capsize=3,
                        label=topology)
        oracle = summary.get("gold_reward_of_oracle_best_of_n")
        if oracle:
            ax.plot(ns, [oracle[str(n)] for n in ns], color="gray", linestyle="--", label="gold best-of-N")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("N")
        ax.set_ylabel("gold reward of the pick")
        ax.set_title(f"best-of-N, {budget} labelled pairs")
        ax.grid(alpha=0.3)
        ax.legend()
    figure.tight_layout()
    paths.append(out / "best_of_n.png")
    figure.savefig(paths[-1], dpi=110)
    plt.close(figure)
    return paths


def write_tensorboard(summary: dict[str, Any], logdir: Path, plots: Sequence[Path]) -> None:
    """Scalars per topology with the budget as the step (``tree_vs_chain/<metric>/<topology>``), win rates, and the
    plots as images."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(logdir))
    for row in summary["rows"]:
        for metric in ("accuracy", "spearman", "probe_variance"):
            writer.add_scalar(f"tree_vs_chain/{metric}/{row['topology']}", row[metric]["mean"], row["budget"])
        writer.add_scalar(f"tree_vs_chain/best_of_{summary['win_n']}/{row['topology']}",
                          row["best_of_n"][str(summary["win_n"])]["mean"], row["budget"])
    for win in summary["win_rates"]:
        writer.add_scalar(f"tree_vs_chain/win_rate_vs_{win['against']}", win["win_rate"]["mean"], win["budget"])
    try:
        from PIL import Image

        for path in plots:
            image = np.asarray(Image.open(path).convert("RGB"))
            writer.add_image(f"tree_vs_chain/{path.stem}", image, dataformats="HWC")
    except ImportError:  # Pillow comes with matplotlib; without it the PNG files are still written
        pass
    writer.close()


__all__ = [
    "best_of_n_gold", "cached", "format_table", "grow_file", "load_gold_scorer", "mean_ci", "merge_parts",
    "pairwise_accuracy", "pearson", "probe_variance", "read_prompt_list", "read_trees", "run_tree_experiment",
    "spearman", "tree_grow", "tree_id_of", "tree_pairs_command", "win_rate", "write_plots",
]
