"""Video reading and writing (lit_safe/models/frames.py): uniform frame sampling by hand, mp4 round trips through PyAV
(shape, dtype, colour, resize + centre crop, frame order), decode errors that name the file, and the normalisation
and resizing a video model applies to uint8 frames."""

import numpy as np
import pytest
import torch

from lit_safe.models.frames import (
    VideoDecodeError,
    encode_mp4,
    frames_to_float,
    read_video,
    resize_array,
    resize_frames,
    sample_indices,
    to_batch_layout,
    write_mp4,
)

# H.264 (yuv420p, qp 18) changes flat colours by a few levels; edges blur more (chroma is subsampled 2x2).
COLOUR_TOLERANCE = 8
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _flat(num_frames: int, height: int, width: int, colour: tuple[int, int, int]) -> np.ndarray:
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    frames[...] = colour
    return frames


# ---------------------------------------------------------------------------------------------- sample_indices
@pytest.mark.parametrize(
    ("total", "num_frames", "expected"),
    [
        (16, 4, [2, 6, 10, 14]),  # centres of [0,4), [4,8), [8,12), [12,16): 2, 6, 10, 14
        (12, 4, [1, 4, 7, 10]),  # centres 1.5, 4.5, 7.5, 10.5, floored
        (10, 3, [1, 5, 8]),  # segments of 10/3: centres 1.67, 5.0, 8.33
        (3, 2, [0, 2]),  # centres 0.75, 2.25
        (5, 5, [0, 1, 2, 3, 4]),  # every frame once
        (2, 4, [0, 0, 1, 1]),  # fewer frames than asked: each repeats
        (1, 3, [0, 0, 0]),
    ],
)
def test_sample_indices_hand_values(total, num_frames, expected):
    indices = sample_indices(total, num_frames)
    assert indices.tolist() == expected
    assert indices.dtype == np.int64


def test_sample_indices_are_sorted_and_in_range():
    for total in range(1, 40):
        for num_frames in (1, 2, 3, 8, 16):
            indices = sample_indices(total, num_frames)
            assert len(indices) == num_frames
            assert (np.diff(indices) >= 0).all()
            assert indices.min() >= 0 and indices.max() <= total - 1
            if total >= num_frames:  # enough frames: no frame is picked twice
                assert len(set(indices.tolist())) == num_frames


@pytest.mark.parametrize(("total", "num_frames"), [(0, 4), (4, 0), (-1, 2), (3, -2)])
def test_sample_indices_rejects_empty_requests(total, num_frames):
    with pytest.raises(ValueError, match="at least one frame"):
        sample_indices(total, num_frames)


# ------------------------------------------------------------------------------------------------- round trips
def test_flat_colour_round_trip_shape_dtype_and_colour(tmp_path):
    colour = (200, 60, 30)
    path = write_mp4(tmp_path / "nested" / "flat.mp4", _flat(8, 32, 32, colour))
    assert path.is_file() and path.read_bytes()[4:8] == b"ftyp"  # an mp4 container
    frames = read_video(path, num_frames=4, size=32)
    assert frames.shape == (4, 32, 32, 3)
    assert frames.dtype == np.uint8
    assert np.abs(frames.astype(np.int16) - np.asarray(colour)).max() <= COLOUR_TOLERANCE
    # the same from the file's bytes (how a prepared dataset stores a clip), with downsizing
    small = read_video(path.read_bytes(), num_frames=2, size=16)
    assert small.shape == (2, 16, 16, 3) and small.dtype == np.uint8
    assert np.abs(small.astype(np.int16) - np.asarray(colour)).max() <= COLOUR_TOLERANCE


