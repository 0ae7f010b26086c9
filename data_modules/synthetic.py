"""Deterministic synthetic PKU-SafeRLHF rows in the exact 2024 schema, with labels a tiny model can learn.

What it generates:
    Rows of the 2024 PKU-SafeRLHF release (``PKU-Alignment/PKU-SafeRLHF``, config ``default``): the same 16 fields in
    the same order as the real JSONL files (``prompt``, ``response_0``, ``response_1``, ``prompt_source``,
    ``response_0_source``, ``response_1_source``, ``is_response_0_safe``, ``is_response_1_safe``,
    ``response_0_harm_category``, ``response_1_harm_category``, ``response_0_severity_level``,
    ``response_1_severity_level``, ``better_response_id``, ``safer_response_id``, ``response_0_sha256``,
    ``response_1_sha256``). Harm-category dicts have the 19 keys of
    :data:`~data_modules.schemas.PKU_HARM_CATEGORIES` in data order, and ``response_k_sha256`` is
    :func:`~data_modules.schemas.response_sha256` of ``prompt + response_k``. Every row passes
    :func:`~data_modules.schemas.check_pku_saferlhf_row` and has no :func:`~data_modules.schemas.pku_label_notes`.
    The text is original English built from phrase templates written for this module (package data,
    ``phrases/pku_*.json``); no real row is copied.

How the labels are encoded in the text:
    * Prompts are everyday requests in 12 topics (cooking, travel, finance, health, coding, ...) or harmful requests
      in one of the 19 harm categories (about 60% of prompts).
    * Helpfulness: each response has a latent score, the number of *helpful units* it contains: concrete,
      numbered steps with specific details (``Step 2: ...``, ``2. ...`` or ``Second, ...``). The better response has
      strictly more units than the other; a response with no unit is vague, evasive or off-topic. Vague filler is
      added independently of the label, and the worse response is often padded with more of it, so length is not a
      reliable shortcut.
    * Harm: an unsafe response contains *harmful units*, sentences built from a small vocabulary of harmful actions
      of its harm categories (the prompt's category, sometimes a related one). The severity sets the frame and the
      number of units: minor is 1 unit in a hedged frame ("..., but only a little"), moderate 1-2 units in plain
      frames ("You should ..."), severe 2-3 units in frames with explicit intensity markers ("... with maximum
      force"). A safe response has no harmful unit; it may refuse, warn, offer harmless alternatives or carry
      ordinary cautions (*caution units*, 0-2).
    * ``safer_response_id`` is the response with the lower latent harm score
      ``10 * weight(severity) * harmful_units - caution_units`` (weights 1, 2, 4 for minor, moderate, severe): the
      safe one when exactly one is safe, the less harmful one when both are unsafe, the one with more cautions when
      both are safe (ties are never generated).
    * ``better_response_id`` agrees with ``safer_response_id`` on about 76% of rows, as in the real data (24%).
    * Label noise: about 1.5% of rows have ``better_response_id`` flipped and about 1.5% of the rows whose two
      responses have the same safety label have ``safer_response_id`` flipped (never creating a safe/unsafe
      contradiction), about 2.7% of rows in all.

Gold scorer:
    :func:`synthetic_gold_scores` (batched: :func:`synthetic_gold_scorer`) reads the latent counts back from the text
    alone and is the synthetic task's ground truth for the tree-vs-chain experiment: ``reward`` is the number of
    distinct helpful units (list steps with content, in any of the three styles) and ``cost`` is
    ``10 * weight(severity)`` summed over the distinct harmful units, severity read from their frames, minus the
    caution units, or ``-1 - cautions`` for a response without harmful unit, so ``cost <= 0`` iff it is safe (the
    Safe RLHF sign convention). Harm does not enter the reward. It tolerates garbled model output (cut-off,
    repeated or unpunctuated sentences). On ``generate_pku_saferlhf_rows(4000, seed=0)`` the reward orders 98.55%
    of the pairs as ``better_response_id``, ``cost <= 0`` matches ``is_response_k_safe`` on 100% of the responses
    and the cost orders 99.18% of the pairs as ``safer_response_id``; the misses are the generator's label noise.

Marginals (targets): about half the responses unsafe; among unsafe ones severity minor ~12%, moderate ~74%,
severe ~14%; ``is_safe == (severity == 0) == (no category true)`` always; about 10% of rows reuse an earlier prompt;
the two responses of a row always differ; ``prompt_source`` is Alpaca3-70B / Beavertails / WizardLM-30B-Uncensored
(~67/20/13%), and both responses of a row come from the same one of Alpaca-7B, Alpaca2-7B, Alpaca3-8B.

Where it departs from the real data:
    * Responses are 20-120 words (real: a few to several hundred) and prompts 8-30 words, on one line each.
    * The vocabulary is small and templated; the labels are a deterministic function of countable units (plus the
      small explicit noise), whereas real labels come from human and model annotators with their own disagreements.
    * Harmful units are drawn per category, not per request, so an unsafe response may name a different target than
      its prompt; compliant and constructive steps are generic rather than specific to the request.
    * The 8-in-147,814 ``is_safe`` / severity / category disagreements of the real data are not reproduced, and a
      response text recurs across rows (under other prompts) only rarely, about 1 in 1,500 responses.
    * Benign prompts rarely get unsafe responses (about 5%), harmful prompts mostly do (about 80%).

The generator uses only ``random.Random(seed)``: the same ``(num_rows, seed)`` always gives identical rows, and a
prefix of a longer run equals a shorter run with the same seed.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from .schemas import PKU_HARM_CATEGORIES, response_sha256

__all__ = ["generate_pku_saferlhf_rows", "iter_pku_saferlhf_rows", "synthetic_gold_scorer", "synthetic_gold_scores",
           "write_jsonl"]

PROMPT_SOURCES: tuple[str, ...] = ("Alpaca3-70B", "Beavertails", "WizardLM-30B-Uncensored")
RESPONSE_SOURCES: tuple[str, ...] = ("Alpaca-7B", "Alpaca2-7B", "Alpaca3-8B")

# Generation parameters (shares of rows or responses).
_HARMFUL_PROMPT_SHARE = 0.6
_UNSAFE_GIVEN_HARMFUL = 0.8
_UNSAFE_GIVEN_BENIGN = 0.05
_PROMPT_REUSE_SHARE = 0.1
_BETTER_EQUALS_SAFER = 0.76
_FLIP_BETTER = 0.015
_FLIP_SAFER_SAME_STATUS = 0.015
_SEVERITY_WEIGHTS = (0.125, 0.735, 0.14)  # minor, moderate, severe among unsafe responses
_HARM_UNITS_BY_SEVERITY: dict[int, tuple[int, ...]] = {1: (1,), 2: (1, 2), 3: (2, 3)}
_HARM_UNIT_WEIGHT: dict[int, int] = {1: 1, 2: 2, 3: 4}  # by severity: hedged, plain and intense harmful units
_MIN_WORDS, _MAX_WORDS = 20, 120
_MIN_PROMPT_WORDS, _MAX_PROMPT_WORDS = 8, 30

# ---------------------------------------------------------------------------------------------------------------
# Phrase tables: package data (phrases/*.json next to this file), read once at import; lists come back as tuples.
# Placeholders, filled by ``_fill``: {task} the prompt's task phrase, {n} 2-9, {m} 10-60, {t} 160-230; {vp} (in the
# harm frames) a harmful action.
#   pku_prompts.json          "templates" of any prompt ({task}), "harmful_templates" used for harmful prompts only,
#                             and the sentences a prompt may start ("prefixes") or end ("suffixes") with.
#   pku_topics.json           the 12 benign topics, each with "tasks" (for prompts), "steps" (concrete steps: helpful
#                             units), "cautions" (caution units) and "unsafe_category" (the harm category of the rare
#                             unsafe response to a benign prompt).
#   pku_harm_categories.json  the 19 harm categories (PKU_HARM_CATEGORIES), each with "tasks" (for harmful prompts),
#                             "harm" (harmful actions, verb phrases: the harmful units), "warning" (one specific
#                             caution unit) and "related" (categories an unsafe response also falls into sometimes).
#   pku_responses.json        the other response pieces: "benign_openings", "refusals", "comply_openings";
#                             "comply_steps" (concrete steps of a compliant answer to a harmful request: helpful units
#                             in neutral words, the harm is elsewhere); "constructive_steps" (harmless alternatives a
#                             safe answer to a harmful request offers: helpful units); "generic_warnings" (caution
#                             units); "disclaimers"; vague "fillers" and "off_topic" sentences (no unit); and
#                             "harm_frames", the frames of harmful units by severity: "1" hedged, "2" plain, "3" with
#                             explicit intensity markers.
# ---------------------------------------------------------------------------------------------------------------
def _phrase_table(name: str) -> dict[str, Any]:
    """The phrase table ``phrases/<name>.json`` of this package, its lists as tuples (the tables are constants)."""
    text = resources.files(__package__).joinpath(f"phrases/{name}.json").read_text(encoding="utf-8")
    return json.loads(text, object_pairs_hook=_with_tuples)


def _with_tuples(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    return {key: tuple(value) if isinstance(value, list) else value for key, value in pairs}


_PROMPTS = _phrase_table("pku_prompts")
_PROMPT_TEMPLATES: tuple[str, ...] = _PROMPTS["templates"]
_HARMFUL_PROMPT_TEMPLATES: tuple[str, ...] = _PROMPTS["harmful_templates"]
_PROMPT_PREFIXES: tuple[str, ...] = _PROMPTS["prefixes"]
_PROMPT_SUFFIXES: tuple[str, ...] = _PROMPTS["suffixes"]
_TOPICS: dict[str, dict[str, Any]] = _phrase_table("pku_topics")
_CATEGORIES: dict[str, dict[str, Any]] = _phrase_table("pku_harm_categories")
_RESPONSES = _phrase_table("pku_responses")
_BENIGN_OPENINGS: tuple[str, ...] = _RESPONSES["benign_openings"]
_REFUSALS: tuple[str, ...] = _RESPONSES["refusals"]
_COMPLY_OPENINGS: tuple[str, ...] = _RESPONSES["comply_openings"]
_COMPLY_STEPS: tuple[str, ...] = _RESPONSES["comply_steps"]
_CONSTRUCTIVE_STEPS: tuple[str, ...] = _RESPONSES["constructive_steps"]
_GENERIC_WARNINGS: tuple[str, ...] = _RESPONSES["generic_warnings"]
_DISCLAIMERS: tuple[str, ...] = _RESPONSES["disclaimers"]
_FILLERS: tuple[str, ...] = _RESPONSES["fillers"]
_OFF_TOPIC: tuple[str, ...] = _RESPONSES["off_topic"]
_HARM_FRAMES: dict[int, tuple[str, ...]] = {int(s): frames for s, frames in _RESPONSES["harm_frames"].items()}
_VAGUE_WORDS: dict[str, int] = {s: len(s.split()) for s in _FILLERS + _OFF_TOPIC}
_ORDINALS: tuple[str, ...] = ("First", "Second", "Third", "Fourth", "Fifth")
_LIST_STYLES: tuple[str, ...] = ("step", "number", "ordinal")


def _fill(template: str, rng: random.Random, task: str = "") -> str:
    """Fill ``{task}`` and the numeric fields ``{n}`` (2-9), ``{m}`` (10-60) and ``{t}`` (160-230)."""
    text = template.replace("{task}", task)
    while "{n}" in text:
        text = text.replace("{n}", str(rng.randint(2, 9)), 1)
    while "{m}" in text:
        text = text.replace("{m}", str(rng.randrange(10, 65, 5)), 1)
    while "{t}" in text:
        text = text.replace("{t}", str(rng.randrange(160, 240, 10)), 1)
    return text


def _words(sentences: list[str]) -> int:
    return len(" ".join(sentences).split())


def _make_prompt(rng: random.Random) -> dict[str, str]:
    """A new prompt record: text, kind (``benign``/``harmful``), topic or category, task phrase and source."""
    if rng.random() < _HARMFUL_PROMPT_SHARE:
        kind, key = "harmful", rng.choice(PKU_HARM_CATEGORIES)
        task = rng.choice(_CATEGORIES[key]["tasks"])
        template = rng.choice(_PROMPT_TEMPLATES + _HARMFUL_PROMPT_TEMPLATES)
        source = rng.choices(PROMPT_SOURCES, weights=(0.55, 0.33, 0.12))[0]
    else:
        kind, key = "benign", rng.choice(tuple(_TOPICS))
        task = rng.choice(_TOPICS[key]["tasks"])
        template = rng.choice(_PROMPT_TEMPLATES)
        source = rng.choices(PROMPT_SOURCES, weights=(0.85, 0.0, 0.15))[0]
    prefix = [rng.choice(_PROMPT_PREFIXES)] if rng.random() < 0.75 else []
    suffix = [rng.choice(_PROMPT_SUFFIXES)] if rng.random() < 0.65 else []
    body = [template.replace("{task}", task)]
    if _words(prefix + body + suffix) > _MAX_PROMPT_WORDS:
        suffix = []
    if _words(prefix + body + suffix) > _MAX_PROMPT_WORDS:
        prefix = []
    while _words(prefix + body + suffix) < _MIN_PROMPT_WORDS:
        suffix.append(rng.choice(_PROMPT_SUFFIXES))
    text = " ".join(prefix + body + suffix)
    return {"text": text, "kind": kind, "key": key, "task": task, "source": source}


def _render_list(style: str, sentences: list[str]) -> list[str]:
    """Render helpful units as one list in ``style``: ``Step k: ...``, ``k. ...`` or ``First, ...``."""
    out = []
    for i, sentence in enumerate(sentences):
        if style == "step":
            out.append(f"Step {i + 1}: {sentence}")
        elif style == "number":
            out.append(f"{i + 1}. {sentence}")
        else:
            out.append(f"{_ORDINALS[i]}, {sentence[0].lower()}{sentence[1:]}")
    return out


def _response_categories(rng: random.Random, prompt: dict[str, str], harm_units: int) -> list[str]:
    """Harm categories of an unsafe response: the prompt's (or the topic's) category, sometimes a related one."""
    primary = prompt["key"] if prompt["kind"] == "harmful" else _TOPICS[prompt["key"]]["unsafe_category"]
    categories = [primary]
    if harm_units > 1 and rng.random() < 0.6:
        categories.append(rng.choice(_CATEGORIES[primary]["related"]))
    return categories


def _build_response(
    rng: random.Random,
    prompt: dict[str, str],
    *,
    helpful: int,
    harm_units: int,
    severity: int,
    categories: list[str],
    cautions: int,
    padding: int,
) -> str:
    """Build the text of one response from its latent counts (see the module docstring)."""
    task, harmful_prompt, safe = prompt["task"], prompt["kind"] == "harmful", harm_units == 0
    topic = None if harmful_prompt else _TOPICS[prompt["key"]]

    if harmful_prompt and safe:
        opening: list[str] = [_fill(rng.choice(_REFUSALS), rng, task)]
    elif rng.random() < 0.85:
        openings = _COMPLY_OPENINGS if harmful_prompt else _BENIGN_OPENINGS
        opening = [_fill(rng.choice(openings), rng, task)]
    else:
        opening = []

    if topic is not None:
        step_pool = topic["steps"]
    else:
        step_pool = _CONSTRUCTIVE_STEPS if safe else _COMPLY_STEPS
    style = rng.choice(_LIST_STYLES)
    steps = _render_list(style, [_fill(s, rng) for s in rng.sample(step_pool, helpful)])

    vps: list[str] = []
    if harm_units:
        vps = rng.sample(_CATEGORIES[categories[0]]["harm"], harm_units)
        if len(categories) > 1:  # one unit from the related category
            vps[-1] = rng.choice(_CATEGORIES[categories[1]]["harm"])
    harm = [rng.choice(_HARM_FRAMES[severity]).replace("{vp}", vp) for vp in vps]

    warnings: list[str] = []
    if cautions:
        if topic is not None:
            warnings = rng.sample(topic["cautions"], cautions)
        else:
            pool = [_CATEGORIES[prompt["key"]]["warning"], *_GENERIC_WARNINGS]
            warnings = rng.sample(pool, cautions)
    disclaimer = [rng.choice(_DISCLAIMERS)] if harm_units and rng.random() < 0.25 else []

    body = steps + harm if rng.random() < 0.6 else harm + steps
    if helpful == 0 and not harm_units and rng.random() < 0.6:
        padding += 1
    rest = body + warnings + disclaimer
    total = _words(opening + rest)
    if total > _MAX_WORDS:
        rest = body + warnings
        if _words(opening + rest) > _MAX_WORDS and not (harmful_prompt and safe):
            opening = []
        if _words(opening + rest) > _MAX_WORDS:  # rare: the same units in their shortest wording always fit
            steps = _render_list(style, [_fill(s, rng) for s in sorted(step_pool, key=len)[:helpful]])
            frame = min(_HARM_FRAMES[severity or 2], key=len)
            harm = [frame.replace("{vp}", vp) for vp in sorted(vps, key=len)]
            rest = steps + harm + warnings
        total = _words(opening + rest)

    fillers: list[str] = []
    vague_pool = _FILLERS + _OFF_TOPIC if helpful == 0 else _FILLERS
    # Four spare sentences (6+ words each) always reach the 20-word minimum, even for an empty core.
    candidates = rng.sample(vague_pool, min(len(vague_pool), padding + 4))
    for sentence in candidates:
        n_words = _VAGUE_WORDS[sentence]
        if (len(fillers) >= padding and total >= _MIN_WORDS) or total + n_words > _MAX_WORDS:
            break
        fillers.append(sentence)
        total += n_words
    split = rng.randint(0, len(fillers))
    return " ".join(opening + fillers[:split] + rest + fillers[split:])


def _severity(rng: random.Random) -> int:
    return rng.choices((1, 2, 3), weights=_SEVERITY_WEIGHTS)[0]


def _latent_labels(rng: random.Random, prompt: dict[str, str]) -> dict[str, Any]:
    """Draw per-response safety, severity, unit counts and the two preference labels (noise included)."""
    p_unsafe = _UNSAFE_GIVEN_HARMFUL if prompt["kind"] == "harmful" else _UNSAFE_GIVEN_BENIGN
    unsafe = [rng.random() < p_unsafe, rng.random() < p_unsafe]
    severity = [_severity(rng) if u else 0 for u in unsafe]
    units = [rng.choice(_HARM_UNITS_BY_SEVERITY[s]) if s else 0 for s in severity]
    if all(unsafe) and (severity[0], units[0]) == (severity[1], units[1]):  # the judgement needs distinct harm
        k = rng.randint(0, 1)
        if severity[k] == 1:
            severity[k], units[k] = 2, 2
        else:
            units[k] = next(u for u in _HARM_UNITS_BY_SEVERITY[severity[k]] if u != units[k])
    if not any(unsafe):
        cautions = rng.sample((0, 1, 2), 2)  # both safe: the relative judgement needs distinct cautions
    else:
        cautions = [0 if u else rng.choices((0, 1, 2), weights=(0.4, 0.4, 0.2))[0] for u in unsafe]
    harm_score = [10 * _HARM_UNIT_WEIGHT.get(severity[k], 0) * units[k] - cautions[k] for k in (0, 1)]
    safer = 0 if harm_score[0] < harm_score[1] else 1
    better = safer if rng.random() < _BETTER_EQUALS_SAFER else 1 - safer
    high = rng.randint(1, 4)
    low = rng.randint(0, high - 1)
    helpful = [high, low] if better == 0 else [low, high]
    if rng.random() < _FLIP_BETTER:
        better = 1 - better
    if unsafe[0] == unsafe[1] and rng.random() < _FLIP_SAFER_SAME_STATUS:
        safer = 1 - safer
    return {
        "unsafe": unsafe,
        "severity": severity,
        "units": units,
        "cautions": cautions,
        "helpful": helpful,
        "better": better,
        "safer": safer,
    }


def _make_row(rng: random.Random, prompt: dict[str, str]) -> dict[str, Any]:
    labels = _latent_labels(rng, prompt)
    worse = 1 - labels["better"]
    responses: list[str] = []
    harm_categories: list[dict[str, bool]] = []
    for k in (0, 1):
        categories = _response_categories(rng, prompt, labels["units"][k]) if labels["unsafe"][k] else []
        padding = rng.choices((0, 1, 2, 3), weights=(0.3, 0.3, 0.25, 0.15))[0]
        if k == worse and rng.random() < 0.5:
            padding += rng.randint(2, 4)  # vague padding: the worse response is often the longer one
        kwargs = {
            "helpful": labels["helpful"][k],
            "harm_units": labels["units"][k],
            "severity": labels["severity"][k],
            "categories": categories,
            "cautions": labels["cautions"][k],
            "padding": padding,
        }
        text = _build_response(rng, prompt, **kwargs)
        for _ in range(20):
            if k == 0 or text != responses[0]:
                break
            text = _build_response(rng, prompt, **kwargs)
        if k == 1 and text == responses[0]:  # astronomically unlikely; a distinct sentence keeps the rows valid
            text = f"{text} {rng.choice(_FILLERS)}"
        responses.append(text)
        harm_categories.append({c: c in categories for c in PKU_HARM_CATEGORIES})
    response_source = rng.choice(RESPONSE_SOURCES)
    text = prompt["text"]
    return {
        "prompt": text,
        "response_0": responses[0],
        "response_1": responses[1],
        "prompt_source": prompt["source"],
        "response_0_source": response_source,
        "response_1_source": response_source,
        "is_response_0_safe": not labels["unsafe"][0],
        "is_response_1_safe": not labels["unsafe"][1],
        "response_0_harm_category": harm_categories[0],
        "response_1_harm_category": harm_categories[1],
        "response_0_severity_level": labels["severity"][0],
        "response_1_severity_level": labels["severity"][1],
        "better_response_id": labels["better"],
        "safer_response_id": labels["safer"],
        "response_0_sha256": response_sha256(text, responses[0]),
        "response_1_sha256": response_sha256(text, responses[1]),
    }


def generate_pku_saferlhf_rows(num_rows: int, seed: int = 0) -> list[dict]:
    """Generate synthetic rows in the exact 2024 PKU-SafeRLHF schema (16 fields, data order).

    Args:
        num_rows: how many rows (pairs) to generate; 0 gives an empty list.
        seed: seed of the only random source, ``random.Random(seed)``; the same ``(num_rows, seed)`` always gives
            identical rows.

    Returns:
        A list of row dicts, each valid under :func:`~data_modules.schemas.check_pku_saferlhf_row` and without
        :func:`~data_modules.schemas.pku_label_notes`. See the module docstring for how labels are encoded.

    Raises:
        ValueError: if ``num_rows`` is negative.
    """
    return list(iter_pku_saferlhf_rows(num_rows, seed))


def iter_pku_saferlhf_rows(num_rows: int, seed: int = 0) -> Iterator[dict]:
    """The rows of :func:`generate_pku_saferlhf_rows`, one at a time (what preparation reads: memory holds the
    distinct prompts drawn so far, not the rows).

    Raises:
        ValueError: if ``num_rows`` is negative.
    """
    if num_rows < 0:
        raise ValueError(f"num_rows must be >= 0, got {num_rows}")
    return _rows(num_rows, random.Random(seed))


def _rows(num_rows: int, rng: random.Random) -> Iterator[dict]:
    prompts: list[dict[str, str]] = []
    for _ in range(num_rows):
        if prompts and rng.random() < _PROMPT_REUSE_SHARE:
            prompt = rng.choice(prompts)
        else:
            prompt = _make_prompt(rng)
            prompts.append(prompt)
        yield _make_row(rng, prompt)


def write_jsonl(rows: Iterable[dict], path: str | Path) -> Path:
    """Write rows as JSON Lines (one object per line, keys in row order), creating parent folders.

    Args:
        rows: the rows to write, e.g. from :func:`generate_pku_saferlhf_rows` or, for more rows than memory holds,
            :func:`iter_pku_saferlhf_rows`.
        path: the output file.

    Returns:
        The path written, as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


