"""Prometheus metrics of one server: its own registry, so two apps in one process never share counters."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

STEP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """Queue depth and jobs by state (read when scraped), samples and steps as counters (Prometheus'
    rate() gives per second), and each compiled step's latency as a histogram."""

    def __init__(self, book):
        self.registry = CollectorRegistry()
        r = self.registry
        queue = Gauge("gencc_queue_depth", "jobs waiting to run", registry=r)
        queue.set_function(book.queued)
        self.jobs = Gauge("gencc_jobs", "jobs the server holds, by state", ["state"], registry=r)
        self.book = book
        self.jobs_total = Counter("gencc_jobs_finished", "jobs that ended, by final state", ["state"], registry=r)
        self.samples_total = Counter("gencc_samples", "samples returned", registry=r)
        self.steps_total = Counter("gencc_steps", "sampler steps run (one per batch step)", registry=r)
        self.row_steps_total = Counter("gencc_sample_steps", "sampler steps times the samples they advanced",
                                       registry=r)
        self.step_seconds = Histogram("gencc_step_seconds", "wall time of one batch step", buckets=STEP_BUCKETS,
                                      registry=r)
        self.http_errors = Counter("gencc_http_errors", "error responses, by status", ["status"], registry=r)

    def finished(self, state: str) -> None:
        self.jobs_total.labels(state).inc()

    def samples(self, n: int) -> None:
        self.samples_total.inc(n)

    def step(self, seconds: float, rows: int) -> None:
        self.steps_total.inc()
        self.row_steps_total.inc(rows)
        self.step_seconds.observe(seconds)

    def unwatched(self, seconds: float, steps: int, rows: int) -> None:
        """A batch run without per-step callbacks: its steps, each observed at the batch's mean step time."""
        for _ in range(steps):
            self.step(seconds / max(steps, 1), rows)

    def error(self, status: int) -> None:
        self.http_errors.labels(str(status)).inc()

    def render(self) -> bytes:
        for state, count in self.book.counts().items():
            self.jobs.labels(state).set(count)
        return generate_latest(self.registry)
