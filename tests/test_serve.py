"""gencc serve (issue 16): every route, job state, error and the auth rule, over an ASGI test client.

Most tests serve models with an exact numpy eps (runtime/backend.py's Functions): sampling them takes
milliseconds and each row depends on its own row only, as a compiled network's does. The slow tests serve a
compiled artifact for real: mixed-seed batches on the TVM backend, `gencc serve` as a process, SIGTERM.
"""
import io
import json
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from starlette.testclient import TestClient

from gencc.runtime.backend import Functions
from gencc.runtime.errors import GenccError
from gencc.runtime.model import DiffusionModel, GanModel
from gencc.runtime.normalize import Normalization
from gencc.runtime.sde import VPSDE
from gencc.serve.app import create_app
from gencc.serve.catalog import Served, load_models, model_name
from gencc.serve.config import ServerConfig, check_binding

PAGE_IDS = ("model", "sampler", "steps", "seed", "n", "label", "guidance", "token", "generate", "cancel",
            "progress", "status", "frame", "scatter", "download-npy", "download-png")


def eps(x, t, *cond):
    """A row-wise eps: each output row depends only on its input row (and label), like a network's."""
    out = np.tanh(x) * 0.5 + np.float32(0.1 * t)
    if cond:
        y, w = cond
        shift = (np.argmax(y, axis=1).astype(np.float32) * 0.05).reshape(-1, *([1] * (x.ndim - 1)))
        out = out + (1 + w) * shift
    return out


class Gate:
    """An eps that waits at each call until the test opens it: holds a job running (or the worker busy)."""

    def __init__(self):
        self.open, self.calls = threading.Event(), 0

    def __call__(self, x, t, *cond):
        self.calls += 1
        assert self.open.wait(30), "the test never opened the gate"
        return eps(x, t)


def points_model(fn=eps):
    return DiffusionModel((2,), Normalization((0.5, -0.2), (1.5, 0.7), (2,)), Functions("exact", eps_fn=fn),
                          sde=VPSDE())


def digits_model():
    return DiffusionModel((1, 8, 8), Normalization((0.0,), (1.0,), (1, 8, 8)), Functions("exact", eps_fn=eps),
                          sde=VPSDE(), num_classes=10)


def gan_model():
    return GanModel((1, 8, 8), Normalization((0.0,), (1.0,), (1, 8, 8)),
                    Functions("exact", generate_fn=lambda z, y: np.tanh(z[:, :64].reshape(-1, 1, 8, 8) + y[:, :1, None,
                                                                                                          None])),
                    latent_shape=(64,), num_classes=10)


def served(**models):
    return {name: Served(name, m) for name, m in models.items()}


@pytest.fixture
def gate():
    g = Gate()
    yield g
    g.open.set()


@pytest.fixture
def client(gate):
    models = served(moons=points_model(), digits=digits_model(), gan=gan_model(), slow=points_model(gate))
    with TestClient(create_app(models, ServerConfig(preview_every=2, max_n=64, max_steps=200, max_queue=4,
                                                    max_body_bytes=2048, batch_wait_ms=0))) as c:
        yield c


def npy(response) -> np.ndarray:
    return np.load(io.BytesIO(response.content), allow_pickle=False)


def events(client, job_id, after=None) -> list[tuple[str, dict]]:
    """The job's events as (name, data), each data with its event id under "_id"."""
    out, name, seq = [], None, None
    headers = {} if after is None else {"Last-Event-ID": str(after)}
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as s:
        assert s.headers["content-type"].startswith("text/event-stream")
        for line in s.iter_lines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("id:"):
                seq = int(line[3:])
            elif line.startswith("data:"):
                out.append((name, {**json.loads(line[5:]), "_id": seq}))
    return out


def wait_state(client, job_id, *states) -> dict:
    while True:   # no timeout of its own: pytest's or CI's ends a hang; the loop asserts nothing about time
        view = client.get(f"/v1/jobs/{job_id}").json()
        if view["state"] in states:
            return view
        time.sleep(0.01)


