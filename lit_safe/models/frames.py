"""Video files in and out: decoding with PyAV, uniform frame sampling, resizing, normalisation, and mp4 writing.

The decoder is PyAV (the PyPI package ``av``): maintained, Python bindings to FFmpeg's libraries, with binary wheels
that bundle FFmpeg (H.264 and MPEG-4 included), so it installs with pip on Linux, macOS and Windows without a system
FFmpeg and without torchvision (whose PyPI wheels replace or break the CPU torch here, see ENVIRONMENT.md). It both
decodes (the SafeSora videos) and encodes (the synthetic generator, generated samples). ``decord`` is unmaintained
(no wheels for current Pythons), ``torchcodec`` needs a system FFmpeg and a torch of the exact matching version.

Frames stay ``uint8`` from disk to the model: ``(F, H, W, 3)`` as decoded and stored, ``(..., F, 3, H, W)`` in batches.
The model that knows its statistics normalises them (:func:`frames_to_float`): CLIP-style encoders with their image
mean and std, a VAE to ``[-1, 1]`` (mean = std = 0.5). Storing uint8 is 4x smaller than float32.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


class VideoDecodeError(ValueError):
    """A video file that is missing, unreadable, or has no decodable frame (the message names the file)."""


def sample_indices(total: int, num_frames: int) -> np.ndarray:
    """Indices of ``num_frames`` frames spread uniformly over ``total``: the centre of each of ``num_frames`` equal
    segments (the same rule as TSN/Video-LLaVA's uniform sampling). With fewer frames than asked, frames repeat.

    ``sample_indices(16, 4) -> [2, 6, 10, 14]``; ``sample_indices(2, 4) -> [0, 0, 1, 1]``.
    """
    if total < 1 or num_frames < 1:
        raise ValueError(f"need at least one frame to sample from and to sample, got total={total}, "
                         f"num_frames={num_frames}")
    edges = np.arange(num_frames, dtype=np.float64) * total / num_frames
    centres = edges + total / (2 * num_frames)
    return np.minimum(np.floor(centres).astype(np.int64), total - 1)


def _open(source: str | Path | bytes):
    import av

    return av.open(io.BytesIO(source) if isinstance(source, bytes) else str(source))


def _count_packets(source: str | Path | bytes, name: str) -> int:
    """Frames the first video stream announces: its packets with data (demuxed only, nothing decoded)."""
    with _open(source) as container:
        if not container.streams.video:
            raise VideoDecodeError(f"{name}: no video stream")
        return sum(1 for packet in container.demux(container.streams.video[0]) if packet.size)


def _decode_picked(source: str | Path | bytes, wanted: set[int]) -> tuple[dict[int, np.ndarray], int]:
    """One decoding pass: ``({index: uint8 (H, W, 3)} of the decoded frames whose index is in wanted, how many frames
    decoded)``. Only the wanted frames are converted to RGB and kept, so memory holds ``len(wanted)`` frames however
    long the video."""
    kept: dict[int, np.ndarray] = {}
    total = 0
    with _open(source) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            if total in wanted:
                kept[total] = frame.to_ndarray(format="rgb24")
            total += 1
    return kept, total


def _sampled_frames(source: str | Path | bytes, num_frames: int, name: str) -> np.ndarray:
    """``uint8 (num_frames, H, W, 3)``: the frames :func:`sample_indices` picks among every decodable frame of the
    first video stream, holding no more than those in memory.

    The frame count is taken from the packets (demuxing, no decoding), the picked frames are kept during one decoding
    pass, and if fewer or more frames decoded than there were packets (a damaged or unusual file), a second pass
    picks by the count that decoded: the result is always the uniform sample of the frames that decode."""
    import av

    try:
        announced = _count_packets(source, name)
        wanted = sample_indices(announced, num_frames) if announced else np.empty(0, dtype=np.int64)
        kept, total = _decode_picked(source, set(wanted.tolist()))
        if total and total != announced:
            wanted = sample_indices(total, num_frames)
            kept, total = _decode_picked(source, set(wanted.tolist()))
    except VideoDecodeError:
        raise
    except FileNotFoundError as error:
        raise VideoDecodeError(f"{name}: video file not found") from error
    except (av.error.FFmpegError, OSError, ValueError) as error:
        raise VideoDecodeError(f"{name}: cannot decode the video ({type(error).__name__}: {error})") from error
    if not total:
        raise VideoDecodeError(f"{name}: the video has no decodable frame")
    return np.stack([kept[i] for i in wanted.tolist()])


def resize_array(frames: np.ndarray, size: int) -> np.ndarray:
    """Resize ``uint8 (F, H, W, 3)`` frames to ``(F, size, size, 3)``: the short side to ``size`` (bilinear,
    antialiased), then a centre crop; returns the input unchanged when it already has that size."""
    if frames.shape[1] == size and frames.shape[2] == size:
        return frames
    tensor = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    height, width = tensor.shape[-2:]
    scale = size / min(height, width)
    new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
    tensor = F.interpolate(tensor, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    tensor = tensor[:, :, top : top + size, left : left + size]
    return tensor.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def read_video(source: str | Path | bytes, num_frames: int, size: int, name: str | None = None) -> np.ndarray:
    """Decode a video, sample ``num_frames`` frames uniformly, resize them to ``size x size``. Only the sampled frames
    are kept while decoding (memory does not grow with the video's length).

    Args:
        source: a file path or the file's bytes (an encoded clip from a prepared dataset).
        num_frames: frames to sample (:func:`sample_indices`).
        size: output height and width (short side resized, centre crop).
        name: how errors name the video (default: the path).

    Returns:
        ``uint8 (num_frames, size, size, 3)``.

    Raises:
        VideoDecodeError: missing file, unreadable file or no frame, naming the video.
    """
    name = name or (str(source) if not isinstance(source, bytes) else "<video bytes>")
    if not isinstance(source, bytes) and not Path(source).is_file():
        raise VideoDecodeError(f"{name}: video file not found")
    return resize_array(_sampled_frames(source, num_frames, name), size)


def encode_mp4(frames: np.ndarray, fps: int = 8, codec: str = "libx264", qp: int = 18) -> bytes:
    """Encode ``uint8 (F, H, W, 3)`` frames (H and W even) as mp4 bytes (H.264, yuv420p, constant quantiser ``qp``).

    A constant quantiser, not x264's ``crf``: with ``crf`` the same frames gave different bytes in a few percent of
    encodes (rate control), and the synthetic dataset must be byte-for-byte reproducible from its seed."""
    import av

    frames = np.asarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (F, H, W, 3) uint8, got shape {frames.shape}")
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(f"H.264 needs even height and width, got {frames.shape[1]}x{frames.shape[2]}")
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        if codec == "libx264":
            stream.options = {"qp": str(qp), "preset": "veryfast"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def write_mp4(path: str | Path, frames: np.ndarray, fps: int = 8, qp: int = 18) -> Path:
    """Write ``uint8 (F, H, W, 3)`` frames to an mp4 file (folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_mp4(frames, fps=fps, qp=qp))
    return path


def frames_to_float(frames: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Normalise ``uint8 (..., 3, H, W)`` frames: ``(frames / 255 - mean) / std`` per channel, as float32.

    ``mean = std = (0.5, 0.5, 0.5)`` maps to ``[-1, 1]`` (a VAE's input); CLIP uses its image mean and std.
    """
    if frames.dim() < 3 or frames.shape[-3] != 3:
        raise ValueError(f"frames must be (..., 3, H, W), got shape {tuple(frames.shape)}")
    shape = (3, 1, 1)
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=frames.device).view(shape)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=frames.device).view(shape)
    return (frames.float() / 255.0 - mean_t) / std_t


def resize_frames(frames: torch.Tensor, size: int) -> torch.Tensor:
    """Resize float ``(N, 3, H, W)`` frames to ``(N, 3, size, size)`` (bilinear, antialiased); unchanged if equal."""
    if frames.shape[-2:] == (size, size):
        return frames
    return F.interpolate(frames, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def to_batch_layout(frames: np.ndarray) -> torch.Tensor:
    """Stored ``uint8 (F, H, W, 3)`` -> batch layout ``uint8 (F, 3, H, W)``."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)


__all__ = [
    "VideoDecodeError",
    "encode_mp4",
    "frames_to_float",
    "read_video",
    "resize_array",
    "resize_frames",
    "sample_indices",
    "to_batch_layout",
    "write_mp4",
]
