"""Tests of the streaming loader: padding helpers, length, length grouping and exact mid-epoch resume."""

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from litdata import StreamingDataset
from litdata.streaming.writer import BinaryWriter

from lit_safe.data_modules.streaming import LengthGroupedLoader
from lit_safe.models.text import pad_left, pad_right

N_ITEMS = 203
BATCH = 5


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    """203 items of random length (1-59 tokens) in 13 chunks of 16, so that workers and chunk order matter."""
    directory = tmp_path_factory.mktemp("litdata")
    writer = BinaryWriter(str(directory), chunk_size=16)
    rng = np.random.default_rng(0)
    for i in range(N_ITEMS):
        writer[i] = {"ids": rng.integers(3, 100, size=int(rng.integers(1, 60))).astype(np.int32), "row": i}
    writer.done()
    writer.merge()
    return directory


def _collate(items):
    return [int(item["row"]) for item in items]


def _length(item):
    return len(item["ids"])


def _loader(
    directory, group_size=4, num_workers=0, batch_size=BATCH, seed=3, shuffle=True, collate=_collate, items_shuffle=None
):
    """A fresh loader on a fresh StreamingDataset, as after a restart."""
    dataset = StreamingDataset(str(directory), shuffle=shuffle if items_shuffle is None else items_shuffle, seed=1)
    return LengthGroupedLoader(
        dataset,
        batch_size=batch_size,
        collate=collate,
        length=_length,
        group_size=group_size,
        num_workers=num_workers,
        seed=seed,
        shuffle=shuffle,
    )


def _take(loader, k):
    iterator = iter(loader)
    batches = [next(iterator) for _ in range(k)]
    state = loader.state_dict()
    iterator.close()
    return batches, state


def _flat(batches):
    return [row for batch in batches for row in batch]


# ------------------------------------------------------------------------------------------------------ padding
def test_pad_right():
    seqs = [np.array([5, 6, 7]), np.array([8]), np.array([9, 10, 11, 12, 13])]
    ids, mask = pad_right(seqs, pad_id=0)
    assert ids.shape == mask.shape == (3, 5)
    assert ids.dtype == mask.dtype == torch.long
    assert ids.tolist() == [[5, 6, 7, 0, 0], [8, 0, 0, 0, 0], [9, 10, 11, 12, 13]]
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]]


def test_pad_right_multiple_of():
    ids, mask = pad_right([np.array([1, 2, 3, 4, 5]), np.array([6])], pad_id=99, multiple_of=8)
    assert ids.shape == (2, 8)
    assert mask.sum(1).tolist() == [5, 1]
    assert (ids[mask == 0] == 99).all()
    ids, _ = pad_right([np.arange(8)], pad_id=0, multiple_of=8)
    assert ids.shape == (1, 8)  # already a multiple: no extra padding


def test_pad_left():
    seqs = [np.array([5, 6, 7]), np.array([8]), np.array([9, 10, 11, 12])]
    ids, mask = pad_left(seqs, pad_id=0)
    assert ids.shape == mask.shape == (3, 4)
    assert ids.tolist() == [[0, 5, 6, 7], [0, 0, 0, 8], [9, 10, 11, 12]]
    assert mask.tolist() == [[0, 1, 1, 1], [0, 0, 0, 1], [1, 1, 1, 1]]
    # the last position always holds each sequence's last token (generation appends there)
    assert ids[:, -1].tolist() == [7, 8, 12]