# -- sync samples -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["npy", "json", "png"])
def test_samples_answer_in_each_format_and_equal_model_sample(client, fmt):
    r = client.post("/v1/samples", json={"model": "moons", "n": 5, "steps": 7, "seed": 3, "format": fmt})
    assert r.status_code == 200, r.text
    expected = points_model().sample(5, steps=7, seed=3)
    if fmt == "npy":
        assert r.headers["content-type"] == "application/x-npy"
        assert np.array_equal(npy(r), expected)
    elif fmt == "json":
        body = r.json()
        assert body["shape"] == [5, 2] and np.array_equal(np.array(body["samples"], np.float32), expected)
    else:
        assert r.headers["content-type"] == "image/png" and r.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_conditional_samples_take_label_guidance_sampler_spacing(client):
    body = {"model": "digits", "n": 3, "steps": 6, "seed": 9, "label": 4, "guidance": 1.5, "sampler": "dpm2m",
            "spacing": "uniform"}
    got = npy(client.post("/v1/samples", json=body))
    want = digits_model().sample(3, steps=6, seed=9, label=4, guidance=1.5, sampler="dpm2m", spacing="uniform")
    assert np.array_equal(got, want)


def test_gan_samples_ignore_steps(client):
    got = npy(client.post("/v1/samples", json={"model": "gan", "n": 4, "seed": 2, "label": 1}))
    assert np.array_equal(got, gan_model().sample(4, seed=2, label=1))


# -- jobs ---------------------------------------------------------------------------------------------------
def read_events_from_the_start(client, gate, body) -> tuple[dict, list]:
    """Queue `body` behind a job held at the gate, start reading its events, then let it run: the reader
    sees the job from its first step (previews are drawn only while someone reads them)."""
    blocker = client.post("/v1/jobs", json={"model": "slow", "n": 1, "steps": 1}).json()
    wait_state(client, blocker["id"], "running")
    job = client.post("/v1/jobs", json=body).json()
    seen: list = []
    reader = threading.Thread(target=lambda: seen.extend(events(client, job["id"])))
    reader.start()
    book = client.app.state.gencc.book
    while not book.get(job["id"]).streams:
        time.sleep(0.01)
    gate.open.set()
    reader.join()
    return job, seen


def test_a_job_goes_queued_running_done_with_progress_and_previews(client, gate):
    job, seen = read_events_from_the_start(client, gate, {"model": "digits", "n": 2, "steps": 6, "seed": 1,
                                                           "label": 3})
    assert set(job) >= {"id", "queue_position"} and job["queue_position"] == 0
    names = [n for n, _ in seen]
    assert names[:2] == ["state", "state"] and [d["state"] for _, d in seen[:2]] == ["queued", "running"]
    assert names[-1] == "end" and seen[-1][1]["state"] == "done"
    assert [d["step"] for n, d in seen if n == "progress"] == [1, 2, 3, 4, 5, 6]
    previews = [d for n, d in seen if n == "preview"]
    assert [p["step"] for p in previews] == [2, 4, 6]
    assert all(p["image"].startswith("data:image/png;base64,") for p in previews)
    view = client.get(f"/v1/jobs/{job['id']}").json()
    assert view["state"] == "done" and view["step"] == view["steps"] == 6
    result = client.get(view["result"])
    assert np.array_equal(npy(result), digits_model().sample(2, steps=6, seed=1, label=3))
    assert client.get(view["result"], params={"format": "json"}).json()["shape"] == [2, 1, 8, 8]


def test_point_previews_carry_the_points(client, gate):
    _, seen = read_events_from_the_start(client, gate, {"model": "moons", "n": 3, "steps": 2})
    previews = [d for n, d in seen if n == "preview"]
    assert previews and np.array(previews[-1]["points"]).shape == (3, 2)


def test_a_reader_resumes_after_last_event_id(client):
    job = client.post("/v1/jobs", json={"model": "moons", "n": 1, "steps": 4}).json()
    wait_state(client, job["id"], "done")
    seen = events(client, job["id"])
    assert [n for n, _ in events(client, job["id"], after=seen[-2][1]["_id"])] == ["end"]
    assert events(client, job["id"], after=0) == seen
    assert client.get(f"/v1/jobs/{job['id']}/events", params={"after": "x"}).status_code == 422


