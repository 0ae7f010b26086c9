"""Synthetic SafeSora: the exact schema of SafeSora, SafeSora-Label and SafeSora-Eval, with real mp4 files whose
content carries learnable signals for both preferences, the four helpfulness sub-preferences and the 12 harm labels.

No real SafeSora row can be downloaded here, so the embedded default and the tests use this generator. It mimics
how the real data came about: a user prompt (``prompt_text``) is rewritten by a prompt-augmentation step into the
text actually sent to a video generator (``video_text``), the generator renders it, and annotators compare two
videos of the same prompt.

The "generator" renders a ``video_text`` deterministically (:func:`render`): one object of the named colour and shape
moving in the named direction over a dark background tinted by the named place, ``large`` or ``small``, ``smooth``
or ``shaky`` (per-frame jitter and noise), and one magenta marker per harmful phrase, filling a fixed border cell
(of a 4 x 4 grid) per harm category, on a background tinted dark red. The markers name the categories; the tint
is a global cue that even a tiny video diffusion model picks up within minutes on a CPU (local markers alone were
not enough for Diffusion-DPO at that scale). So every label is visible in the video, and the rewrite decides it:

- helpfulness sub-preferences (annotated per pair, the better video wins; annotator noise flips close calls):
  ``instruction_following`` the colour asked for, ``correctness`` the shape and direction asked for,
  ``information`` a large object, ``aesthetics`` smooth motion; ``helpfulness`` their weighted sum.
- harm: ``video_labels[c]`` is true when the video shows category ``c``'s marker (from a harmful phrase in the
  rewrite); ``is_safe`` is no marker; ``harmlessness`` prefers the video with fewer harm categories (ties: the
  annotator's coin). ``prompt_labels`` are the categories a red-team prompt asks for.

Layout (the upstream one): ``config-train.json.gz`` and ``config-test.json.gz`` (pairs, gzip'd JSON arrays),
``label/config-{train,test}.json.gz`` (SafeSora-Label video rows), ``eval/config-eval.json.gz`` (SafeSora-Eval
prompts), ``videos/<prompt_id>/<video_id>.mp4``; ``video_path`` is relative to the root.

    python -m lit_safe.data_modules.safesora_synthetic --output data/safesora_synthetic --pairs 2000
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import random
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from lit_safe.data_modules.schemas import SAFESORA_CATEGORIES
from lit_safe.models.frames import write_mp4

GENERATOR_VERSION = 5
# The vocabulary of prompts and rewrites, and what render() draws for each word: package data
# (phrases/safesora_vocabulary.json), read once at import. "colours" and "places" (the background's tint; no label
# depends on it, it makes prompts diverse as real ones are) are RGB triples, "directions" a (dx, dy) step per frame,
# and "harm_phrases" one harmful phrase per SafeSora category (what a red-team prompt asks for and a rewrite may keep
# or add).
_VOCABULARY = json.loads(
    resources.files(__package__).joinpath("phrases/safesora_vocabulary.json").read_text(encoding="utf-8")
)
COLOURS: dict[str, tuple[int, ...]] = {name: tuple(rgb) for name, rgb in _VOCABULARY["colours"].items()}
SHAPES: tuple[str, ...] = tuple(_VOCABULARY["shapes"])
DIRECTIONS: dict[str, tuple[int, ...]] = {name: tuple(step) for name, step in _VOCABULARY["directions"].items()}
HARM_PHRASES: dict[str, str] = _VOCABULARY["harm_phrases"]
PLACES: dict[str, tuple[int, ...]] = {place: tuple(rgb) for place, rgb in _VOCABULARY["places"].items()}
MARKER = (255, 0, 255)
UNSAFE_TINT = (80, 0, 10)  # the dark red a harmful scene's background turns (added to 30% of the place's tint)
SUB_WEIGHTS = {"instruction_following": 1.0, "correctness": 0.8, "information": 0.6, "aesthetics": 0.7}
GENERATORS = ("synthetic-lvm-a", "synthetic-lvm-b", "synthetic-lvm-c", "synthetic-lvm-d")
SIZE, FRAMES, FPS = 64, 16, 8


def _border_slots(size: int, cell: int) -> list[tuple[int, int]]:
    """Top-left corners of 12 distinct marker cells along the frame border (one per category)."""
    n = size // cell
    ring = [(0, c) for c in range(n)] + [(r, n - 1) for r in range(1, n)]
    ring += [(n - 1, c) for c in range(n - 2, -1, -1)] + [(r, 0) for r in range(n - 2, 0, -1)]
    step = len(ring) / len(SAFESORA_CATEGORIES)
    return [(ring[int(i * step)][0] * cell, ring[int(i * step)][1] * cell) for i in range(len(SAFESORA_CATEGORIES))]


MARKER_CELL = SIZE // 4  # a marker fills one of the 12 border cells of a 4 x 4 grid: 1/16 of the frame
SLOTS = _border_slots(SIZE, MARKER_CELL)


def parse_video_text(text: str) -> dict[str, Any]:
    """The attributes a ``video_text`` asks for (what :func:`render` draws)."""
    words = text.lower()
    return {
        "colour": next((c for c in COLOURS if f" {c} " in f" {words} "), "red"),
        "shape": next((s for s in SHAPES if f" {s} " in f" {words} "), "square"),
        "direction": next((d for d in DIRECTIONS if f"moving {d}" in words), "right"),
        "large": "large" in words,
        "smooth": "shaky" not in words,
        "harms": [c for c, phrase in HARM_PHRASES.items() if phrase in words],
        "place": next((p for p in PLACES if p in words), "in a city"),
    }


def render(video_text: str, seed: int) -> np.ndarray:
    """Render ``video_text`` as ``uint8 (16, 64, 64, 3)`` frames (see the module docstring)."""
    spec = parse_video_text(video_text)
    rng = np.random.default_rng(seed)
    colour = np.array(COLOURS[spec["colour"]], dtype=np.float32)
    half = 13 if spec["large"] else 6
    dx, dy = DIRECTIONS[spec["direction"]]
    start = rng.uniform(SIZE * 0.3, SIZE * 0.7, size=2)
    background = np.array(PLACES[spec["place"]], dtype=np.float32) * rng.uniform(0.8, 1.2)
    if spec["harms"]:  # a harmful scene turns menacing: a global cue, besides the per-category markers
        background = 0.3 * background + np.array(UNSAFE_TINT, dtype=np.float32)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    frames = np.empty((FRAMES, SIZE, SIZE, 3), dtype=np.float32)
    for f in range(FRAMES):
        cx = start[0] + dx * (f - FRAMES / 2) * 1.6
        cy = start[1] + dy * (f - FRAMES / 2) * 1.6
        if not spec["smooth"]:
            cx, cy = cx + rng.normal(0, 4), cy + rng.normal(0, 4)
        if spec["shape"] == "square":
            mask = (np.abs(xx - cx) <= half) & (np.abs(yy - cy) <= half)
        elif spec["shape"] == "disc":
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= half**2
        else:  # a bar: wide and flat
            mask = (np.abs(xx - cx) <= half * 1.4) & (np.abs(yy - cy) <= half * 0.45)
        frame = np.full((SIZE, SIZE, 3), background, dtype=np.float32)
        frame[mask] = colour
        if not spec["smooth"]:
            frame += rng.normal(0, 18, size=frame.shape)
        for category in spec["harms"]:
            top, left = SLOTS[SAFESORA_CATEGORIES.index(category)]
            frame[top : top + MARKER_CELL, left : left + MARKER_CELL] = MARKER
        frames[f] = frame
    return np.clip(frames, 0, 255).astype(np.uint8)


def _helpfulness_parts(prompt: dict[str, Any], video: dict[str, Any]) -> dict[str, float]:
    spec = parse_video_text(video["video_text"])
    return {
        "instruction_following": float(spec["colour"] == prompt["colour"]),
        "correctness": 0.5 * (spec["shape"] == prompt["shape"]) + 0.5 * (spec["direction"] == prompt["direction"]),
        "information": float(spec["large"]),
        "aesthetics": float(spec["smooth"]),
    }


def _rewrite(prompt: dict[str, Any], rng: random.Random) -> str:
    """A prompt-augmentation rewrite: mostly faithful, sometimes wrong, adds detail words, keeps or adds harms."""
    colour = prompt["colour"] if rng.random() < 0.7 else rng.choice(list(COLOURS))
    shape = prompt["shape"] if rng.random() < 0.75 else rng.choice(SHAPES)
    direction = prompt["direction"] if rng.random() < 0.75 else rng.choice(list(DIRECTIONS))
    size = "large" if rng.random() < 0.5 else "small"
    camera = "smooth camera" if rng.random() < 0.5 else "shaky camera"
    harms = [c for c in prompt["harms"] if rng.random() < 0.6]
    if rng.random() < 0.06:
        harms.append(rng.choice(SAFESORA_CATEGORIES))
    text = f"a {size} {colour} {shape} moving {direction} {prompt['place']}, {camera}"
    for category in dict.fromkeys(harms):
        text += f", with {HARM_PHRASES[category]}"
    return text


def _prompt(rng: random.Random, index: int, critical: bool) -> dict[str, Any]:
    colour, shape, direction = rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.choice(list(DIRECTIONS))
    place = rng.choice(list(PLACES))
    harms = rng.sample(SAFESORA_CATEGORIES, 1 if rng.random() < 0.8 else 2) if critical else []
    text = f"a {colour} {shape} moving {direction} {place}"
    for category in harms:
        text += f" with {HARM_PHRASES[category]}"
    digest = hashlib.sha256(f"{text}/{index}".encode()).hexdigest()[:16]
    return {"prompt_id": f"p{digest}", "prompt_text": text, "colour": colour, "shape": shape,
            "direction": direction, "place": place, "harms": harms,
            "prompt_type": "safety_critical" if critical else "safety_neutral"}


def _labels(categories: list[str]) -> dict[str, bool]:
    return {c: c in categories for c in SAFESORA_CATEGORIES}


def _winner(a: float, b: float, rng: random.Random, noise: float) -> str:
    """The annotator's choice between video_0 (score a) and video_1 (score b), with Gaussian annotator noise."""
    diff = a - b + rng.gauss(0.0, noise)
    if diff == 0:
        return rng.choice(("video_0", "video_1"))
    return "video_0" if diff > 0 else "video_1"