# ---------------------------------------------------------------------------------------------------------------
# Gold scorer: the latent counts read back from the text alone (ground truth of the synthetic task).
# ---------------------------------------------------------------------------------------------------------------
# Step markers of the three list styles of ``_render_list``, tolerant of a missing colon, ``step 2`` and ``2)``.
_ORDINAL_WORDS = (*_ORDINALS, "Sixth", "Seventh", "Eighth", "Ninth", "Tenth")
_STEP_MARKER_RE = re.compile(
    r"\b[Ss]tep\s*\d{1,2}\s*[:.)\-]?(?=\s|$)"  # Step 2: ...
    r"|(?<![^\s.!?:;,])\d{1,2}[.)](?=\s|$)"  # 2. ... (not 3.5, not inside a word or number)
    r"|\b(?:" + "|".join(_ORDINAL_WORDS) + r")(?:ly)?,"  # Second, ... (capitalised: "... asking first, but" is no step)
)
_SENTENCE_END_RE = re.compile(r"[.!?](?=\s|$)")
_ALPHA_WORD_RE = re.compile(r"[A-Za-z]+")
_MIN_STEP_WORDS = 3  # a step marker followed by fewer words (empty, cut off) is not a helpful unit


def _phrase_words(text: str) -> list[str]:
    return _ALPHA_WORD_RE.findall(text.lower())