def test_cancel_a_running_job_stops_it_at_the_step_boundary(client, gate):
    job = client.post("/v1/jobs", json={"model": "slow", "n": 2, "steps": 50}).json()
    wait_state(client, job["id"], "running")
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
    gate.open.set()
    view = wait_state(client, job["id"], "cancelled")
    assert view["step"] < 50 and gate.calls < 50
    assert client.get(f"/v1/jobs/{job['id']}/result").status_code == 409
    assert [n for n, _ in events(client, job["id"])][-1] == "end"


def test_cancel_a_queued_job_and_a_finished_one(client, gate):
    first = client.post("/v1/jobs", json={"model": "slow", "n": 1, "steps": 5}).json()
    wait_state(client, first["id"], "running")
    second = client.post("/v1/jobs", json={"model": "moons", "n": 1, "steps": 5}).json()
    assert second["queue_position"] == 0
    assert client.get(f"/v1/jobs/{second['id']}").json()["queue_position"] == 0
    assert client.post(f"/v1/jobs/{second['id']}/cancel").json()["state"] == "cancelled"
    gate.open.set()
    assert wait_state(client, first["id"], "done", "cancelled")["state"] == "done"
    assert client.post(f"/v1/jobs/{first['id']}/cancel").json()["state"] == "done"   # too late: stays done


def test_result_of_an_unfinished_job_is_409_and_unknown_jobs_404(client, gate):
    job = client.post("/v1/jobs", json={"model": "slow", "n": 1, "steps": 3}).json()
    r = client.get(f"/v1/jobs/{job['id']}/result")
    assert r.status_code == 409 and "events" in r.json()["error"]["message"]
    gate.open.set()
    for path in ("/v1/jobs/nope", "/v1/jobs/nope/events", "/v1/jobs/nope/result"):
        assert client.get(path).status_code == 404
    assert client.post("/v1/jobs/nope/cancel").status_code == 404


# -- micro-batching ----------------------------------------------------------------------------------------
REQUESTS = [{"n": 3, "seed": 11, "label": 2}, {"n": 1, "seed": 5}, {"n": 4, "seed": 11, "label": 7},
            {"n": 2, "seed": 2**40 + 3, "label": 0}]


@pytest.mark.parametrize("model, make", [("digits", digits_model), ("gan", gan_model)])
def test_requests_waiting_together_run_as_one_batch_each_bit_identical_to_its_solo_run(model, make):
    rows = sum(r["n"] for r in REQUESTS)
    config = ServerConfig(batch_size=rows, batch_wait_ms=10_000)   # the batch runs as soon as it is full
    with TestClient(create_app(served(**{model: make()}), config)) as c:
        ids = [c.post("/v1/jobs", json={"model": model, "steps": 5, **r}).json()["id"] for r in REQUESTS]
        views = [wait_state(c, i, "done", "failed") for i in ids]
        assert [v["batch_rows"] for v in views] == [rows] * len(REQUESTS)
        for job_id, r in zip(ids, REQUESTS, strict=True):
            solo = make().sample(r["n"], steps=5, seed=r["seed"], label=r.get("label"))
            assert np.array_equal(npy(c.get(f"/v1/jobs/{job_id}/result")), solo)


