"""Docker for the container tests, on this machine alone.

- A private `dockerd` (Debian's docker.io) with no bridge and no iptables rules: containers use
  the host's network, so every byte stays on loopback. Its own socket, exec root and pidfile;
  a persistent data root, so the base image and the build cache survive between runs. It is
  stopped by PID.
- The base image, where no registry is reachable: debootstrap of Debian bookworm with
  python3, python3-venv and python-is-python3, imported under a tag that encodes that recipe,
  and reused while it is present.
- The taskgate image built on it with BuildKit, the proxy's CA (PIP_CERT) as the secret `ca`.

Debian's docker client is used by absolute path: it builds with BuildKit on its own, where the
newer client first on PATH needs the buildx plugin.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.servers import pid_alive
from tests.support.services import unavailable

DOCKERD = Path("/usr/sbin/dockerd")
DOCKER = Path("/usr/bin/docker")
DEBOOTSTRAP = Path("/usr/sbin/debootstrap")
DATA_ROOT = Path(os.environ.get("TASKGATE_DOCKER_DATA_ROOT", "/var/lib/docker/taskgate-tests"))

BASE_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3")
BASE_MIRROR = "http://deb.debian.org/debian"
# What is removed from the root file system before the import: package caches and lists, docs.
BASE_CLEANUP = ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man")
# The flags production should use too (docs/DEPLOY.md, "Running in production").
RUN_OPTIONS = ("--read-only", "--tmpfs", "/tmp:rw,noexec,nosuid,nodev,size=64m", "--cap-drop", "ALL",
               "--security-opt", "no-new-privileges")


def base_image_tag() -> str:
    """The base image's name says what it is; the tag is a digest of the whole recipe, so a
    change to any part of it makes (and then reuses) another image."""
    recipe = {"suite": BASE_SUITE, "variant": "minbase", "packages": BASE_PACKAGES, "mirror": BASE_MIRROR,
              "cleanup": BASE_CLEANUP, "env": ["LANG=C.UTF-8"]}
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    return f"taskgate-base/debian-{BASE_SUITE}-python3:{digest}"


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Dockerd:
    """`dockerd --bridge=none --iptables=false` on a socket of its own; use as a context manager."""

    def __init__(self, data_root: Path = DATA_ROOT) -> None:
        self.data_root = data_root
        self.run_dir = Path(tempfile.mkdtemp(prefix="taskgate-dockerd-"))
        self.socket = self.run_dir / "docker.sock"
        self.log_path = self.run_dir / "dockerd.log"
        self.process: subprocess.Popen | None = None
        self._lock: int | None = None

    def start(self, lock_wait: float = 120) -> Dockerd:
        if os.geteuid() != 0:
            unavailable("the container tests start dockerd, which needs root")
        for binary, package in ((DOCKERD, "docker.io"), (DOCKER, "docker.io")):
            if not binary.exists():
                unavailable(f"{binary} is missing (Debian package {package})")
        self.data_root.mkdir(parents=True, exist_ok=True)
        # One dockerd per data root: the lock's descriptor is inherited by dockerd, so it stays
        # held as long as this run's daemon lives, even if the test process dies first.
        self._lock = os.open(self.data_root / ".taskgate-lock", os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + lock_wait
        while True:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    holder = os.pread(self._lock, 64, 0).decode(errors="replace").strip()
                    self._release_lock()
                    unavailable(f"another dockerd ({holder}) still uses {self.data_root}")
                time.sleep(1)
        (self.run_dir / "daemon.json").write_text("{}")  # nothing from /etc/docker/daemon.json
        command = [str(DOCKERD), "--bridge=none", "--iptables=false", "--data-root", str(self.data_root),
                   "--exec-root", str(self.run_dir / "exec"), "--pidfile", str(self.run_dir / "dockerd.pid"),
                   "--host", f"unix://{self.socket}", "--config-file", str(self.run_dir / "daemon.json")]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True, pass_fds=(self._lock,))
        os.ftruncate(self._lock, 0)
        os.pwrite(self._lock, f"pid {self.process.pid}\n".encode(), 0)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if self.socket.exists() and self.docker("version", check=False, timeout=10).returncode == 0:
                return self
            time.sleep(0.3)
        self.stop()
        unavailable(f"dockerd did not start:\n{_tail(self.log_path)}")
        return self

    def docker(self, *args: str, check: bool = True, timeout: float = 120, env: dict[str, str] | None = None,
               stdin=None) -> subprocess.CompletedProcess:
        """Debian's docker client against this daemon; its config is private to this run."""
        client_env = {**os.environ, "DOCKER_BUILDKIT": "1", "DOCKER_CONFIG": str(self.run_dir / "client"),
                      **(env or {})}
        client_env.pop("DOCKER_HOST", None)
        result = subprocess.run([str(DOCKER), "--host", f"unix://{self.socket}", *args], env=client_env,
                                stdin=stdin, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"docker {args[0]} failed ({result.returncode}):\n{result.stderr[-3000:]}")
        return result

    def run(self, image: str, env: dict[str, str], *options: str, command: tuple[str, ...] = ()) -> str:
        """`docker run --detach` on the host's network; returns the container id. The values of
        `env` reach the container through the client's environment, never its command line."""
        names = [arg for name in env for arg in ("--env", name)]
        result = self.docker("run", "--detach", "--network", "host", *names, *options, image, *command, env=env)
        return result.stdout.strip()

    def inspect(self, container: str, template: str) -> str:
        return self.docker("inspect", "--format", template, container, timeout=30).stdout.strip()

    def image_exists(self, tag: str) -> bool:
        return self.docker("image", "inspect", tag, check=False, timeout=30).returncode == 0

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        # The containerd that dockerd started ends with it, unless dockerd had to be killed.
        containerd_pid = self.run_dir / "exec" / "containerd" / "containerd.pid"
        if containerd_pid.exists():
            pid = int(containerd_pid.read_text().strip() or 0)
            if pid and pid_alive(pid):
                os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + 10
                while pid_alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.2)
        self._release_lock()
        # dockerd leaves its bind mount of the host's network namespace (exec/netns/default).
        mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
        for mount in sorted((m for m in mounts if m.startswith(f"{self.run_dir}/")), reverse=True):
            subprocess.run(["umount", mount], capture_output=True, timeout=30)
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def _release_lock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def __enter__(self) -> Dockerd:
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.stop()