class _PhraseMatcher:
    """Finds the phrases of a fixed vocabulary in text, each recognised by its shortest distinctive word prefix.

    A phrase's key is its shortest prefix of at least ``min_words`` words (case and punctuation ignored) that starts
    no other phrase and occurs in none of ``others``, so a cut-off copy of a phrase is still recognised and nothing
    else is. A match extends over as many further words of the phrase as follow.
    """

    def __init__(self, phrases: tuple[str, ...], others: tuple[str, ...], min_words: int) -> None:
        other_seqs = [" " + " ".join(_phrase_words(t)) + " " for t in others]
        self.words = [tuple(_phrase_words(p)) for p in phrases]
        self.keys: dict[tuple[str, ...], int] = {}
        for i, words in enumerate(self.words):
            for k in range(min(min_words, len(words)), len(words) + 1):
                key = words[:k]
                clash = any(j != i and w[:k] == key for j, w in enumerate(self.words))
                if not clash and not any(f" {' '.join(key)} " in seq for seq in other_seqs):
                    break
            self.keys[key] = i
        self.key_lengths = sorted({len(k) for k in self.keys})

    def finditer(self, text: str) -> list[tuple[int, int, int]]:
        """Non-overlapping matches as ``(phrase index, start, end)`` character offsets, left to right."""
        tokens = list(_ALPHA_WORD_RE.finditer(text))
        words = [t.group().lower() for t in tokens]
        out: list[tuple[int, int, int]] = []
        i = 0
        while i < len(words):
            for n in self.key_lengths:
                phrase = self.keys.get(tuple(words[i : i + n]))
                if phrase is not None:
                    full = self.words[phrase]
                    while i + n < len(words) and n < len(full) and words[i + n] == full[n]:
                        n += 1
                    out.append((phrase, tokens[i].start(), tokens[i + n - 1].end()))
                    i += n
                    break
            else:
                i += 1
        return out


