"""Response trees, pair samplers at equal budgets and Bradley-Terry labelling (lit_safe.trees), on hand-built trees."""

import math
import random
from collections import Counter

import pytest

from lit_safe.trees import (
    ResponseTree,
    allocate_budget,
    bt_probability,
    draw_preference,
    label_pairs,
    merge_labels,
    sample_pairs,
)


def full_tree(tree_id: str, prompt: str, depth: int, branching: int, segment: int = 2,
              prompt_tokens: int = 5) -> ResponseTree:
    """A complete tree whose segment tokens spell the path (so every leaf response differs), with leaf texts."""
    tree = ResponseTree(tree_id, prompt, prompt_tokens)
    frontier = [0]
    for level in range(1, depth + 1):
        nxt = []
        for node in frontier:
            for child in range(branching):
                tokens = [100 * level + 10 * child + t for t in range(segment)]
                nxt.append(tree.add_child(node, tokens, finished=level == depth))
        frontier = nxt
    for leaf in tree.leaves():
        tree.nodes[leaf].text = " ".join(str(t) for t in tree.response_tokens(leaf))
    return tree


def pool(tree_id: str, prompt: str, responses: int) -> ResponseTree:
    tree = ResponseTree(tree_id, prompt, 5)
    for k in range(responses):
        leaf = tree.add_child(0, [1000 + k, 7, 7], finished=True)
        tree.nodes[leaf].text = f"independent response {k}"
    return tree


def test_tree_construction_paths_and_lca():
    tree = full_tree("t", "p", depth=2, branching=2, segment=3)
    # root 0; level 1: nodes 1, 2; level 2: 3, 4 under 1 and 5, 6 under 2
    assert tree.leaves() == [3, 4, 5, 6]
    assert tree.ancestry(6) == [0, 2, 6]
    assert tree.child_path(6) == [1, 1]
    assert tree.child_path(3) == [0, 0]
    assert tree.response_tokens(4) == [100, 101, 102, 210, 211, 212]
    assert tree.lca(3, 4) == 1 and tree.nodes[tree.lca(3, 4)].depth == 1  # siblings: the parent
    assert tree.lca(3, 5) == 0  # cousins: the root
    assert tree.lca(4, 4) == 4
    assert tree.shared_prefix_tokens(3, 4) == 3 and tree.shared_prefix_tokens(3, 6) == 0
    # every leaf path starts with its ancestors' paths
    for leaf in tree.leaves():
        for ancestor in tree.ancestry(leaf):
            prefix = tree.response_tokens(ancestor)
            assert tree.response_tokens(leaf)[: len(prefix)] == prefix
    assert len(tree.leaf_pairs()) == 6
    assert tree.leaf_pairs(lca_depths=[1]) == [(3, 4), (5, 6)]


def test_tree_json_round_trip_and_bad_parents():
    tree = full_tree("t7", "a prompt", depth=3, branching=2)
    tree.meta = {"tokens_forwarded": 42}
    again = ResponseTree.from_json(tree.to_json())
    assert again.to_json() == tree.to_json()
    assert again.leaves() == tree.leaves() and again.nodes[9].text == tree.nodes[9].text
    data = tree.to_json()
    data["nodes"][3]["parent"] = 5  # a parent after its child
    with pytest.raises(ValueError, match="node 3 has parent 5"):
        ResponseTree.from_json(data)


def test_allocate_budget_is_even_and_seeded():
    counts = allocate_budget(10, 4, seed=3)
    assert sum(counts) == 10 and sorted(counts) == [2, 2, 3, 3]
    assert counts == allocate_budget(10, 4, seed=3)
    assert any(allocate_budget(10, 4, seed=s) != counts for s in range(10))
    with pytest.raises(ValueError):
        allocate_budget(5, 0, seed=0)


@pytest.fixture
def data():
    trees = [full_tree(f"t{i}", f"prompt {i}", depth=3, branching=2) for i in range(5)]
    pools = [pool(f"t{i}/pool", f"prompt {i}", responses=12) for i in range(5)]
    return trees, pools


def test_samplers_give_equal_budgets_over_the_same_prompts(data):
    trees, pools = data
    by_topology = {t: sample_pairs(t, trees, pools, budget=17, seed=1)
                   for t in ("tree", "chain", "chain_equal_responses")}
    per_prompt = {t: Counter(r["prompt"] for r in rows) for t, rows in by_topology.items()}
    assert all(len(rows) == 17 for rows in by_topology.values())
    assert per_prompt["tree"] == per_prompt["chain"] == per_prompt["chain_equal_responses"]
    # chain: every label compares two fresh responses, each used once
    chain = by_topology["chain"]
    used = [(r["tree_id"], tuple(r[f"path_{k}"])) for r in chain for k in (0, 1)]
    assert len(used) == len(set(used)) == 34
    assert all(r["lca_depth"] == 0 and r["shared_prefix_tokens"] == 0 for r in chain)
    # equal-responses control: as many distinct responses per prompt as the tree pairs use
    def distinct(rows):
        return Counter(r["prompt"] for r in {(r["prompt"], tuple(r[f"path_{k}"])): r for r in rows
                                             for k in (0, 1)}.values())
    assert distinct(by_topology["tree"]) == distinct(by_topology["chain_equal_responses"])
    # pairs are distinct within a set
    assert len({r["pair_id"] for r in by_topology["tree"]}) == 17