def test_every_frame_decodes_in_order_and_sampling_keeps_the_order():
    # 12 flat grey frames of increasing brightness 20, 38, ..., 218
    levels = [20 + 18 * i for i in range(12)]
    frames = np.stack([_flat(1, 32, 48, (v, v, v))[0] for v in levels])
    clip = encode_mp4(frames)
    every = read_video(clip, num_frames=12, size=32)  # 12 of 12: each frame exactly once
    assert every.shape == (12, 32, 32, 3)
    means = every.reshape(12, -1).mean(axis=1)
    assert np.abs(means - np.asarray(levels)).max() <= COLOUR_TOLERANCE
    assert (np.diff(means) > 0).all()

    sampled = read_video(clip, num_frames=4, size=16)  # frames 1, 4, 7, 10 (see sample_indices(12, 4))
    means = sampled.reshape(4, -1).mean(axis=1)
    assert (np.diff(means) > 0).all()
    assert np.abs(means - np.asarray([levels[i] for i in (1, 4, 7, 10)])).max() <= COLOUR_TOLERANCE

    repeated = read_video(clip, num_frames=24, size=16)  # more frames than the clip: each twice, in order
    means = repeated.reshape(24, -1).mean(axis=1)
    assert (np.diff(means) >= -1).all()
    assert np.abs(means[0::2] - means[1::2]).max() == 0


@pytest.mark.parametrize("wide", [True, False])
def test_non_square_video_is_resized_on_its_short_side_then_centre_cropped(wide):
    # 32 x 64 (or 64 x 32): outer quarters red, then green and blue halves of the centre.
    # Short side 32 -> 16 makes the long side 32; the centre crop of 16 keeps exactly the green and blue middle.
    red, green, blue = (220, 30, 30), (30, 200, 40), (40, 50, 220)
    frames = _flat(4, 32, 64, red)
    frames[:, :, 16:32] = green
    frames[:, :, 32:48] = blue
    if not wide:
        frames = np.ascontiguousarray(frames.transpose(0, 2, 1, 3))
    out = read_video(encode_mp4(frames), num_frames=2, size=16)
    assert out.shape == (2, 16, 16, 3)
    if not wide:
        out = out.transpose(0, 2, 1, 3)
    pixels = out.astype(np.int16)
    # away from the green/blue boundary and the crop edges (where antialiasing and chroma blur mix colours)
    assert np.abs(pixels[:, :, 1:6] - np.asarray(green)).max() <= 2 * COLOUR_TOLERANCE
    assert np.abs(pixels[:, :, 10:15] - np.asarray(blue)).max() <= 2 * COLOUR_TOLERANCE
    # squashing instead of cropping would bring the red quarters in
    assert (pixels[..., 0] < 128).all()


def test_resize_array_is_identity_at_the_target_size_and_crops_otherwise():
    frames = np.random.default_rng(0).integers(0, 256, size=(3, 16, 16, 3), dtype=np.uint8)
    assert resize_array(frames, 16) is frames
    wide = np.zeros((2, 10, 30, 3), dtype=np.uint8)
    wide[:, :, 10:20] = 255  # the centre third: what a 10 x 10 centre crop of the unresized frame keeps
    out = resize_array(wide, 10)
    assert out.shape == (2, 10, 10, 3) and out.dtype == np.uint8
    assert (out == 255).all()


# --------------------------------------------------------------------------------------------------- errors
def test_missing_file_is_named(tmp_path):
    path = tmp_path / "videos" / "p1" / "v1.mp4"
    with pytest.raises(VideoDecodeError, match="not found") as error:
        read_video(path, 4, 16)
    assert str(path) in str(error.value)
    with pytest.raises(VideoDecodeError, match="my clip: video file not found"):
        read_video(path, 4, 16, name="my clip")


@pytest.mark.parametrize("content", [b"this is not a video " * 50, b"", b"\x00\x00\x00\x18ftypisom" + b"\x00" * 64])
def test_garbage_bytes_raise_naming_the_file(tmp_path, content):
    path = tmp_path / "broken.mp4"
    path.write_bytes(content)
    with pytest.raises(VideoDecodeError, match="cannot decode|no decodable frame|no video stream") as error:
        read_video(path, 4, 16)
    assert str(error.value).startswith(f"{path}:")
    assert isinstance(error.value, ValueError)


def test_garbage_bytes_in_memory_use_the_given_name():
    with pytest.raises(VideoDecodeError, match="^stored clip first: "):
        read_video(b"garbage" * 100, 4, 16, name="stored clip first")
    with pytest.raises(VideoDecodeError, match="^<video bytes>: "):
        read_video(b"garbage" * 100, 4, 16)


