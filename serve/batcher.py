"""The worker: takes waiting jobs, merges those that can share a compiled batch, and runs them.

Jobs of one model with the same steps, sampler, guidance and spacing that wait together run as one
`Model.sample_rows` call of up to `batch_size` rows. Row r of job j is sample r of j's seed with j's label,
and sample i depends only on (seed, i), so every job gets exactly what it would get alone. A job with more
rows than the batch takes runs by itself, in chunks. Cancelling one job of a batch ends that job at the next
step boundary; the batch stops only when every job in it is cancelled.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np

from gencc.runtime.errors import GenccError
from gencc.runtime.model import SamplingConfig, Watchers
from gencc.runtime.watch import StepView

from .catalog import Served
from .jobs import CANCELLED, DONE, FAILED, RUNNING, Job, JobBook
from .metrics import Metrics


class _AllCancelled(Exception):
    """Raised from on_step to stop a batch whose every job was cancelled (at the step boundary)."""


class Worker:
    """One thread running batches one after another; the event loop only queues and reads."""

    def __init__(self, book: JobBook, models: dict[str, Served], batch_size: int, batch_wait_ms: float,
                 preview_every: int, metrics: Metrics, preview: Callable[[Served, np.ndarray], dict]):
        self.book, self.models, self.metrics, self.preview = book, models, metrics, preview
        self.batch_size, self.wait_s, self.preview_every = batch_size, batch_wait_ms / 1000.0, preview_every
        self.thread = threading.Thread(target=self._run, name="gencc-serve-worker", daemon=True)
        self.running: list[Job] = []

    def start(self) -> None:
        """Start the thread once (the app's lifespan does; so does the first job, for hosts without one)."""
        with self.book.cond:
            if not self.thread.is_alive() and not self.book.closed:
                self.thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Refuse new work, cancel what waits and what runs (it stops at its next step), then join."""
        with self.book.cond:
            self.book.closed = True
            waiting = list(self.book.waiting)
            running = list(self.running)
        for job in waiting + running:
            if self.book.cancel(job):
                self.metrics.finished(CANCELLED)
        with self.book.cond:
            self.book.cond.notify_all()
        if self.thread.is_alive():
            self.thread.join(timeout)

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._run_batch(batch)
            except Exception as e:   # the worker must outlive any one batch: its jobs fail, the server serves on
                message = str(e).splitlines()[0] if str(e) else type(e).__name__
                for job in batch:
                    if job.set_state(FAILED, error=message[:300]):
                        self.metrics.finished(FAILED)
            finally:
                with self.book.cond:
                    self.running = []

    def _next_batch(self) -> list[Job] | None:
        """The oldest waiting job and, after at most batch_wait_ms, the waiting jobs that can join it."""
        book = self.book
        with book.cond:
            while True:
                while not book.waiting and not book.closed:
                    book.cond.wait()
                if not book.waiting:
                    return None   # closed, and nothing waits
                head = book.waiting[0]
                deadline = head.queued_at + self.wait_s   # a head that waited behind a batch has waited already
                while self._head_waits(head):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    book.cond.wait(left)
                if book.waiting and book.waiting[0] is head:   # else it was cancelled while it waited: start over
                    self.running = self._take(head)
                    return self.running

    def _head_waits(self, head: Job) -> bool:
        """Whether `head` is still first in line and its batch has room for more."""
        book = self.book
        return (not book.closed and bool(book.waiting) and book.waiting[0] is head
                and self._room(head) < self.batch_size)

    def _take(self, head: Job) -> list[Job]:
        """Remove and return `head` and the waiting jobs of its key that fit beside it, oldest first."""
        batch, rows = [], 0
        for job in list(self.book.waiting):
            if job.request.batch_key() != head.request.batch_key():
                continue
            if batch and rows + job.request.n > self.batch_size:
                break
            batch.append(job)
            rows += job.request.n
            self.book.waiting.remove(job)
        return batch

    def _room(self, head: Job) -> int:
        key = head.request.batch_key()
        return sum(j.request.n for j in self.book.waiting if j.request.batch_key() == key)

    def _run_batch(self, batch: list[Job]) -> None:
        req = batch[0].request
        served = self.models[req.model]
        rows = sum(j.request.n for j in batch)
        for job in batch:
            job.set_state(RUNNING, batch_rows=rows)
        seeds = np.concatenate([np.full(j.request.n, j.request.seed, np.uint64) for j in batch])
        idx = np.concatenate([np.arange(j.request.n, dtype=np.int64) for j in batch])
        labels = np.concatenate([np.full(j.request.n, -1 if j.request.label is None else j.request.label, np.int64)
                                 for j in batch])
        config = SamplingConfig(steps=req.steps, sampler=req.sampler, spacing=req.spacing, guidance=req.guidance,
                                batch_size=min(rows, self.batch_size))
        # A batch of sync requests only runs unwatched: nobody reads its steps, and an unwatched run may take
        # the backend's fastest path (several steps per compiled call). Same samples either way.
        watch = _Watch(batch, served, self) if any(j.watched for j in batch) else None
        began = time.perf_counter()
        try:
            out = served.model.sample_rows(seeds, idx, config, Watchers(on_step=watch), labels=labels)
        except _AllCancelled:
            return
        except GenccError as e:
            for job in batch:
                if job.set_state(FAILED, error=str(e).splitlines()[0][:300]):
                    self.metrics.finished(FAILED)
            return
        if watch is None:
            self.metrics.unwatched(time.perf_counter() - began, batch[0].total_steps, len(idx))
        lo = 0
        for job in batch:
            part = out[lo:lo + job.request.n]
            lo += job.request.n
            if job.cancel_requested:
                if job.set_state(CANCELLED):
                    self.metrics.finished(CANCELLED)
                continue
            if job.set_state(DONE, result=part, step=job.total_steps):
                self.metrics.finished(DONE)
                self.metrics.samples(job.request.n)


class _Watch:
    """on_step for one batch: progress and previews for each job, cancels at the step boundary."""

    def __init__(self, batch: list[Job], served: Served, worker: Worker):
        self.batch, self.served, self.worker = batch, served, worker
        self.offsets = np.cumsum([0] + [j.request.n for j in batch])
        self.last = time.perf_counter()
        self.chunk_steps = 0   # steps seen in the current chunk, for a chunked (oversized) job
        self.done_steps = 0
        self.x0 = None         # this step's denoised estimate, computed once for all the jobs that preview it

    def __call__(self, view: StepView) -> None:
        now = time.perf_counter()
        self.worker.metrics.step(now - self.last, sum(j.request.n for j in self.batch if not j.terminal))
        self.last = now
        steps = self.batch[0].request.steps if view.t is not None else 1
        if view.k == 0 and self.chunk_steps:
            self.done_steps += self.chunk_steps
        self.chunk_steps = view.k + 1
        reached = self.done_steps + view.k + 1
        self.x0, live = None, 0
        for i, job in enumerate(self.batch):
            if job.terminal:
                continue
            if job.cancel_requested:
                if job.set_state(CANCELLED):
                    self.worker.metrics.finished(CANCELLED)
                continue
            live += 1
            with job._lock:
                job.step = min(reached, job.total_steps)
            job.publish("progress", {"state": RUNNING, "step": job.step, "steps": job.total_steps})
            every = self.worker.preview_every
            if job.streams and ((view.k + 1) % every == 0 or view.k + 1 == steps):   # previews only for readers
                self._preview(job, i, view)
        if not live:
            raise _AllCancelled

    def _preview(self, job: Job, i: int, view: StepView) -> None:
        if self.x0 is None:
            self.x0 = view.denoised()
        x = self.x0
        lo, hi = self.offsets[i], self.offsets[i + 1]
        rows = x[lo:hi] if len(x) == self.offsets[-1] else x   # a chunked single job shows its chunk
        job.publish("preview", {"state": RUNNING, "step": job.step, "steps": job.total_steps,
                                **self.worker.preview(self.served, rows)})