def test_tree_pairs_carry_exact_provenance(data):
    trees, _ = data
    rows = sample_pairs("tree", trees, [], budget=30, seed=0)
    by_id = {t.tree_id: t for t in trees}
    for row in rows:
        tree = by_id[row["tree_id"]]
        a = next(leaf for leaf in tree.leaves() if tree.child_path(leaf) == row["path_0"])
        b = next(leaf for leaf in tree.leaves() if tree.child_path(leaf) == row["path_1"])
        common = 0
        while common < 3 and row["path_0"][common] == row["path_1"][common]:
            common += 1
        assert row["lca_depth"] == common  # the depth where the child paths part
        assert row["shared_prefix_tokens"] == 2 * common  # two tokens per segment
        assert row["divergence_index"] == 5 + 2 * common  # the prompt's 5 tokens first
        ta, tb = tree.response_tokens(a), tree.response_tokens(b)
        assert ta[: row["shared_prefix_tokens"]] == tb[: row["shared_prefix_tokens"]]
        assert ta[row["shared_prefix_tokens"]] != tb[row["shared_prefix_tokens"]]
        assert row["response_0"][: row["shared_prefix_chars"]] == row["response_1"][: row["shared_prefix_chars"]]
        assert row["response_0"][row["shared_prefix_chars"]] != row["response_1"][row["shared_prefix_chars"]]
    assert {r["lca_depth"] for r in sample_pairs("tree", trees, [], 10, 0, lca_depths=[2])} == {2}


def test_samplers_are_seeded(data):
    trees, pools = data
    for topology in ("tree", "chain", "chain_equal_responses"):
        assert sample_pairs(topology, trees, pools, 12, seed=4) == sample_pairs(topology, trees, pools, 12, seed=4)
        assert sample_pairs(topology, trees, pools, 12, seed=4) != sample_pairs(topology, trees, pools, 12, seed=5)


def test_a_budget_the_trees_cannot_hold_is_refused(data):
    trees, pools = data
    with pytest.raises(ValueError, match="needs 29 pairs but its tree's leaf pairs allows only 28"):
        sample_pairs("tree", trees, pools, budget=5 * 29, seed=0)
    with pytest.raises(ValueError, match="pool of independent responses"):
        sample_pairs("chain", trees, pools, budget=5 * 7, seed=0)  # 14 fresh responses per prompt, 12 in the pool
    with pytest.raises(ValueError, match="different prompts"):
        sample_pairs("chain", trees, pools[::-1], budget=5, seed=0)


def test_bradley_terry_probabilities_by_hand():
    assert bt_probability(1.0, 1.0, beta=1.0) == 0.5
    assert bt_probability(math.log(3), 0.0, beta=1.0) == pytest.approx(0.75)
    assert bt_probability(0.0, math.log(3), beta=2.0) == pytest.approx(0.1)  # 1 / (1 + 9)
    assert bt_probability(-1000.0, 0.0, beta=1.0) == 0.0  # no overflow
    rng = random.Random(0)
    assert draw_preference(2.0, 1.0, None, rng) == 0 and draw_preference(1.0, 2.0, None, rng) == 1


def test_labels_follow_bradley_terry_frequencies(data):
    trees, pools = data
    rows = [dict(r, pair_id=f"{r['pair_id']}#{i}") for i in range(400)
            for r in sample_pairs("chain", trees, pools, 5, seed=0)]

    def gold(prompts, responses):  # response 0 of every pair scores 1.0 higher
        return [1.0 if i % 2 == 0 else 0.0 for i in range(len(responses))]

    labelled = label_pairs(rows, gold, seed=0, beta=1.0)
    share = sum(r["better_response_id"] == 0 for r in labelled) / len(labelled)
    expected = 1 / (1 + math.exp(-1.0))  # 0.731
    assert abs(share - expected) < 3 * math.sqrt(expected * (1 - expected) / len(labelled))
    assert labelled[0]["gold_reward_0"] == 1.0 and labelled[0]["label_source"] == "reward=gold:bt(beta=1)"
    assert label_pairs(rows, gold, seed=0, beta=1.0) == labelled  # each pair's draw depends on seed and pair_id
    deterministic = label_pairs(rows, gold, seed=0, beta=None)
    assert all(r["better_response_id"] == 0 for r in deterministic)


def test_cost_labels_use_the_safe_rlhf_sign(data):
    trees, pools = data
    rows = sample_pairs("chain", trees, pools, 5, seed=0)

    def cost(prompts, responses):
        return [3.0 if i % 2 == 0 else -2.0 for i in range(len(responses))]

    labelled = label_pairs(rows, None, seed=0, cost=cost, cost_beta=None)
    for row in labelled:
        assert row["safer_response_id"] == 1  # the lower cost is safer
        assert row["is_response_0_safe"] is False and row["is_response_1_safe"] is True  # cost > 0 means unsafe
        assert "better_response_id" not in row


def test_merge_labels_matches_by_pair_id(data):
    trees, pools = data
    rows = sample_pairs("tree", trees, pools, 3, seed=0)
    labels = [("labels.jsonl: line 1", {"pair_id": rows[1]["pair_id"], "better_response_id": 1})]
    merged = merge_labels(rows, labels)
    assert merged[1]["better_response_id"] == 1 and merged[1]["label_source"] == "human"
    assert "better_response_id" not in merged[0]
    with pytest.raises(ValueError, match="labels.jsonl: line 2: field 'pair_id'"):
        merge_labels(rows, labels + [("labels.jsonl: line 2", {"pair_id": "nope", "better_response_id": 0})])
    with pytest.raises(ValueError, match="labelled twice"):
        merge_labels(rows, labels + labels)
