"""Text as the models read it: prompt templates, tokenisation with an end token, padding and pair packing.

The one place for these rules, used by the data views (to prepare), the trainers (PPO re-encodes rollouts for a
scorer with another tokenizer) and the arenas (to generate and score): the same template and the same truncation
everywhere, so that a model is never scored on text tokenised differently from what it was trained on.

Two kinds of template (``prompt_template``, resolved by :func:`resolve_template`):

- a string containing ``{prompt}``; ``safe_rlhf`` names the default, the Safe RLHF one (``BEGINNING OF
  CONVERSATION: USER: {prompt} ASSISTANT:``, no space after ``ASSISTANT:``, the response, then EOS). The text is
  tokenised with the tokenizer's special tokens (BOS). Truncation follows ALGORITHMS.md section 2(b): the text is cut
  first and EOS appended after, so a sequence always ends in EOS and a score model always reads its end score there.
- ``chat``: the tokenizer's own chat template (``tokenizer.apply_chat_template``), as instruction-tuned models (Llama
  3, Qwen, Mistral) expect. The prompt is the row's turns (``prompt_messages`` of the chosen/rejected formats) or one
  user turn, rendered with ``add_generation_prompt=True``: exactly what a policy generates from. The response is what
  the template renders for the assistant's turn(s) after that prompt (so a template that trims the reply, as Llama
  3's does, is followed), and the end of the sequence is the template's end-of-turn text (:func:`end_of_turn`:
  ``<|im_end|>\n`` for ChatML, ``<|eot_id|>`` for Llama 3) instead of EOS. The rendered text carries BOS when the
  template writes one, so it is tokenised without the tokenizer's special tokens (no second BOS). Truncation cuts the
  response (pair views: the text) and appends the end-of-turn ids after, as EOS is appended for ``{prompt}``
  templates.

Prompt, response and end are tokenised separately and concatenated (:func:`encode_prompt_response`), so that the
boundary is exact: the prompt's ids are the ids generation starts from, and the loss masks exactly those. For a chat
template this gives the ids of ``tokenizer(apply_chat_template([user, assistant]), add_special_tokens=False)``
wherever the tokenizer does not merge characters across the boundaries (a special token or a newline ends the
prompt in the common templates; tests check ChatML and Llama 3 layouts). Where it would (a pre-tokenizer that joins
the prompt's last characters with the response's first), lit_safe keeps the prompt's own ids, as generation does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

SAFE_RLHF_TEMPLATE = "BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:"
REWRITE_TEMPLATE = (
    "Rewrite the user's request as a detailed prompt for a text-to-video model.\nRequest: {prompt}\nVideo prompt: "
)
VIDEO_TEMPLATE = "{prompt}"
CHAT = "chat"  # prompt_template value: the tokenizer's own chat template
NAMED_TEMPLATES: dict[str, str] = {"safe_rlhf": SAFE_RLHF_TEMPLATE}
# An assistant reply no template changes, to find what a template writes after a reply (see end_of_turn).
_SENTINEL = "LitSafeSentinelReply"

Message = dict[str, str]


class Turns(str):
    """A prompt or response as text (what validation, deduplication and ``{prompt}`` templates read) that also
    carries its ``{"role", "content"}`` turns, which a chat template renders instead (:func:`chat_turns`).

    Args:
        text: the text (a row's ``prompt`` or ``response_k``).
        messages: the turns it was rendered from (a row's ``prompt_messages`` or ``response_k_messages``), or
            ``None``.
    """

    messages: list[Message] | None

    def __new__(cls, text: str, messages: Sequence[Message] | None = None) -> Turns:
        value = super().__new__(cls, text)
        value.messages = [dict(m) for m in messages] if messages else None
        return value


Text = str | Sequence[Message]  # a prompt or response: a string (one turn), Turns, or a list of messages


def resolve_template(template: str) -> str:
    """The template a ``prompt_template`` value names: ``safe_rlhf`` is :data:`SAFE_RLHF_TEMPLATE`, ``chat`` stays
    ``chat``, any other string must contain ``{prompt}``.

    Raises:
        ValueError: a string that is neither a name nor contains ``{prompt}``.
    """
    if not isinstance(template, str):
        raise ValueError(f"prompt template must be a string, got {type(template).__name__} {template!r}")
    if template == CHAT:
        return template
    template = NAMED_TEMPLATES.get(template, template)
    if "{prompt}" not in template:
        names = ", ".join([*NAMED_TEMPLATES, CHAT])
        raise ValueError(f"prompt template {template!r} does not contain '{{prompt}}' (where the prompt goes) and is "
                         f"not one of the named templates ({names})")
    return template


def is_chat(template: str) -> bool:
    """Whether ``template`` means the tokenizer's own chat template."""
    return template == CHAT


def tokenizer_name(tokenizer: Any) -> str:
    """How an error names a tokenizer: the preset, hub id or path it was loaded from, else its class."""
    return str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)


def check_template(template: str, tokenizer: Any) -> str:
    """:func:`resolve_template`, and for ``chat`` a check that ``tokenizer`` has a chat template that renders a
    reply (:func:`end_of_turn`). Returns the resolved template.

    Raises:
        ValueError: as :func:`resolve_template`; or ``chat`` with a tokenizer without a chat template (named).
    """
    template = resolve_template(template)
    if is_chat(template):
        end_of_turn(tokenizer)
    return template


def template_setting(template: str, tokenizer: Any) -> Any:
    """What a prepared dataset's fingerprint records of the template: the resolved ``{prompt}`` template itself, or
    for ``chat`` the tokenizer's chat template (which the tokenizer's own fingerprint does not cover)."""
    template = resolve_template(template)
    return {CHAT: tokenizer.chat_template} if is_chat(template) else template


def format_prompt(prompt: str, template: str = SAFE_RLHF_TEMPLATE) -> str:
    """Put a user prompt into a ``{prompt}`` template (or a named one, :func:`resolve_template`); ``chat`` needs the
    tokenizer: :func:`render_prompts`."""
    template = resolve_template(template)
    if is_chat(template):
        raise ValueError("prompt template 'chat' is rendered by the tokenizer's chat template: use render_prompts")
    return template.replace("{prompt}", prompt)


def rewrite_request(prompt: str) -> str:
    """The user's turn that asks a chat model to rewrite ``prompt`` for a video model (``prompt_template: chat`` for
    a prompt augmenter): the instruction of :data:`REWRITE_TEMPLATE` with the request."""
    return format_prompt(prompt, REWRITE_TEMPLATE).rstrip()


# ------------------------------------------------------------------------------------------------ chat templates
def chat_turns(value: Text, role: str) -> list[Message]:
    """The turns a chat template renders for a prompt (``role`` user) or response (``role`` assistant): the messages
    of a :class:`Turns` or a list, else the string as one turn of ``role``."""
    messages = getattr(value, "messages", None) if isinstance(value, str) else value
    if messages:
        return [{"role": m["role"], "content": m["content"]} for m in messages]
    if not isinstance(value, str):
        raise ValueError(f"a {role} turn must be a string or a non-empty list of messages, got {value!r:.60}")
    return [{"role": role, "content": str(value)}]


def _render(tokenizer: Any, conversations: list[list[Message]], add_generation_prompt: bool) -> list[str]:
    """Conversations rendered by the tokenizer's chat template, as text."""
    if not conversations:
        return []
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"prompt_template 'chat' needs a tokenizer with a chat template, and tokenizer "
                         f"{tokenizer_name(tokenizer)!r} has none: use a tokenizer that ships one (instruction-tuned "
                         "models do), or a '{prompt}' template such as safe_rlhf")
    try:
        return list(tokenizer.apply_chat_template(conversations, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt))
    except Exception:  # jinja2 errors, e.g. raise_exception('System role not supported'): name the conversation
        for conversation in conversations:
            try:
                tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=add_generation_prompt)
            except Exception as error:
                raise ValueError(f"the chat template of tokenizer {tokenizer_name(tokenizer)!r} cannot render the "
                                 f"conversation {conversation!r:.300} ({type(error).__name__}: {error})") from error
        raise


