"""Dynamic micro-batching: requests that arrive within ``max_wait_ms`` share one forward pass (or one generate call).

One worker thread per loaded model takes items from a queue: after the first, it waits at most ``max_wait_ms`` (an
item that already waited while the model was busy does not wait again) for more, up to ``max_batch_size`` items and
``max_batch_tokens`` padded tokens, sorts them by length, runs the model and hands each result back to the event loop
that asked.

How a collected batch is cut into forward passes is learned, not configured: the worker fits the model's cost of a
pass, ``seconds ≈ a + b · padded tokens``, to the passes it has timed, and splits the length-sorted batch where that
is cheapest (an exact dynamic programme over the cut points). A model whose passes cost mostly per-pass overhead (a
tiny one, or any model on a GPU) gets one large pass; a model whose cost is its arithmetic on a CPU gets passes of
similar lengths, so no time goes into computing padding. It does not wait when no other request is on its way (``more_expected``: the service
counts requests in flight), so a lone request is not delayed by the batching window. The event loop never runs the
model; the model never waits for the event loop.

What an item is, is the caller's: the reward-model service queues EncodedSequences and its model returns columns
(scores, embeddings); the policy service (policy_serving/) queues prompt token ids, costed by prompt plus response
cap (``length``), and its model returns one column of generated responses. Item k of a pass gets
``tuple(column[k] for column in run(items))``.
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
    seq: Any  # an EncodedSequence (reward model), prompt token ids (policy): whatever ``run`` takes
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    request: int  # which score() call it came from
    enqueued: float = field(default_factory=time.perf_counter)


def _resolve(future: asyncio.Future, value: Any, error: BaseException | None) -> None:
    if future.done():  # the client went away
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


class PassCost:
    """Least-squares fit of a forward pass's seconds to ``a + b · padded tokens``, the recent passes weighing more
    (exponential forgetting), so the fit follows the machine's load."""

    def __init__(self, forget: float = 0.98, min_passes: int = 8):
        self.forget, self.min_passes = forget, min_passes
        self.w = self.x = self.y = self.xx = self.xy = 0.0
        self.passes = 0

    def observe(self, tokens: float, seconds: float) -> None:
        f = self.forget
        self.w, self.x, self.y = f * self.w + 1, f * self.x + tokens, f * self.y + seconds
        self.xx, self.xy = f * self.xx + tokens * tokens, f * self.xy + tokens * seconds
        self.passes += 1

    def params(self) -> tuple[float, float] | None:
        """(seconds per pass, seconds per padded token), or None before there is enough to fit."""
        if self.passes < self.min_passes:
            return None
        var = self.xx * self.w - self.x * self.x
        if var <= 1e-12 * max(self.xx * self.w, 1.0):  # every pass had the same size: no slope to fit
            return None
        b = (self.xy * self.w - self.x * self.y) / var
        a = (self.y - b * self.x) / self.w
        return max(a, 0.0), max(b, 1e-12)


def _tokens(seq: EncodedSequence) -> int:
    return len(seq.input_ids)


class MicroBatcher:
    """``await batcher.submit(items)`` → [(item's result columns, queue seconds)], one pass shared with others;
    ``await batcher.score(seqs)`` → [(score, embedding, queue seconds)] (the reward model's columns)."""

    def __init__(self, run: Callable[[list[Any]], tuple[Any, ...]], *, max_wait_ms: float,
                 max_batch_size: int, max_batch_tokens: int, name: str = "model",
                 on_batch: Callable[[int, list[float]], None] | None = None,
                 more_expected: Callable[[int], bool] | None = None,
                 length: Callable[[Any], int] = _tokens):
        self._run, self.length = run, length
        self.cost = PassCost()
        self.more_expected = more_expected or (lambda requests_in_batch: True)
        self._requests = 0
        self.max_wait = max_wait_ms / 1000.0
        self.max_batch_size, self.max_batch_tokens = int(max_batch_size), int(max_batch_tokens)
        self.on_batch = on_batch
        self._queue: queue.Queue = queue.Queue()
        self._carry: _Item | None = None
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    async def submit(self, seqs: list[Any]) -> list[tuple[tuple[Any, ...], float]]:
        loop = asyncio.get_running_loop()
        self._requests += 1
        items = [_Item(s, loop.create_future(), loop, self._requests) for s in seqs]
        for item in items:
            self._queue.put(item)
        return list(await asyncio.gather(*(i.future for i in items)))

    async def score(self, seqs: list[EncodedSequence]) -> list[tuple[float, Any, float]]:
        return [(float(score), embedding, waited) for (score, embedding), waited in await self.submit(seqs)]

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
        batch, longest, stop = [first], self.length(first.seq), False
        requests = {first.request}
        deadline = first.enqueued + self.max_wait
        while len(batch) < self.max_batch_size:
            # wait only while another request may still send items; otherwise take what is queued and go
            wait = deadline - time.perf_counter() if self.more_expected(len(requests)) else 0.0
            try:
                item = self._next(wait)
            except queue.Empty:
                break
            if item is _STOP:
                stop = True
                break
            length = max(longest, self.length(item.seq))
            if length * (len(batch) + 1) > self.max_batch_tokens:
                self._carry = item  # starts the next batch
                break
            batch.append(item)
            requests.add(item.request)
            longest = length
        return batch, stop

    def _groups(self, batch: list[_Item]) -> list[list[_Item]]:
        """The length-sorted batch cut into the forward passes the cost model says are cheapest."""
        cost = self.cost.params()
        if cost is None or len(batch) == 1:
            return [batch]  # not enough timings yet: one pass (and one more timing)
        per_pass, per_token = cost
        lengths = [self.length(i.seq) for i in batch]
        n = len(lengths)
        best, cut = [0.0] + [float("inf")] * n, [0] * (n + 1)
        for j in range(1, n + 1):  # best[j]: cheapest way to run the j shortest items; a pass i..j-1 pads to L[j-1]
            for i in range(j):
                c = best[i] + per_pass + per_token * (j - i) * lengths[j - 1]
                if c < best[j]:
                    best[j], cut[j] = c, i
        groups, j = [], n
        while j > 0:
            groups.append(batch[cut[j]:j])
            j = cut[j]
        return groups[::-1]

    def _loop(self) -> None:
        while True:
            first = self._next(None)
            if first is _STOP:
                return
            batch, stop = self._collect(first)
            batch.sort(key=lambda i: self.length(i.seq))
            # the group holding the oldest item runs first: the tail latency stays close to FIFO's
            groups = sorted(self._groups(batch), key=lambda g: min(i.enqueued for i in g))
            started = time.perf_counter()
            for group in groups:
                waited = [started - i.enqueued for i in group]
                try:
                    t0 = time.perf_counter()
                    columns = self._run([i.seq for i in group])
                    self.cost.observe(len(group) * max(self.length(i.seq) for i in group),
                                      time.perf_counter() - t0)
                    results: list[tuple[Any, BaseException | None]] = [
                        ((tuple(c[k] for c in columns), waited[k]), None) for k in range(len(group))]
                except Exception as exc:  # noqa: BLE001 - every waiting request gets the error, the worker lives on
                    results = [(None, exc)] * len(group)
                for item, (value, error) in zip(group, results):
                    item.loop.call_soon_threadsafe(_resolve, item.future, value, error)
                if self.on_batch is not None:
                    self.on_batch(len(group), waited)
                started = time.perf_counter()
            if stop:
                return