def test_concurrent_sync_requests_are_merged_and_exact():
    config = ServerConfig(batch_size=8, batch_wait_ms=10_000)
    model = points_model()
    with TestClient(create_app(served(moons=model), config)) as c:
        results: dict = {}

        def ask(seed, n):
            results[seed] = c.post("/v1/samples", json={"model": "moons", "n": n, "steps": 4, "seed": seed})

        threads = [threading.Thread(target=ask, args=(s, n)) for s, n in ((1, 2), (2, 3), (3, 3))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for seed, n in ((1, 2), (2, 3), (3, 3)):
            assert np.array_equal(npy(results[seed]), model.sample(n, steps=4, seed=seed))
        job = c.get(f"/v1/jobs/{results[1].headers['x-gencc-job']}").json()
        assert job["batch_rows"] == 8


def test_cancelling_one_job_of_a_batch_leaves_the_others_exact(gate):
    model = points_model(gate)
    with TestClient(create_app(served(slow=model), ServerConfig(batch_size=3, batch_wait_ms=10_000))) as c:
        ids = [c.post("/v1/jobs", json={"model": "slow", "n": 1, "steps": 4, "seed": s}).json()["id"]
               for s in (1, 2, 3)]
        wait_state(c, ids[1], "running")
        c.post(f"/v1/jobs/{ids[1]}/cancel")
        gate.open.set()
        states = [wait_state(c, i, "done", "cancelled", "failed")["state"] for i in ids]
        assert states == ["done", "cancelled", "done"]
        exact = points_model()
        assert np.array_equal(npy(c.get(f"/v1/jobs/{ids[2]}/result")), exact.sample(1, steps=4, seed=3))


# -- the other routes ------------------------------------------------------------------------------------------
def test_openai_images_generations(client):
    r = client.post("/v1/images/generations", json={"prompt": "a handwritten 7", "n": 2, "model": "digits",
                                                    "response_format": "b64_json", "size": "256x256", "steps": 3})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert len(data) == 2 and all(d["b64_json"] for d in data) and isinstance(r.json()["created"], int)
    bad = client.post("/v1/images/generations", json={"prompt": "a cat", "model": "digits"})
    assert bad.status_code == 422 and "prompt" in bad.json()["error"]["message"]
    assert client.post("/v1/images/generations", json={"prompt": "anything", "model": "moons",
                                                       "steps": 2}).status_code == 200   # unconditional: ignored
    assert client.post("/v1/images/generations", json={"prompt": "x", "model": "digits",
                                                       "response_format": "url"}).status_code == 422


def test_health_metadata_capabilities_metrics_and_page(client):
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    meta = client.get("/v2/models/digits").json()
    assert meta["kind"] == "diffusion" and meta["sample_shape"] == [1, 8, 8] and meta["classes"][3] == "3"
    assert "em" in meta["samplers"] and meta["outputs"][0]["shape"] == [-1, 1, 8, 8]
    assert client.get("/v2/models/digits/ready").json()["ready"] is True
    assert client.get("/v2/models/nope").status_code == 404
    assert client.get("/v2/models/nope/ready").status_code == 404
    caps = client.get("/v1/capabilities").json()
    assert {m["name"] for m in caps["models"]} == {"moons", "digits", "gan", "slow"}
    assert caps["limits"]["max_n"] == 64 and "dpm2m" in caps["samplers"]
    client.post("/v1/samples", json={"model": "moons", "n": 2, "steps": 3})
    text = client.get("/metrics").text
    for name in ("gencc_queue_depth", 'gencc_jobs{state="done"}', "gencc_samples_total", "gencc_steps_total",
                 "gencc_step_seconds_bucket"):
        assert name in text
    page = client.get("/")
    assert page.headers["content-type"].startswith("text/html")
    for element in PAGE_IDS:
        assert f'id="{element}"' in page.text
    schema = client.get("/openapi.json").json()
    assert schema["openapi"].startswith("3.") and "/v1/jobs/{id}/events" in schema["paths"]


# -- bad input --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("body, status, field", [
    (b"{not json", 400, "JSON"),
    (b"[1, 2]", 400, "object"),
    (b"", 400, "JSON"),
    ({"model": "nope"}, 404, "nope"),
    ({"model": 3}, 422, "model"),
    ({"model": "moons", "n": 0}, 422, "n must"),
    ({"model": "moons", "n": 65}, 422, "n must"),
    ({"model": "moons", "n": "2"}, 422, "n must"),
    ({"model": "moons", "steps": 201}, 422, "steps"),
    ({"model": "moons", "seed": -1}, 422, "seed"),
    ({"model": "moons", "sampler": "rk4"}, 422, "sampler"),
    ({"model": "moons", "sampler": [None]}, 422, "sampler"),   # found by schemathesis: a 500 before
    ({"model": "moons", "spacing": {}}, 422, "spacing"),
    ({"model": "moons", "spacing": "log"}, 422, "spacing"),
    ({"model": "moons", "label": 1}, 422, "label"),
    ({"model": "moons", "guidance": 1.0}, 422, "guidance"),
    ({"model": "digits", "label": 10}, 422, "label"),
    ({"model": "digits", "guidance": -1}, 422, "guidance"),
    ({"model": "moons", "format": "gif"}, 422, "format"),
    ({"model": "moons", "path": "/etc/passwd"}, 422, "path"),
    ({"model": "gan", "guidance": 1.0}, 422, "guidance"),
])
def test_bad_requests_name_the_field(client, body, status, field):
    kw = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = client.post("/v1/samples", **kw)
    assert r.status_code == status, r.text
    message = r.json()["error"]["message"]
    assert field in message and "\n" not in message and "Traceback" not in r.text


