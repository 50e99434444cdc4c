"""Driver for the test-only Better Auth issuer in ``tests/interop/issuer/``.

Starts a REAL Better Auth server (Node, in-memory database, or a SQLite file
that outlives the process) on a loopback port and talks to it over HTTP, so tests can obtain genuine Better Auth JWTs
and the genuine JWKS.  Standard library only: this module is imported by the
project's pytest suite.

Typical use::

    ok, why = node_available()
    if not ok:
        pytest.skip(why)
    with BetterAuthIssuer(alg="ES256") as issuer:
        session = issuer.sign_up("alice@example.com")
        token = issuer.token(session)
        jwks = issuer.jwks()
        issuer.make_admin(session.user["id"])
        kid = issuer.rotate_keys()

Run ``python tests/interop/issuer.py`` for a self-check across algorithms.
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import http.cookiejar
import json
import os
import queue
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:  # POSIX only; on other platforms installs are simply not serialised.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

ISSUER_DIR = Path(__file__).resolve().parent / "issuer"
SERVER_SCRIPT = ISSUER_DIR / "server.mjs"
# The @taskgate/better-auth plugin, a `file:` dependency of the issuer. The issuer's .npmrc
# (install-links) makes npm copy it into node_modules as a registry install would, so that
# it resolves better-auth from the issuer's node_modules; an edit to it is a reinstall.
PLUGIN_DIR = Path(__file__).resolve().parents[2] / "integrations" / "better-auth"
PLUGIN_FILES = ("package.json", "index.js", "index.d.ts")

ALGORITHMS = ("EdDSA", "ES256", "ES512", "PS256", "RS256")
# What the issuer's OAuth provider offers (server.mjs, OAUTH_RESOURCE).
OAUTH_SCOPES = ("openid", "offline_access", "tasks:read", "tasks:write")
OAUTH_REDIRECT_URI = "http://127.0.0.1:9/callback"  # a native app's loopback callback; never called
# BetterAuthIssuer(taskgate_options=...) -> the server's environment variable
TASKGATE_OPTIONS = {
    "timeout_ms": "TASKGATE_TIMEOUT_MS",
    "retry_initial_ms": "TASKGATE_RETRY_INITIAL_MS",
    "retry_max_ms": "TASKGATE_RETRY_MAX_MS",
    "retry_timeout_ms": "TASKGATE_RETRY_TIMEOUT_MS",
    "poll_ms": "TASKGATE_POLL_MS",
    "lease_ms": "TASKGATE_LEASE_MS",
    "max_token_age": "TASKGATE_MAX_TOKEN_AGE",
}
MIN_NODE_MAJOR = 20
DEFAULT_PASSWORD = "correct-horse-battery"
HTTP_TIMEOUT = 10.0


class IssuerError(RuntimeError):
    """The issuer failed to start, or answered a request with an error."""

    def __init__(self, message: str, status: int | None = None, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


# --------------------------------------------------------------------------
# Installation
# --------------------------------------------------------------------------


def node_available() -> tuple[bool, str]:
    """Whether ``node`` (>= 20) and ``npm`` are usable; reason string if not."""
    node = shutil.which("node")
    npm = shutil.which("npm")
    if not node:
        return False, "node is not on PATH"
    if not npm:
        return False, "npm is not on PATH"
    try:
        out = subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=15, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"`node --version` failed: {exc}"
    try:
        major = int(out.lstrip("v").split(".")[0])
    except ValueError:
        return False, f"cannot parse node version {out!r}"
    if major < MIN_NODE_MAJOR:
        return False, f"node {out} is too old (need >= {MIN_NODE_MAJOR})"
    return True, ""


def _digest(directory: Path, extra: Iterable[Path] = ()) -> str:
    digest = hashlib.sha256((directory / "package-lock.json").read_bytes())
    for path in extra:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _issuer_digest() -> str:
    return _digest(ISSUER_DIR, [PLUGIN_DIR / name for name in PLUGIN_FILES])


def _installed(marker: Path, digest: str) -> bool:
    try:
        return marker.read_text().strip() == digest
    except OSError:
        return False


def npm_ci(directory: Path, digest_of: Any, timeout: float = 900.0) -> None:
    """Run ``npm ci`` in ``directory`` unless already done for what ``digest_of()`` hashes.

    "Done" means its node_modules carries a marker holding that digest (the lockfile's
    sha256, plus the files of a copied ``file:`` dependency), so an edit triggers a
    reinstall even when mtimes lie, e.g. after a git checkout. An exclusive file lock
    makes concurrent callers (pytest-xdist workers, parallel runs) install once.
    """
    marker = directory / "node_modules" / ".interop-installed"  # written after a successful npm ci
    if _installed(marker, digest_of()):
        return
    ok, why = node_available()
    if not ok:
        raise IssuerError(f"cannot run npm ci in {directory}: {why}")
    with open(directory / ".install.lock", "a+") as lock_fh:
        if fcntl is not None:
            fcntl.flock(lock_fh.fileno(), fcntl.LOCK_EX)
        try:
            digest = digest_of()
            if _installed(marker, digest):  # somebody else installed while we waited
                return
            npm = shutil.which("npm") or "npm"
            try:
                proc = subprocess.run(
                    [npm, "ci", "--no-audit", "--no-fund"],
                    cwd=directory,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    text=True,
                    timeout=timeout,
                )
            except subprocess.TimeoutExpired as exc:
                raise IssuerError(f"npm ci in {directory} timed out after {timeout:.0f}s") from exc
            if proc.returncode != 0:
                raise IssuerError(
                    f"npm ci in {directory} failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
                )
            marker.write_text(digest + "\n")
        finally:
            if fcntl is not None:
                fcntl.flock(lock_fh.fileno(), fcntl.LOCK_UN)


def ensure_installed(timeout: float = 900.0) -> None:
    """The issuer's pinned better-auth, jose and the repo's taskgate plugin (``npm ci``)."""
    npm_ci(ISSUER_DIR, _issuer_digest, timeout)


def ensure_plugin_dev_installed(timeout: float = 900.0) -> None:
    """The plugin's own dev dependencies (better-auth, jose, typescript), for its node tests."""
    npm_ci(PLUGIN_DIR, lambda: _digest(PLUGIN_DIR), timeout)


