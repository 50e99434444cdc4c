"""Debian's nginx as a process on loopback, running the repo's configuration
(deploy/nginx/templates/default.conf.template) with only its listen port and upstream servers
substituted, the way the official image's entrypoint does it (envsubst of the named variables).
Its own prefix, pid and log files; stopped by PID."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

from tests.support.servers import ROOT, free_port, wait_until
from tests.support.services import unavailable

NGINX = Path("/usr/sbin/nginx")
TEMPLATE = ROOT / "deploy" / "nginx" / "templates" / "default.conf.template"
SUBSTITUTED = "${TASKGATE_LISTEN} ${TASKGATE_UPSTREAM_SERVERS}"  # docker-compose.yml's NGINX_ENVSUBST_FILTER

# What the official image's /etc/nginx/nginx.conf sets around conf.d/*.conf, with this run's paths.
MAIN = """\
worker_processes auto;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{
    worker_connections 1024;
}}
http {{
    default_type application/octet-stream;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    include {prefix}/conf.d/*.conf;
}}
"""


def render(listen: str, upstreams: list[str]) -> str:
    envsubst = shutil.which("envsubst")
    if envsubst is None:
        unavailable("envsubst is missing (Debian package gettext-base)")
    env = {**os.environ, "TASKGATE_LISTEN": listen,
           "TASKGATE_UPSTREAM_SERVERS": " ".join(f"server {upstream};" for upstream in upstreams)}
    return subprocess.run([envsubst, SUBSTITUTED], input=TEMPLATE.read_text(),
                          env=env, capture_output=True, text=True, check=True, timeout=10).stdout


class Nginx:
    """nginx in front of `upstreams` ("127.0.0.1:port"), listening on a spare loopback port."""

    def __init__(self, upstreams: list[str]) -> None:
        if not NGINX.exists():
            unavailable(f"{NGINX} is missing (Debian package nginx)")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.prefix = Path(tempfile.mkdtemp(prefix="taskgate-nginx-"))
        self.prefix.chmod(0o755)  # nginx's workers (nobody) write its temp directories
        (self.prefix / "conf.d").mkdir()
        (self.prefix / "conf.d" / "default.conf").write_text(render(f"127.0.0.1:{self.port}", upstreams))
        (self.prefix / "nginx.conf").write_text(MAIN.format(prefix=self.prefix))
        self.access_log = self.prefix / "access.log"
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> Nginx:
        command = [str(NGINX), "-p", str(self.prefix), "-c", str(self.prefix / "nginx.conf"),
                   "-e", str(self.prefix / "error.log"), "-g", "daemon off;"]
        with open(self.access_log, "wb") as stdout:  # the access log goes to stdout, as in the image
            self.process = subprocess.Popen(command, stdout=stdout, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        try:
            wait_until(lambda: socket.create_connection(("127.0.0.1", self.port), timeout=1).close() is None, 10,
                       "nginx")
        except TimeoutError:
            self.__exit__()
            raise RuntimeError(f"nginx did not start:\n{self.errors()}") from None
        return self

    def errors(self) -> str:
        return "\n".join(path.read_text(errors="replace") for path in (self.prefix / "error.log", self.access_log)
                         if path.exists())

    def requests_logged(self) -> list[dict]:
        """The access log's JSON lines (the template's log_format)."""
        return [json.loads(line) for line in self.access_log.read_text().splitlines() if line.startswith("{")]

    def __exit__(self, *_exc) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.prefix, ignore_errors=True)
