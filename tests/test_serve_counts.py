"""gencc serve's job counters (issue 16): a job cancelled while it waits is a cancelled job in /metrics too.

Found by tests/test_serve_load.py: its clients cancel most jobs before they run, and
gencc_jobs_finished_total{state="cancelled"} counted only the ones cancelled while running.
"""
from starlette.testclient import TestClient

from gencc.serve.app import create_app
from gencc.serve.config import ServerConfig
from test_serve import points_model, served


def finished(client, state: str) -> float:
    line = f'gencc_jobs_finished_total{{state="{state}"}}'
    values = [float(ln.split()[-1]) for ln in client.get("/metrics").text.splitlines() if ln.startswith(line)]
    return values[0] if values else 0.0


def test_a_job_cancelled_in_the_queue_counts_as_cancelled():
    # A long batch wait with room left in the batch: the job stays queued until the test cancels it.
    with TestClient(create_app(served(moons=points_model()), ServerConfig(batch_wait_ms=10_000))) as c:
        job = c.post("/v1/jobs", json={"model": "moons", "n": 1, "steps": 5}).json()
        assert c.post(f"/v1/jobs/{job['id']}/cancel").json()["state"] == "cancelled"
        assert finished(c, "cancelled") == 1


def test_jobs_cancelled_by_shutdown_count_as_cancelled():
    app = create_app(served(moons=points_model()), ServerConfig(batch_wait_ms=10_000))
    with TestClient(app) as c:
        c.post("/v1/jobs", json={"model": "moons", "n": 1, "steps": 5})
        c.post("/v1/jobs", json={"model": "moons", "n": 1, "steps": 7})
    assert b'gencc_jobs_finished_total{state="cancelled"} 2.0' in app.state.gencc.metrics.render()
