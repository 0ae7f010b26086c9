"""Tests of lit_safe.models.tree_generation: KV-cache reuse against recomputation, tree shape, EOS, separators, the
length cap, reproducibility and token accounting, on the tiny preset."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

from contextlib import contextmanager

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, MistralConfig

from lit_safe.models import tree_generation as tg
from lit_safe.models.backbone import load_backbone
from lit_safe.models.tokenizer import load_tokenizer
from lit_safe.models.tree_generation import grow_tree, sample_independent, sample_next, separator_token_ids

PROMPT = "How do I bake bread?"
TEMPLATED = f"BEGINNING OF CONVERSATION: USER: {PROMPT} ASSISTANT:"


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    tokenizer = load_tokenizer("tiny")
    model = load_backbone("tiny", tokenizer, causal_lm=True).eval()
    return model, tokenizer, tokenizer(TEMPLATED).input_ids


@contextmanager
def edit_logits(model, edit):
    """Call ``edit(logits, positions)`` on every forward's logits (in place); ``positions`` are the sequence positions
    the logits rows were computed at, (rows, kept positions), or ``None`` when the caller passed no position_ids."""

    def hook(module, args, kwargs, output):
        logits = output.logits
        position_ids = kwargs.get("position_ids")
        positions = None if position_ids is None else position_ids[:, -logits.shape[1]:].expand(logits.shape[:2])
        edit(logits, positions)

    handle = model.register_forward_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def no_eos(tokenizer):
    def edit(logits, positions):
        logits[..., tokenizer.eos_token_id] = float("-inf")

    return edit


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def grow(lm, seed=0, **kwargs):
    model, tokenizer, ids = lm
    return grow_tree(model, tokenizer, PROMPT, ids, "t", generator=gen(seed), **kwargs)


# ------------------------------------------------------------------------------------------ KV-cache correctness
def test_cached_logits_equal_recomputation(lm):
    """Every token of every node (grandchildren included, and rows of batches where siblings stopped early at a
    separator or EOS) was sampled from logits equal to a cache-free forward over prompt + the node's path."""
    model, tokenizer, ids = lm
    eos = tokenizer.eos_token_id
    traced: dict[int, torch.Tensor] = {}

    def boost_eos(logits, positions):  # frequent EOS, applied to both paths alike
        logits[..., eos] += 5.0

    with edit_logits(model, boost_eos):
        tree = tg._grow(model, tokenizer, PROMPT, ids, "t", depth=3, branching=[3, 2, 2], segment_tokens=5,
                        separators=["e"], temperatures=[1.0, 0.8, 1.2], top_p=0.95, max_new_tokens=24,
                        generator=gen(3), trace=traced.__setitem__)
        depths = {n.depth for n in tree.nodes}
        assert depths == {0, 1, 2, 3}
        assert any(n.finished for n in tree.nodes), "the test needs EOS in some rows"
        assert len({len(tree.response_tokens(n.id)) for n in tree.nodes if n.depth == 2}) > 1, "needs unequal lengths"
        assert tree.meta["wasted_tokens"] > 0, "the test needs rows that stopped before their batch"
        assert set(traced) == {n.id for n in tree.nodes[1:]}
        for node in tree.nodes[1:]:
            parent_len = len(tree.response_tokens(node.parent))
            full = ids + tree.response_tokens(node.id) + ([eos] if node.finished else [])
            reference = model(torch.tensor([full])).logits[0]
            start = len(ids) + parent_len - 1  # the logits that predict the node's first token
            expected = reference[start: start + len(node.tokens) + int(node.finished)]
            assert traced[node.id].shape == expected.shape
            torch.testing.assert_close(traced[node.id], expected, atol=1e-5, rtol=0)
    # the trace does not change what is sampled
    with edit_logits(model, boost_eos):
        again = grow_tree(model, tokenizer, PROMPT, ids, "t", depth=3, branching=[3, 2, 2], segment_tokens=5,
                          separators=["e"], temperatures=[1.0, 0.8, 1.2], top_p=0.95, max_new_tokens=24,
                          generator=gen(3))
    assert [n.tokens for n in again.nodes] == [n.tokens for n in tree.nodes]