def end_of_turn(tokenizer: Any) -> str:
    """What the tokenizer's chat template writes after an assistant's reply (``<|im_end|>\\n`` for ChatML,
    ``<|eot_id|>`` for Llama 3): found by rendering a user turn and a sentinel reply and taking what follows it.

    Raises:
        ValueError: the tokenizer has no chat template, or its template does not write the reply.
    """
    text = _render(tokenizer, [[{"role": "user", "content": "Hello"},
                                {"role": "assistant", "content": _SENTINEL}]], False)[0]
    at = text.rfind(_SENTINEL)
    if at < 0:
        raise ValueError(f"the chat template of tokenizer {tokenizer_name(tokenizer)!r} does not write the "
                         "assistant's reply: it cannot be trained on")
    return text[at + len(_SENTINEL) :]


def render_prompts(tokenizer: Any, prompts: Sequence[Text], template: str) -> list[str]:
    """Each prompt as a policy reads it before answering: in a ``{prompt}`` template, or rendered by the chat
    template with ``add_generation_prompt=True`` (BOS included when the template writes it)."""
    template = resolve_template(template)
    if not is_chat(template):
        return [format_prompt(p, template) for p in prompts]
    return _render(tokenizer, [chat_turns(p, "user") for p in prompts], True)


def render_chat(tokenizer: Any, prompts: Sequence[Text], responses: Sequence[Text]) -> tuple[list[str], list[str], str]:
    """Split what the chat template renders for each (prompt, response) conversation into its three parts.

    Args:
        tokenizer: a tokenizer with a chat template.
        prompts: user turns (strings, :class:`Turns` or lists of messages ending with a user turn).
        responses: assistant turn(s) after each prompt (strings, :class:`Turns` or lists of messages).

    Returns:
        ``(prompt texts, response texts, end text)``: the prompt rendered with the generation prompt, what the
        template writes for the response (between the two), and its end-of-turn text (:func:`end_of_turn`); each
        conversation's full rendering is ``prompt + response + end``.

    Raises:
        ValueError: naming the tokenizer, when its template renders a prompt differently once a reply follows, or
            does not end a conversation with its end-of-turn text (the prompt could not be masked exactly).
    """
    end = end_of_turn(tokenizer)
    turns = [chat_turns(p, "user") for p in prompts]
    rendered = _render(tokenizer, turns, True)
    full = _render(tokenizer, [t + chat_turns(r, "assistant") for t, r in zip(turns, responses)], False)
    texts = []
    for prompt, whole in zip(rendered, full):
        if not whole.startswith(prompt) or not whole.endswith(end) or len(whole) < len(prompt) + len(end):
            raise ValueError(f"the chat template of tokenizer {tokenizer_name(tokenizer)!r} renders the prompt "
                             f"{prompt!r:.120} differently once a reply follows ({whole!r:.200}), or does not end "
                             f"the conversation with {end!r}: the prompt cannot be masked exactly")
        texts.append(whole[len(prompt) : len(whole) - len(end)])
    return rendered, texts, end