def _unique(items: Any) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


_HARM_PHRASES = _unique(vp for spec in _CATEGORIES.values() for vp in spec["harm"])
_CAUTION_PHRASES = _unique(
    [c for spec in _TOPICS.values() for c in spec["cautions"]]
    + [spec["warning"] for spec in _CATEGORIES.values()]
    + list(_GENERIC_WARNINGS)
)
# Everything else a response (or its prompt) is built from: harmful or caution keys must not occur in it.
_OTHER_TEXTS: tuple[str, ...] = (
    *_PROMPT_TEMPLATES,
    *_HARMFUL_PROMPT_TEMPLATES,
    *_PROMPT_PREFIXES,
    *_PROMPT_SUFFIXES,
    *(t for spec in _TOPICS.values() for t in (*spec["tasks"], *spec["steps"])),
    *(t for spec in _CATEGORIES.values() for t in spec["tasks"]),
    *_BENIGN_OPENINGS,
    *_REFUSALS,
    *_COMPLY_OPENINGS,
    *_COMPLY_STEPS,
    *_CONSTRUCTIVE_STEPS,
    *_DISCLAIMERS,
    *_FILLERS,
    *_OFF_TOPIC,
    *(f for frames in _HARM_FRAMES.values() for f in frames),
)
_HARM_MATCHER = _PhraseMatcher(_HARM_PHRASES, _OTHER_TEXTS + _CAUTION_PHRASES, min_words=3)
_CAUTION_MATCHER = _PhraseMatcher(_CAUTION_PHRASES, _OTHER_TEXTS + _HARM_PHRASES, min_words=4)
# Frame wording of ``_HARM_FRAMES`` that marks a severe (intensity) or minor (hedged) harmful unit; plain frames
# and unframed harmful actions count as moderate.
_SEVERE_FRAME_RE = re.compile(
    r"\b(?:make\s+sure\s+you|hold\s+back|ruthless|go\s+all\s+the\s+way|brutally|again\s+and\s+again"
    r"|as\s+hard\s+as\s+you\s+can|maximum\s+force)\b",
    re.IGNORECASE,
)
_MINOR_FRAME_RE = re.compile(
    r"\b(?:really\s+want\s+to|you\s+could|only\s+a\s+little|you\s+might|just\s+once|see\s+what\s+happens)\b",
    re.IGNORECASE,
)
_FRAME_CONTEXT_WORDS = 8  # words of frame context read on each side of a harmful action, within its sentence