def test_cached_logits_equal_recomputation_gpt2(lm):
    """Another architecture (learned absolute positions, its own attention): same check over a padded level."""
    _, tokenizer, ids = lm
    torch.manual_seed(1)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=128,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = AutoModelForCausalLM.from_config(config).eval()
    traced: dict[int, torch.Tensor] = {}
    tree = tg._grow(model, tokenizer, PROMPT, ids, "t", depth=3, branching=2, segment_tokens=4, separators=["e"],
                    temperatures=1.0, top_p=1.0, max_new_tokens=12, generator=gen(0), trace=traced.__setitem__)
    assert len({len(tree.response_tokens(n.id)) for n in tree.nodes if n.depth == 1}) > 1, "needs unequal lengths"
    for node in tree.nodes[1:]:
        full = ids + tree.response_tokens(node.id) + ([tokenizer.eos_token_id] if node.finished else [])
        reference = model(torch.tensor([full])).logits[0]
        start = len(ids) + len(tree.response_tokens(node.parent)) - 1
        torch.testing.assert_close(traced[node.id], reference[start: start + len(node.tokens) + int(node.finished)],
                                   atol=1e-5, rtol=0)


def test_sliding_window_cache_is_refused(lm):
    _, tokenizer, ids = lm
    config = MistralConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=1, sliding_window=8,
                           eos_token_id=tokenizer.eos_token_id)
    model = AutoModelForCausalLM.from_config(config).eval()
    with pytest.raises(ValueError, match="DynamicSlidingWindowLayer"):
        grow_tree(model, tokenizer, PROMPT, ids, "t", depth=2, branching=2, segment_tokens=3, max_new_tokens=6)


def test_a_wrong_cache_would_be_caught(lm):
    """The reference comparison is sensitive: the logits of a node differ from those of its parent's prefix."""
    model, tokenizer, ids = lm
    a = model(torch.tensor([ids])).logits[0, -1]
    b = model(torch.tensor([ids + [100]])).logits[0, -1]
    assert (a - b).abs().max() > 1e-3


# ------------------------------------------------------------------------------------------------- tree shape
def test_tree_shape_without_eos(lm):
    model, tokenizer, ids = lm
    with edit_logits(model, no_eos(tokenizer)):
        tree = grow(lm, depth=3, branching=2, segment_tokens=4, max_new_tokens=20)
    leaves = tree.leaves()
    assert len(leaves) == 8 and tree.prompt_tokens == len(ids)
    assert [len(tree.nodes[n].children) for n in range(7)] == [2] * 7
    for leaf in leaves:
        path = tree.ancestry(leaf)
        assert [tree.nodes[n].depth for n in path] == [0, 1, 2, 3]
        assert [len(tree.nodes[n].tokens) for n in path[1:]] == [4, 4, 12]
        assert not tree.nodes[leaf].finished
        assert tree.nodes[leaf].text == tokenizer.decode(tree.response_tokens(leaf), skip_special_tokens=True)
    for a in leaves:
        for b in leaves:
            if a >= b:
                continue
            pa, pb = tree.child_path(a), tree.child_path(b)
            common = next((i for i, (x, y) in enumerate(zip(pa, pb)) if x != y), 3)
            lca = tree.lca(a, b)
            assert tree.nodes[lca].depth == common
            assert tree.child_path(lca) == pa[:common]
            shared = 4 * common
            assert tree.shared_prefix_tokens(a, b) == shared
            assert tree.response_tokens(a)[:shared] == tree.response_tokens(b)[:shared]
            if common == 2:  # siblings under one level-2 node share its 8 tokens
                assert tree.response_tokens(a)[:8] == tree.response_tokens(b)[:8]
    assert tree.meta["tokens_generated"] == sum(len(n.tokens) for n in tree.nodes) == 2 * 4 + 4 * 4 + 8 * 12
    # prefill + 2 rows x 4 steps + 4 rows x 4 steps + 8 rows x 11 steps (the last token is never forwarded)
    assert tree.meta["tokens_forwarded"] == len(ids) + 8 + 16 + 88
    assert tree.meta["independent_tokens"] == 8 * (len(ids) + 20)
    assert tree.meta["leaves"] == 8 and tree.meta["wasted_tokens"] == 0 and tree.meta["decode_steps"] == 4 + 4 + 11
    assert tree.meta["branching"] == [2, 2, 2] and tree.meta["kind"] == "tree"


def test_siblings_differ_and_per_level_branching(lm):
    model, tokenizer, ids = lm
    with edit_logits(model, no_eos(tokenizer)):
        tree = grow(lm, depth=2, branching=[3, 2], segment_tokens=6, max_new_tokens=16)
    assert len(tree.nodes[0].children) == 3
    assert all(len(tree.nodes[c].children) == 2 for c in tree.nodes[0].children)
    assert len(tree.leaves()) == 6
    # random siblings of a random model: identical segments would point at shared sampling noise
    assert len({tuple(tree.nodes[c].tokens) for c in tree.nodes[0].children}) == 3