def test_truncated_clip_is_an_error_or_decodes_its_frames(tmp_path):
    clip = encode_mp4(_flat(8, 32, 32, (90, 90, 90)))
    path = tmp_path / "cut.mp4"
    path.write_bytes(clip[: len(clip) // 3])
    try:
        frames = read_video(path, 4, 16)
    except VideoDecodeError as error:
        assert str(path) in str(error)
    else:  # a decoder may recover what was written; it must then still be the asked shape
        assert frames.shape == (4, 16, 16, 3)


@pytest.mark.parametrize(
    ("shape", "message"),
    [((4, 31, 32, 3), "even"), ((4, 32, 33, 3), "even"), ((32, 32, 3), r"\(F, H, W, 3\)"), ((2, 8, 8, 4), "3")],
)
def test_encode_mp4_rejects_bad_frames(shape, message):
    with pytest.raises(ValueError, match=message):
        encode_mp4(np.zeros(shape, dtype=np.uint8))


# ---------------------------------------------------------------------------------------- what models apply
def test_frames_to_float_maps_uint8_to_minus_one_one_with_half_stats():
    frames = torch.tensor([0, 255, 51, 204], dtype=torch.uint8).view(1, 1, 1, 4).expand(2, 3, 1, 4).contiguous()
    out = frames_to_float(frames, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert out.dtype == torch.float32 and out.shape == (2, 3, 1, 4)
    # (v / 255 - 0.5) / 0.5: 0 -> -1, 255 -> 1, 51 -> -0.6, 204 -> 0.6
    expected = torch.tensor([-1.0, 1.0, -0.6, 0.6]).view(1, 1, 1, 4).expand(2, 3, 1, 4)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    assert frames.dtype == torch.uint8  # the input is left as it was


def test_frames_to_float_clip_stats_per_channel():
    frames = torch.full((2, 4, 3, 2, 2), 128, dtype=torch.uint8)  # (B, F, 3, H, W)
    out = frames_to_float(frames, CLIP_MEAN, CLIP_STD)
    # (128/255 - mean_c) / std_c, by hand: 128/255 = 0.5019608
    expected = [(0.5019608 - 0.48145466) / 0.26862954, (0.5019608 - 0.4578275) / 0.26130258,
                (0.5019608 - 0.40821073) / 0.27577711]
    assert [round(e, 4) for e in expected] == [0.0763, 0.1689, 0.3399]
    for channel in range(3):
        torch.testing.assert_close(out[:, :, channel], torch.full((2, 4, 2, 2), expected[channel]), atol=1e-5,
                                   rtol=0)


@pytest.mark.parametrize("shape", [(4, 4), (2, 4, 4, 4), (1, 1, 4, 4)])
def test_frames_to_float_needs_a_channel_axis_of_three(shape):
    with pytest.raises(ValueError, match=r"\(\.\.\., 3, H, W\)"):
        frames_to_float(torch.zeros(shape, dtype=torch.uint8), (0.5,) * 3, (0.5,) * 3)


def test_resize_frames_hand_values():
    # one row 0 1 2 3, halved: the antialiased (triangle, width 2) filter over the in-range taps
    # out[0] = (0.75*0 + 0.75*1 + 0.25*2) / 1.75 = 0.7143; out[1] = (0.25*1 + 0.75*2 + 0.75*3) / 1.75 = 2.2857
    ramp = torch.arange(4.0).view(1, 1, 1, 4).expand(2, 3, 4, 4).contiguous()
    out = resize_frames(ramp, 2)
    assert out.shape == (2, 3, 2, 2) and out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([1.25 / 1.75, 4.0 / 1.75]).expand(2, 3, 2, 2), atol=1e-5, rtol=0)

    flat = torch.full((3, 3, 8, 12), 0.3)
    torch.testing.assert_close(resize_frames(flat, 4), torch.full((3, 3, 4, 4), 0.3))  # non-square: stretched
    same = torch.rand(2, 3, 5, 5)
    assert resize_frames(same, 5) is same
    up = resize_frames(torch.full((1, 3, 2, 2), -0.5), 6)
    torch.testing.assert_close(up, torch.full((1, 3, 6, 6), -0.5))


def test_to_batch_layout_moves_channels_first():
    frames = np.arange(2 * 4 * 6 * 3, dtype=np.uint8).reshape(2, 4, 6, 3)
    out = to_batch_layout(frames)
    assert out.shape == (2, 3, 4, 6) and out.dtype == torch.uint8
    assert out[1, 2, 3, 5].item() == frames[1, 3, 5, 2]
