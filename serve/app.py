"""The HTTP routes: Starlette handlers over the job book and the worker (docs/SERVING.md).

`create_app(models, ServerConfig())` builds the ASGI app; the worker thread starts with the app's lifespan
and `close()` (SIGTERM, serve/server.py) refuses new work, cancels what waits or runs, and ends the streams.
Every handler answers errors as JSON {"error": {"message", "status"}}, one line, never a traceback.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import secrets
import sys
import time
import traceback
from importlib import resources

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gencc.runtime.samplers import SAMPLERS

from . import encode
from .batcher import Worker
from .catalog import Served
from .config import ServerConfig
from .jobs import CANCELLED, DONE, TERMINAL, Job, JobBook, JobRequest
from .limits import ApiError, openai_request, output_format, read_json, sample_request
from .metrics import Metrics
from .openapi import openapi_schema

KEEPALIVE_S = 15.0
PUBLIC_PREFIXES = ("/v2/health/",)   # reachable without the token: a load balancer's probes
# The page itself holds no data (a browser cannot send a bearer token when it opens a URL); every API call it
# makes carries the token typed into it.
PUBLIC_PATHS = ("/",)
MEDIA = {"npy": "application/x-npy", "png": "image/png", "json": "application/json"}


class GenccServer:
    """The state behind the routes: models, jobs, worker, metrics."""

    def __init__(self, models: dict[str, Served], config: ServerConfig):
        self.models, self.config = models, config
        self.book = JobBook(config.keep_jobs)
        self.metrics = Metrics(self.book)
        self.worker = self._worker()
        self.closing = False
        self.started = time.time()

    def _worker(self) -> Worker:
        c = self.config
        return Worker(self.book, self.models, c.batch_size, c.batch_wait_ms, c.preview_every, self.metrics,
                      lambda served, x: encode.preview(served.points, x))

    def open(self) -> None:
        """Start serving (the lifespan's start); an app closed before (a test client left it) starts anew."""
        if self.closing:
            with self.book.cond:
                self.book.closed = False
            self.worker, self.closing = self._worker(), False
        self.worker.start()

    def submit(self, request: JobRequest, watched: bool = True) -> tuple[Job, int]:
        """Queue a job (`watched`: it reports its steps; sync requests need not) -> (job, queue position)."""
        if self.closing:
            raise ApiError(503, "the server is shutting down")
        if self.book.queued() >= self.config.max_queue:
            raise ApiError(429, f"the queue is full ({self.config.max_queue} jobs wait); retry later",
                           {"Retry-After": str(self.config.retry_after_s)})
        chunks = -(-request.n // self.config.batch_size)
        job = Job(request, total_steps=request.steps * chunks, watched=watched)
        self.worker.start()
        return job, self.book.add(job)

    def job(self, job_id: str) -> Job:
        job = self.book.get(job_id)
        if job is None:
            raise ApiError(404, f"unknown job {job_id[:80]!r}")
        return job

    def close(self) -> None:
        """Stop accepting; cancel waiting and running jobs (a running one stops at its next step)."""
        self.closing = True
        self.worker.stop()


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "status": status}}, status, headers=headers)


def _route(fn):
    """Auth, then the handler; an ApiError becomes its answer, anything else a one-line 500."""
    @functools.wraps(fn)
    async def handler(request: Request):
        server: GenccServer = request.app.state.gencc
        try:
            _authorize(request, server.config.token)
            return await fn(request, server)
        except ApiError as e:
            server.metrics.error(e.status)
            return _error(e.status, e.message, e.headers)
        except Exception as e:   # a bug: one line to the client, the traceback to the server's log
            traceback.print_exc(file=sys.stderr)
            server.metrics.error(500)
            return _error(500, f"internal server error ({type(e).__name__})")
    return handler


