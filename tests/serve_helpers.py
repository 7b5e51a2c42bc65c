"""A real `gencc serve` process for the browser and load tests: a free port, ready when /v2/health/ready is."""
import contextlib
import signal
import socket
import subprocess
import sys
import time

READY_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def gencc_serve(*args, log=None):
    """Run `gencc serve ARGS --port P`; yields (base_url, process). SIGTERM at the end, a kill if it hangs.

    `log`: a path the server's output goes to (kept for a failing test's report); None discards it.
    """
    import httpx

    port = free_port()
    out = open(log, "w") if log else subprocess.DEVNULL   # noqa: SIM115 (closed below, after the process)
    proc = subprocess.Popen([sys.executable, "-m", "gencc.cli.main", "serve", *map(str, args), "--port", str(port)],
                            stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            assert proc.poll() is None, f"gencc serve exited with {proc.returncode} before it was ready"
            assert time.monotonic() < deadline, "gencc serve was not ready in time"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(base + "/v2/health/ready", timeout=5).status_code == 200:
                    break
            time.sleep(0.1)
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if log:
            out.close()


def rss_kib(pid: int) -> int:
    """The process's resident set (VmRSS) in KiB, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for process {pid}")