def conversations(prompts: Sequence[Text], responses: Sequence[Text], template: str = SAFE_RLHF_TEMPLATE,
                  tokenizer: Any = None) -> list[str]:
    """Each (prompt, response) as the one text a score model reads: the prompt in the template, then the response;
    for ``chat``, the conversation rendered by ``tokenizer``'s chat template (its end-of-turn text included)."""
    template = resolve_template(template)
    if not is_chat(template):
        return [format_prompt(p, template) + r for p, r in zip(prompts, responses)]
    if tokenizer is None:
        raise ValueError("prompt_template 'chat' renders conversations with a tokenizer's chat template: pass it")
    rendered, texts, end = render_chat(tokenizer, prompts, responses)
    return [p + r + end for p, r in zip(rendered, texts)]


def _ids(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of texts without the tokenizer's special tokens (none for an empty list)."""
    return list(tokenizer(list(texts), add_special_tokens=False)["input_ids"]) if texts else []


def end_ids(tokenizer: Any, template: str) -> list[int]:
    """The ids that end every sequence: EOS for a ``{prompt}`` template; for ``chat`` the end-of-turn text's ids
    (EOS when the template writes nothing after a reply)."""
    if not is_chat(resolve_template(template)):
        return [tokenizer.eos_token_id]
    return _end_ids(tokenizer, end_of_turn(tokenizer))


def _end_ids(tokenizer: Any, end: str) -> list[int]:
    """The ids of a chat template's end-of-turn text; EOS when it is empty."""
    return (_ids(tokenizer, [end])[0] if end else []) or [tokenizer.eos_token_id]


def stop_token_ids(tokenizer: Any, template: str) -> list[int]:
    """The ids at which generation stops: EOS, and for ``chat`` the first end-of-turn token when it is a special or
    added token (``<|im_end|>``, ``<|eot_id|>``; a plain-text end such as a newline is not a stop)."""
    stops = [tokenizer.eos_token_id]
    if is_chat(resolve_template(template)):
        first = end_ids(tokenizer, template)[0]
        special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
        if first in special and first not in stops:
            stops.append(first)
    return stops


def encode_with_eos(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int
) -> tuple[list[np.ndarray], int]:
    """Tokenise texts (with the tokenizer's BOS), cut each to ``max_length - 1`` tokens and append EOS.

    Args:
        tokenizer: any tokenizer with an ``eos_token_id``.
        texts: full conversations (prompt in its template, then the response).
        max_length: the longest sequence to produce, EOS included.

    Returns:
        ``(ids, truncated)``: one int32 array per text, every one ending in EOS; and how many texts were cut.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")
    if not texts:  # every row of a split was dropped (tokenizers fail on an empty batch)
        return [], 0
    eos = tokenizer.eos_token_id
    encoded = tokenizer(list(texts), add_special_tokens=True)["input_ids"]
    out, truncated = [], 0
    for ids in encoded:
        if ids and ids[-1] == eos:  # tokenizers that append EOS themselves
            ids = ids[:-1]
        if len(ids) > max_length - 1:
            ids = ids[: max_length - 1]
            truncated += 1
        out.append(np.asarray([*ids, eos], dtype=np.int32))
    return out, truncated


def shared_prefix_length(a: np.ndarray, b: np.ndarray) -> int:
    """Number of leading tokens two different sequences share, at most ``min(len) - 1`` (so each keeps its EOS)."""
    m = min(len(a), len(b))
    differ = np.flatnonzero(a[:m] != b[:m])
    return int(min(differ[0] if len(differ) else m, m - 1))


def pack_pair(chosen: np.ndarray, rejected: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Pack two sequences that share a prefix (the prompt) into one row, the prefix computed once.

    The row is ``chosen`` followed by the part of ``rejected`` after the shared prefix; the positions of that
    part continue from the prefix, and :func:`pair_attention` keeps it from seeing ``chosen``'s own tokens, so
    every token attends to exactly what it would attend to in its own sequence: the scores are those of two
    separate forward passes, for fewer tokens.

    Args:
        chosen, rejected: 1-D token ids, both ending in EOS, not identical.

    Returns:
        ``(ids (Lc + Lr - d,), positions (same,), shared d, chosen length Lc)``.
    """
    d = shared_prefix_length(chosen, rejected)
    ids = np.concatenate([chosen, rejected[d:]])
    positions = np.concatenate([np.arange(len(chosen)), np.arange(d, len(rejected))])
    return ids, positions, d, len(chosen)


def pair_attention(lengths: list[int], shared: list[int], chosen: list[int], width: int):
    """Boolean attention masks ``(N, 1, width, width)`` (True: may attend) of rows made by :func:`pack_pair`.

    A query attends causally to keys of the shared prefix and of its own sequence; the rejected part never sees
    the chosen part. Padding keys are masked; padding queries attend to position 0 only (a row with no allowed key
    would give NaN in softmax).
    """
    pos = torch.arange(width)
    n, d, c = (torch.as_tensor(v).unsqueeze(1) for v in (lengths, shared, chosen))
    # segment per token: 0 shared prefix, 1 chosen only, 2 rejected only, -1 padding
    segment = torch.where(pos < d, 0, torch.where(pos < c, 1, torch.where(pos < n, 2, -1)))
    query, key = segment.unsqueeze(2), segment.unsqueeze(1)
    causal = (pos.unsqueeze(0) <= pos.unsqueeze(1)).unsqueeze(0)
    mask = ((key == 0) | (key == query)) & causal & (query >= 0) & (key >= 0)
    mask[:, :, 0] |= query.squeeze(2) < 0
    return mask.unsqueeze(1)


def encode_prompts(tokenizer: Any, prompts: Sequence[Text], template: str) -> list[np.ndarray]:
    """Prompts as a policy reads them before answering, no EOS: int32 arrays. A ``{prompt}`` template is tokenised
    with the tokenizer's special tokens (BOS); ``chat`` renders them with the generation prompt
    (:func:`render_prompts`) and tokenises without (the template writes BOS itself when it has one)."""
    if not prompts:
        return []
    if is_chat(resolve_template(template)):
        rendered = render_prompts(tokenizer, prompts, template)
        return [np.asarray(ids, dtype=np.int32) for ids in _ids(tokenizer, rendered)]
    encoded = tokenizer([format_prompt(p, template) for p in prompts], add_special_tokens=True)["input_ids"]
    eos = tokenizer.eos_token_id
    return [np.asarray(ids[:-1] if ids and ids[-1] == eos else ids, dtype=np.int32) for ids in encoded]


def encode_prompt_response(tokenizer: Any, prompts: Sequence[Text], responses: Sequence[Text],
                           template: str) -> tuple[list[np.ndarray], list[list[int]], list[int]]:
    """The three parts of each (prompt, response) sequence, tokenised separately so that the prompt's ids are exactly
    those generation starts from (:func:`encode_prompts`).

    Args:
        tokenizer: the model's tokenizer.
        prompts, responses: the texts (for ``chat``, :class:`Turns` or lists of messages are rendered as turns).
        template: a ``{prompt}`` template or ``chat``.

    Returns:
        ``(prompt ids, response ids, end ids)``: int32 arrays of the prompts; the responses' ids without special
        tokens (for a ``{prompt}`` template the response text itself, a trailing EOS dropped; for ``chat`` what the
        template writes for the reply, :func:`render_chat`); and the ids that end every sequence (:func:`end_ids`).
    """
    template = resolve_template(template)
    if not is_chat(template):
        eos = tokenizer.eos_token_id
        responses_ids = [r[:-1] if r and r[-1] == eos else r for r in _ids(tokenizer, [str(r) for r in responses])]
        return encode_prompts(tokenizer, prompts, template), responses_ids, [eos]
    rendered, texts, end = render_chat(tokenizer, prompts, responses)
    prompt_ids = [np.asarray(ids, dtype=np.int32) for ids in _ids(tokenizer, rendered)]
    return prompt_ids, _ids(tokenizer, texts), _end_ids(tokenizer, end)


def encode_conversations(tokenizer: Any, prompts: Sequence[Text], responses: Sequence[Text], template: str,
                         max_length: int) -> tuple[list[np.ndarray], int]:
    """Each (prompt, response) as the one sequence a score or moderation model reads, cut to ``max_length`` with the
    end kept: for a ``{prompt}`` template :func:`encode_with_eos` of :func:`conversations` (BOS, the text cut to
    ``max_length - 1`` tokens, EOS); for ``chat`` the prompt and response ids (:func:`encode_prompt_response`) cut to
    leave room for the end-of-turn ids, then those.

    Returns:
        ``(ids, truncated)``: one int32 array per text, each ending in the end ids; and how many texts were cut.
    """
    template = resolve_template(template)
    if not is_chat(template):
        return encode_with_eos(tokenizer, conversations(prompts, responses, template), max_length)
    if not prompts:
        return [], 0
    prompt_ids, response_ids, end = encode_prompt_response(tokenizer, prompts, responses, template)
    room = max_length - len(end)
    if room < 1:
        raise ValueError(f"max_length {max_length} leaves no room before the chat template's {len(end)} end-of-turn "
                         "token(s)")
    out, truncated = [], 0
    for p, r in zip(prompt_ids, response_ids):
        ids = [*p.tolist(), *r]
        if len(ids) > room:
            ids, truncated = ids[:room], truncated + 1
        out.append(np.asarray([*ids, *end], dtype=np.int32))
    return out, truncated


def encode_prompt_texts(tokenizer: Any, prompts: list[str], template: str, max_length: int) -> tuple[list, int]:
    """The user prompts as the video models read them: template, BOS, cut to ``max_length`` with EOS."""
    if is_chat(resolve_template(template)):
        raise ValueError("prompt_template 'chat' applies to language models; a video model's text encoder reads a "
                         "'{prompt}' template")
    return encode_with_eos(tokenizer, [format_prompt(p, template) for p in prompts], max_length)


def pad_right(sequences: list[np.ndarray], pad_id: int, multiple_of: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad 1-D int arrays into ``(ids (N, L), attention_mask (N, L))``; ``L`` rounds up to ``multiple_of``."""
    length = max(len(s) for s in sequences)
    length = -(-length // multiple_of) * multiple_of
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for i, seq in enumerate(sequences):
        ids[i, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        mask[i, : len(seq)] = 1
    return ids, mask


def pad_left(sequences: list[np.ndarray], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad 1-D int arrays (for generation): ``(ids (N, L), attention_mask (N, L))``."""
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for i, seq in enumerate(sequences):
        ids[i, length - len(seq) :] = torch.as_tensor(seq, dtype=torch.long)
        mask[i, length - len(seq) :] = 1
    return ids, mask