def _authorize(request: Request, token: str | None) -> None:
    path = request.url.path
    if token is None or path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
        return
    given = request.headers.get("authorization", "")
    scheme, _, value = given.partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(value.strip().encode(), token.encode()):
        raise ApiError(401, "this server needs 'Authorization: Bearer <token>'", {"WWW-Authenticate": "Bearer"})


async def _wait(job: Job) -> None:
    ev = job.subscribe()
    try:
        while not job.terminal:
            await ev.wait()
            ev.clear()
    finally:
        job.unsubscribe(ev)


def _samples_response(job: Job, fmt: str) -> Response:
    assert job.result is not None
    headers = {"X-Gencc-Job": job.id}
    if fmt == "npy":
        return Response(encode.npy_bytes(job.result), media_type=MEDIA["npy"], headers=headers)
    if fmt == "png":
        return Response(encode.png_bytes(job.result), media_type=MEDIA["png"], headers=headers)
    return JSONResponse({"id": job.id, **encode.json_samples(job.result)}, headers=headers)


def _ended(job: Job, closing: bool = False) -> None:
    """Refuse the result of a job that did not finish."""
    if job.state == DONE:
        return
    if closing and job.state == "cancelled":
        raise ApiError(503, "the server is shutting down; the request was cancelled")
    if job.state in TERMINAL:
        raise ApiError(409 if job.state != "failed" else 500, f"job {job.id} {job.state}"
                       + (f": {job.error}" if job.error else "") + "; it has no result")
    raise ApiError(409, f"job {job.id} is {job.state} (step {job.step} of {job.total_steps}); "
                        f"wait for it on /v1/jobs/{job.id}/events")


# -- routes ----------------------------------------------------------------------------------------------
@_route
async def index(request: Request, server: GenccServer):
    page = resources.files("gencc.serve").joinpath("static/index.html").read_bytes()
    return Response(page, media_type="text/html; charset=utf-8")


@_route
async def openapi(request: Request, server: GenccServer):
    return JSONResponse(openapi_schema(server.models, server.config))


@_route
async def capabilities(request: Request, server: GenccServer):
    return JSONResponse({"models": [s.metadata() for s in server.models.values()], "samplers": sorted(SAMPLERS),
                         "formats": list(MEDIA), "limits": server.config.limits(),
                         "auth": server.config.token is not None})


@_route
async def samples(request: Request, server: GenccServer):
    body = await read_json(request, server.config.max_body_bytes)
    req = sample_request(body, server.models, server.config, extra=frozenset({"format"}))
    fmt = output_format(body)
    job, _ = server.submit(req, watched=False)
    await _wait(job)
    _ended(job, server.closing)
    return _samples_response(job, fmt)


@_route
async def create_job(request: Request, server: GenccServer):
    body = await read_json(request, server.config.max_body_bytes)
    job, position = server.submit(sample_request(body, server.models, server.config))
    return JSONResponse({"id": job.id, "queue_position": position, "state": job.state,
                         "events": f"/v1/jobs/{job.id}/events"}, 202)


@_route
async def job_state(request: Request, server: GenccServer):
    job = server.job(request.path_params["id"])
    return JSONResponse(job.view(server.book.position(job)))


@_route
async def cancel_job(request: Request, server: GenccServer):
    job = server.job(request.path_params["id"])
    if not job.terminal and server.book.cancel(job):
        server.metrics.finished(CANCELLED)
    return JSONResponse(job.view(server.book.position(job)))


@_route
async def job_result(request: Request, server: GenccServer):
    job = server.job(request.path_params["id"])
    fmt = request.query_params.get("format", "npy")
    if fmt not in MEDIA:
        raise ApiError(422, f"format must be one of {', '.join(MEDIA)}, got {fmt[:20]!r}")
    _ended(job)
    return _samples_response(job, fmt)