def test_a_body_over_the_cap_is_413(client):
    r = client.post("/v1/jobs", json={"model": "moons", "pad": "x" * 4000})
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]


def test_a_full_queue_is_429_with_retry_after(client, gate):
    first = client.post("/v1/jobs", json={"model": "slow", "n": 1, "steps": 3}).json()
    wait_state(client, first["id"], "running")
    for _ in range(4):
        assert client.post("/v1/jobs", json={"model": "moons", "n": 1, "steps": 2}).status_code == 202
    r = client.post("/v1/jobs", json={"model": "moons", "n": 1, "steps": 2})
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    gate.open.set()


def test_a_failing_model_fails_its_job_and_the_server_serves_on(client):
    def broken(x, t):
        raise ValueError("the network broke\nsecond line")

    app = create_app(served(bad=points_model(broken), moons=points_model()), ServerConfig())
    with TestClient(app) as c:
        r = c.post("/v1/samples", json={"model": "bad", "n": 1, "steps": 2})
        assert r.status_code == 500 and r.json()["error"]["message"].count("\n") == 0
        assert "Traceback" not in r.text and "the network broke" in r.text
        job = c.post("/v1/jobs", json={"model": "bad", "n": 1, "steps": 2}).json()
        assert wait_state(c, job["id"], "failed", "done")["error"].startswith("the network broke")
        assert c.post("/v1/samples", json={"model": "moons", "n": 1, "steps": 2}).status_code == 200


def test_a_bug_in_a_route_is_a_one_line_500(client, monkeypatch):
    from gencc.serve import app as app_module

    def boom(*a, **k):
        raise KeyError("internal detail")

    monkeypatch.setattr(app_module, "openapi_schema", boom)
    r = client.get("/openapi.json")
    assert r.status_code == 500 and r.json() == {"error": {"message": "internal server error (KeyError)",
                                                           "status": 500}}
    assert client.get("/v2/health/live").status_code == 200