# --------------------------------------------------------------------------
# Sessions and HTTP
# --------------------------------------------------------------------------


@dataclass
class Session:
    """A signed-in Better Auth user: its cookies plus what the server returned."""

    cookies: http.cookiejar.CookieJar
    user: dict[str, Any]
    token: str | None = None  # the opaque session token from sign-up/sign-in
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def cookie_dict(self) -> dict[str, str]:
        return {c.name: c.value or "" for c in self.cookies}

    @property
    def cookie_header(self) -> str:
        return "; ".join(f"{c.name}={c.value}" for c in self.cookies)


@dataclass
class OAuthClient:
    """A client registered at ``/api/auth/oauth2/register`` (RFC 7591)."""

    client_id: str
    redirect_uri: str
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass
class Authorization:
    """The outcome of one authorization request: the code (None if refused), the PKCE verifier,
    the signed-in session it was given in, and the steps taken (``login``, ``consent``)."""

    code: str | None
    verifier: str
    session: Session
    steps: list[str]
    callback: str


def pkce_pair() -> tuple[str, str]:
    """A PKCE verifier and its S256 challenge (RFC 7636)."""
    verifier = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


@dataclass
class Response:
    status: int
    headers: Any  # http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8")) if self.body else None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer to look at (an OAuth flow's next step), not to follow."""

    def redirect_request(self, *_args: Any, **_kwargs: Any) -> None:
        return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BetterAuthIssuer:
    """A running ``node server.mjs`` (real Better Auth) on 127.0.0.1."""

    def __init__(
        self,
        alg: str = "EdDSA",
        define_payload: bool = False,
        trusted_origins: Iterable[str] = (),
        secret: str | None = None,
        *,
        jwt_plugin: bool = True,
        taskgate_url: str | None = None,
        taskgate_options: dict[str, int] | None = None,
        database: str | os.PathLike[str] | None = None,
        oauth_resource: str | None = None,
        oauth_access_token_ttl: int | None = None,
        port: int | None = None,
        base_url: str | None = None,
        startup_timeout: float = 30.0,
        http_timeout: float = HTTP_TIMEOUT,
        install: bool = True,
    ) -> None:
        """``jwt_plugin=False``: a shared-secret deployment (HS256 tokens from ``hs256_token``).
        ``taskgate_url``: add the repo's @taskgate/better-auth plugin, sending there;
        ``taskgate_options`` its ``timeout_ms``, ``retry_initial_ms``, ``retry_max_ms``,
        ``retry_timeout_ms``, ``poll_ms``, ``lease_ms``, ``max_token_age`` (seconds).
        ``database``: a SQLite file (migrated at start) instead of memory, so that what one
        process leaves (sessions, signing keys, the plugin's outbox) is there for the next.
        ``port``: listen there (a restarted issuer keeps its URL, which taskgate trusts) instead of
        a free port. ``base_url``: BETTER_AUTH_URL, when several processes are one deployment.
        ``oauth_resource``: add @better-auth/oauth-provider with this URL registered as a resource
        (JWT access tokens with that ``aud``), open dynamic client registration, the scopes
        ``OAUTH_SCOPES``; ``oauth_access_token_ttl`` their lifetime in seconds (default 300)."""
        if alg not in ALGORITHMS:
            raise ValueError(f"alg must be one of {ALGORITHMS}, not {alg!r}")
        self.alg = alg
        self.jwt_plugin = jwt_plugin
        self.taskgate_url = taskgate_url
        self.taskgate_options = dict(taskgate_options or {})
        unknown = set(self.taskgate_options) - set(TASKGATE_OPTIONS)
        if unknown:
            raise ValueError(f"unknown taskgate_options {sorted(unknown)}")
        self.database = os.fspath(database) if database is not None else None
        if oauth_resource is not None and not jwt_plugin:
            raise ValueError("the OAuth provider needs the jwt() plugin")
        self.oauth_resource = oauth_resource.rstrip("/") if oauth_resource else None
        self.oauth_access_token_ttl = oauth_access_token_ttl
        self.fixed_port = port
        self.base_url = base_url
        self.earlier_logs = ""  # what the processes this one replaced (restart) logged
        self.define_payload = define_payload
        self.trusted_origins = tuple(o.rstrip("/") for o in trusted_origins)
        self.secret = secret or secrets.token_urlsafe(48)
        self.startup_timeout = startup_timeout
        self.http_timeout = http_timeout
        self.install = install
        self.port: int | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._stderr_file: Any = None
        self._stdout_lines: queue.Queue[str | None] = queue.Queue()
        self._reader: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> BetterAuthIssuer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self.port is None:
            raise IssuerError("issuer not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def jwks_url(self) -> str:
        return f"{self.url}/api/auth/jwks"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def stderr_text(self) -> str:
        """Everything the server has logged so far (it logs to stderr only)."""
        if self._stderr_file is None:
            return ""
        try:
            self._stderr_file.flush()
            with open(self._stderr_file.name, encoding="utf-8", errors="replace") as fh:
                return fh.read()
        except OSError:
            return ""

    def plugin_log(self) -> str:
        """What the @taskgate/better-auth plugin logged (deliveries, failures, retries, its
        outbox's migration), this process's after those it replaced (restart, kill): the tail."""
        text = self.earlier_logs + self.stderr_text()
        return "\n".join(line for line in text.splitlines() if "[taskgate]" in line or "migrated" in line)[-4000:]

    def start(self) -> BetterAuthIssuer:
        if self._proc is not None:
            raise IssuerError("issuer already started")
        ok, why = node_available()
        if not ok:
            raise IssuerError(why)
        if self.install:
            ensure_installed()
        last_error: IssuerError | None = None
        for _ in range(3):  # retry only if a port race made listen() fail
            try:
                self._spawn(self.fixed_port or _free_port())
                return self
            except BaseException as exc:
                self.stop()  # own process + its log file; nothing else
                if not isinstance(exc, IssuerError) or "EADDRINUSE" not in str(exc):
                    raise
                if self.fixed_port:
                    time.sleep(0.5)  # the port is ours: wait for the old process to let it go
                last_error = exc
        assert last_error is not None
        raise last_error

    def _spawn(self, port: int) -> None:
        self.port = port
        env = dict(os.environ)
        env.pop("TEST", None)
        env.update(
            {
                "PORT": str(port),
                "BETTER_AUTH_URL": self.base_url or f"http://127.0.0.1:{port}",
                "BETTER_AUTH_SECRET": self.secret,
                "JWT_ALG": self.alg,
                "DEFINE_PAYLOAD": "1" if self.define_payload else "0",
                "TRUSTED_ORIGINS": ",".join(self.trusted_origins),
                "JWT_PLUGIN": "1" if self.jwt_plugin else "0",
                "TASKGATE_URL": self.taskgate_url or "",
                **{TASKGATE_OPTIONS[name]: str(value) for name, value in self.taskgate_options.items()},
                "ISSUER_DATABASE": self.database or "",
                "OAUTH_RESOURCE": self.oauth_resource or "",
                "OAUTH_ACCESS_TOKEN_TTL": str(self.oauth_access_token_ttl or ""),
                "NODE_ENV": "development",
                "BETTER_AUTH_TELEMETRY": "0",
                "EXIT_ON_STDIN_EOF": "1",  # dies with us if we die
                "NO_COLOR": "1",
            }
        )
        self._stderr_file = tempfile.NamedTemporaryFile(
            mode="w+b", prefix="better-auth-issuer-", suffix=".log", delete=False
        )
        node = shutil.which("node") or "node"
        self._proc = subprocess.Popen(
            [node, str(SERVER_SCRIPT)],
            cwd=ISSUER_DIR,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr_file,
            text=True,
        )
        self._stdout_lines = queue.Queue()
        self._reader = threading.Thread(
            target=self._read_stdout, args=(self._proc, self._stdout_lines), daemon=True
        )
        self._reader.start()
        atexit.register(self.stop)

        deadline = time.monotonic() + self.startup_timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise IssuerError(
                    f"Better Auth issuer did not print READY within {self.startup_timeout:.0f}s."
                    f"\n--- stderr ---\n{self.stderr_text()}"
                )
            try:
                line = self._stdout_lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                if self._proc.poll() is not None:
                    self._raise_exited()
                continue
            if line is None:  # stdout closed: the process is exiting
                try:
                    self._proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
                self._raise_exited()
            if line.strip() == f"READY {port}":
                break
        # READY is printed from the listen callback, so the port is open; one
        # cheap health probe confirms the HTTP stack end to end.
        resp = self._request("GET", "/test/health")
        if resp.status != 200:
            raise IssuerError(f"health check failed: {resp.status} {resp.body!r}")

    def _raise_exited(self) -> None:
        code = self._proc.returncode if self._proc else None
        raise IssuerError(
            f"Better Auth issuer exited during startup (exit code {code})."
            f"\n--- stderr ---\n{self.stderr_text()}"
        )

    @staticmethod
    def _read_stdout(proc: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                lines.put(line)
        except (OSError, ValueError):
            pass
        finally:
            lines.put(None)

    def stop(self) -> None:
        """Terminate this issuer's own node process (by its Popen handle) only."""
        try:
            atexit.unregister(self.stop)
        except Exception:  # pragma: no cover
            pass
        self._cleanup_process()
        if self._stderr_file is not None:
            name = self._stderr_file.name
            try:
                self._stderr_file.close()
            finally:
                try:
                    os.unlink(name)
                except OSError:
                    pass
            self._stderr_file = None

    def kill(self) -> None:
        """A crash: SIGKILL to this issuer's own process (nothing runs its shutdown code)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait(timeout=10)
        self.earlier_logs += self.stderr_text()
        self.stop()

    def restart(self, crash: bool = True) -> BetterAuthIssuer:
        """Stop (``crash``: SIGKILL, else SIGTERM) and start again, on the same port."""
        if self.port is not None and self.fixed_port is None:
            self.fixed_port = self.port
        if crash:
            self.kill()
        else:
            self.earlier_logs += self.stderr_text()
            self.stop()
        return self.start()

    def _cleanup_process(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        for stream in (proc.stdin, proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        if self._reader is not None:
            self._reader.join(timeout=2)
            self._reader = None

    # -- HTTP --------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        cookies: http.cookiejar.CookieJar | None = None,
        headers: dict[str, str] | None = None,
        form: dict[str, str] | None = None,
        origin: bool = True,
    ) -> Response:
        """One HTTP request; never raises for HTTP error statuses, never follows a redirect.
        ``form``: an application/x-www-form-urlencoded body (an OAuth token request);
        ``origin=False``: no Origin header (what a server-side OAuth client sends)."""
        data = None
        hdrs = {"Accept": "application/json"}
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            hdrs["Content-Type"] = "application/json"
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            hdrs["Content-Type"] = "application/x-www-form-urlencoded"
        if method not in ("GET", "HEAD", "OPTIONS") and origin:
            # Better Auth validates Origin on state-changing requests.
            hdrs["Origin"] = self.url
        hdrs.update(headers or {})
        req = urllib.request.Request(self.url + path, data=data, headers=hdrs, method=method)
        handlers: list[Any] = [_NoRedirect()]
        if cookies is not None:
            handlers.append(urllib.request.HTTPCookieProcessor(cookies))
        opener = urllib.request.build_opener(*handlers)
        try:
            with opener.open(req, timeout=self.http_timeout) as r:
                return Response(r.status, r.headers, r.read())
        except urllib.error.HTTPError as err:
            try:
                payload = err.read()
            finally:
                err.close()
            return Response(err.code, err.headers, payload)
        except (urllib.error.URLError, OSError) as err:
            raise IssuerError(
                f"{method} {path} failed: {err}\n--- issuer stderr ---\n{self.stderr_text()[-4000:]}"
            ) from err

    def _expect(self, resp: Response, what: str, ok: tuple[int, ...] = (200,)) -> Any:
        if resp.status not in ok:
            text = resp.body.decode("utf-8", "replace")
            raise IssuerError(f"{what}: HTTP {resp.status}: {text}", resp.status, text)
        return resp.json()

    def request(self, method: str, path: str, body: Any = None, session: Session | None = None,
                headers: dict[str, str] | None = None) -> Response:
        """Raw request to the issuer (path like ``/api/auth/get-session``)."""
        return self._request(method, path, body,
                             cookies=session.cookies if session else None, headers=headers)

    # -- Better Auth API ---------------------------------------------------

    def sign_up(self, email: str, password: str = DEFAULT_PASSWORD, name: str = "Test User") -> Session:
        jar = http.cookiejar.CookieJar()
        resp = self._request(
            "POST", "/api/auth/sign-up/email",
            {"email": email, "password": password, "name": name}, cookies=jar,
        )
        data = self._expect(resp, "sign-up")
        return Session(cookies=jar, user=data["user"], token=data.get("token"), raw=data)

    def sign_in(self, email: str, password: str = DEFAULT_PASSWORD) -> Session:
        jar = http.cookiejar.CookieJar()
        resp = self._request(
            "POST", "/api/auth/sign-in/email", {"email": email, "password": password}, cookies=jar,
        )
        data = self._expect(resp, "sign-in")
        return Session(cookies=jar, user=data["user"], token=data.get("token"), raw=data)

    def token(self, session: Session) -> str:
        """A fresh JWT for the session, from ``GET /api/auth/token``."""
        resp = self._request("GET", "/api/auth/token", cookies=session.cookies)
        return self._expect(resp, "token")["token"]

    def get_session(self, session: Session) -> tuple[dict[str, Any] | None, str | None]:
        """``GET /api/auth/get-session``: (body, ``set-auth-jwt`` header or None)."""
        resp = self._request("GET", "/api/auth/get-session", cookies=session.cookies)
        return self._expect(resp, "get-session"), resp.headers.get("set-auth-jwt")

    def jwks(self) -> dict[str, Any]:
        return self._expect(self._request("GET", "/api/auth/jwks"), "jwks")

    def make_admin(self, user_id: str) -> dict[str, Any]:
        """Set the user's role to "admin"; tokens fetched afterwards carry it."""
        data = self._expect(self._request("POST", "/test/make-admin", {"userId": user_id}), "make-admin")
        return data["user"]

    def rotate_keys(self) -> str:
        """Publish a new signing key (returned kid); the old keys stay in the JWKS."""
        return self._expect(self._request("POST", "/test/rotate-keys", {}), "rotate-keys")["kid"]

    def session_id(self, session: Session) -> str:
        """The Better Auth session id (what ``definePayload`` puts in ``sid``)."""
        body, _ = self.get_session(session)
        return body["session"]["id"]

    def hs256_token(self, session: Session, with_issuer: bool = False) -> str:
        """What a Next.js route mints with the shared secret; ``with_issuer`` adds iss and aud."""
        path = "/test/hs256-token" + ("?claims=issuer" if with_issuer else "")
        return self._expect(self._request("GET", path, cookies=session.cookies), "hs256-token")["token"]

    def sign_out(self, session: Session) -> Any:
        return self._expect(self._request("POST", "/api/auth/sign-out", {}, cookies=session.cookies), "sign-out")

    def admin_call(self, admin: Session, action: str, body: dict[str, Any]) -> Any:
        """An admin plugin endpoint, e.g. ``admin_call(a, "ban-user", {"userId": ...})``."""
        resp = self._request("POST", f"/api/auth/admin/{action}", body, cookies=admin.cookies)
        return self._expect(resp, f"admin/{action}")

    # -- the OAuth provider (oauth_resource) -------------------------------

    def oauth_register(self, name: str = "agent", redirect_uri: str = OAUTH_REDIRECT_URI,
                       scope: str | None = None) -> OAuthClient:
        """Dynamic client registration (RFC 7591), without a session: a public native client
        (PKCE, no secret) that may use refresh tokens."""
        body: dict[str, Any] = {
            "client_name": name, "redirect_uris": [redirect_uri], "token_endpoint_auth_method": "none",
            "application_type": "native", "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
        }
        if scope is not None:
            body["scope"] = scope
        data = self._expect(self._request("POST", "/api/auth/oauth2/register", body, origin=False),
                            "oauth2/register", ok=(200, 201))
        return OAuthClient(data["client_id"], redirect_uri, data)

    def _follow(self, answer: Response, what: str) -> str:
        """The next URL of a step that answered {redirect, url} (Accept: application/json) or a 302."""
        if answer.status in (301, 302, 303, 307, 308):
            return answer.headers["Location"]
        data = self._expect(answer, what)
        if not (isinstance(data, dict) and data.get("redirect") and isinstance(data.get("url"), str)):
            raise IssuerError(f"{what}: no redirect in {data!r}", answer.status, json.dumps(data))
        return data["url"]

    def oauth_authorize(self, client: OAuthClient, scope: str, resource: str | None = None, *,
                        session: Session | None = None, email: str | None = None,
                        password: str = DEFAULT_PASSWORD, accept: bool = True,
                        state: str | None = None) -> Authorization:
        """The authorization code flow with PKCE, as a user's browser would go through it: GET
        /api/auth/oauth2/authorize; without ``session``, the login page (sign-in with the page's
        signed ``oauth_query``, as ``email``); the consent page if the user has not consented
        yet (``accept``); then the client's callback URL with the code."""
        verifier, challenge = pkce_pair()
        state = state or secrets.token_urlsafe(8)
        query = {"response_type": "code", "client_id": client.client_id, "redirect_uri": client.redirect_uri,
                 "scope": scope, "state": state, "code_challenge": challenge, "code_challenge_method": "S256"}
        if resource is not None:
            query["resource"] = resource
        url = "/api/auth/oauth2/authorize?" + urllib.parse.urlencode(query)
        url, signed_in, steps = self.oauth_browse(url, session=session, email=email, password=password,
                                                  accept=accept)
        callback = urllib.parse.urlsplit(url)
        if f"{callback.scheme}://{callback.netloc}{callback.path}" != client.redirect_uri:
            raise IssuerError(f"the flow did not end at the client's callback: {url}")
        params = urllib.parse.parse_qs(callback.query)
        if params.get("state") != [state]:
            raise IssuerError(f"the callback's state does not match: {url}")
        if signed_in is None:
            raise IssuerError("no session")
        if not signed_in.user:
            body, _ = self.get_session(signed_in)
            signed_in.user = body["user"]
        return Authorization(params.get("code", [None])[0], verifier, signed_in, steps, url)

    def oauth_browse(self, url: str, *, session: Session | None = None, email: str | None = None,
                     password: str = DEFAULT_PASSWORD, accept: bool = True) -> tuple[str, Session | None, list[str]]:
        """A user's browser from an authorization URL (absolute, or a path of the issuer) to the
        client's callback URL: the login page without ``session`` (sign-in with the page's signed
        ``oauth_query``, as ``email``), the consent page if asked (``accept``). Returns the callback
        URL, the signed-in session and the steps taken (``login``, ``consent``)."""
        parts = urllib.parse.urlsplit(url)
        jar = session.cookies if session is not None else http.cookiejar.CookieJar()
        steps: list[str] = []
        url = self._follow(self._request("GET", f"{parts.path}?{parts.query}", cookies=jar), "oauth2/authorize")
        signed_in = session
        for _ in range(4):
            parts = urllib.parse.urlsplit(url)
            if parts.path == "/test/login":
                if email is None:
                    raise IssuerError("the provider asks for a login: pass session= or email=")
                steps.append("login")
                page = self._request("GET", f"{parts.path}?{parts.query}")
                assert page.status == 200, page.status
                answer = self._request("POST", "/api/auth/sign-in/email",
                                       {"email": email, "password": password, "oauth_query": parts.query}, cookies=jar)
                url = self._follow(answer, "sign-in with oauth_query")
                data = answer.json() or {}
                signed_in = Session(cookies=jar, user=data.get("user") or {}, token=data.get("token"), raw=data)
            elif parts.path == "/test/consent":
                steps.append("consent")
                page = self._request("GET", f"{parts.path}?{parts.query}", cookies=jar)
                assert page.status == 200, page.status
                url = self._follow(self._request("POST", "/api/auth/oauth2/consent",
                                                 {"accept": accept, "oauth_query": parts.query}, cookies=jar),
                                   "oauth2/consent")
            else:
                break
        return url, signed_in, steps

    def oauth_token(self, client: OAuthClient, grant: Authorization, resource: str | None = None,
                    dpop: str | None = None) -> dict[str, Any]:
        """The token request (``authorization_code``, a public client: client_id and the PKCE
        verifier, no secret, no Origin), naming ``resource`` as the authorization request did;
        with a ``dpop`` proof, for a token bound to the proof's key (RFC 9449)."""
        form = {"grant_type": "authorization_code", "code": grant.code or "", "code_verifier": grant.verifier,
                "redirect_uri": client.redirect_uri, "client_id": client.client_id}
        if resource is not None:
            form["resource"] = resource
        headers = {"DPoP": dpop} if dpop is not None else None
        return self._expect(self._request("POST", "/api/auth/oauth2/token", form=form, origin=False, headers=headers),
                            "oauth2/token")

    def oauth_refresh(self, client: OAuthClient, refresh_token: str, resource: str | None = None) -> Response:
        """A refresh token request; the raw answer (a refused refresh is a 400 to look at)."""
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": client.client_id}
        if resource is not None:
            form["resource"] = resource
        return self._request("POST", "/api/auth/oauth2/token", form=form, origin=False)

    def oauth_consents(self, session: Session) -> list[dict[str, Any]]:
        """The user's consents (``GET /api/auth/oauth2/get-consents``)."""
        return self._expect(self._request("GET", "/api/auth/oauth2/get-consents", cookies=session.cookies),
                            "oauth2/get-consents")

    def oauth_withdraw_consent(self, session: Session, client_id: str) -> None:
        """The user withdraws the client's consent (``POST /api/auth/oauth2/delete-consent``)."""
        ids = [c["id"] for c in self.oauth_consents(session) if c["clientId"] == client_id]
        if len(ids) != 1:
            raise IssuerError(f"expected one consent for {client_id}, found {len(ids)}")
        self._expect(self._request("POST", "/api/auth/oauth2/delete-consent", {"id": ids[0]},
                                   cookies=session.cookies), "oauth2/delete-consent")

    def authorization_server_metadata(self) -> dict[str, Any]:
        """RFC 8414 metadata of the issuer ``<url>/api/auth``."""
        return self._expect(self._request("GET", "/.well-known/oauth-authorization-server/api/auth"),
                            "authorization server metadata")

    def taskgate_state(self) -> dict[str, Any]:
        """The taskgate plugin's ``signingMode`` and ``outboxStatus()``: ``pending`` (logouts not
        delivered yet), ``oldestAgeSeconds``, ``durable``, ``adapter``, ``inFlight``, ``failing``."""
        return self._expect(self._request("GET", "/test/taskgate"), "taskgate state")

    def settle_taskgate(self, timeout: float = 10.0) -> int:
        """Wait until nothing is pending (the outbox is empty); returns how many are left."""
        timeout = min(timeout, self.http_timeout - 1)  # the answer must come within the HTTP timeout
        resp = self._request("POST", "/test/taskgate/settle", {"timeoutMs": int(timeout * 1000)})
        return self._expect(resp, "taskgate settle")["pending"]


# --------------------------------------------------------------------------
# Helpers for tests
# --------------------------------------------------------------------------


def _b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def decode_unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, payload) of a compact JWS, WITHOUT verifying the signature."""
    header_b64, payload_b64, _sig = token.split(".")
    return json.loads(_b64url_decode(header_b64)), json.loads(_b64url_decode(payload_b64))


# --------------------------------------------------------------------------
# Self-check
# --------------------------------------------------------------------------


def _self_check() -> int:
    ok, why = node_available()
    if not ok:
        print(f"SKIP: {why}")
        return 0
    t0 = time.monotonic()
    ensure_installed()
    print(f"install check: {time.monotonic() - t0:.1f}s")

    failures: list[str] = []

    def check(cond: bool, msg: str) -> None:
        if not cond:
            failures.append(msg)
            print(f"  FAIL: {msg}")

    for alg in ALGORITHMS:
        for define_payload in (False, True):
            label = f"{alg} define_payload={define_payload}"
            print(f"=== {label}")
            t0 = time.monotonic()
            with BetterAuthIssuer(alg=alg, define_payload=define_payload) as issuer:
                print(f"  started {issuer.url} (pid {issuer.pid}) in {time.monotonic() - t0:.2f}s")
                email = f"self-check-{alg.lower()}-{int(define_payload)}@example.com"
                session = issuer.sign_up(email)
                check(bool(session.user.get("id")), "sign-up returned no user id")
                print(f"  cookies: {sorted(session.cookie_dict)}")
                session = issuer.sign_in(email)
                tok = issuer.token(session)
                header, payload = decode_unverified(tok)
                print(f"  header:  {json.dumps(header)}")
                print(f"  payload: {json.dumps(payload)}")
                check(header.get("alg") == alg, f"header alg {header.get('alg')} != {alg}")
                check(payload.get("iss") == issuer.url, "iss != issuer url")
                check(payload.get("aud") == issuer.url, "aud != issuer url")
                check(payload.get("sub") == session.user["id"], "sub != user id")
                if define_payload:
                    check(isinstance(payload.get("jti"), str), "jti missing")
                    check(isinstance(payload.get("sid"), str), "sid missing")

                _body, header_jwt = issuer.get_session(session)
                check(header_jwt is not None, "no set-auth-jwt header on get-session")

                jwks = issuer.jwks()
                print(f"  jwks:    {json.dumps(jwks)}")
                kids = [k["kid"] for k in jwks["keys"]]
                check(header["kid"] in kids, "token kid not in JWKS")

                issuer.make_admin(session.user["id"])
                _h, admin_payload = decode_unverified(issuer.token(session))
                check(admin_payload.get("role") == "admin", f"role after make-admin: {admin_payload.get('role')}")

                new_kid = issuer.rotate_keys()
                tok2 = issuer.token(session)
                header2, _ = decode_unverified(tok2)
                kids_after = [k["kid"] for k in issuer.jwks()["keys"]]
                print(f"  rotated: {header['kid']} -> {header2['kid']}; jwks kids {kids_after}")
                check(header2["kid"] == new_kid, "post-rotation token not signed with the new key")
                check(header2["kid"] != header["kid"], "kid did not change on rotation")
                check(header["kid"] in kids_after and new_kid in kids_after, "old or new kid missing from JWKS")
            print(f"  done in {time.monotonic() - t0:.2f}s")

    # A trusted origin gets CORS headers (incl. preflight) on /api/auth/*.
    with BetterAuthIssuer(trusted_origins=["http://127.0.0.1:9"]) as issuer:
        pre = issuer.request("OPTIONS", "/api/auth/sign-up/email", headers={
            "Origin": "http://127.0.0.1:9",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        })
        check(pre.headers.get("access-control-allow-origin") == "http://127.0.0.1:9", "CORS preflight")
        check(pre.headers.get("access-control-allow-credentials") == "true", "CORS credentials")
        print(f"=== CORS preflight: {pre.status} {dict(pre.headers)}")

    if failures:
        print(f"\n{len(failures)} failed")
        return 1
    print("\nself-check OK")
    return 0


if __name__ == "__main__":
    sys.exit(_self_check())