def test_length_cap_before_last_level_makes_an_unfinished_leaf(lm):
    model, tokenizer, ids = lm
    with edit_logits(model, no_eos(tokenizer)):
        tree = grow(lm, depth=3, branching=2, segment_tokens=4, max_new_tokens=6)
    assert len(tree.leaves()) == 4
    for leaf in tree.leaves():
        node = tree.nodes[leaf]
        assert node.depth == 2 and len(node.tokens) == 2 and not node.finished and not node.children
        assert len(tree.response_tokens(leaf)) == 6
    assert max(n.depth for n in tree.nodes) == 2


# ------------------------------------------------------------------------------------------------------- EOS
@pytest.mark.parametrize("eos_at", [2, 4, 6, 8, 13])
def test_forced_eos_finishes_a_leaf(lm, eos_at):
    """EOS forced as response token ``eos_at`` (0-based): the node holding it is finished, a leaf, childless."""
    model, tokenizer, ids = lm
    eos, target = tokenizer.eos_token_id, len(ids) + eos_at - 1  # the position whose logits predict token eos_at

    def force(logits, positions):
        logits[..., eos] = float("-inf")
        rows = positions == target
        logits[rows] = float("-inf")
        logits[..., eos][rows] = 0.0

    with edit_logits(model, force):
        tree = grow(lm, depth=3, branching=2, segment_tokens=4, max_new_tokens=20)
    level = 1 + min(eos_at // 4, 2)  # segments of 4 tokens at levels 1 and 2
    leaves = tree.leaves()
    assert len(leaves) == 2**level
    for leaf in leaves:
        node = tree.nodes[leaf]
        assert node.finished and not node.children and node.depth == level
        assert len(node.tokens) == eos_at - 4 * (level - 1)
        assert len(tree.response_tokens(leaf)) == eos_at
        assert eos not in tree.response_tokens(leaf)
    assert all(not n.finished for n in tree.nodes if n.id not in leaves)


def test_paths_never_exceed_the_cap(lm):
    model, tokenizer, ids = lm

    def boost(logits, positions):
        logits[..., tokenizer.eos_token_id] += 4.0

    with edit_logits(model, boost):
        tree = grow(lm, seed=5, depth=3, branching=3, segment_tokens=5, separators=["."], max_new_tokens=12)
    assert any(tree.nodes[leaf].finished for leaf in tree.leaves())
    for node in tree.nodes[1:]:
        assert len(tree.response_tokens(node.id)) <= 12
        if node.finished or len(tree.response_tokens(node.id)) == 12 or node.depth == 3:
            assert not node.children
        else:
            assert len(node.children) == 3  # an open node before the last level always branches


# ------------------------------------------------------------------------------------------------ separators
def test_segments_end_right_after_a_separator(lm):
    model, tokenizer, ids = lm
    seps = separator_token_ids(tokenizer, ["e"])
    assert seps and all("e" in tokenizer.decode([t]) for t in seps)
    with edit_logits(model, no_eos(tokenizer)):
        tree = grow(lm, seed=1, depth=2, branching=6, segment_tokens=6, separators=["e"], max_new_tokens=30)
    level1 = [tree.nodes[c] for c in tree.nodes[0].children]
    early = 0
    for node in level1:
        texts = [tokenizer.decode([t], skip_special_tokens=True) for t in node.tokens]
        assert all("e" not in text for text in texts[:-1])  # no separator before the end
        assert len(node.tokens) == 6 or "e" in texts[-1]
        early += len(node.tokens) < 6
        assert len(node.children) == 6
    assert early > 0, "the test needs a segment cut short by a separator"
    # the last level runs to the cap, separators or not
    last = [tree.nodes[leaf] for leaf in tree.leaves()]
    assert all(len(tree.response_tokens(n.id)) == 30 for n in last)
    assert any(t in seps for n in last for t in n.tokens[:-1])


# ---------------------------------------------------------------------------------------------- reproducibility
def test_same_seed_same_tree_other_seed_other_tree(lm):
    settings = dict(depth=2, branching=3, segment_tokens=5, separators=[".", "\n"], temperatures=[1.0, 0.7],
                    top_p=0.9, max_new_tokens=20)
    a, b, c = grow(lm, seed=11, **settings), grow(lm, seed=11, **settings), grow(lm, seed=12, **settings)
    assert a.to_json() == b.to_json()
    assert a.to_json() != c.to_json()


# ------------------------------------------------------------------------------------------------- accounting
@pytest.mark.parametrize("depth,branching,segment", [(2, 4, 6), (3, 2, 5), (3, 3, 4)])
def test_tree_forwards_fewer_tokens_than_independent_sampling(lm, depth, branching, segment):
    tree = grow(lm, seed=2, depth=depth, branching=branching, segment_tokens=segment, separators=["."],
                max_new_tokens=24)
    meta = tree.meta
    assert meta["tokens_forwarded"] < meta["independent_tokens"]
    assert meta["tokens_generated"] == sum(len(n.tokens) for n in tree.nodes)
    assert meta["leaves"] == len(tree.leaves())
    eos = sum(tree.nodes[leaf].finished for leaf in tree.leaves())
    assert meta["independent_tokens"] == sum(len(tree.response_tokens(leaf)) for leaf in tree.leaves()) + eos + \
        meta["leaves"] * tree.prompt_tokens


# --------------------------------------------------------------------------------------------------- settings
@pytest.mark.parametrize("temperatures", [0.0, -1.0, [1.0, 0.0], float("nan")])
def test_non_positive_temperature_is_rejected(lm, temperatures):
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        grow(lm, depth=2, branching=2, segment_tokens=4, temperatures=temperatures, max_new_tokens=8)


def test_invalid_settings_are_rejected(lm):
    model, tokenizer, ids = lm
    with pytest.raises(ValueError, match="one per level"):
        grow(lm, depth=2, branching=[2, 2, 2], segment_tokens=4)
    with pytest.raises(ValueError, match="one per level"):
        grow(lm, depth=3, branching=2, segment_tokens=4, temperatures=[1.0, 1.0])
    with pytest.raises(ValueError, match="top_p"):
        grow(lm, depth=1, branching=2, segment_tokens=4, top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        sample_independent(model, tokenizer, PROMPT, ids, "t", responses=2, temperature=0.0)


def test_training_mode_warns(lm):
    model, tokenizer, ids = lm
    model.train()
    try:
        with pytest.warns(UserWarning, match="eval"):
            grow(lm, depth=1, branching=1, segment_tokens=4, max_new_tokens=2)
    finally:
        model.eval()


def test_top_p_keeps_the_nucleus():
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.05, 0.05]])).repeat(200, 1)
    assert set(sample_next(logits, 1.0, 0.5, gen(0)).tolist()) == {0}
    assert set(sample_next(logits, 1.0, 0.8, gen(0)).tolist()) == {0, 1}
    assert set(sample_next(logits, 1.0, 1.0, gen(0)).tolist()) == {0, 1, 2, 3}