@_route
async def job_events(request: Request, server: GenccServer):
    job = server.job(request.path_params["id"])
    return StreamingResponse(_stream(job, _after(request)), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _sse(name: str, data: dict, seq: int | None = None) -> bytes:
    head = f"event: {name}\n" + (f"id: {seq}\n" if seq is not None else "")
    return (head + f"data: {json.dumps(data, separators=(',', ':'))}\n\n").encode()


def _after(request: Request) -> int:
    """The event id a reader resumes after: the Last-Event-ID header (browsers send it on reconnect) or ?after=."""
    given = request.headers.get("last-event-id") or request.query_params.get("after") or "0"
    if not given.isdigit() or len(given) > 18:
        raise ApiError(422, f"Last-Event-ID / after must be a non-negative integer, got {given[:20]!r}")
    return int(given)


async def _stream(job: Job, seen: int):
    """The job's kept events after `seen` (the last EVENTS_KEPT), then each new one until `end`."""
    ev = job.subscribe(stream=True)
    try:
        while True:
            for seq, name, data in job.events_after(seen):
                seen = seq
                yield _sse(name, data, seq)
                if name == "end":
                    return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(ev.wait(), KEEPALIVE_S)
            if not ev.is_set():
                yield b": keepalive\n\n"
            ev.clear()
    finally:
        job.unsubscribe(ev, stream=True)


@_route
async def images_generations(request: Request, server: GenccServer):
    body = await read_json(request, server.config.max_body_bytes)
    job, _ = server.submit(openai_request(body, server.models, server.config), watched=False)
    await _wait(job)
    _ended(job, server.closing)
    assert job.result is not None
    data = [{"b64_json": base64.b64encode(encode.png_bytes(x[None])).decode("ascii")} for x in job.result]
    return JSONResponse({"created": int(job.created), "data": data})


@_route
async def live(request: Request, server: GenccServer):
    return JSONResponse({"live": True})


@_route
async def ready(request: Request, server: GenccServer):
    if server.closing:
        raise ApiError(503, "the server is shutting down")
    return JSONResponse({"ready": True})


@_route
async def model_metadata(request: Request, server: GenccServer):
    return JSONResponse(_served(server, request).metadata())


@_route
async def model_ready(request: Request, server: GenccServer):
    served = _served(server, request)
    if server.closing:
        raise ApiError(503, "the server is shutting down")
    return JSONResponse({"name": served.name, "ready": True})


def _served(server: GenccServer, request: Request) -> Served:
    name = request.path_params["name"]
    if name not in server.models:
        raise ApiError(404, f"unknown model {name[:64]!r}; this server serves {', '.join(server.models)}")
    return server.models[name]


@_route
async def metrics(request: Request, server: GenccServer):
    return Response(server.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


ROUTES = [
    Route("/", index, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
    Route("/v1/capabilities", capabilities, methods=["GET"]),
    Route("/v1/samples", samples, methods=["POST"]),
    Route("/v1/jobs", create_job, methods=["POST"]),
    Route("/v1/jobs/{id}", job_state, methods=["GET"]),
    Route("/v1/jobs/{id}/events", job_events, methods=["GET"]),
    Route("/v1/jobs/{id}/cancel", cancel_job, methods=["POST"]),
    Route("/v1/jobs/{id}/result", job_result, methods=["GET"]),
    Route("/v1/images/generations", images_generations, methods=["POST"]),
    Route("/v2/health/live", live, methods=["GET"]),
    Route("/v2/health/ready", ready, methods=["GET"]),
    Route("/v2/models/{name}", model_metadata, methods=["GET"]),
    Route("/v2/models/{name}/ready", model_ready, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]


def create_app(models: dict[str, Served], config: ServerConfig | None = None) -> Starlette:
    """The ASGI app serving `models` (catalog.load_models); its worker runs while the app's lifespan does."""
    server = GenccServer(models, config or ServerConfig())

    @contextlib.asynccontextmanager
    async def lifespan(app):
        server.open()
        try:
            yield
        finally:
            server.close()

    app = Starlette(routes=ROUTES, lifespan=lifespan)
    app.state.gencc = server
    return app