def _helpful_units(text: str) -> int:
    """Distinct list steps: a step marker followed by at least ``_MIN_STEP_WORDS`` words before the next marker or
    sentence end; steps whose words (numbers ignored) repeat or are cut-off copies of another step count once."""
    markers = list(_STEP_MARKER_RE.finditer(text))
    keys: list[str] = []
    for i, marker in enumerate(markers):
        stop = markers[i + 1].start() if i + 1 < len(markers) else len(text)
        content = text[marker.end() : stop]
        end = _SENTENCE_END_RE.search(content)
        words = _phrase_words(content[: end.start()] if end else content)
        if len(words) >= _MIN_STEP_WORDS:
            keys.append(" ".join(words) + " ")
    distinct: list[str] = []
    for key in sorted(keys, key=len, reverse=True):
        if not any(kept.startswith(key) for kept in distinct):
            distinct.append(key)
    return len(distinct)


def _frame_severity(before: str, after: str) -> int:
    """Severity of a harmful action from the frame words around it, cut at sentence ends (default moderate)."""
    ends = list(_SENTENCE_END_RE.finditer(before))
    before = " ".join((before[ends[-1].end() :] if ends else before).split()[-_FRAME_CONTEXT_WORDS:])
    end = _SENTENCE_END_RE.search(after)
    after = " ".join((after[: end.start()] if end else after).split()[:_FRAME_CONTEXT_WORDS])
    context = f"{before} | {after}"
    if _SEVERE_FRAME_RE.search(context):
        return 3
    if _MINOR_FRAME_RE.search(context):
        return 1
    return 2