def test_each_row_samples_from_its_own_logits():
    logits = torch.full((6, 50), -30.0)
    wanted = torch.tensor([3, 17, 3, 42, 0, 8])
    logits[torch.arange(6), wanted] = 0.0
    for seed in range(5):
        assert torch.equal(sample_next(logits, 0.7, 0.9, gen(seed)), wanted)


# ------------------------------------------------------------------------------------------ independent samples
def test_sample_independent_is_a_pool_of_complete_responses(lm):
    model, tokenizer, ids = lm
    pool = sample_independent(model, tokenizer, PROMPT, ids, "p", responses=5, temperature=0.9, max_new_tokens=16,
                              generator=gen(4))
    leaves = pool.leaves()
    assert len(leaves) == 5 and pool.nodes[0].children == leaves
    assert all(pool.lca(a, b) == 0 and pool.shared_prefix_tokens(a, b) == 0 for a, b in pool.leaf_pairs())
    for leaf in leaves:
        node = pool.nodes[leaf]
        assert node.depth == 1 and node.text is not None
        assert node.finished or len(node.tokens) == 16
    assert len({tuple(pool.nodes[leaf].tokens) for leaf in leaves}) == 5
    assert pool.meta["kind"] == "independent" and pool.meta["leaves"] == 5


def test_sample_independent_rows_match_single_samples_in_distribution(lm):
    """Each row of the batch samples its first token from the prompt's own distribution: over many rows the first
    tokens' frequencies match the softmax of the prompt's next-token logits (a batching bug would skew them)."""
    model, tokenizer, ids = lm
    pool = sample_independent(model, tokenizer, PROMPT, ids, "p", responses=4000, temperature=0.05,
                              max_new_tokens=1, generator=gen(9))
    firsts = [pool.nodes[leaf].tokens[0] if pool.nodes[leaf].tokens else tokenizer.eos_token_id
              for leaf in pool.leaves()]
    probs = torch.softmax(model(torch.tensor([ids])).logits[0, -1] / 0.05, dim=-1)
    assert 0.3 < probs.max() < 0.7  # peaked but not degenerate: identical rows would give one token 100%
    counts = torch.bincount(torch.tensor(firsts), minlength=probs.numel()).float() / len(firsts)
    top = probs.topk(5).indices
    torch.testing.assert_close(counts[top], probs[top], atol=0.03, rtol=0)
