"""Grow response trees from a Hugging Face causal LM, reusing the KV cache of every shared prefix.

The tree-structured preference data of "Rethinking Information Structures in RLHF" (Qiu et al., arXiv 2402.10184)
samples, for each prompt, a prefix tree of responses (:class:`lit_safe.trees.ResponseTree`): the prompt is the root,
each open node gets ``branching`` sampled continuations ("segments"), and each root-to-leaf path is one complete
response. :func:`grow_tree` grows such a tree with ``depth`` branching levels; :func:`sample_independent` draws the
conventional ("chain") pool of independent responses, which is a depth-1 tree with the same format.

How the KV cache is reused (the point of growing a tree rather than sampling every leaf on its own):

1. The prompt is prefilled once (batch 1). Every *open* node (not finished, not at the length cap, not at the last
   level) keeps a reference to the key/value tensors of the batch that generated it, its row in that batch, where its
   cache starts and how long it is (prompt + response tokens), and the next-token logits at its end.
2. A level is grown as one batch over all open nodes of the tree: each node's cache is its row cropped to its own
   span (``keys[row, :, start:start + length]``), copied into ``branching`` adjacent rows (its children) of a
   preallocated buffer, right-aligned to the longest node; the positions before a shorter node are left padding,
   zero-filled and masked out by the 2D ``attention_mask`` (the layout of left-padded batch generation). Each row
   gets its own ``position_ids``, continuing from its node's true length. The first token of each child is sampled
   from its parent's stored logits, so no prefix is ever forwarded twice. (With no separator and no early EOS all
   open nodes of a level have one length and there is no padding at all.)
3. The batch decodes step by step; new keys and values are written into the buffer in place (a cache layer derived
   from ``DynamicLayer`` that does not re-concatenate the whole cache at each step). A row stops at EOS (finished
   leaf), at the length cap (unfinished leaf), or, on levels before the last, at ``segment_tokens`` tokens or right
   after a token whose decoded text contains a separator (an open child). A row that stops as an open child is
   forwarded once more (its last token enters the cache and gives the logits its own children sample from). Rows
   that have stopped keep being computed until the whole batch stops (their extra positions are never read, and
   are counted in ``tokens_forwarded`` and ``wasted_tokens``): since attention is causal and per row, each child's
   cache is simply the batch's final buffer cropped to its row and its own span, with no copy when the batch ends.

Accounting (``tree.meta``): ``tokens_forwarded`` counts the prefill tokens and every decode position computed, wasted
ones included; ``decode_steps`` the sequential decode forward calls; ``independent_tokens`` what sampling each leaf
independently would forward (prompt + response + EOS per leaf), so the saving of a tree is
``1 - tokens_forwarded / independent_tokens``.

Departures and limits:

* Only models whose cache layers are all full-attention :class:`transformers.cache_utils.DynamicLayer` are supported
  (Llama, Qwen, Mistral without a sliding window, GPT-2, ...); sliding-window and linear-attention (Mamba) layers
  cannot be cropped to a prefix and are refused with a ``ValueError``. The model must take ``cache=``,
  ``position_ids=`` and a 2D ``attention_mask`` (transformers >= 5 causal LMs do).
* Within a batch, stopped rows are not compacted away (the waste is reported); with separators, the segments of a
  level have different lengths, so the batch of the next level runs until its longest row stops.
* The model must be in eval mode (dropout would make the cached path differ from a recomputation); a model in
  training mode gets a warning.
* ``independent_tokens`` (prompt + response + EOS per leaf) counts one position per leaf more
  than an independent sampler forwards, since the last sampled token (EOS or the token at the cap) is never fed
  back; ``tokens_forwarded`` counts what was actually computed.
"""

from __future__ import annotations

import inspect
import math
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import DynamicLayer

from lit_safe.trees import ResponseTree

# trace(node_id, logits): the raw next-token logits, shape (tokens sampled for the node, vocab), from which each
# token of the node's segment (and its EOS when finished) was sampled. For tests and diagnostics.
Trace = Callable[[int, Tensor], None]