# --------------------------------------------------------------------------------------------- length and epochs
@pytest.mark.parametrize("group_size", [1, 4, 64])
@pytest.mark.parametrize("batch_size", [5, 8])
def test_len_and_one_epoch(dataset_dir, group_size, batch_size):
    loader = _loader(dataset_dir, group_size=group_size, batch_size=batch_size)
    batches = list(loader)
    assert len(loader) == -(-N_ITEMS // batch_size)
    assert len(batches) == len(loader)
    assert sorted(_flat(batches)) == list(range(N_ITEMS))
    assert all(1 <= len(b) <= batch_size for b in batches)


def test_len_with_workers(dataset_dir):
    loader = _loader(dataset_dir, group_size=4, num_workers=2)
    batches = list(loader)
    assert sorted(_flat(batches)) == list(range(N_ITEMS))
    assert len(batches) == len(loader) == -(-N_ITEMS // BATCH)


def test_invalid_sizes(dataset_dir):
    with pytest.raises(ValueError):
        _loader(dataset_dir, batch_size=0)
    with pytest.raises(ValueError):
        _loader(dataset_dir, group_size=0)


def test_grouping_sorts_within_pools(dataset_dir):
    lengths = {}
    for item in StreamingDataset(str(dataset_dir)):
        lengths[int(item["row"])] = _length(item)
    # one pool holding everything, unshuffled: batches come sorted by length
    batches = list(_loader(dataset_dir, group_size=64, shuffle=False))
    flat_lengths = [lengths[r] for r in _flat(batches)]
    assert flat_lengths == sorted(flat_lengths)
    # shuffled: same batches (each a run of similar lengths), in another order
    shuffled = list(_loader(dataset_dir, group_size=64, shuffle=True, items_shuffle=False))
    assert shuffled != batches
    assert sorted(map(sorted, shuffled)) == sorted(map(sorted, batches))


def test_epochs_differ_and_are_seeded(dataset_dir):
    loader = _loader(dataset_dir)
    first, second = list(loader), list(loader)
    assert first != second
    assert sorted(_flat(second)) == list(range(N_ITEMS))
    again = _loader(dataset_dir)
    assert list(again) == first and list(again) == second


# ------------------------------------------------------------------------------------------------------- resume
@pytest.mark.parametrize(
    ("group_size", "num_workers", "k"),
    [
        (1, 0, 7),
        (4, 0, 1),  # inside the first pool
        (4, 0, 6),  # inside the second pool (2 of its 4 batches consumed)
        (4, 0, 8),  # exactly at a pool boundary
        (4, 0, 40),  # inside the last, partial pool
        (4, 0, 41),  # after the last batch, before the loader noticed the end
        (64, 0, 9),
        (1, 2, 7),
        (4, 2, 6),
        (4, 2, 23),
        (3, 2, 13),  # two workers, pools of 3: inside the fifth pool
        (3, 2, 40),  # two workers: inside the last pool, after the worker with fewer batches ran out
    ],
)
def test_resume_mid_epoch(dataset_dir, group_size, num_workers, k):
    full = list(_loader(dataset_dir, group_size, num_workers))
    assert len(full) == 41 and k <= len(full)
    first, state = _take(_loader(dataset_dir, group_size, num_workers), k)
    assert first == full[:k]
    resumed = _loader(dataset_dir, group_size, num_workers)
    resumed.load_state_dict(state)
    rest = list(resumed)
    rows = _flat(first) + _flat(rest)
    assert len(rows) == len(set(rows)) == N_ITEMS
    assert first + rest == full  # exactly the batches the uninterrupted epoch had left
    # after the resumed epoch, the loader goes on with the next one
    assert sorted(_flat(list(resumed))) == list(range(N_ITEMS))


@pytest.mark.parametrize(("group_size", "k"), [(1, 3), (4, 3), (4, 13)])
def test_resume_in_second_epoch(dataset_dir, group_size, k):
    reference = _loader(dataset_dir, group_size)
    list(reference)
    second = list(reference)
    loader = _loader(dataset_dir, group_size)
    list(loader)
    first, state = _take(loader, k)
    assert first == second[:k]
    resumed = _loader(dataset_dir, group_size)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert first + rest == second
    assert sorted(_flat(first + rest)) == list(range(N_ITEMS))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_after_a_finished_epoch(dataset_dir, num_workers):
    reference = _loader(dataset_dir, 4, num_workers)
    list(reference)
    second = list(reference)
    loader = _loader(dataset_dir, 4, num_workers)
    list(loader)  # the epoch ran to its end (as when Lightning checkpoints at epoch end)
    state = loader.state_dict()
    resumed = _loader(dataset_dir, 4, num_workers)
    resumed.load_state_dict(state)
    assert list(resumed) == second  # the whole next epoch: nothing skipped, nothing repeated


def test_resume_before_any_iteration(dataset_dir):
    state = _loader(dataset_dir).state_dict()
    resumed = _loader(dataset_dir)
    resumed.load_state_dict(state)
    assert list(resumed) == list(_loader(dataset_dir))


@pytest.mark.parametrize("via_file", [True, False])
def test_state_survives_a_checkpoint_and_chained_resumes(dataset_dir, via_file):
    full = list(_loader(dataset_dir))

    def checkpoint(state):
        if not via_file:  # kept in memory, as Lightning holds it until it writes the file
            return state
        buffer = io.BytesIO()
        torch.save(state, buffer)
        buffer.seek(0)
        return torch.load(buffer, weights_only=False)

    first, state = _take(_loader(dataset_dir), 6)
    second_run = _loader(dataset_dir)
    second_run.load_state_dict(checkpoint(state))
    iterator = iter(second_run)
    middle = [next(iterator) for _ in range(11)]
    state = second_run.state_dict()
    tail_of_second_run = list(iterator)  # the run goes on after the state was taken: the state must not change
    assert first + middle + tail_of_second_run == full
    third_run = _loader(dataset_dir)
    third_run.load_state_dict(checkpoint(state))
    assert first + middle + list(third_run) == full


def test_loaded_state_is_not_modified(dataset_dir):
    import copy

    _, state = _take(_loader(dataset_dir, group_size=1), 7)
    saved = copy.deepcopy(state)
    resumed = _loader(dataset_dir, group_size=1)
    resumed.load_state_dict(state)
    list(resumed)
    assert state == saved


def test_collate_receives_items(dataset_dir):
    def collate(items):
        ids, mask = pad_right([item["ids"] for item in items], pad_id=0)
        return {"input_ids": ids, "attention_mask": mask, "row": torch.as_tensor([int(i["row"]) for i in items])}

    loader = _loader(dataset_dir, group_size=8, collate=collate)
    lengths = {}
    for item in StreamingDataset(str(dataset_dir)):
        lengths[int(item["row"])] = _length(item)
    for batch in loader:
        assert batch["attention_mask"].sum(1).tolist() == [lengths[int(r)] for r in batch["row"]]


def test_prefetch_thread_passes_errors_and_stops_when_abandoned():
    import threading

    from lit_safe.data_modules.streaming import _prefetched

    def failing():
        yield 1
        raise ValueError("bad item 2")

    consumer = _prefetched(failing(), depth=2)
    assert next(consumer) == 1
    with pytest.raises(ValueError, match="bad item 2"):
        next(consumer)

    consumer = _prefetched(iter(range(10_000)), depth=2)
    assert [next(consumer) for _ in range(3)] == [0, 1, 2]
    consumer.close()  # what happens when training stops mid-epoch
    assert not any(t.name == "lit_safe-prefetch" and t.is_alive() for t in threading.enumerate())
