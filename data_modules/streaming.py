"""Streaming loaders: litdata ``StreamingDataLoader`` plus length grouping, with a state that resumes exactly.

Padding is wasted compute. Instead of padding a random batch to its longest sequence, the loader draws a pool of
``group_size`` batches from litdata (already shuffled by litdata's chunk-aware shuffle), sorts the pool by length,
cuts it into batches of similar length and yields those batches in a seeded random order. With a pool of 64
batches of 16 synthetic PKU-SafeRLHF pairs the padding share falls from 33% to 13%, and to 0.8% with packed pairs
(``benchmarks/reward_throughput.py`` measures it). Regrouping and collation run in a background thread, a couple
of batches ahead of the training step.

The state (``state_dict``/``load_state_dict``, which Lightning saves in checkpoints) is litdata's own loader state
*before* the current pool plus how many batches of that pool were consumed: on resume the same pool is drawn
again, grouped the same way, and the consumed batches are skipped, so no sample is repeated or lost.
"""

from __future__ import annotations

import copy
import itertools
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from litdata import StreamingDataLoader, StreamingDataset


def _identity(items: list[Any]) -> list[Any]:
    return items


_EPOCH_END = object()


def _snapshot(epoch: int, pool_index: int, consumed: int, pool_state: dict | None, epoch_done: bool = False) -> dict:
    return {
        "epoch": epoch,
        "pool_index": pool_index,
        "consumed": consumed,
        "loader": pool_state,
        "epoch_done": epoch_done,
    }


def _prefetched(source: Iterator, depth: int) -> Iterator:
    """Run ``source`` in a background thread, ``depth`` items ahead; stops it when the consumer stops."""
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def work() -> None:
        try:
            for item in source:
                while not stop.is_set():
                    try:
                        items.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put(("done", done))
        except BaseException as error:  # handed to the consumer, raised there
            items.put(("error", error))

    clock, empty = time.monotonic, queue.Empty  # bound here: a consumer dropped at interpreter exit is finalized
    # after the module's globals are gone
    thread = threading.Thread(target=work, name="lit_safe-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = items.get()
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        deadline = clock() + 10.0
        while thread.is_alive() and clock() < deadline:  # unblock a producer waiting on a full queue
            try:
                items.get_nowait()
            except empty:
                thread.join(timeout=0.1)


class LengthGroupedLoader:
    """Batches of similar length drawn from a litdata ``StreamingDataset``; resumable mid-epoch.

    Args:
        dataset: the streaming dataset (shuffled or not; litdata splits it across ranks and workers).
        batch_size: items per batch.
        collate: turns a list of items into a batch.
        length: the length of an item that grouping sorts by.
        group_size: batches per sorting pool; 1 disables grouping (batches in litdata's order).
        num_workers: litdata loader workers.
        seed: seeds the order in which a pool's batches are yielded (combined with epoch and pool index).
        shuffle: when ``False`` (evaluation) the batches of a pool keep their sorted order.
        prefetch: batches regrouped and collated ahead in a background thread, so that collation overlaps the
            training step (0: in the caller's thread).
    """

    def __init__(
        self,
        dataset: StreamingDataset,
        batch_size: int,
        collate: Callable[[list[Any]], Any],
        length: Callable[[Any], int],
        group_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        prefetch: int = 2,
    ) -> None:
        if batch_size < 1 or group_size < 1:
            raise ValueError(f"batch_size and group_size must be >= 1, got {batch_size} and {group_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.collate = collate
        self.length = length
        self.group_size = group_size
        self.seed = seed
        self.shuffle = shuffle
        # litdata batches at the real batch size (its even split across ranks and workers works in whole batches);
        # the pool is ``group_size`` of those batches, regrouped by length.
        self.loader = StreamingDataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=_identity,
            persistent_workers=False,
        )
        self.prefetch = prefetch
        self._state = _snapshot(0, 0, 0, None, epoch_done=True)
        self._resume: dict[str, Any] | None = None

    def __len__(self) -> int:
        return len(self.loader)

    def _batches_of(self, drawn: list[list[Any]], epoch: int, pool_index: int) -> list[list[Any]]:
        """Regroup the items of the drawn batches by length into as many batches, of the same sizes."""
        pool = [item for batch in drawn for item in batch]
        order = sorted(range(len(pool)), key=lambda i: self.length(pool[i]))
        batches, start = [], 0
        for size in sorted((len(b) for b in drawn), reverse=True):
            batches.append([pool[i] for i in order[start : start + size]])
            start += size
        if self.shuffle:
            random.Random(f"{self.seed}/{epoch}/{pool_index}").shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[Any]:
        skip = 0
        resume, self._resume = self._resume, None
        if resume is not None and not resume.get("epoch_done") and resume["loader"] is not None:
            # Mid-epoch: redraw the saved pool and skip the batches already consumed from it. The saved state is
            # the pool's own: asking litdata for a state_dict before its iterator has started would overwrite the
            # restored epoch in the dataset's (shared, mutable) resume state and replay the wrong shuffle.
            epoch, pool_index, skip = resume["epoch"], resume["pool_index"], resume["consumed"]
            pool_state = copy.deepcopy(resume["loader"])
            self.loader.load_state_dict(copy.deepcopy(pool_state))
        else:
            epoch = self._state["epoch"]
            if resume is not None:  # saved between epochs (or before the first): go on with the next epoch
                epoch = resume["epoch"]
                if resume["loader"] is not None:
                    self.loader.load_state_dict(copy.deepcopy(resume["loader"]))
            epoch, pool_index = epoch + 1, 0
            pool_state = copy.deepcopy(self.loader.state_dict())
        self._state = _snapshot(epoch, pool_index, skip, pool_state)
        produced = self._produce(iter(self.loader), epoch, pool_index, skip, pool_state)
        if self.prefetch > 0:
            produced = _prefetched(produced, self.prefetch)
        for batch, state in produced:
            self._state = state
            if batch is not _EPOCH_END:
                yield batch

    def _produce(self, iterator: Iterator, epoch: int, pool_index: int, skip: int, pool_state: dict):
        """Yield ``(batch, state after it)``; the last pair is ``(_EPOCH_END, end-of-epoch state)``."""
        while True:
            drawn = list(itertools.islice(iterator, self.group_size))
            if not drawn:
                yield _EPOCH_END, _snapshot(epoch, pool_index, 0, pool_state, epoch_done=True)
                return
            batches = self._batches_of(drawn, epoch, pool_index)
            for consumed, batch in enumerate(batches[skip:], start=skip + 1):
                yield self.collate(batch), _snapshot(epoch, pool_index, consumed, pool_state)
            skip = 0
            pool_index += 1
            # litdata returns (and later updates in place) its own resume dict: keep a copy.
            pool_state = copy.deepcopy(self.loader.state_dict())

    def state_dict(self) -> dict[str, Any]:
        """Where the iteration is: litdata's state before the current pool, and batches consumed from it (counting
        only batches handed to the caller, not those prefetched)."""
        return copy.deepcopy(self._state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict` at the next ``iter()``."""
        self._resume = copy.deepcopy(state)
