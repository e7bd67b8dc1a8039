"""Run the service in a child ``uvicorn`` process on a free local port (tests, benchmarks, demos).

>>> with server_process({"AUDIO_MODEL_DIR": "runs/r1"}) as srv:
...     httpx.get(srv.url + "/").json()

The listening socket is bound here (port 0: the kernel picks a free port) and handed to uvicorn
with ``--fd``, so there is no race for the port. Settings travel as environment variables
(:meth:`Settings.to_env`). It is up when ``/readyz`` answers 200 (models loaded). The child is
stopped (SIGTERM, then SIGKILL) on exit.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from emovox.server.observability import MULTIPROC_VARIABLE


class ServerStartError(RuntimeError):
    """The child server exited or did not answer in time; the message carries its log."""


@dataclass
class ServerProcess:
    url: str
    host: str
    port: int
    process: subprocess.Popen
    log_path: str

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()


@contextmanager
def server_process(env: Mapping[str, str] | None = None, *, host: str = "127.0.0.1", timeout_s: float = 120.0,
                   workers: int = 1, log_level: str = "warning", wrapper: tuple[str, ...] = (),
                   uvicorn_args: tuple[str, ...] = ()) -> Iterator[ServerProcess]:
    """Start ``uvicorn emovox.server.app:create_app --factory`` with ``env`` added to this environment.

    ``wrapper``: a command the child runs under, e.g. ``("setpriv", "--bounding-set=-dac_override")`` to
    serve as a root without the power to write files it may only read. ``uvicorn_args``: more uvicorn
    flags (``--ws-max-size N``)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(128)
    sock.set_inheritable(True)
    port = sock.getsockname()[1]
    child_env = {**os.environ, **(env or {})}
    metrics_dir = None
    if workers > 1 and not child_env.get(MULTIPROC_VARIABLE):  # every worker's metrics at any worker's /metrics
        metrics_dir = child_env[MULTIPROC_VARIABLE] = tempfile.mkdtemp(prefix="emovox-metrics-")
    log = tempfile.NamedTemporaryFile(prefix="emovox-server-", suffix=".log", delete=False)
    cmd = [*wrapper, sys.executable, "-m", "uvicorn", "emovox.server.app:create_app", "--factory", "--fd", str(sock.fileno()),
           "--log-level", log_level, "--no-access-log"]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    cmd += list(uvicorn_args)
    proc = subprocess.Popen(cmd, env=child_env, stdout=log, stderr=subprocess.STDOUT, pass_fds=(sock.fileno(),))
    sock.close()
    srv = ServerProcess(url=f"http://{host}:{port}", host=host, port=port, process=proc, log_path=log.name)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise ServerStartError(f"server exited with code {proc.returncode} before answering:\n{srv.log()[-4000:]}")
            try:
                with urllib.request.urlopen(srv.url + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                raise ServerStartError(f"server did not answer within {timeout_s:g} s:\n{srv.log()[-4000:]}")
            time.sleep(0.2)
        yield srv
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        log.close()
        try:
            os.unlink(log.name)
        except OSError:
            pass
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
