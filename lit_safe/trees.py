"""Response trees and the tree / chain preference pairs of "Rethinking Information Structures in RLHF" (Qiu et al.,
arXiv 2402.10184): pure Python, no torch, no Lightning.

For each prompt a policy grows a prefix tree (:class:`ResponseTree`): the root is the prompt, every other node a
segment of response tokens, every root-to-leaf path one complete response. Two leaves share the tokens of their
lowest common ancestor (LCA) and diverge right after it, so a label on a leaf pair is spent where two responses
differ. The conventional ("chain") data labels pairs of independently sampled responses; here a pool of independent
responses is a tree of depth 1 (the root's children are whole responses, every pair's LCA is the root), so both
topologies use one format and one set of functions.

The reward model and its Bradley-Terry loss do not change: only which pairs are labelled does. The samplers draw the
same number of labelled pairs over the same prompts for every topology (:func:`allocate_budget`), and a second control
(``chain_equal_responses``) also equalises the number of distinct responses per prompt.

Pair rows (the tree preference format, one JSON object per line; see the README) carry the PKU-SafeRLHF fields the
existing pair views read (``prompt``, ``response_0``, ``response_1``, ``better_response_id`` and, with a cost label,
``safer_response_id``, ``is_response_0_safe``, ``is_response_1_safe``) plus the provenance: ``pair_id``, ``tree_id``,
``topology``, ``path_0``/``path_1`` (child indices from the root), ``lca_depth`` (0: only the prompt is shared),
``shared_prefix_tokens`` (response tokens both share, in the generating tokenizer), ``divergence_index`` (index of
the first differing token in the generated sequence, prompt included), ``shared_prefix_chars`` and ``label_source``.

Departure from the paper: its labeller was GPT-4 on real tasks; here the labels come from a gold scorer with
Bradley-Terry noise (:func:`bt_probability`), deterministically, or from a file of human labels, so that the effect
can be measured against a known ground truth.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

TOPOLOGIES = ("tree", "chain", "chain_equal_responses")


@dataclass
class TreeNode:
    """One node of a response tree.

    Attributes:
        id: index of the node in :attr:`ResponseTree.nodes` (the root is 0).
        parent: the parent's id (``None`` for the root).
        depth: 0 for the root, 1 for its children, ...
        tokens: the segment's token ids (empty for the root; the prompt is not part of the response).
        finished: the segment ended with EOS (the EOS id is not stored in ``tokens``).
        children: ids of the child nodes, in the order they were generated.
        text: for a leaf, the whole response decoded from its path (``None`` for inner nodes).
    """

    id: int
    parent: int | None
    depth: int
    tokens: list[int] = field(default_factory=list)
    finished: bool = False
    children: list[int] = field(default_factory=list)
    text: str | None = None


@dataclass
class ResponseTree:
    """A prefix tree of responses to one prompt.

    Attributes:
        tree_id: unique name of the tree (and of its prompt) in a dataset.
        prompt: the user prompt (without the conversation template).
        prompt_tokens: length of the templated, tokenised prompt the policy read.
        nodes: every node; ``nodes[0]`` is the root.
        meta: how it was grown (depth, branching, temperatures, tokens forwarded ...).
    """

    tree_id: str
    prompt: str
    prompt_tokens: int = 0
    nodes: list[TreeNode] = field(default_factory=lambda: [TreeNode(0, None, 0)])
    meta: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------------------------------------ building
    def add_child(self, parent: int, tokens: Sequence[int], finished: bool) -> int:
        """Append a node under ``parent``; returns its id."""
        node = TreeNode(len(self.nodes), parent, self.nodes[parent].depth + 1, list(tokens), finished)
        self.nodes.append(node)
        self.nodes[parent].children.append(node.id)
        return node.id

    # ------------------------------------------------------------------------------------------------ reading
    def leaves(self) -> list[int]:
        """Ids of the nodes without children (the responses), in generation order."""
        return [n.id for n in self.nodes if not n.children and n.id != 0]

    def ancestry(self, node: int) -> list[int]:
        """Node ids from the root to ``node``, both included."""
        out = [node]
        while self.nodes[out[-1]].parent is not None:
            out.append(self.nodes[out[-1]].parent)
        return out[::-1]

    def child_path(self, node: int) -> list[int]:
        """The position of each node among its parent's children, from the root down: ``[0, 2]`` is the third child
        of the root's first child. Stable across serialisation, unlike node ids of another tree."""
        ids = self.ancestry(node)
        return [self.nodes[parent].children.index(child) for parent, child in zip(ids, ids[1:])]

    def response_tokens(self, node: int) -> list[int]:
        """The response tokens from the root to ``node`` (the concatenated segments; no EOS)."""
        return [t for n in self.ancestry(node) for t in self.nodes[n].tokens]

    def lca(self, a: int, b: int) -> int:
        """The lowest common ancestor of two nodes (the parent for siblings, the node itself for a == b)."""
        seen = set(self.ancestry(a))
        return next(n for n in reversed(self.ancestry(b)) if n in seen)

    def shared_prefix_tokens(self, a: int, b: int) -> int:
        """Response tokens two nodes share: the path length of their LCA."""
        return len(self.response_tokens(self.lca(a, b)))

    def leaf_pairs(self, lca_depths: Sequence[int] | None = None) -> list[tuple[int, int]]:
        """Every pair of distinct leaves ``(a, b)`` with ``a < b``, optionally only those whose LCA has one of the
        given depths."""
        pairs = list(combinations(self.leaves(), 2))
        if lca_depths is not None:
            wanted = set(lca_depths)
            pairs = [(a, b) for a, b in pairs if self.nodes[self.lca(a, b)].depth in wanted]
        return pairs

    # ------------------------------------------------------------------------------------------------ storing
    def to_json(self) -> dict[str, Any]:
        return {
            "tree_id": self.tree_id,
            "prompt": self.prompt,
            "prompt_tokens": self.prompt_tokens,
            "meta": self.meta,
            "nodes": [
                {"parent": n.parent, "tokens": n.tokens, "finished": n.finished,
                 **({"text": n.text} if n.text is not None else {})}
                for n in self.nodes
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ResponseTree:
        """Rebuild a tree written by :meth:`to_json`.

        Raises:
            ValueError: a node whose parent comes after it or does not exist, or a root that is not the first node.
        """
        nodes = data["nodes"]
        if not nodes or nodes[0]["parent"] is not None:
            raise ValueError(f"tree {data.get('tree_id')!r}: the first node must be the root (parent null)")
        tree = cls(data["tree_id"], data["prompt"], int(data.get("prompt_tokens", 0)), meta=dict(data.get("meta", {})))
        tree.nodes[0].tokens = list(nodes[0].get("tokens", []))
        for i, node in enumerate(nodes[1:], start=1):
            parent = node["parent"]
            if not isinstance(parent, int) or not 0 <= parent < i:
                raise ValueError(f"tree {tree.tree_id!r}: node {i} has parent {parent!r}; parents come first")
            child = tree.add_child(parent, node["tokens"], bool(node.get("finished", False)))
            tree.nodes[child].text = node.get("text")
        return tree


# ---------------------------------------------------------------------------------------------------- sampling
def allocate_budget(budget: int, num_prompts: int, seed: int) -> list[int]:
    """Split ``budget`` labelled pairs over ``num_prompts`` prompts as evenly as possible; which prompts get one more
    is a seeded choice. Every topology of one (budget, seed) gets the same allocation.

    Returns:
        ``num_prompts`` counts that sum to ``budget``.
    """
    if budget < 0 or num_prompts <= 0:
        raise ValueError(f"need a budget >= 0 and at least one prompt, got {budget} pairs for {num_prompts} prompts")
    base, extra = divmod(budget, num_prompts)
    lucky = set(random.Random(f"allocate:{seed}").sample(range(num_prompts), extra))
    return [base + (i in lucky) for i in range(num_prompts)]


def _check_enough(topology: str, tree: ResponseTree, wanted: int, available: int, what: str) -> None:
    if wanted > available:
        raise ValueError(f"{topology}: prompt {tree.tree_id!r} needs {wanted} pairs but its {what} allows only "
                         f"{available}; grow more leaves (branching, depth, responses per prompt) or lower the budget")


def tree_pairs(tree: ResponseTree, count: int, rng: random.Random,
               lca_depths: Sequence[int] | None = None) -> list[tuple[int, int]]:
    """``count`` distinct leaf pairs of one tree, drawn uniformly (among LCA depths ``lca_depths`` when given)."""
    pairs = tree.leaf_pairs(lca_depths)
    _check_enough("tree", tree, count, len(pairs), "tree's leaf pairs")
    return rng.sample(pairs, count)


def chain_pairs(pool: ResponseTree, count: int, rng: random.Random) -> list[tuple[int, int]]:
    """``count`` pairs of independent responses, each response used once (every label compares two fresh samples,
    as conventional preference data does)."""
    leaves = pool.leaves()
    _check_enough("chain", pool, 2 * count, len(leaves), "pool of independent responses")
    chosen = rng.sample(leaves, 2 * count)
    return [(min(a, b), max(a, b)) for a, b in zip(chosen[::2], chosen[1::2])]


def chain_pairs_among(pool: ResponseTree, count: int, responses: int, rng: random.Random) -> list[tuple[int, int]]:
    """``count`` distinct pairs that together use exactly ``responses`` independent responses (the equal-responses
    control: as many distinct responses as the tree pairs of the same prompt use)."""
    leaves = pool.leaves()
    _check_enough("chain_equal_responses", pool, responses, len(leaves), "pool of independent responses")
    subset = rng.sample(leaves, responses)
    pairs = list(combinations(sorted(subset), 2))
    _check_enough("chain_equal_responses", pool, count, len(pairs), f"{responses} responses")
    if count < math.ceil(responses / 2):
        raise ValueError(f"{count} pairs cannot use {responses} distinct responses")
    # First pairs that cover every chosen response once (the last one of an odd number twice), then any others.
    cover = [(min(a, b), max(a, b)) for a, b in zip(subset[::2], subset[1::2])]
    if responses % 2:
        partner = rng.choice(subset[:-1]) if responses > 1 else None
        if partner is None:
            raise ValueError("a pair needs two responses")
        cover.append((min(subset[-1], partner), max(subset[-1], partner)))
    rest = [p for p in pairs if p not in set(cover)]
    return cover + rng.sample(rest, count - len(cover))


def pair_row(tree: ResponseTree, a: int, b: int, topology: str) -> dict[str, Any]:
    """An unlabelled pair row of the tree preference format (the module docstring lists the fields)."""
    node_a, node_b = tree.nodes[a], tree.nodes[b]
    if node_a.text is None or node_b.text is None:
        raise ValueError(f"tree {tree.tree_id!r}: leaves {a} and {b} must carry their decoded text")
    path_a, path_b = tree.child_path(a), tree.child_path(b)
    lca = tree.lca(a, b)
    shared = len(tree.response_tokens(lca))
    chars = 0
    for x, y in zip(node_a.text, node_b.text):
        if x != y:
            break
        chars += 1
    return {
        "pair_id": f"{tree.tree_id}:{'.'.join(map(str, path_a))}|{'.'.join(map(str, path_b))}",
        "tree_id": tree.tree_id,
        "topology": topology,
        "prompt": tree.prompt,
        "response_0": node_a.text,
        "response_1": node_b.text,
        "path_0": path_a,
        "path_1": path_b,
        "lca_depth": tree.nodes[lca].depth,
        "shared_prefix_tokens": shared,
        "divergence_index": tree.prompt_tokens + shared,
        "shared_prefix_chars": chars,
    }


def sample_pairs(topology: str, trees: Sequence[ResponseTree], pools: Sequence[ResponseTree], budget: int,
                 seed: int, lca_depths: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """Unlabelled pair rows of one topology at a label budget, over the same prompts for every topology.

    Args:
        topology: ``tree`` (leaf pairs of ``trees``), ``chain`` (pairs of fresh independent responses from
            ``pools``) or ``chain_equal_responses`` (pairs among as many independent responses per prompt as the
            ``tree`` pairs of the same budget and seed use).
        trees: one response tree per prompt.
        pools: one pool of independent responses per prompt (a depth-1 tree), in the order of ``trees``.
        budget: labelled pairs in all.
        seed: the same seed gives the same pairs; the allocation over prompts is shared by all topologies.
        lca_depths: (tree) only pairs whose LCA has one of these depths.

    Returns:
        ``budget`` rows (tree and pool order, pairs in sampled order).
    """
    if topology not in TOPOLOGIES:
        raise ValueError(f"unknown topology {topology!r}; expected one of {TOPOLOGIES}")
    if topology != "tree" and len(pools) != len(trees):
        raise ValueError(f"{len(trees)} trees but {len(pools)} pools of independent responses: one per prompt")
    for tree, pool in zip(trees, pools):
        if tree.prompt != pool.prompt:
            raise ValueError(f"tree {tree.tree_id!r} and pool {pool.tree_id!r} answer different prompts")
    counts = allocate_budget(budget, len(trees), seed)
    rows: list[dict[str, Any]] = []
    for i, (tree, count) in enumerate(zip(trees, counts)):
        if count == 0:
            continue
        tree_rng = random.Random(f"tree:{seed}:{tree.tree_id}")
        picked_tree = tree_pairs(tree, count, tree_rng, lca_depths)
        if topology == "tree":
            rows += [pair_row(tree, a, b, topology) for a, b in picked_tree]
            continue
        pool, rng = pools[i], random.Random(f"{topology}:{seed}:{tree.tree_id}")
        if topology == "chain":
            picked = chain_pairs(pool, count, rng)
        else:
            distinct = len({leaf for pair in picked_tree for leaf in pair})
            picked = chain_pairs_among(pool, count, distinct, rng)
        rows += [pair_row(pool, a, b, topology) for a, b in picked]
    return rows


# ---------------------------------------------------------------------------------------------------- labelling
def bt_probability(score_0: float, score_1: float, beta: float) -> float:
    """P(response 0 is preferred) under Bradley-Terry: ``sigmoid(beta * (score_0 - score_1))``."""
    z = beta * (score_0 - score_1)
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def draw_preference(score_0: float, score_1: float, beta: float | None, rng: random.Random) -> int:
    """Which response (0 or 1) the labeller prefers: ``Bernoulli(bt_probability)`` with ``beta``, or the higher score
    when ``beta`` is ``None`` (a tie is a fair coin either way)."""
    if beta is None:
        if score_0 != score_1:
            return 0 if score_0 > score_1 else 1
        return 0 if rng.random() < 0.5 else 1
    return 0 if rng.random() < bt_probability(score_0, score_1, beta) else 1


Scorer = Callable[[list[str], list[str]], list[float]]  # (prompts, responses) -> one score per response


def label_pairs(rows: list[dict[str, Any]], reward: Scorer | None, seed: int, beta: float | None = 1.0,
                cost: Scorer | None = None, cost_beta: float | None = 1.0,
                source: str = "gold") -> list[dict[str, Any]]:
    """Label pair rows with gold scorers: ``better_response_id`` from ``reward`` and, with ``cost``, the cost model's
    labels ``safer_response_id`` (the lower cost, with its own Bradley-Terry noise) and ``is_response_k_safe``
    (gold cost <= 0: cost > 0 means unsafe, the Safe RLHF convention).

    Args:
        rows: pair rows (:func:`pair_row`).
        reward: gold reward scorer, or ``None`` to leave the helpfulness label alone.
        seed: seeds the noise; each pair's draw depends only on the seed and its ``pair_id``.
        beta: Bradley-Terry inverse temperature of the reward labels (``None``: deterministic).
        cost: gold cost scorer (``None``: no safety labels).
        cost_beta: the same for the safer-response label.
        source: name of the scorers, recorded in ``label_source``.

    Returns:
        New rows with the labels, the gold scores (``gold_reward_k``, ``gold_cost_k``) and ``label_source``.
    """
    prompts = [r["prompt"] for r in rows for _ in (0, 1)]
    responses = [r[f"response_{k}"] for r in rows for k in (0, 1)]
    rewards = reward(prompts, responses) if reward is not None and rows else None
    costs = cost(prompts, responses) if cost is not None and rows else None
    out, parts = [], []
    if reward is not None:
        parts.append(f"reward={source}:{'argmax' if beta is None else f'bt(beta={beta:g})'}")
    if cost is not None:
        parts.append(f"cost={source}:{'argmin' if cost_beta is None else f'bt(beta={cost_beta:g})'}")
    for i, row in enumerate(rows):
        row = dict(row)
        rng = random.Random(f"label:{seed}:{row['pair_id']}")
        if rewards is not None:
            r0, r1 = float(rewards[2 * i]), float(rewards[2 * i + 1])
            row.update(gold_reward_0=r0, gold_reward_1=r1, better_response_id=draw_preference(r0, r1, beta, rng))
        if costs is not None:
            c0, c1 = float(costs[2 * i]), float(costs[2 * i + 1])
            # lower cost is safer: the preference of -cost
            row.update(gold_cost_0=c0, gold_cost_1=c1, safer_response_id=draw_preference(-c0, -c1, cost_beta, rng),
                       is_response_0_safe=c0 <= 0, is_response_1_safe=c1 <= 0)
        row["label_source"] = ";".join(parts) if parts else row.get("label_source", "unlabelled")
        out.append(row)
    return out


LABEL_FIELDS = ("better_response_id", "safer_response_id", "is_response_0_safe", "is_response_1_safe")


def merge_labels(rows: list[dict[str, Any]], labels: list[tuple[str, dict[str, Any]]],
                 source: str = "human") -> list[dict[str, Any]]:
    """Put labels from a file (human annotators, another tool) onto pair rows, matched by ``pair_id``.

    Args:
        rows: pair rows.
        labels: ``(location, row)`` of the label file; each row has ``pair_id`` and any of :data:`LABEL_FIELDS`.
        source: ``label_source`` of the merged rows (a label row's own ``label_source`` wins).

    Raises:
        ValueError: a label row without ``pair_id`` or with an unknown one, or a duplicated ``pair_id``, named by
            its location.
    """
    by_id = {r["pair_id"]: dict(r) for r in rows}
    seen: set[str] = set()
    for where, label in labels:
        pair_id = label.get("pair_id") if isinstance(label, dict) else None
        if pair_id not in by_id:
            raise ValueError(f"{where}: field 'pair_id': {pair_id!r} is not a pair of the data being labelled")
        if pair_id in seen:
            raise ValueError(f"{where}: field 'pair_id': {pair_id!r} is labelled twice")
        seen.add(pair_id)
        row = by_id[pair_id]
        row.update({k: label[k] for k in LABEL_FIELDS if k in label})
        row["label_source"] = label.get("label_source", source)
    return [by_id[r["pair_id"]] for r in rows]


__all__ = [
    "LABEL_FIELDS", "TOPOLOGIES", "ResponseTree", "Scorer", "TreeNode", "allocate_budget", "bt_probability",
    "chain_pairs", "chain_pairs_among", "draw_preference", "label_pairs", "merge_labels", "pair_row",
    "sample_pairs", "tree_pairs",
]
