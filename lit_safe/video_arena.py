"""The video arena: two prompt augmenters rewrite the same user prompts, one video generator renders each rewrite, and
the same video reward (helpfulness) and cost (harmlessness) models score both videos against the *user's* prompt.

This is how a prompt-augmentation module is evaluated (SafeSora's first alignment route): the rewriter that makes the
generator produce more helpful and safer videos wins. A side is ``none`` (the user prompt sent as is) or a causal LM
trained by ``SFTModule``/``DPOModule`` on the ``rewrites``/``rewrite_pairs`` views. The generator is a diffusers
text-to-video checkpoint (:func:`~lit_safe.models.video_diffusion.load_video_diffusion`, sampled with DDIM and
classifier-free guidance) or a ``renderer`` function: ``lit-safe video-arena --generator synthetic`` passes the
renderer that made the synthetic SafeSora videos (:func:`~lit_safe.data_modules.safesora_synthetic.render`), which
draws exactly what a rewrite asks for, so that the rewriters are compared without a generator's own errors.

``lit-safe video-arena --rewriter_a none --rewriter_b DIR --reward_model DIR --cost_model DIR --generator synthetic
--prompts synthetic --output DIR`` (:func:`run_video_arena`, given the prompts the command line read) prints the same
table as the text arena (:func:`lit_safe.arena.arena_summary`) and writes ``arena.json`` (summary and every rewrite
with its scores) and the videos as ``videos/{a,b}/<i>.mp4``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lit_safe.arena import arena_summary, format_summary, generate, start_arena
from lit_safe.models.frames import encode_mp4, read_video, resize_array, sample_indices
from lit_safe.models.text import (
    REWRITE_TEMPLATE,
    check_template,
    encode_prompt_texts,
    is_chat,
    pad_right,
    rewrite_request,
)


def rewrite(rewriter: str, prompts: list[str], template: str, max_new_tokens: int, batch_size: int,
            temperature: float, device: torch.device) -> list[str]:
    """The rewrites of ``prompts`` by a causal LM, or the prompts themselves for ``none``; an empty rewrite falls back
    to the user prompt (the generator needs some text). With ``template`` ``chat`` the rewriter reads its chat
    template, the user's turn being the rewrite instruction with the prompt
    (:func:`~lit_safe.models.text.rewrite_request`), as the SafeSora ``rewrites`` view trains it."""
    if rewriter == "none":
        return list(prompts)
    from transformers import AutoModelForCausalLM

    from lit_safe.models.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(rewriter, padding_side="left")
    template = check_template(template, tokenizer)
    model = AutoModelForCausalLM.from_pretrained(rewriter).to(device).eval()
    requests = [rewrite_request(p) for p in prompts] if is_chat(template) else prompts
    texts = generate(model, tokenizer, requests, template, max_new_tokens, batch_size, temperature)
    return [t.strip() or p for t, p in zip(texts, prompts)]


Renderer = Callable[[str, int], np.ndarray]  # (text, seed) -> uint8 (F, H, W, 3)


def sample_videos(model: Any, texts: list[str], num_frames: int, size: int, seed: int, steps: int, guidance: float,
                  batch_size: int) -> list[np.ndarray]:
    """One video per text, ``uint8 (F, H, W, 3)``, sampled from a
    :class:`~lit_safe.models.video_diffusion.VideoDiffusion` (``size x size``, ``num_frames`` frames; batch ``j``
    with the noise of seed ``seed + j * batch_size``)."""
    videos = []
    for start in range(0, len(texts), batch_size):
        rng = torch.Generator().manual_seed(seed + start)
        out = model.sample(texts[start : start + batch_size], num_frames, size, size, num_inference_steps=steps,
                           guidance_scale=guidance, generator=rng)
        videos += [v.permute(0, 2, 3, 1).cpu().numpy() for v in out]
    return videos


@torch.no_grad()
def score_videos(model, tokenizer, prompts: list[str], videos: list[np.ndarray], batch_size: int) -> Tensor:
    """Scores ``(N,)`` of a video score model on (user prompt, video): frames sampled and resized as its training data
    was (``num_frames`` uniform frames, ``frame_size``)."""
    device = next(model.parameters()).device
    scores = []
    for start in range(0, len(prompts), batch_size):
        ids, _ = encode_prompt_texts(tokenizer, prompts[start : start + batch_size], "{prompt}", model.max_text_length)
        input_ids, mask = pad_right(ids, tokenizer.pad_token_id)
        clips = [resize_array(v[sample_indices(len(v), model.num_frames)], model.frame_size)
                 for v in videos[start : start + batch_size]]
        frames = torch.from_numpy(np.stack(clips)).permute(0, 1, 4, 2, 3).contiguous()
        scores.append(model(input_ids.to(device), mask.to(device), frames.to(device)).scores.float().cpu())
    return torch.cat(scores)


def run_video_arena(
    rewriter_a: str,
    rewriter_b: str,
    reward_model: str,
    cost_model: str,
    output: str,
    prompts: list[str],
    generator: str = "synthetic",
    renderer: Renderer | None = None,
    prompts_file: str | None = None,
    rewrite_template: str = REWRITE_TEMPLATE,
    max_new_tokens: int = 48,
    temperature: float = 0.0,
    num_frames: int = 8,
    frame_size: int = 64,
    sample_steps: int = 25,
    guidance_scale: float = 7.5,
    batch_size: int = 8,
    seed: int = 42,
    device: str = "auto",
) -> dict[str, Any]:
    """Rewrite, render, score and compare (see the module docstring); writes ``arena.json`` and the videos.

    Args:
        rewriter_a, rewriter_b: ``none`` or a causal LM (directory or hub id) that rewrites user prompts.
        reward_model, cost_model: video score models saved by ``VideoRewardModule``/``VideoCostModule``.
        output: directory for ``arena.json`` and ``videos/``.
        prompts: the user prompts both rewriters rewrite.
        generator: ``synthetic`` or a diffusers text-to-video checkpoint (directory or hub id); a ``renderer``
            given beside it draws the videos instead (the command line's for ``synthetic``).
        renderer: draws the video of a text with a seed (``lit-safe video-arena --generator synthetic`` passes the
            synthetic SafeSora renderer); text ``i`` gets seed ``seed + i``.
        prompts_file: where the prompts came from (recorded in the summary).
        rewrite_template: the rewriters' prompt template (``{prompt}`` is replaced), or ``chat``: each rewriter's
            chat template.
        max_new_tokens: longest rewrite.
        temperature: 0 for greedy rewriting.
        num_frames, frame_size: video size of a diffusion generator (the synthetic renderer makes 16 frames of 64 px).
        sample_steps, guidance_scale: DDIM steps and classifier-free guidance of a diffusion generator.
        batch_size: prompts per batch.
        seed: seeds sampling and rendering (both sides get the same noise for the same prompt).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.

    Returns:
        The summary (:func:`~lit_safe.arena.arena_summary`), A = ``rewriter_a``.
    """
    from lit_safe.models.tokenizer import load_tokenizer
    from lit_safe.models.video_text import VideoTextModel

    models = {name: path for name, path in (("rewriter_a", rewriter_a), ("rewriter_b", rewriter_b)) if path != "none"}
    if renderer is None:
        models["generator"] = generator
    target = start_arena({**models, "reward_model": reward_model, "cost_model": cost_model}, seed, device)
    rewrites = {key: rewrite(path, prompts, rewrite_template, max_new_tokens, batch_size, temperature, target)
                for key, path in (("a", rewriter_a), ("b", rewriter_b))}
    if renderer is not None:
        videos = {key: [renderer(text, seed + i) for i, text in enumerate(rewrites[key])] for key in ("a", "b")}
    else:
        from lit_safe.models.video_diffusion import load_video_diffusion

        model = load_video_diffusion(generator).to(target).eval()
        videos = {key: sample_videos(model, rewrites[key], num_frames, frame_size, seed, sample_steps, guidance_scale,
                                     batch_size) for key in ("a", "b")}
        del model
    out = Path(output)
    for key in ("a", "b"):
        for i, video in enumerate(videos[key]):
            path = out / "videos" / key / f"{i}.mp4"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(encode_mp4(video))
            # score what was saved: the preference models were trained on decoded H.264 videos
            videos[key][i] = read_video(path, len(video), video.shape[1])
    scores = {}
    for kind, path in (("reward", reward_model), ("cost", cost_model)):
        model = VideoTextModel.from_pretrained(path).to(target).eval()
        if model.head != "score" or model.score_type != kind:
            found = model.score_type if model.head == "score" else "moderation"
            raise ValueError(f"{kind}_model: {path} is a video {found} model, not a video {kind} model")
        tokenizer = load_tokenizer(path)
        for key in ("a", "b"):
            scores[kind, key] = score_videos(model, tokenizer, prompts, videos[key], batch_size)
        del model
    summary = arena_summary(scores["reward", "a"], scores["cost", "a"], scores["reward", "b"], scores["cost", "b"])
    summary.update({"rewriter_a": rewriter_a, "rewriter_b": rewriter_b, "generator": generator,
                    "reward_model": reward_model, "cost_model": cost_model, "prompts_file": prompts_file})
    rows = [{"prompt": p, "rewrite_a": rewrites["a"][i], "reward_a": float(scores["reward", "a"][i]),
             "cost_a": float(scores["cost", "a"][i]), "video_a": f"videos/a/{i}.mp4", "rewrite_b": rewrites["b"][i],
             "reward_b": float(scores["reward", "b"][i]), "cost_b": float(scores["cost", "b"][i]),
             "video_b": f"videos/b/{i}.mp4"} for i, p in enumerate(prompts)]
    (out / "arena.json").write_text(json.dumps({"summary": summary, "rewrites": rows}, indent=2) + "\n")
    print(format_summary(summary, rewriter_a, rewriter_b))
    print(f"Wrote {out / 'arena.json'} and {2 * len(prompts)} videos under {out / 'videos'}")
    return summary


__all__ = ["Renderer", "rewrite", "run_video_arena", "sample_videos", "score_videos"]