def _harm_and_cautions(text: str) -> tuple[list[int], int]:
    """Severities of the distinct harmful actions in ``text`` (the highest of repeats) and its distinct cautions."""
    matches = _HARM_MATCHER.finditer(text)
    severity: dict[int, int] = {}
    for i, (phrase, begin, end) in enumerate(matches):
        start = matches[i - 1][2] if i else 0
        stop = matches[i + 1][1] if i + 1 < len(matches) else len(text)
        sev = _frame_severity(text[start:begin], text[end:stop])
        severity[phrase] = max(severity.get(phrase, 0), sev)
    cautions = {phrase for phrase, _, _ in _CAUTION_MATCHER.finditer(text)}
    return list(severity.values()), len(cautions)


def synthetic_gold_scores(prompt: str, response: str) -> tuple[float, float]:
    """Ground-truth ``(reward, cost)`` of one synthetic response, read from its text alone.

    The scorer recovers the latent counts that :func:`generate_pku_saferlhf_rows` encodes in the text (see the module
    docstring), tolerating the garbled output of a small language model trained on the rows (cut-off or repeated
    sentences, missing punctuation, any string at all).

    * Reward: the number of distinct *helpful units*, i.e. list steps in any of the three styles (``Step 2: ...``,
      ``2. ...``, ``Second, ...``; also ``step 2 ...``, ``2) ...``, ``Secondly, ...``) followed by at least three
      words before the next marker or sentence end. A step repeated (its words equal up to numbers, or a cut-off
      copy of a longer step) counts once; a bare marker counts zero. Harm does not change the reward, and there is
      no tie-break: equal counts are ties.
    * Cost (Safe RLHF sign convention, positive = unsafe): each distinct harmful action (a verb phrase of the harm
      vocabulary, recognised from its first distinctive words) costs ``10 * weight(severity)`` with weights 1, 2, 4
      for minor, moderate, severe; the severity is read from the frame words around it (hedged "..., but only a
      little" = minor, intensity markers "... with maximum force" = severe, otherwise moderate). Each distinct
      caution (topic cautions, category and generic warnings) subtracts 1. A response with a harmful action costs at
      least 1; one without costs ``-1 - cautions``. Hence ``cost <= 0`` exactly when no harmful action is found, and
      on generated rows the cost equals the generator's harm score (minus 1 for safe responses).

    Args:
        prompt: the prompt; unused (the units are all in the response), accepted for the ``(prompt, response)``
            scorer interface.
        response: the response text, possibly garbled or empty.

    Returns:
        ``(reward, cost)`` as floats.
    """
    del prompt
    text = response if isinstance(response, str) else str(response or "")
    reward = float(_helpful_units(text))
    severities, cautions = _harm_and_cautions(text)
    if severities:
        cost = max(1.0, float(sum(10 * _HARM_UNIT_WEIGHT[s] for s in severities) - cautions))
    else:
        cost = -1.0 - cautions
    return reward, cost


def synthetic_gold_scorer(prompts: list[str], responses: list[str]) -> tuple[list[float], list[float]]:
    """Batched :func:`synthetic_gold_scores`.

    Args:
        prompts: the prompts, one per response.
        responses: the response texts.

    Returns:
        ``(rewards, costs)``, two lists aligned with ``responses``.

    Raises:
        ValueError: if ``prompts`` and ``responses`` differ in length.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
    scores = [synthetic_gold_scores(p, r) for p, r in zip(prompts, responses, strict=True)]
    return [s[0] for s in scores], [s[1] for s in scores]
