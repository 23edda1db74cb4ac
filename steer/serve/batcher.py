"""Dynamic batching on an asyncio loop: collect requests for a few milliseconds, run one batch.

A batch starts one window (`window_s`) after the first request, or up to four windows
when requests are still arriving. Requests arrive as `RowRequest`s; each gets a `Ticket` whose asyncio queue receives
(token, finish) pairs as the engine produces them. One worker thread runs the engine,
one batch at a time; while it runs, new requests wait for the next batch (dynamic, not
continuous batching: steer's position policies count columns from one shared prefill,
so rows join only at a batch's start). Rows of one batch share a decoding mode
(`Engine.batch_key`); others wait for a batch of their own, in arrival order.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from steer.serve.engine import Engine, RowRequest


@dataclass
class Ticket:
    """One request in flight: its row, and a queue of (token id or None, finish reason or None)."""

    request: RowRequest
    queue: asyncio.Queue[tuple[int | None, str | None]] = field(default_factory=asyncio.Queue)
    error: str | None = None
    done: bool = False

    def cancel(self) -> None:
        """The client went away: the row leaves its batch at the next step (or never starts)."""
        self.request.cancelled.set()


@dataclass
class BatchStats:
    batches: int = 0
    rows: int = 0
    cancelled_rows: int = 0
    largest_batch: int = 0
    running_rows: int = 0
    generated_tokens: int = 0
    busy_s: float = 0.0


class Batcher:
    """Feeds an `Engine` with batches of waiting requests; start() on the serving loop, stop() at exit."""

    def __init__(self, engine: Engine, *, max_batch: int = 32, window_s: float = 0.02) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1.")
        self.engine = engine
        self.max_batch = max_batch
        self.window_s = window_s
        self.stats = BatchStats()
        self._pending: list[Ticket] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def queued(self) -> int:
        return len(self._pending)

    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="steer-engine")
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for ticket in self._pending:
            ticket.cancel()
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)

    def submit(self, request: RowRequest) -> Ticket:
        if self._wake is None:
            raise RuntimeError("Batcher.start() was not awaited; the server's lifespan starts it.")
        ticket = Ticket(request)
        self._pending.append(ticket)
        self._wake.set()
        return ticket

    def _take_batch(self) -> list[Ticket]:
        waiting = []
        for ticket in self._pending:
            if ticket.request.cancelled.is_set():  # gone before its batch started
                ticket.done = True
                self.stats.cancelled_rows += 1
                ticket.queue.put_nowait((None, "cancelled"))
            else:
                waiting.append(ticket)
        self._pending = waiting
        if not self._pending:
            return []
        key = self.engine.batch_key(self._pending[0].request)
        batch: list[Ticket] = []
        rest: list[Ticket] = []
        for ticket in self._pending:
            if len(batch) < self.max_batch and self.engine.batch_key(ticket.request) == key:
                batch.append(ticket)
            else:
                rest.append(ticket)
        self._pending = rest
        return batch

    async def _run(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._gather()
            while True:
                batch = self._take_batch()
                if not batch:
                    break
                await self._run_batch(loop, batch)

    async def _gather(self) -> None:
        """Wait one window for concurrent requests to join; while a burst is still arriving (the
        queue grew during the window), wait more windows, up to four, or until a batch is full."""
        for _ in range(4):
            before = len(self._pending)
            await asyncio.sleep(self.window_s)
            if len(self._pending) == before or len(self._pending) >= self.max_batch:
                return

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, batch: Sequence[Ticket]) -> None:
        stats = self.stats

        def deliver(index: int, token: int | None, finish: str | None) -> None:
            ticket = batch[index]
            if token is not None:
                stats.generated_tokens += 1
            if finish is not None:
                ticket.done = True
                stats.running_rows -= 1
                if finish == "cancelled":
                    stats.cancelled_rows += 1
            ticket.queue.put_nowait((token, finish))

        def sink(index: int, token: int | None, finish: str | None) -> None:  # engine thread
            loop.call_soon_threadsafe(deliver, index, token, finish)

        stats.batches += 1
        stats.rows += len(batch)
        stats.running_rows += len(batch)
        stats.largest_batch = max(stats.largest_batch, len(batch))
        started = time.perf_counter()
        try:
            await loop.run_in_executor(self._executor, self.engine.generate, [t.request for t in batch], sink)
        except Exception as exc:  # a bug or resource error in one batch must not stop the server
            message = f"generation failed: {type(exc).__name__}: {exc}"

            def fail() -> None:
                for ticket in batch:
                    if not ticket.done:
                        ticket.done = True
                        stats.running_rows -= 1
                        ticket.error = message
                        ticket.queue.put_nowait((None, "error"))

            loop.call_soon(fail)
        finally:
            stats.busy_s += time.perf_counter() - started
        await asyncio.sleep(0)  # let the deliveries queued by the engine thread run first
