"""Jobs: one request's life (queued -> running -> done | failed | cancelled), its events and its result.

A job is touched by the worker thread (state, steps, previews, result) and by the event loop (readers,
cancel); a lock guards each job's fields, and readers of its events are woken on their own loop.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
STATES = (QUEUED, RUNNING, DONE, FAILED, CANCELLED)
TERMINAL = frozenset({DONE, FAILED, CANCELLED})
EVENTS_KEPT = 64   # recent events a late reader can replay; older ones are only in the job's state


@dataclass(frozen=True)
class JobRequest:
    """What to sample: validated (serve/limits.py) against the served model and the server's caps."""

    model: str
    n: int = 1
    steps: int = 50
    sampler: str = "em"
    seed: int = 0
    label: int | None = None
    guidance: float | None = None
    spacing: str | None = None

    def batch_key(self) -> tuple:
        """Requests with equal keys may share one compiled batch: everything but the seed, n and label."""
        return (self.model, self.steps, self.sampler, self.guidance, self.spacing)

    def public(self) -> dict:
        return {"model": self.model, "n": self.n, "steps": self.steps, "sampler": self.sampler, "seed": self.seed,
                "label": self.label, "guidance": self.guidance, "spacing": self.spacing}


_counter = itertools.count()


@dataclass(eq=False)
class Job:
    request: JobRequest
    total_steps: int                                   # steps the job reports (steps of each chunk, or 1 for a GAN)
    id: str = field(default_factory=lambda: f"job-{next(_counter):06d}-{secrets.token_hex(4)}")
    created: float = field(default_factory=time.time)
    state: str = QUEUED
    step: int = 0
    error: str | None = None
    result: np.ndarray | None = None
    cancel_requested: bool = False
    batch_rows: int = 0                                # rows of the compiled batch the job ran in (micro-batching)
    watched: bool = True                               # False: a sync request, nobody reads its steps
    streams: int = 0                                   # event streams reading it: previews are drawn only for them
    queued_at: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    _events: deque = field(default_factory=lambda: deque(maxlen=EVENTS_KEPT))
    _seq: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _waiters: set = field(default_factory=set)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def view(self, queue_position: int | None = None) -> dict:
        with self._lock:
            out: dict[str, Any] = {"id": self.id, "state": self.state, "step": self.step, "steps": self.total_steps,
                                   "request": self.request.public(), "created": self.created}
            if self.state == QUEUED and queue_position is not None:
                out["queue_position"] = queue_position
            if self.batch_rows:
                out["batch_rows"] = self.batch_rows
            if self.error:
                out["error"] = self.error
            if self.state == DONE:
                out["result"] = f"/v1/jobs/{self.id}/result"
            return out

    # -- the worker's side ------------------------------------------------------------------------------
    def publish(self, name: str, data: dict) -> None:
        with self._lock:
            self._seq += 1
            self._events.append((self._seq, name, {"id": self.id, **data}))
            waiters = list(self._waiters)
        for loop, ev in waiters:
            with contextlib.suppress(RuntimeError):   # that reader's loop has closed
                loop.call_soon_threadsafe(ev.set)

    def set_state(self, state: str, **extra) -> bool:
        """Move to `state` and tell readers; False if the job had already ended (a cancel won the race)."""
        with self._lock:
            if self.state in TERMINAL:
                return False
            self.state = state
            now = time.time()
            if state == RUNNING:
                self.started = now
            if state in TERMINAL:
                self.finished = now
            for k, v in extra.items():
                setattr(self, k, v)
        data = {"state": state, "step": self.step, "steps": self.total_steps}
        if self.error:
            data["error"] = self.error
        if state == DONE:
            data["result"] = f"/v1/jobs/{self.id}/result"
        self.publish("end" if state in TERMINAL else "state", data)
        return True

    # -- a reader's side ---------------------------------------------------------------------------------
    def last_seq(self) -> int:
        with self._lock:
            return self._seq

    def events_after(self, seq: int) -> list[tuple[int, str, dict]]:
        with self._lock:
            return [e for e in self._events if e[0] > seq]

    def subscribe(self, stream: bool = False) -> asyncio.Event:
        """An event set whenever the job publishes; `stream`: an SSE reader, which wants previews."""
        ev = asyncio.Event()
        with self._lock:
            self._waiters.add((asyncio.get_running_loop(), ev))
            self.streams += stream
        return ev

    def unsubscribe(self, ev: asyncio.Event, stream: bool = False) -> None:
        with self._lock:
            self._waiters = {w for w in self._waiters if w[1] is not ev}
            self.streams -= stream


class JobBook:
    """Every job by id: the queue of waiting ones (FIFO) and the finished ones kept for their results."""

    def __init__(self, keep: int):
        self.keep = keep
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self.waiting: deque[Job] = deque()
        self.cond = threading.Condition()
        self.closed = False

    def add(self, job: Job) -> int:
        """Queue `job`; returns its position (0: next to run)."""
        with self.cond:
            self.jobs[job.id] = job
            self.waiting.append(job)
            self._forget_old()
            position = len(self.waiting) - 1
            # Published before the worker can see the job, so `queued` is always a reader's first event.
            job.publish("state", {"state": job.state, "step": 0, "steps": job.total_steps, "queue_position": position})
            self.cond.notify_all()
            return position

    def queued(self) -> int:
        with self.cond:
            return len(self.waiting)

    def position(self, job: Job) -> int | None:
        with self.cond:
            for i, j in enumerate(self.waiting):
                if j is job:
                    return i
        return None

    def get(self, job_id: str) -> Job | None:
        with self.cond:
            return self.jobs.get(job_id)

    def cancel(self, job: Job) -> bool:
        """A queued job ends now (True: the caller counts it); a running one at its next step boundary (the worker
        checks the flag, and counts it)."""
        with self.cond:
            job.cancel_requested = True
            ended = False
            if job in self.waiting:
                self.waiting.remove(job)
                ended = job.set_state(CANCELLED)
            self.cond.notify_all()
            return ended

    def counts(self) -> dict[str, int]:
        with self.cond:
            out = dict.fromkeys(STATES, 0)
            for j in self.jobs.values():
                out[j.state] += 1
            return out

    def _forget_old(self) -> None:
        finished = [k for k, j in self.jobs.items() if j.terminal]
        for k in finished[:max(0, len(finished) - self.keep)]:
            del self.jobs[k]