@dataclass
class _OpenNode:
    """A node that gets children: where its cache lives and what comes next.

    Attributes:
        node: tree node id.
        keys: per layer, the key tensor of the batch that produced the node, shape (rows, heads, seq, head_dim);
            shared with its siblings, never modified in place.
        values: the same for the values.
        row: the node's row in ``keys``/``values``.
        start: where the node's cache begins along ``seq`` (the positions before it are left padding).
        length: cached positions that belong to the node (prompt + response tokens up to its end), from ``start``.
        logits: next-token logits after the node, shape (vocab,).
    """

    node: int
    keys: list[Tensor]
    values: list[Tensor]
    row: int
    start: int
    length: int
    logits: Tensor


def _per_level(value: float | int | Sequence, depth: int, name: str) -> list:
    """One value per level: a scalar repeated ``depth`` times, or a sequence of exactly ``depth`` values."""
    if not isinstance(value, Sequence):
        return [value] * depth
    values = list(value)
    if len(values) != depth:
        raise ValueError(f"{name} has {len(values)} values but depth is {depth}: give one value or one per level")
    return values


def _model_device(model: torch.nn.Module) -> torch.device:
    device = getattr(model, "device", None)
    return device if isinstance(device, torch.device) else next(model.parameters()).device


def eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """The ids that end a response: the tokenizer's EOS and the model's ``generation_config.eos_token_id``(s)."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    generation_config = getattr(model, "generation_config", None)
    extra = getattr(generation_config, "eos_token_id", None) if generation_config is not None else None
    if extra is not None:
        ids.update(int(i) for i in ([extra] if isinstance(extra, int) else extra))
    if not ids:
        raise ValueError("neither the tokenizer nor the model's generation_config defines an EOS token")
    return ids


_SEPARATOR_IDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> {(separators, size): ids}


def separator_token_ids(tokenizer: PreTrainedTokenizerBase, separators: Sequence[str] | None) -> frozenset[int]:
    """Ids of the tokens whose decoded text (alone, special tokens skipped) contains one of ``separators``.

    Decoding the whole vocabulary takes a while for large vocabularies, so the result is remembered per tokenizer
    (as long as the tokenizer lives).
    """
    if not separators:
        return frozenset()
    key = (tuple(separators), len(tokenizer))
    try:
        known = _SEPARATOR_IDS.setdefault(tokenizer, {})
    except TypeError:  # a tokenizer that cannot be weakly referenced
        known = {}
    if key not in known:
        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))], skip_special_tokens=True)
        known[key] = frozenset(i for i, text in enumerate(texts) if any(s in text for s in separators))
    return known[key]


def sample_next(logits: Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> Tensor:
    """Sample one token per row from ``softmax(logits / temperature)`` restricted to the nucleus ``top_p``.

    Args:
        logits: (rows, vocab) next-token logits (any float dtype; computed in float32).
        temperature: > 0.
        top_p: keep the smallest set of most likely tokens whose probability reaches ``top_p`` (1.0: all).
        generator: the source of randomness; sampling runs on its device (so a CPU generator also drives a model on
            a GPU, reproducibly).

    Returns:
        (rows,) token ids on the device of ``logits``.
    """
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)  # the most likely token always stays
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    if generator is not None and probs.device != generator.device:
        probs = probs.to(generator.device)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1).to(logits.device)


class _BufferedLayer(DynamicLayer):
    """A full-attention cache layer that writes new positions into a preallocated buffer instead of concatenating
    (``DynamicLayer.update`` copies the whole cache at every step).

    ``keys``/``values`` are views of the first ``length`` positions of buffers of shape (rows, heads, capacity,
    head_dim); a view handed out earlier is never overwritten at the positions it covers.
    """

    def __init__(self, sources: list[tuple[Tensor, Tensor, int, int, int]], repeats: int, length: int,
                 capacity: int):
        """Lay out the prefix caches of the open nodes, each repeated ``repeats`` times (consecutive rows) and
        right-aligned to ``length`` positions (left padding, zeros, masked out by the caller).

        Args:
            sources: per node ``(keys, values, row, start, node_length)``: its cache is
                ``keys[row, :, start:start + node_length]``.
            repeats: rows per node (its children).
            length: the longest node length (positions filled so far).
            capacity: positions the buffers hold.
        """
        super().__init__()
        first = sources[0][0]
        shape = (len(sources) * repeats, first.shape[1], capacity, first.shape[3])
        self._key_buffer = first.new_zeros(shape)  # zeros, not garbage: a masked NaN would still poison softmax
        self._value_buffer = sources[0][1].new_zeros(shape[:3] + (sources[0][1].shape[3],))
        for j, (k, v, row, start, node_length) in enumerate(sources):
            rows, pad = slice(j * repeats, (j + 1) * repeats), length - node_length
            self._key_buffer[rows, :, pad:length] = k[row: row + 1, :, start: start + node_length]
            self._value_buffer[rows, :, pad:length] = v[row: row + 1, :, start: start + node_length]
        self.device, self.length, self.is_initialized = first.device, length, True
        self._expose()

    def _expose(self) -> None:
        self.keys = self._key_buffer[:, :, : self.length]
        self.values = self._value_buffer[:, :, : self.length]

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        n = key_states.shape[-2]
        if self.length + n > self._key_buffer.shape[2]:
            raise RuntimeError(f"cache buffer full: {self.length} + {n} > {self._key_buffer.shape[2]} positions")
        self._key_buffer[:, :, self.length: self.length + n] = key_states
        self._value_buffer[:, :, self.length: self.length + n] = value_states
        self.length += n
        self._expose()
        return self.keys, self.values


class _Grower:
    """The state of one tree being grown (see the module docstring for the algorithm)."""

    def __init__(self, model, tokenizer, tree: ResponseTree, *, branching: list[int], segment_tokens: int,
                 temperatures: list[float], top_p: float, max_new_tokens: int, separators: frozenset[int],
                 generator: torch.Generator | None, trace: Trace | None):
        self.model, self.tokenizer, self.tree = model, tokenizer, tree
        self.branching, self.segment_tokens, self.temperatures = branching, segment_tokens, temperatures
        self.top_p, self.max_new_tokens, self.separators = top_p, max_new_tokens, separators
        self.generator, self.trace = generator, trace
        self.depth = len(branching)
        self.device = _model_device(model)
        self.eos = eos_token_ids(model, tokenizer)
        self.filler = min(self.eos)  # what a stopped row is fed (any valid id: its positions are never read)
        self.forwarded = 0
        self.wasted = 0
        self.steps = 0  # decode forward calls (the prefill not included)
        params = inspect.signature(model.forward).parameters
        self.keep_last = {"logits_to_keep": 1} if "logits_to_keep" in params else {}

    def _forward(self, input_ids: Tensor, position_ids: Tensor, attention_mask: Tensor, cache: DynamicCache,
                 keep_last: bool = False) -> Tensor:
        """Forward ``input_ids`` (rows, n) at ``position_ids`` (rows, n) on top of ``cache`` (extended in place) with
        the 2D ``attention_mask`` (rows, cached + n); returns the last position's logits, (rows, vocab)."""
        out = self.model(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask, cache=cache,
                         use_cache=True, **(self.keep_last if keep_last else {}))
        self.forwarded += input_ids.numel()
        return out.logits[:, -1, :]

    def prefill(self, prompt_ids: Sequence[int]) -> _OpenNode:
        ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=self.device)
        n = ids.shape[1]
        cache = DynamicCache(config=self.model.config)
        logits = self._forward(ids, torch.arange(n, device=self.device)[None], torch.ones_like(ids), cache, True)
        unsupported = {type(layer).__name__ for layer in cache.layers
                       if type(layer) is not DynamicLayer or not layer.is_initialized}
        if unsupported or not cache.layers:
            raise ValueError(
                f"{type(self.model).__name__} uses cache layers {sorted(unsupported) or '(none)'}: tree generation "
                "needs full-attention DynamicLayer caches that can be cropped to a prefix")
        return _OpenNode(0, [la.keys for la in cache.layers], [la.values for la in cache.layers], 0, 0, n, logits[0])

    def expand(self, frontier: list[_OpenNode], level: int) -> list[_OpenNode]:
        """Give every open node its children at ``level`` (1-based), all in one batch.

        Returns:
            The children that are open (they get children at the next level).
        """
        width = self.branching[level - 1]
        temperature = self.temperatures[level - 1]
        last_level = level == self.depth
        rows = len(frontier) * width
        parent = [frontier[r // width] for r in range(rows)]
        lengths = [p.length for p in parent]  # true (unpadded) lengths, per row
        longest = max(lengths)
        budget = [self.max_new_tokens - (n - self.tree.prompt_tokens) for n in lengths]  # tokens left before the cap
        limit = max(budget) if last_level else min(self.segment_tokens, max(budget))
        capacity = longest + limit  # at most one forward per sampled token

        # Each node's cache, right-aligned in the rows of its children (adjacent rows), in preallocated buffers.
        cache = DynamicCache()
        cache.layers = [_BufferedLayer([(g.keys[i], g.values[i], g.row, g.start, g.length) for g in frontier], width,
                                       longest, capacity) for i in range(len(frontier[0].keys))]
        next_position = torch.tensor(lengths, device=self.device)  # per row: the position its next token takes
        padding = longest - next_position  # (rows,): left padding before a shorter prefix
        attention_mask = (torch.arange(capacity, device=self.device)[None, :] >= padding[:, None]).long()
        logits = torch.stack([g.logits for g in frontier]).repeat_interleave(width, dim=0)  # (rows, vocab)

        tokens: list[list[int]] = [[] for _ in range(rows)]
        finished = [False] * rows
        child_logits: list[Tensor | None] = [None] * rows
        traced: list[list[Tensor]] = [[] for _ in range(rows)]
        feed = [self.filler] * rows
        active = list(range(rows))  # rows still sampling
        filled = longest  # cache positions filled (equal for every row)
        while active:
            active_logits = logits[active] if len(active) < rows else logits
            sampled = sample_next(active_logits, temperature, self.top_p, self.generator).tolist()
            if self.trace is not None:
                for r, row_logits in zip(active, active_logits):
                    traced[r].append(row_logits)
            running, completed = [], []
            for r, token in zip(active, sampled):
                if token in self.eos:
                    finished[r] = True
                    continue
                tokens[r].append(token)
                feed[r] = token
                if len(tokens[r]) >= budget[r]:
                    continue  # the length cap: an unfinished leaf
                if not last_level and (len(tokens[r]) >= self.segment_tokens or token in self.separators):
                    completed.append(r)  # an open child: one more forward gives its cache and next-token logits
                else:
                    running.append(r)
            if not running and not completed:
                break
            step_ids = torch.tensor(feed, dtype=torch.long, device=self.device)[:, None]
            logits = self._forward(step_ids, next_position[:, None], attention_mask[:, : filled + 1], cache)
            self.steps += 1
            self.wasted += rows - len(running) - len(completed)
            # a stopped row's position keeps growing, harmlessly, but must stay a valid position (absolute position
            # embeddings): no running row ever passes the cap's last position
            next_position = (next_position + 1).clamp_(max=self.tree.prompt_tokens + self.max_new_tokens - 1)
            filled += 1
            for r in completed:
                child_logits[r] = logits[r].clone()  # not a view: it would keep this step's (rows, vocab) alive
            active = running

        final_keys = [layer.keys for layer in cache.layers]
        final_values = [layer.values for layer in cache.layers]
        opened = []
        for r in range(rows):
            child = self.tree.add_child(parent[r].node, tokens[r], finished[r])
            if self.trace is not None:
                self.trace(child, torch.stack(traced[r]))
            if child_logits[r] is not None:
                opened.append(_OpenNode(child, final_keys, final_values, r, longest - lengths[r],
                                        lengths[r] + len(tokens[r]), child_logits[r]))
        return opened

    def grow(self, prompt_ids: Sequence[int]) -> None:
        frontier = [self.prefill(prompt_ids)]
        for level in range(1, self.depth + 1):
            frontier = self.expand(frontier, level)
            if not frontier:
                break


def check_tree_settings(*, depth: int, branching: int | Sequence[int], segment_tokens: int,
                        temperatures: float | Sequence[float], top_p: float,
                        max_new_tokens: int) -> tuple[list[int], list[float]]:
    """Check how trees are to grow before any model is loaded; returns branching and temperature per level.

    Raises:
        ValueError: naming the first setting out of range (a temperature of 0, a per-level list of the wrong length).
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    branching = _per_level(branching, depth, "branching")
    temperatures = [float(t) if isinstance(t, int) else t for t in _per_level(temperatures, depth, "temperatures")]
    if any(not isinstance(b, int) or b < 1 for b in branching):
        raise ValueError(f"branching must be positive integers, got {branching}")
    if segment_tokens < 1:
        raise ValueError(f"segment_tokens must be >= 1, got {segment_tokens}")
    for t in temperatures:
        if not (isinstance(t, (int, float)) and math.isfinite(t) and t > 0):
            raise ValueError(f"temperature must be a finite number > 0 (use a small value such as 1e-3 for nearly "
                             f"greedy sampling), got {t!r} in temperatures {temperatures}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    return branching, temperatures


def _grow(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt: str, prompt_ids: Sequence[int],
          tree_id: str, *, depth: int, branching: int | Sequence[int], segment_tokens: int,
          separators: Sequence[str] | None, temperatures: float | Sequence[float], top_p: float, max_new_tokens: int,
          generator: torch.Generator | None, trace: Trace | None = None) -> ResponseTree:
    """:func:`grow_tree` with an optional ``trace`` callback (see :data:`Trace`)."""
    branching_per_level, temperature_per_level = check_tree_settings(
        depth=depth, branching=branching, segment_tokens=segment_tokens, temperatures=temperatures, top_p=top_p,
        max_new_tokens=max_new_tokens)
    if len(prompt_ids) == 0:
        raise ValueError("prompt_ids is empty: the model needs at least one token (e.g. BOS) to condition on")
    if model.training:
        warnings.warn("grow_tree: the model is in training mode (dropout on); call model.eval() first", stacklevel=3)
    tree = ResponseTree(tree_id, prompt, len(prompt_ids))
    grower = _Grower(model, tokenizer, tree, branching=branching_per_level, segment_tokens=segment_tokens,
                     temperatures=temperature_per_level, top_p=top_p, max_new_tokens=max_new_tokens,
                     separators=separator_token_ids(tokenizer, separators), generator=generator, trace=trace)
    grower.grow(prompt_ids)

    leaves = tree.leaves()
    independent = 0
    for leaf in leaves:
        response = tree.response_tokens(leaf)
        tree.nodes[leaf].text = tokenizer.decode(response, skip_special_tokens=True)
        independent += len(prompt_ids) + len(response) + int(tree.nodes[leaf].finished)
    tree.meta.update(
        depth=depth,
        branching=branching_per_level,
        segment_tokens=segment_tokens,
        separators=list(separators) if separators else None,
        temperatures=temperature_per_level,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        tokens_forwarded=grower.forwarded,
        wasted_tokens=grower.wasted,
        decode_steps=grower.steps,
        tokens_generated=sum(len(n.tokens) for n in tree.nodes),
        leaves=len(leaves),
        independent_tokens=independent,
    )
    return tree


@torch.no_grad()
def grow_tree(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt: str, prompt_ids: Sequence[int],
              tree_id: str, *, depth: int, branching: int | Sequence[int], segment_tokens: int,
              separators: Sequence[str] | None = None, temperatures: float | Sequence[float] = 1.0,
              top_p: float = 1.0, max_new_tokens: int = 128, generator: torch.Generator | None = None) -> ResponseTree:
    """Sample a response tree of ``depth`` branching levels for one prompt, reusing each prefix's KV cache.

    The model should be in eval mode (``model.eval()``); it runs on its own device and dtype (sampling in float32).

    Args:
        model: a Hugging Face causal LM whose cache layers are full-attention ``DynamicLayer``s.
        tokenizer: its tokenizer (EOS id, decoding of separators and leaf texts).
        prompt: the user prompt, stored in the tree (not tokenised here).
        prompt_ids: the templated, tokenised prompt the model reads (BOS included if the model wants one).
        tree_id: the tree's name in its dataset.
        depth: D >= 1 branching levels; every root-to-leaf path is a complete response (EOS or length cap).
        branching: children per open node, one int or one per level (length D).
        segment_tokens: the longest segment at levels 1..D-1; the segment at level D runs to EOS or the cap.
        separators: a segment at levels 1..D-1 also ends right after a token whose decoded text contains one of
            these strings (e.g. ``[".", "\\n"]``); ``None``: only ``segment_tokens`` cuts segments.
        temperatures: sampling temperature (> 0), one float or one per level.
        top_p: nucleus sampling mass in (0, 1].
        max_new_tokens: the length cap of every response (EOS excluded). A node that reaches it before level D is
            an unfinished leaf.
        generator: the source of all randomness (``torch.multinomial``); the same seed gives the same tree.

    Returns:
        The tree: a node finished with EOS, or at the cap, is a leaf; leaves carry their decoded ``text``;
        ``prompt_tokens = len(prompt_ids)``; ``meta`` records the settings and the token accounting
        (``tokens_forwarded``, ``wasted_tokens``, ``decode_steps``: sequential decode forward calls,
        ``tokens_generated``, ``leaves``, ``independent_tokens``);
        ``meta["kind"]`` is ``"tree"``.

    Raises:
        ValueError: a temperature <= 0, a per-level list of the wrong length, or another invalid setting.
        ValueError: a model whose cache layers cannot be cropped to a prefix (sliding window, Mamba).
    """
    tree = _grow(model, tokenizer, prompt, prompt_ids, tree_id, depth=depth, branching=branching,
                 segment_tokens=segment_tokens, separators=separators, temperatures=temperatures, top_p=top_p,
                 max_new_tokens=max_new_tokens, generator=generator)
    tree.meta["kind"] = "tree"
    return tree


@torch.no_grad()
def sample_independent(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt: str,
                       prompt_ids: Sequence[int], tree_id: str, *, responses: int, temperature: float = 1.0,
                       top_p: float = 1.0, max_new_tokens: int = 128,
                       generator: torch.Generator | None = None) -> ResponseTree:
    """A pool of ``responses`` independent complete responses to one prompt: a depth-1 tree (the "chain" data).

    The prompt is prefilled once and the responses are decoded as one batch from its cache, the ordinary way of
    sampling several responses; each row samples from the same prompt-conditioned distribution with its own draws,
    so the responses are independent samples. Arguments as in :func:`grow_tree`.

    Returns:
        A tree whose root has ``responses`` leaf children (every pair's LCA is the root); ``meta["kind"]`` is
        ``"independent"``.
    """
    if responses < 1:
        raise ValueError(f"responses must be >= 1, got {responses}")
    tree = _grow(model, tokenizer, prompt, prompt_ids, tree_id, depth=1, branching=responses,
                 segment_tokens=max_new_tokens, separators=None, temperatures=temperature, top_p=top_p,
                 max_new_tokens=max_new_tokens, generator=generator)
    tree.meta["kind"] = "independent"
    return tree


__all__ = ["Trace", "eos_token_ids", "grow_tree", "sample_independent", "sample_next", "separator_token_ids"]
