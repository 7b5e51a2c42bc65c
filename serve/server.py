"""Running the app under uvicorn: SIGTERM or Ctrl-C stops accepting, cancels the jobs (each at its next
step), ends their event streams, and exits."""
from __future__ import annotations

import signal
import threading

from .app import create_app
from .catalog import Served
from .config import ServerConfig

GRACE_S = 10   # how long open connections may take to finish after the jobs were cancelled


def run(models: dict[str, Served], config: ServerConfig, host: str = "127.0.0.1", port: int = 8000,
        log_level: str = "info") -> None:
    import uvicorn

    app = create_app(models, config)
    server_state = app.state.gencc

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            # First the jobs: a long job's event stream would otherwise hold the connection open.
            server_state.closing = True
            server_state.worker.stop(timeout=0)
            super().handle_exit(sig, frame)

    server = Server(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                   timeout_graceful_shutdown=GRACE_S, lifespan="on"))
    # uvicorn raises a caught signal again once it has shut down, to die of it; a SIGTERM that got a clean
    # shutdown is a clean exit (status 0), so the handler it restores and re-raises to is a no-op.
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda sig, frame: None) if main else None
    try:
        server.run()
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