def ensure_base_image(dockerd: Dockerd) -> str:
    """The base image's tag, made with debootstrap and `docker import` unless already present."""
    tag = base_image_tag()
    if dockerd.image_exists(tag):
        return tag
    if not DEBOOTSTRAP.exists():
        unavailable(f"{DEBOOTSTRAP} is missing (Debian package debootstrap) to make the base image")
    rootfs = Path(tempfile.mkdtemp(prefix="taskgate-rootfs-"))
    try:
        result = subprocess.run([str(DEBOOTSTRAP), "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
                                 BASE_SUITE, str(rootfs), BASE_MIRROR], capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            raise RuntimeError(f"debootstrap failed ({result.returncode}):\n{result.stdout[-3000:]}")
        for relative in BASE_CLEANUP:
            for entry in (rootfs / relative).glob("*"):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        description = f"debootstrap --variant=minbase --include={','.join(BASE_PACKAGES)} {BASE_SUITE}"
        with subprocess.Popen(["tar", "--numeric-owner", "-C", str(rootfs), "-c", "."],
                              stdout=subprocess.PIPE) as tar:
            dockerd.docker("import", "--change", "ENV LANG=C.UTF-8", "--change", 'CMD ["python3"]',
                           "--change", f'LABEL org.opencontainers.image.description="{description}"',
                           "--message", description, "-", tag, stdin=tar.stdout, timeout=600)
        return tag
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)


def build_image(dockerd: Dockerd, context: Path, tag: str, base: str, no_cache: bool = False) -> float:
    """`docker build` of the repo's Dockerfile on `base`; returns the seconds it took."""
    args = ["build", "--network", "host", "--progress", "plain", "--tag", tag,
            "--build-arg", f"PYTHON_IMAGE={base}"]
    ca = os.environ.get("PIP_CERT")
    if ca:
        args += ["--secret", f"id=ca,src={ca}"]
    if no_cache:
        args.append("--no-cache")
    started = time.monotonic()
    dockerd.docker(*args, str(context), timeout=900)
    return time.monotonic() - started


def image_size(dockerd: Dockerd, tag: str) -> int:
    return int(dockerd.docker("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip())
