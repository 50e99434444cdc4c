"""Processes the integration tests start themselves, on loopback, and stop by PID:
the app served exactly as production serves it (gunicorn or granian), and a private redis-server."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import requests

from app.config import SERVERS
from tests.support.services import unavailable

ROOT = Path(__file__).resolve().parents[2]


METRICS_TOKEN = "metrics-token-for-the-tests-0123456789"


def production_env(database_url: str, redis_url: str, redis_prefix: str, secret: str) -> dict[str, str]:
    """What an operator sets: production mode, PostgreSQL, the shared Redis."""
    return {
        "APP_ENV": "production",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": redis_prefix,
        "BETTER_AUTH_SECRET": secret,
        "BETTER_AUTH_URL": "",
        "LOG_LEVEL": "WARNING",
        "METRICS_TOKEN": METRICS_TOKEN,
        # The limiter stays on (its real Redis path runs), far above what a test sends.
        "RATE_LIMIT_USER": "1000000/minute",
        "RATE_LIMIT_AUTH_FAILURES": "1000000/minute",
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def healthz_over_unix_socket(path: Path) -> bytes:
    """`GET /healthz` to a server listening on the unix socket `path`: the whole answer."""
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(5)
        client.connect(str(path))
        client.sendall(b"GET /healthz HTTP/1.1\r\nHost: taskgate\r\nConnection: close\r\n\r\n")
        return b"".join(iter(lambda: client.recv(65536), b""))


def wait_until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{what} did not come up within {timeout} s")


class AppServer:
    """The app on a spare loopback port, started as production starts it: `python serve.py`,
    which runs gunicorn (`gunicorn -c gunicorn.conf.py wsgi:app`) or, with SERVER=granian, granian."""

    def __init__(self, env: dict[str, str], workers: int = 2, server: str = "gunicorn") -> None:
        self.server = server
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **env, "SERVER": server, "GUNICORN_BIND": f"127.0.0.1:{self.port}",
                    "GUNICORN_WORKERS": str(workers), "PYTHONUNBUFFERED": "1"}
        self.log = tempfile.NamedTemporaryFile(prefix=f"{server}-", suffix=".log", delete=False)
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> AppServer:
        self.process = subprocess.Popen([sys.executable, "serve.py"], cwd=ROOT, env=self.env, stdout=self.log,
                                        stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: requests.get(f"{self.url}/healthz", timeout=1).status_code == 200, 30,
                       self.server)
        except TimeoutError:
            self.__exit__()
            raise RuntimeError(f"{self.server} failed to start:\n{self.output()}") from None
        return self

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def __exit__(self, *_exc) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Gunicorn(AppServer):
    """For what only gunicorn does (its own logs, a socket per worker)."""

    def __init__(self, env: dict[str, str], workers: int = 2) -> None:
        super().__init__(env, workers, "gunicorn")


@contextmanager
def instances(env: dict[str, str], count: int) -> Iterator[list[AppServer]]:
    """`count` instances of taskgate on one Redis and one database, the servers taken in turn."""
    with ExitStack() as stack:
        yield [stack.enter_context(AppServer(env, workers=2, server=SERVERS[i % len(SERVERS)])) for i in range(count)]


def post_across_a_sigterm(url: str, token: str, terminate: Callable[[], None],
                          running: Callable[[], bool]) -> tuple[bytes, str]:
    """POST a task whose body is half sent when `terminate()` signals the server, then the
    rest once the server has been seen still `running()` (draining). The raw answer, and the
    task's title."""
    title = f"drained-{uuid.uuid4().hex[:8]}"
    body = json.dumps({"title": title}).encode()
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as client:
        client.sendall(b"POST /api/v1/tasks HTTP/1.1\r\nHost: taskgate\r\nContent-Type: application/json\r\n"
                       + f"Authorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                       + body[: len(body) // 2])
        time.sleep(1)  # the request is in a thread running the app, reading its body
        terminate()
        time.sleep(1.5)
        assert running(), "the server stopped without draining the request in flight"
        client.sendall(body[len(body) // 2:])
        return client.recv(65536), title


def tasks_titled(database_url: str, title: str) -> int:
    import sqlalchemy as sa

    engine = sa.create_engine(database_url)
    with engine.connect() as connection:
        count = connection.execute(sa.text("SELECT count(*) FROM tasks WHERE title = :t"), {"t": title}).scalar()
    engine.dispose()
    return count


class RedisServer:
    """A private redis-server (no persistence) that a test may stop, restart empty or flush."""

    def __init__(self) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            unavailable("redis-server is not installed")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        import redis

        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--maxmemory-policy", "noeviction"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: redis.Redis(port=self.port, socket_timeout=0.5).ping(), 10, "redis-server")
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.stop()


class TcpProxy:
    """A loopback TCP forwarder a test can cut (stop) and restore (start) on the same port,
    to make a real PostgreSQL unreachable without touching the server itself."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._server: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> TcpProxy:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(128)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()
        return self

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.close()
                except OSError:
                    pass

    def stop(self) -> None:
        """Refuse new connections and cut the open ones."""
        if self._server is not None:
            try:  # wakes the thread blocked in accept(); close() alone would not on Linux
                self._server.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._server.close()
            self._server = None
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                    sock.close()
                except OSError:
                    pass
            self._sockets.clear()


class RedisMonitor:
    """The commands clients send to a Redis server (MONITOR), leaving out the ones scripts
    run inside the server. `commands()`: each as its list of words, in order."""

    def __init__(self, url: str) -> None:
        import redis

        self.client = redis.Redis.from_url(url, decode_responses=True)
        self.seen: list[dict] = []
        self._monitor = self.client.monitor()
        self._thread = threading.Thread(target=self._read, daemon=True)

    def _read(self) -> None:
        try:
            while True:
                self.seen.append(self._monitor.next_command())
        except Exception:  # noqa: BLE001 - the connection was closed: done
            return

    def __enter__(self) -> RedisMonitor:
        self._monitor.__enter__()
        self._thread.start()
        return self

    def commands(self, settle: float = 0.2) -> list[list[str]]:
        time.sleep(settle)  # MONITOR lines arrive just after the commands themselves
        return [entry["command"].split() for entry in list(self.seen)
                if entry["client_type"] != "lua" and not entry["command"].startswith(("MONITOR", "PING"))]

    def clear(self) -> None:
        time.sleep(0.2)
        self.seen.clear()

    def __exit__(self, *_exc) -> None:
        self._monitor.connection.disconnect()
        self._thread.join(timeout=5)
        self.client.close()