# -- security ----------------------------------------------------------------------------------------------------
def test_a_token_guards_every_route_but_health_and_the_page():
    app = create_app(served(moons=points_model()), ServerConfig(token="s3cret"))
    with TestClient(app) as c:
        assert c.get("/v1/capabilities").status_code == 401
        assert c.get("/v1/capabilities", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.post("/v1/samples", json={"model": "moons"}).status_code == 401
        assert c.get("/metrics").status_code == 401
        assert c.get("/v2/models/moons").status_code == 401
        ok = {"Authorization": "Bearer s3cret"}
        assert c.get("/v1/capabilities", headers=ok).status_code == 200
        assert c.post("/v1/samples", json={"model": "moons", "steps": 2}, headers=ok).status_code == 200
        assert c.get("/v2/health/live").status_code == 200 and c.get("/v2/health/ready").status_code == 200
        assert c.get("/").status_code == 200


@pytest.mark.parametrize("host, token, insecure, ok", [
    ("127.0.0.1", None, False, True), ("localhost", None, False, True), ("::1", None, False, True),
    ("0.0.0.0", None, False, False), ("192.168.1.4", None, False, False), ("0.0.0.0", "t", False, True),
    ("0.0.0.0", None, True, True), ("0.0.0.0", "t", True, False),
])
def test_binding_beyond_loopback_needs_a_token(host, token, insecure, ok):
    if ok:
        check_binding(host, token, insecure)
    else:
        with pytest.raises(GenccError, match="--token|--insecure-no-auth"):
            check_binding(host, token, insecure)


def test_the_cli_refuses_a_public_bind_without_a_token_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "gencc.cli.main", "serve", str(tmp_path), "--host", "0.0.0.0"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--token" in r.stderr, r.stderr


def test_models_are_named_by_stem_or_name_and_never_chosen_by_path(tmp_path):
    assert model_name("out/digits.gencc") == ("digits", "out/digits.gencc")
    assert model_name("d=out/x.gencc/") == ("d", "out/x.gencc/")
    with pytest.raises(GenccError, match="model name"):
        model_name("../x=y")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    with pytest.raises(GenccError, match="not a compiled artifact"):
        load_models([str(ckpt)])


def test_serving_imports_no_torch_or_onnx():
    code = ("import sys, gencc.cli.main, gencc.serve.app, gencc.serve.server, gencc.serve.catalog\n"
            "from starlette.testclient import TestClient\n"
            "heavy = [m for m in ('torch', 'onnx', 'onnxruntime', 'sklearn') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# -- a compiled artifact, for real ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_mixed_seed_batches_on_the_tvm_backend_equal_solo_runs(tiny_moons_artifact):
    import gencc

    model = gencc.load(tiny_moons_artifact, require_signature=False)
    rows = sum(r["n"] for r in REQUESTS)
    with TestClient(create_app(served(moons=model), ServerConfig(batch_size=rows, batch_wait_ms=10_000))) as c:
        ids = [c.post("/v1/jobs", json={"model": "moons", "steps": 12, "seed": r["seed"], "n": r["n"]}).json()["id"]
               for r in REQUESTS]
        assert [wait_state(c, i, "done", "failed")["batch_rows"] for i in ids] == [rows] * len(REQUESTS)
        for job_id, r in zip(ids, REQUESTS, strict=True):
            solo = model.sample(r["n"], steps=12, seed=r["seed"])   # its own batch, device noise, no watchers
            assert np.array_equal(npy(c.get(f"/v1/jobs/{job_id}/result")), solo)
        sync = c.post("/v1/samples", json={"model": "moons", "steps": 12, "seed": 8, "n": rows})   # unwatched
        assert np.array_equal(npy(sync), model.sample(rows, steps=12, seed=8))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_gencc_serve_process_answers_loads_no_torch_and_stops_cleanly_on_sigterm(tiny_moons_artifact):
    import httpx

    port = _free_port()
    code = ("import sys, runpy\n"
            "import gencc.serve.server as s\n"
            "real = s.run\n"
            "def run(*a, **k):\n"
            "    heavy = [m for m in ('torch', 'onnx', 'onnxruntime') if m in sys.modules]\n"
            "    print('HEAVY', heavy, flush=True)\n"
            "    real(*a, **k)\n"
            "s.run = run\n"
            "sys.argv = ['gencc'] + sys.argv[1:]\n"
            "from gencc.cli.main import main\n"
            "main()\n")
    proc = subprocess.Popen([sys.executable, "-c", code, "serve", f"m={tiny_moons_artifact}", "--port", str(port),
                             "--max-steps", "100000"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout.readline().strip() == "HEAVY []"
        base = f"http://127.0.0.1:{port}"
        while True:
            try:
                if httpx.get(base + "/v2/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        r = httpx.post(base + "/v1/samples", json={"model": "m", "n": 4, "steps": 5, "seed": 1})
        assert r.status_code == 200 and npy(r).shape == (4, 2)
        job = httpx.post(base + "/v1/jobs", json={"model": "m", "n": 1, "steps": 100000}).json()
        while httpx.get(f"{base}/v1/jobs/{job['id']}").json()["state"] != "running":
            time.sleep(0.05)
        with httpx.stream("GET", f"{base}/v1/jobs/{job['id']}/events", timeout=60) as s:
            proc.send_signal(signal.SIGTERM)
            last = [line for line in s.iter_lines() if line.startswith("data:")][-1]
        assert json.loads(last[5:])["state"] == "cancelled"
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
