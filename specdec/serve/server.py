"""Serve one loaded decoder over HTTP with uvicorn until SIGINT or SIGTERM, then stop cleanly.

On a signal: no new requests, the running generation is cancelled at its next pass, queued
ones get a 503, open streams end, then the decoder thread is joined (the caller then closes
the decoder: its reader thread and files). A second Ctrl-C forces the exit."""
from __future__ import annotations

import ipaddress
import logging
import sys
from dataclasses import dataclass
from typing import Callable

import uvicorn

from ..sampling_params import SAMPLING_PRESETS, SamplingParams
from .app import AppSettings, build_app
from .worker import GenerationQueue

GRACEFUL_SECONDS = 3  # open connections get this long to finish after a signal


@dataclass
class ServeSettings:
    model_name: str
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    queue_length: int = 16
    max_body_bytes: int = 1 << 20
    sampling: SamplingParams = SAMPLING_PRESETS["serve"]  # for the fields a request omits


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_exposure(host: str, api_key: str | None) -> None:
    """Anything beyond this machine needs a key: the server runs prompts on your CPU and disk
    for whoever reaches it."""
    if not is_loopback(host) and not api_key:
        raise ValueError(f"--host {host} accepts connections from other machines, and no API key "
                         "is set: anyone who reaches the port could use the model. Set a key "
                         "(--api-key KEY or $SPECDEC_API_KEY; clients send `Authorization: Bearer "
                         "KEY`), or serve on 127.0.0.1 (the default).")


def serve(lm, settings: ServeSettings, on_ready: Callable[[str], None] = lambda url: None) -> None:
    """Blocks until a signal (or a failure to bind, raised as OSError)."""
    check_exposure(settings.host, settings.api_key)
    _log_requests_to_stderr()
    jobs = GenerationQueue(settings.queue_length)
    app = build_app(lm, jobs, AppSettings(settings.model_name, settings.api_key,
                                          settings.max_body_bytes, settings.sampling))
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning",
                            access_log=False, lifespan="off",
                            timeout_graceful_shutdown=GRACEFUL_SECONDS)
    server = _Server(config, on_signal=jobs.stop_soon, on_ready=on_ready)
    try:
        server.run()
    except SystemExit:  # uvicorn's way of saying it could not bind, after logging why
        raise OSError(f"could not listen on {settings.host}:{settings.port} (the line above says "
                      "why; if the port is in use, choose another with --port)") from None
    finally:
        jobs.close()


class _Server(uvicorn.Server):
    def __init__(self, config, on_signal: Callable[[], None], on_ready: Callable[[str], None]):
        super().__init__(config)
        self._on_signal = on_signal
        self._on_ready = on_ready

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started:
            self._on_ready(_url(self))

    def handle_exit(self, sig, frame) -> None:
        # uvicorn's own handler records the signal and raises it again after shutting down,
        # which would end the process with the signal's status; a served-then-stopped server
        # exits 0, so only the flags are set here (attribute writes: safe in a handler).
        if self.should_exit:
            self.force_exit = True
        self.should_exit = True
        self._on_signal()


def _url(server: uvicorn.Server) -> str:
    """The address actually bound (with --port 0, the one the system chose)."""
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def _log_requests_to_stderr() -> None:
    log = logging.getLogger("specdec.serve")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
