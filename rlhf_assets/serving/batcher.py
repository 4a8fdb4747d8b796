"""Dynamic micro-batching: requests that arrive within ``max_wait_ms`` share one forward pass.

One worker thread per loaded model takes items from a queue: after the first, it waits at most ``max_wait_ms`` (an
item that already waited while the model was busy does not wait again) for more, up to ``max_batch_size`` items and
``max_batch_tokens`` padded tokens, sorts them by length (less padding), runs the model and hands each result back
to the event loop that asked. The event loop never runs the model; the model never waits for the event loop.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rlhf_assets.reward.data import EncodedSequence

_STOP = object()


@dataclass
class _Item:
    seq: EncodedSequence
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    enqueued: float = field(default_factory=time.perf_counter)


def _resolve(future: asyncio.Future, value: Any, error: BaseException | None) -> None:
    if future.done():  # the client went away
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


class MicroBatcher:
    """``await batcher.score(seqs)`` → [(score, embedding, queue seconds)], one forward pass shared with others."""

    def __init__(self, run: Callable[[list[EncodedSequence]], tuple[Any, Any]], *, max_wait_ms: float,
                 max_batch_size: int, max_batch_tokens: int, name: str = "model",
                 on_batch: Callable[[int, list[float]], None] | None = None):
        self._run = run
        self.max_wait = max_wait_ms / 1000.0
        self.max_batch_size, self.max_batch_tokens = int(max_batch_size), int(max_batch_tokens)
        self.on_batch = on_batch
        self._queue: queue.Queue = queue.Queue()
        self._carry: _Item | None = None
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    async def score(self, seqs: list[EncodedSequence]) -> list[tuple[float, Any, float]]:
        loop = asyncio.get_running_loop()
        items = [_Item(s, loop.create_future(), loop) for s in seqs]
        for item in items:
            self._queue.put(item)
        return list(await asyncio.gather(*(i.future for i in items)))

    def stop(self, timeout: float = 30.0) -> None:
        """Finish what is queued, then end the worker."""
        self._queue.put(_STOP)
        self._thread.join(timeout)

    # worker thread ---------------------------------------------------------------------------------------------
    def _next(self, timeout: float | None) -> Any:
        if self._carry is not None:
            item, self._carry = self._carry, None
            return item
        if timeout is None:
            return self._queue.get()
        return self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()

    def _collect(self, first: _Item) -> tuple[list[_Item], bool]:
        batch, longest, stop = [first], len(first.seq.input_ids), False
        deadline = first.enqueued + self.max_wait
        while len(batch) < self.max_batch_size:
            try:
                item = self._next(deadline - time.perf_counter())
            except queue.Empty:
                break
            if item is _STOP:
                stop = True
                break
            length = max(longest, len(item.seq.input_ids))
            if length * (len(batch) + 1) > self.max_batch_tokens:
                self._carry = item  # starts the next batch
                break
            batch.append(item)
            longest = length
        return batch, stop

    def _loop(self) -> None:
        while True:
            first = self._next(None)
            if first is _STOP:
                return
            batch, stop = self._collect(first)
            batch.sort(key=lambda i: len(i.seq.input_ids))
            started = time.perf_counter()
            waited = [started - i.enqueued for i in batch]
            try:
                scores, embeddings = self._run([i.seq for i in batch])
                results: list[tuple[Any, BaseException | None]] = [
                    ((float(scores[k]), embeddings[k], waited[k]), None) for k in range(len(batch))]
            except Exception as exc:  # noqa: BLE001 - every waiting request gets the error, the worker lives on
                results = [(None, exc)] * len(batch)
            for item, (value, error) in zip(batch, results):
                item.loop.call_soon_threadsafe(_resolve, item.future, value, error)
            if self.on_batch is not None:
                self.on_batch(len(batch), waited)
            if stop:
                return