def generate(root: str | Path, num_pairs: int, seed: int = 0, test_fraction: float = 0.125,
             videos_per_prompt: int = 3, num_eval_prompts: int = 40) -> Path:
    """Write a synthetic SafeSora dataset of about ``num_pairs`` pairs under ``root`` (see the module docstring).

    Prompts (not pairs) are split into train and test, as the real release does. Each prompt gets
    ``videos_per_prompt`` videos and all their pairs (3 videos -> 3 pairs).

    Returns:
        ``root``.
    """
    root = Path(root)
    rng = random.Random(seed)
    pairs_per_prompt = videos_per_prompt * (videos_per_prompt - 1) // 2
    num_prompts = max(2, -(-num_pairs // pairs_per_prompt))
    splits: dict[str, dict[str, list]] = {"train": {"pairs": [], "videos": []}, "test": {"pairs": [], "videos": []}}
    for p in range(num_prompts):
        prompt = _prompt(rng, p, critical=rng.random() < 0.5)
        split = "test" if p < max(1, round(num_prompts * test_fraction)) else "train"
        base = {k: prompt[k] for k in ("prompt_id", "prompt_text", "prompt_type")}
        videos = []
        for v in range(videos_per_prompt):
            video_text = _rewrite(prompt, rng)
            key = f"{prompt['prompt_id']}/{v}/{video_text}"
            video_id = f"v{hashlib.sha256(key.encode()).hexdigest()[:16]}"
            relative = f"videos/{prompt['prompt_id']}/{video_id}.mp4"
            write_mp4(root / relative, render(video_text, seed=rng.randrange(2**31)), fps=FPS)
            harms = parse_video_text(video_text)["harms"]
            record = {**base, "video_id": video_id, "video_text": video_text, "video_path": relative,
                      "is_safe": not harms, "generated_from": GENERATORS[v % len(GENERATORS)]}
            videos.append(record)
            splits[split]["videos"].append({**record, "prompt_labels": _labels(prompt["harms"]),
                                            "video_labels": _labels(harms)})
        for i in range(videos_per_prompt):
            for j in range(i + 1, videos_per_prompt):
                a, b = _helpfulness_parts(prompt, videos[i]), _helpfulness_parts(prompt, videos[j])
                subs = {name: _winner(a[name], b[name], rng, 0.15) for name in SUB_WEIGHTS}
                help_a = sum(w * a[n] for n, w in SUB_WEIGHTS.items())
                help_b = sum(w * b[n] for n, w in SUB_WEIGHTS.items())
                harm_a = len(parse_video_text(videos[i]["video_text"])["harms"])
                harm_b = len(parse_video_text(videos[j]["video_text"])["harms"])
                pair_id = hashlib.sha256(f"{videos[i]['video_id']}/{videos[j]['video_id']}".encode()).hexdigest()[:16]
                splits[split]["pairs"].append({
                    "pair_id": f"pair{pair_id}", **base,
                    "video_0": videos[i], "video_1": videos[j],
                    "helpfulness": _winner(help_a, help_b, rng, 0.3),
                    "harmlessness": _winner(-harm_a, -harm_b, rng, 0.1),
                    "sub_preferences": subs,
                })
    for split, content in splits.items():
        _write_array(root / f"config-{split}.json.gz", content["pairs"])
        _write_array(root / "label" / f"config-{split}.json.gz", content["videos"])
    _write_array(root / "eval" / "config-eval.json.gz", eval_prompts(num_eval_prompts, seed))
    (root / "synthetic.json").write_text(json.dumps({"generator_version": GENERATOR_VERSION, "num_pairs": num_pairs,
                                                      "seed": seed, "test_fraction": test_fraction,
                                                      "videos_per_prompt": videos_per_prompt}) + "\n")
    return root


def eval_prompts(num_prompts: int, seed: int = 0) -> list[dict[str, Any]]:
    """SafeSora-Eval-style rows (``prompt_id``, ``prompt_text``, ``prompt_type``), half of them red-team prompts."""
    rng = random.Random(f"eval/{seed}")
    rows = []
    for p in range(num_prompts):
        prompt = _prompt(rng, p, critical=p % 2 == 1)
        rows.append({k: prompt[k] for k in ("prompt_id", "prompt_text", "prompt_type")})
    return rows


def _write_array(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        json.dump(rows, f)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a synthetic SafeSora dataset (pairs, labels, eval, mp4s).")
    parser.add_argument("--output", required=True, help="the directory to write")
    parser.add_argument("--pairs", type=int, default=2000, help="about how many pairs (train + test)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    root = generate(args.output, args.pairs, seed=args.seed)
    print(f"wrote a synthetic SafeSora dataset to {root}")


if __name__ == "__main__":
    main()
