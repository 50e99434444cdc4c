#!/usr/bin/env python3
"""taskgate load benchmark: seed, start gunicorn as in production, drive it, report.

    .venv/bin/python bench/run.py                      # both backends, defaults (< 10 minutes)
    .venv/bin/python bench/run.py --backend postgresql --quick
    .venv/bin/python bench/run.py --sweep 2x8,3x8,4x8,2x4,2x16   # gunicorn worker/thread variations
    .venv/bin/python bench/run.py --profile 20           # py-spy one worker under mixed load

See bench/README.md. Needs: gcc (builds bench/loadgen.c), PostgreSQL and Redis on 127.0.0.1, the
project's venv (gunicorn, psycopg, PyJWT, redis). matplotlib (plot) and py-spy (--profile) are
optional and may come from another venv (BENCH_PLOT_PYTHON, --py-spy).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import resource
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
LOADGEN_SRC = BENCH / "loadgen.c"
LOADGEN_BIN = RESULTS / "bin" / "loadgen"
PG_ADMIN_URL = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_BASE = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")

MIXED = "list=70,create=10,toggle=10,me=10"
MIXES = {"mixed": MIXED, "healthz": "healthz=100", "me": "me=100", "me-eddsa": "me=100", "me-oauth": "me=100",
         "list": "list=100"}
OAUTH_RESOURCE = "http://127.0.0.1:8000"  # the resource URL the OAuth tokens name in `aud` (OAUTH_RESOURCE_URL)
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

# Names of settings the service reads: never inherited from the caller's environment, so a
# stray FLASK_DEBUG or GUNICORN_WORKERS in the shell cannot change what is measured.
CONTROLLED_PREFIXES = (
    "APP_ENV", "DATABASE_URL", "REDIS_", "BETTER_AUTH_", "JWKS_URL", "JWT_", "ADMIN_USER_IDS",
    "CORS_ORIGINS", "BLUEPRINTS", "MAX_CONTENT_LENGTH", "DB_", "LOG_LEVEL", "RATE_LIMIT",
    "GUNICORN_", "FLASK_", "PORT", "FORWARDED_ALLOW_IPS", "PROXY_ALLOW_IPS", "PROMETHEUS_MULTIPROC_DIR",
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --------------------------------------------------------------------------- /proc sampling


def read_cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read().decode()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def read_rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * PAGE / 2**20
    except OSError:
        return None


def children_of(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            kids = [int(x) for x in fh.read().split()]
    except OSError:
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as fh:
                        data = fh.read()
                    if int(data[data.rindex(")") + 2:].split()[1]) == pid:
                        kids.append(int(entry))
                except (OSError, ValueError):
                    pass
    return sorted(kids)


def processes_named(prefixes: tuple[str, ...]) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as fh:
                if fh.read().strip().startswith(prefixes):
                    pids.append(int(entry))
        except OSError:
            pass
    return pids


def system_cpu() -> tuple[float, float]:
    """(busy, total) seconds of all CPUs since boot."""
    with open("/proc/stat") as fh:
        parts = [int(x) for x in fh.readline().split()[1:9]]
    total = sum(parts)
    idle = parts[3] + parts[4]
    return (total - idle) / CLK_TCK, total / CLK_TCK


class Sampler(threading.Thread):
    """Samples every `interval` s: CPU and RSS of each gunicorn worker, and CPU of the master,
    PostgreSQL, Redis, the load generator and the whole machine. Reading /proc only."""

    def __init__(self, master: int, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.master = master
        self.interval = interval
        self.stop_event = threading.Event()
        self.loadgen_pid: int | None = None
        self.samples: list[dict] = []
        self.first_seen: dict[int, float] = {}
        self.started = time.monotonic()

    def sample(self) -> None:
        now = time.monotonic()
        groups: dict[str, dict[int, float]] = defaultdict(dict)
        rss: dict[int, float] = {}
        for pid in children_of(self.master):
            cpu = read_cpu_seconds(pid)
            if cpu is not None:
                groups["workers"][pid] = cpu
                rss[pid] = read_rss_mb(pid) or 0.0
                self.first_seen.setdefault(pid, now)
        for name, pids in (("master", [self.master]), ("postgres", processes_named(("postgres",))),
                           ("redis", processes_named(("redis-server",))),
                           ("loadgen", [self.loadgen_pid] if self.loadgen_pid else [])):
            for pid in pids:
                cpu = read_cpu_seconds(pid)
                if cpu is not None:
                    groups[name][pid] = cpu
        busy, total = system_cpu()
        self.samples.append({"t": now, "groups": groups, "rss": rss, "sys": (busy, total)})

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.sample()
            self.stop_event.wait(self.interval)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(5)
        self.sample()

    def window(self, start: float, end: float) -> dict:
        """CPU used in [start, end] (monotonic seconds) per group and per worker; worker RSS."""
        inside = [s for s in self.samples if start - self.interval <= s["t"] <= end + self.interval]
        if len(inside) < 2:
            return {}
        first, last = inside[0], inside[-1]
        span = last["t"] - first["t"]
        result: dict = {"span_s": round(span, 3)}
        for group in ("workers", "master", "postgres", "redis", "loadgen"):
            used: dict[int, float] = {}
            for sample in inside:
                for pid, cpu in sample["groups"].get(group, {}).items():
                    base = first["groups"].get(group, {}).get(pid)
                    if base is None:
                        base = 0.0 if group in ("workers", "postgres") else cpu  # born in the window
                    used[pid] = max(used.get(pid, 0.0), cpu - base)
            result[f"{group}_cpu_s"] = round(sum(used.values()), 3)
            if group == "workers":
                per = []
                for pid, cpu_s in sorted(used.items()):
                    rss_values = [s["rss"][pid] for s in inside if pid in s["rss"]]
                    per.append({
                        "pid": pid,
                        "cpu_s": round(cpu_s, 3),
                        "cpu_pct": round(100 * cpu_s / span, 1) if span else None,
                        "rss_mb_max": round(max(rss_values), 1) if rss_values else None,
                        "rss_mb_end": round(rss_values[-1], 1) if rss_values else None,
                        "started_in_window": self.first_seen.get(pid, 0) > first["t"] + 1e-6,
                    })
                result["workers"] = per
                result["worker_restarts"] = sum(1 for p in per if p["started_in_window"])
        busy = last["sys"][0] - first["sys"][0]
        result["machine_busy_cores"] = round(busy / span, 2) if span else None
        if span:
            ours = sum(result[f"{g}_cpu_s"] for g in ("workers", "master", "postgres", "redis", "loadgen"))
            # CPU used by anything else on the machine (another test suite, a build): noise.
            result["other_busy_cores"] = round(max(0.0, busy - ours) / span, 2)
        return result


# --------------------------------------------------------------------------- helpers


def compress(path: Path) -> None:
    """gzip a gunicorn log in place (the app's access log writes a line per request)."""
    import gzip

    if not path.exists():
        return
    gz = path.with_suffix(path.suffix + ".gz")
    with open(path, "rb") as src, gzip.open(gz, "ab") as dst:
        shutil.copyfileobj(src, dst)
    path.unlink()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def build_loadgen() -> Path:
    if not LOADGEN_BIN.exists() or LOADGEN_BIN.stat().st_mtime < LOADGEN_SRC.stat().st_mtime:
        LOADGEN_BIN.parent.mkdir(parents=True, exist_ok=True)
        cc = os.environ.get("CC", "gcc")
        subprocess.run([cc, "-O2", "-Wall", "-Wextra", "-std=gnu11", "-o", str(LOADGEN_BIN), str(LOADGEN_SRC)],
                       check=True)
    return LOADGEN_BIN


def venv_tool(name: str, venv: Path) -> str:
    candidate = venv / "bin" / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        sys.exit(f"bench: cannot find {name} (looked in {venv}/bin and PATH)")
    return found


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(CONTROLLED_PREFIXES)}


def fmt_ms(value) -> str:
    if value is None:
        return "inf"
    if value >= 1000:
        return f"{value / 1000:.2f}s"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def ratio(a, b) -> float | None:
    if a is None or b in (None, 0):
        return None
    return a / b


def fmt_ratio(value) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}x" if value >= 100 else f"{value:.1f}x" if value >= 10 else f"{value:.2f}x"


def python_speed_us() -> float:
    """The machine's speed today: the best of 7 timings of a fixed pure-Python loop (dict
    lookups and calls, like a request's work), in µs. The same code's figures on machines of
    the same kind drifted up to 2x between days; this tells runs of different days apart."""
    import timeit

    table = {i: i for i in range(64)}
    timer = timeit.Timer("for i in range(1000): get(i & 63)", globals={"get": table.get})
    return round(min(timer.repeat(repeat=7, number=200)) / 200 * 1e6, 1)


def versions() -> dict:
    info = {"python": platform.python_version(), "kernel": platform.release(), "nproc": os.cpu_count(),
            "python_loop_us": python_speed_us()}
    with contextlib.suppress(Exception):
        info["affinity_cpus"] = len(os.sched_getaffinity(0))
    with contextlib.suppress(Exception):
        info["free_h"] = subprocess.run(["free", "-h"], capture_output=True, text=True, timeout=5).stdout
    with contextlib.suppress(Exception):
        info["cpu_model"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                                 if line.startswith("model name"))
    with contextlib.suppress(Exception):
        info["git_head"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                          capture_output=True, text=True, timeout=5).stdout.strip()
        info["git_dirty_paths"] = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "app", "blueprints", "gunicorn.conf.py", "wsgi.py"],
            capture_output=True, text=True, timeout=5).stdout.splitlines()
    return info


WAITED = [0.0]


def wait_for_quiet(limit: float, threshold: float = 0.15) -> None:
    """Before a run: wait (at most `limit` s) until the machine is idle for a whole second."""
    started = time.monotonic()
    deadline = started + limit
    try:
        _wait_for_quiet(deadline, limit, threshold)
    finally:
        WAITED[0] += time.monotonic() - started


def _wait_for_quiet(deadline: float, limit: float, threshold: float) -> None:
    while True:
        b0, _ = system_cpu()
        time.sleep(1.0)
        busy = system_cpu()[0] - b0
        if busy <= threshold:
            return
        if time.monotonic() > deadline:
            log(f"machine still busy ({busy:.2f} cores) after waiting {limit:g}s; running anyway")
            return


def quiet_check(seconds: float = 2.0) -> float:
    """Cores busy on the machine before we start anything; warns when something else is running."""
    b0, _ = system_cpu()
    time.sleep(seconds)
    b1, _ = system_cpu()
    busy = round((b1 - b0) / seconds, 2)
    if busy > 0.15:
        log(f"WARNING: the machine is already busy ({busy} cores in use before the benchmark): results will be "
            "pessimistic; see the 'noise' column")
    return busy


def prepare_source(source: str) -> tuple[Path, dict]:
    """The directory gunicorn runs from: this checkout, or a read-only export of a git revision."""
    if source == "worktree":
        return ROOT, {"source": "worktree", "path": str(ROOT)}
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", f"{source}^{{commit}}"],
                            capture_output=True, text=True, check=True).stdout.strip()
    target = Path(tempfile.mkdtemp(prefix="taskgate-bench-src-"))
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", commit], capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    log(f"running git revision {source} ({commit[:12]}) exported to {target}")
    return target, {"source": source, "commit": commit, "path": str(target)}


# --------------------------------------------------------------------------- seeding


def better_auth_claims(uid: str, issuer: str, ttl: int) -> dict:
    """What Better Auth's jwt() plugin signs by default: the session's user, `sub`, `iat`,
    `exp`, `iss` and `aud` (its base URL), and no `jti` (so taskgate denies by claims digest)."""
    now = int(time.time())
    stamp = datetime.fromtimestamp(now - 86400, UTC).isoformat().replace("+00:00", "Z")
    return {"id": uid, "name": uid, "email": f"{uid}@example.com", "emailVerified": True, "image": None,
            "createdAt": stamp, "updatedAt": stamp, "role": "user",
            "sub": uid, "iat": now, "exp": now + ttl, "iss": issuer, "aud": issuer}


class Issuer:
    """A Better Auth stand-in on loopback: an Ed25519 key (its jwt() plugin's default) whose
    public half it publishes at /api/auth/jwks, as Better Auth does."""

    def __init__(self) -> None:
        import http.server

        import jwt
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        self.key = Ed25519PrivateKey.generate()
        public = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(self.key.public_key()))
        body = json.dumps({"keys": [{**public, "kid": "bench-ed25519", "alg": "EdDSA", "use": "sig"}]}).encode()

        class Jwks(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                found = self.path == "/api/auth/jwks"
                self.send_response(200 if found else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body) if found else 0))
                self.end_headers()
                if found:
                    self.wfile.write(body)

            def log_message(self, *_args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Jwks)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def sign(self, claims: dict) -> str:
        import jwt

        return jwt.encode(claims, self.key, algorithm="EdDSA", headers={"kid": "bench-ed25519"})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def oauth_claims(uid: str, issuer: str, ttl: int) -> dict:
    """What Better Auth's OAuth provider signs for a client that named this API as its resource
    (RFC 9068), as a trial of 1.7.25 and 1.7.29 found it."""
    now = int(time.time())
    return {"sub": uid, "iss": f"{issuer}/api/auth", "aud": [OAUTH_RESOURCE, f"{issuer}/api/auth/oauth2/userinfo"],
            "client_id": "bench-agent", "azp": "bench-agent", "scope": "openid tasks:read tasks:write offline_access",
            "sid": f"session-{uid}", "jti": secrets.token_hex(16), "iat": now, "exp": now + ttl}


def mint_tokens(secret: str, user_ids: list[str], ttl: int, issuer: Issuer) -> tuple[list[str], list[str], list[str]]:
    """Per user, the same Better Auth–shaped claims signed twice: HS256 with the shared secret,
    and EdDSA with the issuer's key; and an OAuth access token of the same user (EdDSA)."""
    import jwt

    hs256, eddsa, oauth = [], [], []
    for uid in user_ids:
        claims = better_auth_claims(uid, issuer.url, ttl)
        hs256.append(jwt.encode(claims, secret, algorithm="HS256"))
        eddsa.append(issuer.sign(claims))
        oauth.append(jwt.encode(oauth_claims(uid, issuer.url, ttl), issuer.key, algorithm="EdDSA",
                                headers={"kid": "bench-ed25519", "typ": "at+jwt"}))
    return hs256, eddsa, oauth


def task_rows(users: int, per_user: int, seed: int = 7):
    """(id, user_id, title, description, completed, priority, due_date, created_at, updated_at);
    user u owns ids u*per_user+1 .. (u+1)*per_user."""
    rnd = random.Random(seed)
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(days=30)
    priorities = ("low", "medium", "high")
    for u in range(users):
        uid = user_id(u)
        for j in range(per_user):
            created = base + timedelta(minutes=j * 90 + rnd.randrange(60), seconds=u % 60)
            due = created + timedelta(days=rnd.randrange(1, 20)) if j % 3 else None
            yield (u * per_user + j + 1, uid, f"Task {j + 1} of {uid}",
                   f"Description of task {j + 1}: lorem ipsum dolor sit amet" if j % 2 else None,
                   j % 4 == 0, priorities[j % 3], due, created, created)


def user_id(u: int) -> str:
    return f"bench-user-{u:06d}"


def seed_postgresql(url: str, users: int, per_user: int) -> float:
    import psycopg

    started = time.perf_counter()
    with psycopg.connect(url) as conn:
        with conn.cursor() as cur:
            with cur.copy("COPY tasks (id, user_id, title, description, completed, priority, due_date, "
                          "created_at, updated_at) FROM STDIN") as copy:
                for row in task_rows(users, per_user):
                    copy.write_row(row)
            cur.execute("SELECT setval(pg_get_serial_sequence('tasks', 'id'), %s)", (users * per_user,))
        conn.commit()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE tasks")
    return time.perf_counter() - started


def sqlite_text(value):
    # SQLAlchemy's SQLite DateTime storage format (naive UTC, as UTCDateTime binds it).
    if isinstance(value, datetime):
        return value.astimezone(UTC).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
    return value


def seed_sqlite(path: Path, users: int, per_user: int) -> float:
    started = time.perf_counter()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executemany(
        "INSERT INTO tasks (id, user_id, title, description, completed, priority, due_date, created_at, "
        "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (tuple(sqlite_text(v) for v in row) for row in task_rows(users, per_user)))
    conn.commit()
    conn.execute("ANALYZE")
    conn.commit()
    conn.close()
    return time.perf_counter() - started


# --------------------------------------------------------------------------- the service


class Backend:
    """A fresh database + Redis prefix + tokens; cleaned up on exit."""

    def __init__(self, kind: str, args, run_dir: Path) -> None:
        self.kind = kind
        self.args = args
        self.run_dir = run_dir
        stamp = f"{int(time.time())}_{os.getpid()}"
        self.secret = secrets.token_urlsafe(48)
        self.redis_prefix = f"taskgate-bench-{stamp}-{kind}:"
        self.tmp = Path(tempfile.mkdtemp(prefix=f"taskgate-bench-{kind}-"))
        (self.tmp / "metrics").mkdir()  # older code's `flask db upgrade` counts metrics there too
        self.tokens_file = self.tmp / "tokens.tsv"
        self.eddsa_tokens_file = self.tmp / "tokens-eddsa.tsv"
        self.oauth_tokens_file = self.tmp / "tokens-oauth.tsv"
        self.issuer = Issuer()
        if kind == "postgresql":
            self.db_name = f"taskgate_bench_{stamp}"
            base = PG_ADMIN_URL.rsplit("/", 1)[0]
            self.database_url = f"{base.replace('postgresql://', 'postgresql+psycopg://', 1)}/{self.db_name}"
            self.plain_url = f"{base}/{self.db_name}"
            self.app_env = "production"
        else:
            self.db_path = self.tmp / "taskgate.db"
            self.database_url = f"sqlite:///{self.db_path}"
            self.app_env = "development"
        self.seed_info: dict = {}

    def label(self) -> str:
        if self.kind == "postgresql":
            return "PostgreSQL + Redis (APP_ENV=production)"
        return ("SQLite + Redis (APP_ENV=development: production refuses SQLite; REDIS_URL and "
                "BETTER_AUTH_SECRET set, FLASK_DEBUG unset)")

    def service_env(self, port: int, extra: dict[str, str]) -> dict[str, str]:
        env = clean_env()
        env.update({
            "APP_ENV": self.app_env,
            "DATABASE_URL": self.database_url,
            "REDIS_URL": REDIS_BASE,
            "REDIS_KEY_PREFIX": self.redis_prefix,
            "BETTER_AUTH_SECRET": self.secret,
            # HS256 and Better Auth's JWKS keys together: HS256 beside a JWKS only when named.
            "BETTER_AUTH_URL": self.issuer.url,
            "JWT_ALGORITHMS": "HS256,EdDSA,ES256,ES512,PS256,RS256",
            "OAUTH_RESOURCE_URL": OAUTH_RESOURCE,  # (older code ignores it, and the me-oauth run then fails)
            "GUNICORN_BIND": f"127.0.0.1:{port}",
            # prometheus_client's multiprocess files (if the service uses them) go to our temp dir.
            "PROMETHEUS_MULTIPROC_DIR": str(self.tmp / "metrics"),
        })
        if self.args.rate_limits == "raised":
            # All load comes from one IP (127.0.0.1): keep the limiter's code path, not its 429s.
            env.update({"RATE_LIMIT_IP": "1000000/minute", "RATE_LIMIT_USER": "1000000/minute"})
        elif self.args.rate_limits == "off":
            env["RATE_LIMITS_ENABLED"] = "false"
        env.update(extra)
        return env

    def create(self) -> None:
        users, per_user = self.args.users, self.args.tasks_per_user
        if self.kind == "postgresql":
            import psycopg

            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{self.db_name}"')
        self.migrate()
        log(f"{self.kind}: seeding {users} users x {per_user} tasks")
        seconds = (seed_postgresql(self.plain_url, users, per_user) if self.kind == "postgresql"
                   else seed_sqlite(self.db_path, users, per_user))
        started = time.perf_counter()
        ids = [user_id(u) for u in range(users)]
        hs256, eddsa, oauth = mint_tokens(self.secret, ids, self.args.token_ttl, self.issuer)
        files = ((self.tokens_file, hs256), (self.eddsa_tokens_file, eddsa), (self.oauth_tokens_file, oauth))
        for path, tokens in files:
            with open(path, "w") as fh:
                for u, token in enumerate(tokens):
                    fh.write(f"{token}\t{u * per_user + 1}\t{per_user}\n")
        self.seed_info = {"users": users, "tasks_per_user": per_user, "rows": users * per_user,
                          "seed_s": round(seconds, 2), "mint_s": round(time.perf_counter() - started, 2)}
        log(f"{self.kind}: seeded {users * per_user} rows in {seconds:.1f}s, "
            f"minted {users} tokens in {self.seed_info['mint_s']:.1f}s")

    def migrate(self) -> None:
        env = self.service_env(0, {})
        done = subprocess.run([venv_tool("flask", self.args.venv), "--app", "wsgi", "db", "upgrade"],
                              cwd=self.args.app_root, env=env, capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise SystemExit(f"flask db upgrade failed ({done.returncode}): {done.stderr.strip()[-2000:]}")

    def cleanup(self) -> None:
        with contextlib.suppress(Exception):
            import redis

            client = redis.Redis.from_url(REDIS_BASE)
            keys = list(client.scan_iter(match=f"{self.redis_prefix}*", count=1000))
            for i in range(0, len(keys), 500):
                client.delete(*keys[i:i + 500])
            client.close()
        if self.kind == "postgresql" and not self.args.keep:
            try:
                import psycopg

                with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
            except Exception as error:  # noqa: BLE001
                log(f"could not drop database {self.db_name}: {error}")
        if not self.args.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)
        self.issuer.close()


class Server:
    """`python serve.py` with SERVER=gunicorn (gunicorn -c gunicorn.conf.py wsgi:app, as
    production starts it) or SERVER=granian (the supported alternative)."""

    def __init__(self, backend: Backend, extra_env: dict[str, str], log_path: Path, kind: str = "gunicorn") -> None:
        self.backend = backend
        self.kind = kind
        self.port = free_port()
        self.env = {**backend.service_env(self.port, extra_env), "SERVER": kind}
        self.extra_env = extra_env
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.known_workers: set[int] = set()

    def start(self) -> None:
        cmd, cwd = [venv_tool("python", self.backend.args.venv), "serve.py"], self.backend.args.app_root
        if self.kind == "peer":  # the plan's stack (bench/peer.py), from this checkout, on the same database
            cmd, cwd = [venv_tool("python", self.backend.args.venv), "-m", "uvicorn", "bench.peer:app", "--host",
                        "127.0.0.1", "--port", str(self.port), "--workers", str(PEER_WORKERS), "--no-access-log",
                        "--log-level", "warning"], ROOT
        elif not (Path(self.backend.args.app_root) / "serve.py").exists() and self.kind == "gunicorn":
            cmd = [venv_tool("gunicorn", self.backend.args.venv), "-c", "gunicorn.conf.py", "wsgi:app"]  # older code
        self.log_fh = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=self.env, stdout=self.log_fh, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 60
        url = f"http://127.0.0.1:{self.port}/{'healthz' if self.kind == 'peer' else 'readyz'}"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log_fh.flush()
                raise RuntimeError(f"{self.kind} exited with {self.proc.returncode}; see {self.log_path}:\n"
                                   + self.log_path.read_text()[-2000:])
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200 and len(self.workers()) >= 1:
                        time.sleep(1.0)  # let every worker finish booting
                        self.known_workers.update(self.workers())
                        return
            except Exception:  # noqa: BLE001 - not up yet
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.kind} did not become ready in 60 s; see {self.log_path}")

    def settle(self, limit: float = 10.0) -> dict:
        """Before a run: wait until the previous run's leftovers are gone. An overloaded gthread
        worker keeps executing requests whose clients gave up (timed out and closed) long ago, so
        the next run would otherwise queue behind them. Settled = the workers used < 5% of a core
        for a whole second and /healthz answered within 100 ms. Past `limit` s, gunicorn is restarted
        (quick shutdown: the abandoned requests are not worth finishing) and the new one measured."""
        started = time.monotonic()
        url = f"http://127.0.0.1:{self.port}/healthz"
        while True:
            pids = self.workers()
            before = sum(read_cpu_seconds(p) or 0.0 for p in pids)
            time.sleep(1.0)
            busy = sum(read_cpu_seconds(p) or 0.0 for p in pids) - before
            quick = False
            if busy < 0.05:
                t0 = time.monotonic()
                with contextlib.suppress(Exception), urllib.request.urlopen(url, timeout=2) as response:
                    quick = response.status == 200 and time.monotonic() - t0 < 0.1
            waited = round(time.monotonic() - started, 1)
            if quick:
                if waited > 1.5:
                    log(f"server settled after {waited:g}s (the previous run left work behind)")
                return {"waited_s": waited, "restarted": False}
            if waited > limit:
                log(f"server still busy {waited:g}s after the previous run: restarting {self.kind}")
                self.stop(quick=True)
                self.port = free_port()
                self.env["GUNICORN_BIND"] = f"127.0.0.1:{self.port}"
                self.start()
                return {"waited_s": waited, "restarted": True}

    def workers(self) -> list[int]:
        kids = children_of(self.proc.pid) if self.proc else []
        self.known_workers.update(kids)
        return kids

    def stop(self, quick: bool = False) -> None:
        if not self.proc:
            return
        self.workers()
        if self.proc.poll() is None:
            # SIGTERM: graceful (the server waits up to its graceful timeout for requests in
            # flight); SIGQUIT: gunicorn's quick shutdown (granian has none: SIGTERM).
            self.proc.send_signal(signal.SIGQUIT if quick and self.kind == "gunicorn" else signal.SIGTERM)
            try:
                self.proc.wait(10 if quick else 35)
            except subprocess.TimeoutExpired:
                log(f"{self.kind} did not stop in time; killing its master and workers by PID")
                # Only processes that are still this master's children: a recycled worker's PID
                # may belong to someone else by now.
                for pid in [*children_of(self.proc.pid), self.proc.pid]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log_fh.close()
        self.proc = None
        compress(self.log_path)

    def settings(self) -> dict:
        """The effective server settings (gunicorn: gunicorn.conf.py's, unless overridden)."""
        if self.kind == "peer":
            return {"worker_class": "uvicorn (FastAPI)", "workers": PEER_WORKERS}
        if self.kind == "granian":
            code = ("import json, os\ntry:\n from app.config import load_server_settings\n"
                    " s = load_server_settings(os.environ)\n g = {'workers': s.granian_workers, "
                    "'threads': s.granian_threads, 'backpressure': s.granian_backpressure}\n"
                    "except ImportError:\n import serve\n g = serve.granian_settings()\n"
                    "print(json.dumps({'worker_class': 'granian wsgi', **g}))")
        else:
            code = ("import json, runpy; ns = runpy.run_path('gunicorn.conf.py'); print(json.dumps({k: ns.get(k) "
                    "for k in ('worker_class', 'workers', 'threads', 'worker_connections', 'keepalive', "
                    "'max_requests', 'max_requests_jitter', 'backlog', 'timeout', 'reuse_port')}))")
        out = subprocess.run([venv_tool("python", self.backend.args.venv), "-c", code], cwd=self.backend.args.app_root,
                             env=self.env,
                             capture_output=True, text=True, timeout=30)
        try:
            return json.loads(out.stdout)
        except ValueError:
            return {}


# --------------------------------------------------------------------------- one load run


def run_load(server: Server, args, run_dir: Path, name: str, mode: str, workload: str, rate: float | None,
             duration: float, warmup: float, offset: int, wait: bool = True) -> dict:
    settled = server.settle()  # first: a restart would change the port
    out = run_dir / f"{server.backend.kind}-{server.kind}-{name}.json"
    tokens = {"me-eddsa": server.backend.eddsa_tokens_file, "me-oauth": server.backend.oauth_tokens_file}.get(
        workload, server.backend.tokens_file)
    cmd = [str(LOADGEN_BIN), "--port", str(server.port), "--tokens", str(tokens),
           "--out", str(out), "--connections", str(args.connections), "--mode", mode,
           "--duration", str(duration), "--warmup", str(warmup), "--timeout", str(args.timeout),
           "--mix", MIXES[workload], "--user-offset", str(offset), "--seed", str(args.seed + offset)]
    if rate:
        cmd += ["--rate", str(rate)]
    if args.wait_quiet and wait:
        wait_for_quiet(args.wait_quiet)
    sampler = Sampler(server.proc.pid)
    sampler.start()
    proc = subprocess.Popen(cmd)
    sampler.loadgen_pid = proc.pid
    try:
        proc.wait(warmup + duration + args.timeout + 40)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        sampler.stop()
        raise RuntimeError(f"loadgen did not finish: {' '.join(cmd)}") from None
    except BaseException:
        proc.kill()  # interrupted: stop our generator (by its PID) before cleaning up
        proc.wait()
        sampler.stop()
        raise
    sampler.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"loadgen failed ({proc.returncode}): {' '.join(cmd)}")
    result = json.loads(out.read_text())
    window = result["window_monotonic"]
    server_stats = sampler.window(window[0], window[1])
    ok = result["all"]["ok"]
    workers_cpu = server_stats.get("workers_cpu_s")
    if workers_cpu is not None and ok:
        server_stats["worker_cpu_ms_per_ok_request"] = round(1000 * workers_cpu / (ok * server_stats["span_s"] /
                                                                                  duration), 3)
    server.workers()
    return {"name": name, "mode": mode, "workload": workload, "rate": rate, "connections": args.connections,
            "duration_s": duration, "warmup_s": warmup, "loadgen": result, "server": server_stats, "settle": settled,
            "loadgen_file": str(out.relative_to(ROOT))}


def summarize_run(run: dict) -> dict:
    a = run["loadgen"]["all"]
    lat = a["latency_ms"]
    s = run.get("server", {})
    return {
        "ok_per_s": a["ok_per_s"], "completed_per_s": a["completed_per_s"], "requests": a["requests"],
        "errors": a["errors"], "http_errors": a["http_errors"], "timeouts": a["timeouts"] + a["expired_unsent"],
        "conn_errors": a["conn_errors"] + a["keepalive_races"], "keepalive_races": a["keepalive_races"],
        "connect_errors": run["loadgen"]["connect_errors"], "statuses": a["statuses"],
        "p50": lat["p50"], "p95": lat["p95"], "p99": lat["p99"], "max": lat["max"],
        "worker_cpu_pct": [w["cpu_pct"] for w in s.get("workers", [])],
        "worker_rss_mb": [w["rss_mb_max"] for w in s.get("workers", [])],
        "worker_restarts": s.get("worker_restarts"),
        "cpu_ms_per_req": s.get("worker_cpu_ms_per_ok_request"),
        "machine_busy_cores": s.get("machine_busy_cores"), "other_busy_cores": s.get("other_busy_cores"),
        "postgres_cpu_s": s.get("postgres_cpu_s"), "redis_cpu_s": s.get("redis_cpu_s"),
        "loadgen_cpu_s": s.get("loadgen_cpu_s"),
    }


# --------------------------------------------------------------------------- reporting


def find(runs: list[dict], mode: str, workload: str, rate=None) -> dict | None:
    for run in runs:
        if run["mode"] == mode and run["workload"] == workload and (rate is None or run["rate"] == rate):
            return run
    return None


def closed_baseline(runs: list[dict], run: dict) -> tuple[float | None, list[float]]:
    """The /healthz capacity to compare a closed-loop run with: the mean of the closed /healthz
    runs just before and just after it (the plan brackets each workload), so a machine that
    slows down or speeds up during the benchmark moves both sides of the ratio alike."""
    index = runs.index(run)
    neighbours = []
    for step in (-1, 1):
        j = index + step
        while 0 <= j < len(runs) and not (runs[j]["mode"] == "closed" and runs[j]["workload"] == "healthz"):
            j += step
        if 0 <= j < len(runs) and runs[j]["mode"] == "closed":
            neighbours.append(summarize_run(runs[j])["ok_per_s"])
    return (sum(neighbours) / len(neighbours) if neighbours else None), neighbours


def table(backend_result: dict) -> str:
    runs = backend_result["runs"]
    base_closed = find(runs, "closed", "healthz")
    header = (f"{'run':<22} {'offered':>7} {'ok req/s':>9} {'x base':>7} {'p50':>7} {'p95':>7} {'x base':>7} "
              f"{'p99':>7} {'x base':>7} {'max':>7} {'err':>6} {'t/o':>5} {'conn':>5} "
              f"{'cpu/req':>7} {'worker CPU %':>13} {'worker RSS MB':>14} {'rst':>3} {'noise':>5}")
    lines = [header, "-" * len(header)]
    for run in runs:
        s = summarize_run(run)
        base = None
        if run["workload"] != "healthz":
            base = base_closed if run["mode"] == "closed" else find(runs, "open", "healthz", run["rate"])
        b = summarize_run(base) if base else None
        if run["mode"] == "closed":
            cap_ratio = ratio(s["ok_per_s"], closed_baseline(runs, run)[0])
        else:
            cap_ratio = ratio(s["ok_per_s"], b and b["ok_per_s"])
        if run["workload"] == "healthz":
            cap_ratio = 1.0 if run["mode"] == "closed" else None
        name = f"{run['mode']} {run['workload']}"
        offered = "max" if run["mode"] == "closed" else f"{run['rate']:.0f}"
        other_errors = s["http_errors"]
        lines.append(
            f"{name:<22} {offered:>7} {s['ok_per_s']:>9.0f} {fmt_ratio(cap_ratio):>7} {fmt_ms(s['p50']):>7} "
            f"{fmt_ms(s['p95']):>7} {fmt_ratio(ratio(s['p95'], b and b['p95'])) if b else '-':>7} "
            f"{fmt_ms(s['p99']):>7} {fmt_ratio(ratio(s['p99'], b and b['p99'])) if b else '-':>7} "
            f"{fmt_ms(s['max']):>7} {other_errors:>6} {s['timeouts']:>5} {s['conn_errors'] + s['connect_errors']:>5} "
            f"{(s['cpu_ms_per_req'] or 0):>6.2f}m "
            f"{'/'.join(f'{c:.0f}' for c in s['worker_cpu_pct']):>13} "
            f"{'/'.join(f'{r:.0f}' for r in s['worker_rss_mb'] if r is not None):>14} "
            f"{s['worker_restarts'] if s['worker_restarts'] is not None else '-':>3} "
            f"{s['other_busy_cores'] if s['other_busy_cores'] is not None else '-':>5}")
    return "\n".join(lines)


def against(name: str, value: float | None, limit: float) -> str:
    """`p95 612 ms vs 200 ms (3.06x of the limit)`; an unanswered request makes the figure inf."""
    share = "inf" if value is None else f"{value / limit:.2f}x"
    return f"{name} {fmt_ms(value)} ms vs {limit:g} ms ({share} of the limit)"


def evaluate_targets(backend_result: dict, args) -> list[dict]:
    runs = backend_result["runs"]
    targets = []

    def add(name, passed, value, detail):
        targets.append({"target": name, "pass": passed, "value": value, "detail": detail})

    repetitions = [run for run in runs if run["mode"] == "open" and run["workload"] == "mixed" and run["rate"] == 1000]
    for open_mixed in repetitions if args.connections >= 1000 else []:
        s = summarize_run(open_mixed)
        p95, p99 = s["p95"], s["p99"]
        add(f"{open_mixed['name']}: p95 < 50 ms", p95 is not None and p95 < 50, p95,
            against("p95", p95, 50))
        add(f"{open_mixed['name']}: p99 < 50 ms", p99 is not None and p99 < 50, p99,
            against("p99", p99, 50))
        add(f"{open_mixed['name']}: zero errors", s["errors"] == 0 and s["connect_errors"] == 0, s["errors"],
            f"{s['errors']} failed of {s['requests']} (http {s['http_errors']} {s['statuses']}, timeouts "
            f"{s['timeouts']}, connection {s['conn_errors']}, connect {s['connect_errors']})")
    if not repetitions or args.connections < 1000:
        add("open 1000 req/s mixed (p95/p99/errors)", None, None,
            "not measured: needs --rates including 1000 and --connections >= 1000")
    for workload, limit in (("me", 200), ("list", 300)):
        run = find(runs, "closed", workload)
        if run:
            p95 = summarize_run(run)["p95"]
            add(f"closed {args.connections} conns {workload}: p95 < {limit} ms", p95 is not None and p95 < limit, p95,
                against("p95", p95, limit))
    me, eddsa = find(runs, "closed", "me"), find(runs, "closed", "me-eddsa")
    if me and eddsa:
        r = ratio(summarize_run(eddsa)["ok_per_s"], summarize_run(me)["ok_per_s"])
        add("closed me with EdDSA tokens: capacity within 10% of HS256", r is not None and r >= 0.9, r,
            f"{summarize_run(eddsa)['ok_per_s']:.0f} / {summarize_run(me)['ok_per_s']:.0f} req/s = {r:.1%}")
    oauth = find(runs, "closed", "me-oauth")
    if eddsa and oauth and summarize_run(oauth)["ok_per_s"]:
        r = ratio(summarize_run(oauth)["ok_per_s"], summarize_run(eddsa)["ok_per_s"])
        add("closed me with OAuth access tokens: capacity within 10% of first-party EdDSA", r is not None and r >= 0.9,
            r, f"{summarize_run(oauth)['ok_per_s']:.0f} / {summarize_run(eddsa)['ok_per_s']:.0f} req/s = {r:.1%}")
    for workload in ("healthz", "mixed", "me", "list", "me-eddsa", "me-oauth"):
        closed = [run for run in runs if run["mode"] == "closed" and run["workload"] == workload]
        if closed:
            sums = [summarize_run(run) for run in closed]
            timeouts, conn, connect = (sum(s[k] for s in sums) for k in ("timeouts", "conn_errors", "connect_errors"))
            bad = timeouts + conn + connect
            add(f"closed {args.connections} conns {workload}: zero connection errors/timeouts", bad == 0, bad,
                f"timeouts {timeouts}, connection errors {conn} (keep-alive races "
                f"{sum(s['keepalive_races'] for s in sums)}), connect errors {connect}; http errors "
                f"{sum(s['http_errors'] for s in sums)}" + (f" (over {len(closed)} runs)" if len(closed) > 1 else ""))
    for workload, need in (("mixed", 0.40), ("me", 0.75)):
        run = find(runs, "closed", workload)
        base, neighbours = closed_baseline(runs, run) if run else (None, [])
        if run and base:
            r = ratio(summarize_run(run)["ok_per_s"], base)
            around = " and ".join(f"{n:.0f}" for n in neighbours)
            add(f"closed {workload} capacity >= {need:.0%} of /healthz", r is not None and r >= need, r,
                f"{summarize_run(run)['ok_per_s']:.0f} / {base:.0f} req/s (/healthz {around}, before and after) = "
                f"{r:.1%} (needs {need:.0%}; {'+' if r >= need else ''}{(r - need) * 100:.1f} points)")
    return targets


PEER_WORKERS = 2  # uvicorn's processes: one per core, as its documentation advises
PEER_PLAN = [("closed-healthz", "closed", "healthz", None), ("closed-list", "closed", "list", None),
             ("closed-healthz-2", "closed", "healthz", None)]


def print_peer_ratios(results: list[dict]) -> None:
    """taskgate's 20-task list against the plan's stack doing the same list on the same database."""
    peers = [r for r in results if r.get("server") == "peer"]
    for peer in peers:
        peer_list = find(peer["runs"], "closed", "list")
        base = summarize_run(peer_list)["ok_per_s"] if peer_list else None
        if not base:
            continue
        print()
        print(f"=== the list against the FastAPI + uvicorn + PyJWT + SQLAlchemy peer ({peer['backend']}): "
              f"{base:.0f} req/s")
        for result in results:
            mine = find(result["runs"], "closed", "list") if result.get("server") != "peer" else None
            if mine and result["backend"] == peer["backend"]:
                ok = summarize_run(mine)["ok_per_s"]
                verdict = "PASS" if ok / base >= 3.0 else "FAIL"
                print(f"    [{verdict}] {result['server']}: {ok:.0f} / {base:.0f} req/s = {ok / base:.2f}x "
                      "(target >= 3.0x)")


def print_backend(result: dict, args) -> None:
    print()
    print(f"=== {result['label']}")
    g = result.get("settings") or result.get("gunicorn") or {}  # "gunicorn": reports before granian
    if result.get("server") == "peer":
        shape = f"uvicorn bench.peer:app --workers {PEER_WORKERS} (FastAPI, PyJWT, the SQLAlchemy ORM)"
    elif result.get("server", "gunicorn") == "gunicorn":
        shape = (f"gunicorn -c gunicorn.conf.py wsgi:app: {g.get('worker_class')} workers={g.get('workers')} "
                 f"threads={g.get('threads')} worker_connections={g.get('worker_connections')} "
                 f"keepalive={g.get('keepalive')} max_requests={g.get('max_requests')} "
                 f"reuse_port={g.get('reuse_port')}")
    else:
        shape = (f"SERVER=granian python serve.py: {g.get('worker_class')} workers={g.get('workers')} "
                 f"blocking threads={g.get('threads')} backpressure={g.get('backpressure')}")
    print(f"    {shape}" + (f"  [env overrides: {result['extra_env']}]" if result.get("extra_env") else ""))
    if result.get("python_loop_us"):
        print(f"    machine speed: a fixed Python loop took {result['python_loop_us']} µs (lower is faster; "
              "for comparing runs of different days)")
    print(f"    {result['seed']['rows']} tasks for {result['seed']['users']} users; {args.connections} connections, "
          f"each a different user's token; {args.duration:g}s measured after {args.warmup:g}s warm-up; "
          f"client timeout {args.timeout:g}s")
    print()
    print(table(result))
    print("    ok req/s: 2xx responses completed per second in the window. x base: vs /healthz (closed: capacity;"
          " open: same offered rate).")
    print("    latencies in ms from the INTENDED send time (open) / send time (closed); failed requests count as"
          " inf. err = non-2xx,")
    print("    t/o = timeouts, conn = broken connections + connect errors, cpu/req = gunicorn workers' CPU ms per"
          " ok request, rst = worker restarts (max_requests) in the window,")
    print("    noise = CPU cores used by processes that are not part of the benchmark (should be ~0; if not, the run"
          " was disturbed).")
    noisy = [r["name"] for r in result["runs"] if (r.get("server", {}).get("other_busy_cores") or 0) > 0.15]
    if noisy:
        print(f"    WARNING: other processes used > 0.15 cores during {', '.join(noisy)}: those figures are "
              "pessimistic.")
    print()
    for t in result["targets"]:
        verdict = {True: "PASS", False: "FAIL", None: "N/A "}[t["pass"]]
        print(f"    [{verdict}] {t['target']}: {t['detail']}")


def plot(report: dict, png: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        other = os.environ.get("BENCH_PLOT_PYTHON", "")
        if other and Path(other).exists() and os.path.abspath(other) != os.path.abspath(sys.executable):
            json_path = png.with_suffix(".json")
            done = subprocess.run([other, str(Path(__file__)), "--plot-only", str(json_path)], timeout=120)
            return str(png) if done.returncode == 0 else None
        log("matplotlib not installed: plot skipped (it is in requirements-dev.txt; or set BENCH_PLOT_PYTHON)")
        return None
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    colors = {"postgresql": "tab:blue", "sqlite": "tab:orange", "postgresql/granian": "tab:green",
              "sqlite/granian": "tab:red"}
    for ax, pct in zip(axes, ("p95", "p99"), strict=True):
        for backend in report["backends"]:
            open_runs = [r for r in backend["runs"] if r["mode"] == "open"]
            for workload, style in (("mixed", "-o"), ("healthz", ":s")):
                points = sorted(((r["rate"], summarize_run(r)[pct]) for r in open_runs if r["workload"] == workload),
                                key=lambda point: point[0])  # repetitions share a rate; a p may be None
                if not points:
                    continue
                xs = [p[0] for p in points]
                cap = report["config"]["timeout_s"] * 1000
                ys = [cap if p[1] is None else p[1] for p in points]
                who = f"{backend['backend']}/{backend.get('server', 'gunicorn')}"
                ax.plot(xs, ys, style, color=colors.get(who, colors.get(backend["backend"])),
                        label=f"{who} {workload}")
        ax.axhline(50, color="red", linestyle="--", linewidth=1, label="target 50 ms")  # p95 and p99 alike
        ax.set_yscale("log")
        ax.set_xlabel(f"offered load, req/s over {report['config']['connections']} connections (open loop)")
        ax.set_title(f"{pct} latency from intended send time")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("ms (log scale; failures/timeouts plotted at the timeout)")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.suptitle(f"taskgate load benchmark {report['timestamp']} ({report['machine'].get('nproc')} CPUs)")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return str(png)


# --------------------------------------------------------------------------- modes


def run_backend(kind: str, args, run_dir: Path) -> list[dict]:
    """The whole plan on each server in turn, against one seeded database."""
    backend = Backend(kind, args, run_dir)
    try:
        backend.create()
        speed = python_speed_us()  # before a server starts: the machine is quiet
        results = [run_server(backend, server_kind, args, run_dir, speed) for server_kind in args.servers]
        if args.peer and kind == "postgresql":
            results.append(run_server(backend, "peer", args, run_dir, speed))
        return results
    finally:
        backend.cleanup()


def run_server(backend: Backend, server_kind: str, args, run_dir: Path, speed: float | None) -> dict:
    kind = backend.kind
    server = None
    try:
        extra = dict(args.extra_env)
        server = Server(backend, extra, run_dir / f"{server_kind}-{kind}.log", server_kind)
        gconf = server.settings()
        server.start()
        kind = f"{kind}/{server_kind}"
        log(f"{kind}: {server_kind} up on 127.0.0.1:{server.port}, workers {server.workers()}")
        runs = []
        # Each workload between two /healthz runs: its capacity ratio is against their mean.
        plan = PEER_PLAN if server_kind == "peer" else [
            ("closed-healthz", "closed", "healthz", None), ("closed-mixed", "closed", "mixed", None),
            ("closed-healthz-2", "closed", "healthz", None), ("closed-me", "closed", "me", None),
            ("closed-healthz-3", "closed", "healthz", None), ("closed-list", "closed", "list", None),
            ("closed-healthz-4", "closed", "healthz", None), ("closed-me-eddsa", "closed", "me-eddsa", None),
            ("closed-healthz-5", "closed", "healthz", None), ("closed-me-oauth", "closed", "me-oauth", None),
            ("closed-healthz-6", "closed", "healthz", None)]
        for k, rate in enumerate(args.rates if server_kind != "peer" else ()):
            again = args.rates[:k].count(rate)  # a rate listed twice is a repetition
            suffix = f"-{again + 1}" if again else ""
            plan += [(f"open-healthz-{rate:g}{suffix}", "open", "healthz", rate),
                     (f"open-mixed-{rate:g}{suffix}", "open", "mixed", rate)]
        for i, (name, mode, workload, rate) in enumerate(plan):
            log(f"{kind}: {name} ({args.connections} connections, {args.warmup:g}+{args.duration:g}s)")
            run = run_load(server, args, run_dir, name, mode, workload, rate, args.duration, args.warmup,
                           offset=(i * args.connections) % max(1, args.users))
            s = summarize_run(run)
            log(f"{kind}: {name}: {s['ok_per_s']:.0f} ok/s, p50 {fmt_ms(s['p50'])} p95 {fmt_ms(s['p95'])} "
                f"p99 {fmt_ms(s['p99'])} ms, errors {s['errors']} {s['statuses']}")
            runs.append(run)
            time.sleep(1)
        result = {"backend": backend.kind, "server": server_kind, "label": f"{backend.label()}, {server_kind}",
                  "app_env": backend.app_env, "settings": gconf, "extra_env": extra, "seed": backend.seed_info,
                  "runs": runs, "rate_limits": args.rate_limits, "python_loop_us": speed}
        result["targets"] = [] if server_kind == "peer" else evaluate_targets(result, args)
        return result
    finally:
        if server:
            server.stop()


def run_sweep(args, run_dir: Path) -> dict:
    kind = args.backend if args.backend != "both" else "postgresql"
    backend = Backend(kind, args, run_dir)
    rows = []
    try:
        backend.create()
        for i, spec in enumerate(args.sweep.split(",")):
            spec = spec.strip()
            shape, _, extra_spec = spec.partition("/")
            workers, threads = shape.split("x")
            extra = {**args.extra_env, "GUNICORN_WORKERS": workers, "GUNICORN_THREADS": threads}
            for item in filter(None, extra_spec.split("/")):
                key, _, value = item.partition("=")
                extra[{"mr": "GUNICORN_MAX_REQUESTS", "wc": "GUNICORN_WORKER_CONNECTIONS"}.get(key, key)] = value
            server = Server(backend, extra, run_dir / f"gunicorn-{kind}-sweep.log")
            try:
                gconf = server.settings()
                server.start()
                entry = {"spec": spec, "env": extra, "gunicorn": gconf, "runs": []}
                for j, (mode, workload, rate) in enumerate((("closed", "healthz", None), ("closed", "mixed", None),
                                                            ("open", "mixed", args.sweep_rate))):
                    name = f"sweep-{spec.replace('/', '_')}-{mode}-{workload}"
                    log(f"sweep {spec}: {mode} {workload} {rate or ''}")
                    run = run_load(server, args, run_dir, name, mode, workload, rate, args.duration, args.warmup,
                                   offset=((i * 3 + j) * args.connections) % max(1, args.users))
                    entry["runs"].append(run)
                    time.sleep(1)
                rows.append(entry)
            finally:
                server.stop()
    finally:
        backend.cleanup()
    result = {"backend": kind, "label": backend.label(), "seed": backend.seed_info, "sweep": rows}
    print_sweep(result, args)
    return result


def print_sweep(result: dict, args) -> None:
    rows = result["sweep"]
    print()
    print(f"=== gunicorn variations, {result['label']}, {args.connections} connections, {args.duration:g}s runs")
    header = (f"{'config':<12} {'healthz cap':>11} {'mixed cap':>9} {'ratio':>6} {'closed mixed p99':>16} "
              f"{'closed err':>10} {f'open {args.sweep_rate:g} ok/s':>13} {'p50':>7} {'p95':>7} {'p99':>7} "
              f"{'errors':>6} {'worker RSS MB':>14} {'rst':>3} {'noise':>15}")
    print(header)
    print("-" * len(header))
    for entry in rows:
        hz, cm, om = (summarize_run(r) for r in entry["runs"])
        noise = "/".join(f"{x['other_busy_cores']:.2f}" if x["other_busy_cores"] is not None else "-"
                         for x in (hz, cm, om))
        restarts = sum(x["worker_restarts"] or 0 for x in (hz, cm, om))
        print(f"{entry['spec']:<12} {hz['ok_per_s']:>11.0f} {cm['ok_per_s']:>9.0f} "
              f"{fmt_ratio(ratio(cm['ok_per_s'], hz['ok_per_s'])):>6} {fmt_ms(cm['p99']):>16} "
              f"{cm['timeouts'] + cm['conn_errors'] + cm['connect_errors'] + cm['http_errors']:>10} "
              f"{om['ok_per_s']:>13.0f} {fmt_ms(om['p50']):>7} {fmt_ms(om['p95']):>7} {fmt_ms(om['p99']):>7} "
              f"{om['errors']:>6} {'/'.join(f'{r:.0f}' for r in om['worker_rss_mb'] if r is not None):>14} "
              f"{restarts:>3} {noise:>15}")
    print("    noise = cores used by other processes during the healthz/mixed/open runs; rst = worker restarts.")



def summarize_profile(raw: Path, top: int = 25) -> str:
    """Text summary of py-spy's collapsed stacks ("f1 (file:line);f2 (...) count")."""
    self_fn: dict[str, int] = defaultdict(int)
    incl_fn: dict[str, int] = defaultdict(int)
    self_pkg: dict[str, int] = defaultdict(int)
    incl_pkg: dict[str, int] = defaultdict(int)
    total = 0

    def package(frame: str) -> str:
        path = frame[frame.rfind("(") + 1:].rstrip(")").rsplit(":", 1)[0]
        if "site-packages/" in path:
            return path.split("site-packages/", 1)[1].split("/", 1)[0].replace(".py", "")
        if str(ROOT) in path or path.startswith(("app/", "blueprints/")):
            rel = path.split(str(ROOT) + "/", 1)[-1]
            return "taskgate:" + rel
        if "/lib/python3" in path:
            return "stdlib:" + path.rsplit("/", 1)[-1].replace(".py", "")
        return path or "?"

    def function(frame: str) -> str:
        name, _, where = frame.partition(" (")
        where = where.rstrip(")")
        file = where.rsplit(":", 1)[0]
        short = file.split("site-packages/", 1)[-1].split(str(ROOT) + "/", 1)[-1]
        if "/lib/python3" in short:
            short = short.rsplit("/lib/", 1)[-1]
        return f"{name} ({short})"

    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        frames = [f for f in frames if not f.startswith(("process ", "thread "))] or frames
        leaf = frames[-1]
        self_fn[function(leaf)] += n
        self_pkg[package(leaf)] += n
        for name in {function(f) for f in frames}:
            incl_fn[name] += n
        pkgs = {package(f) for f in frames}
        for name in pkgs:
            incl_pkg[name] += n
        for name in {p.split(":", 1)[0] + ":*" for p in pkgs if p.startswith("taskgate:")}:
            incl_pkg[name] += n
    if not total:
        return "no samples\n"

    def block(title: str, data: dict[str, int], limit: int) -> list[str]:
        out = [title]
        for key, n in sorted(data.items(), key=lambda kv: -kv[1])[:limit]:
            out.append(f"  {100 * n / total:5.1f}%  {key}")
        return out

    self_pkg_grouped: dict[str, int] = defaultdict(int)
    for key, n in self_pkg.items():
        self_pkg_grouped[key.split(":", 1)[0] if key.startswith("stdlib:") else key] += n
    lines = [f"samples: {total} (py-spy --gil: the thread holding the GIL, i.e. running Python)", ""]
    lines += block("self time by package/module (where the CPU is actually spent):", self_pkg_grouped, 20) + [""]
    lines += block("inclusive time by package/module (the stack passes through it):", incl_pkg, 25) + [""]
    lines += block(f"top {top} functions by self time:", self_fn, top) + [""]
    lines += block(f"top {top} functions by inclusive time:", incl_fn, top)
    return "\n".join(lines) + "\n"


def run_profile(args, run_dir: Path) -> dict:
    kind = args.backend if args.backend != "both" else "postgresql"
    py_spy = args.py_spy or shutil.which("py-spy") or next(
        (p for p in (str(Path(sys.executable).parent / "py-spy"), "/tmp/bench-venv/bin/py-spy") if Path(p).exists()),
        None)
    if not py_spy:
        sys.exit("bench: py-spy not found (requirements-dev.txt has py-spy==0.4.3); or pass --py-spy PATH")
    backend = Backend(kind, args, run_dir)
    server = None
    try:
        backend.create()
        # Workers are not recycled while being profiled (max_requests would end py-spy's target early).
        extra = {**args.extra_env, "GUNICORN_MAX_REQUESTS": "0"}
        server = Server(backend, extra, run_dir / f"gunicorn-{kind}-profile.log")
        server.start()
        worker = server.workers()[0]
        mode, rate = ("open", args.profile_rate) if args.profile_rate else ("closed", None)
        workload = args.profile_workload
        seconds = args.profile
        result_box: dict = {}

        def load() -> None:
            result_box["run"] = run_load(server, args, run_dir, f"profile-{mode}-{workload}", mode, workload, rate,
                                         2 * seconds + 4, 3, offset=0, wait=False)

        if args.wait_quiet:
            wait_for_quiet(args.wait_quiet)
        thread = threading.Thread(target=load)
        thread.start()
        time.sleep(4)  # past the warm-up
        raw = run_dir / f"profile-{kind}-{workload}-worker{worker}.txt"
        svg = run_dir / f"profile-{kind}-{workload}-worker{worker}.svg"
        # --gil: sample only the thread holding the GIL. A gthread worker is GIL-bound, so that thread
        # is where its CPU goes; threads waiting on a socket (psycopg, redis-py) or for the GIL are not
        # counted. (py-spy's other idle detection counted them as busy here: ~6 "active" threads per
        # sample in a worker using half a core.) --gil needs py-spy's default blocking mode (with
        # --nonblocking it found no GIL holder at all); 100 Hz keeps the pauses small. One tracer at a
        # time can attach, so the collapsed stacks and the flame graph are recorded one after the other.
        common = ["--pid", str(worker), "--duration", str(seconds), "--rate", "100", "--gil"]
        log(f"py-spy: recording worker {worker} for 2 x {seconds}s under {mode}-loop {workload} load")
        for fmt, path in (("raw", raw), ("flamegraph", svg)):
            spy = subprocess.run([py_spy, "record", "--format", fmt, "-o", str(path), *common],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=seconds + 60)
            if spy.returncode != 0 and fmt == "raw":
                raise RuntimeError(f"py-spy failed: {spy.stderr}")
        thread.join()
        summary = summarize_profile(raw)
        run = result_box["run"]
        s = summarize_run(run)
        cpu_ms = s["cpu_ms_per_req"]
        head = (f"py-spy profile of gunicorn worker {worker} ({kind}, {mode}-loop {workload} load, "
                f"{args.connections} connections, {seconds}s at 100 Hz, GIL-holding thread only)\n"
                f"load: {s['ok_per_s']:.0f} ok req/s, p50 {fmt_ms(s['p50'])} p95 {fmt_ms(s['p95'])} "
                f"p99 {fmt_ms(s['p99'])} ms, errors {s['errors']}; gunicorn workers' CPU per ok request: "
                f"{cpu_ms} ms (multiply a percentage by this to get CPU time per request)\n"
                f"collapsed stacks: {raw.relative_to(ROOT)}; flame graph: {svg.relative_to(ROOT)}\n\n")
        text = head + summary
        (run_dir / f"profile-{kind}-{workload}-summary.txt").write_text(text)
        print(text)
        return {"backend": kind, "worker": worker, "run": run, "summary": text, "raw": str(raw)}
    finally:
        if server:
            server.stop()
        backend.cleanup()


def reprint(path: Path, args) -> None:
    report = json.loads(path.read_text())
    cfg = report["config"]
    args.connections, args.duration = cfg["connections"], cfg["duration_s"]
    args.warmup, args.timeout = cfg["warmup_s"], cfg["timeout_s"]
    args.sweep_rate = cfg.get("sweep_rate", args.sweep_rate)
    print(f"{report['timestamp']}: {report['command']}")
    for result in report.get("backends", []):
        print_backend(result, args)
    if report.get("sweep"):
        print_sweep(report["sweep"], args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=("postgresql", "sqlite", "both"), default="both")
    parser.add_argument("--users", type=int, default=10000)
    parser.add_argument("--tasks-per-user", type=int, default=20)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--rates", default="250,500,1000,1500", help="open-loop offered rates, req/s")
    parser.add_argument("--duration", type=float, default=12, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2, help="unmeasured seconds before each run's window")
    parser.add_argument("--timeout", type=float, default=10, help="client timeout per request, seconds")
    parser.add_argument("--quick", action="store_true", help="1000 users, 5 s runs, rates 500,1000")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--token-ttl", type=int, default=3 * 3600)
    parser.add_argument("--rate-limits", choices=("raised", "production", "off"), default="raised",
                        help="raised (default): limiter on with limits no single-IP load generator hits; "
                             "production: the service's defaults; off: RATE_LIMITS_ENABLED=false")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra service environment, e.g. GUNICORN_WORKERS=3 (repeatable)")
    parser.add_argument("--servers", default="gunicorn,granian",
                        help="the servers to measure in turn, on the same database (default: both)")
    parser.add_argument("--no-peer", dest="peer", action="store_false",
                        help="leave out the FastAPI peer (bench/peer.py) the list is compared with")
    parser.add_argument("--venv", type=Path, default=ROOT / ".venv", help="the venv with gunicorn and flask")
    parser.add_argument("--source", default="worktree",
                        help="what to run: 'worktree' (the files in this checkout, default) or a git revision "
                             "such as HEAD, exported read-only with `git archive` into a temporary directory")
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                        help="before each run, wait up to SECONDS for other processes to leave the CPUs idle")
    parser.add_argument("--keep", action="store_true", help="keep the database and token files")
    parser.add_argument("--sweep", help="gunicorn variations instead of the full run, e.g. 2x8,3x8,4x8,2x16,2x8/mr=0")
    parser.add_argument("--sweep-rate", type=float, default=1000)
    parser.add_argument("--profile", type=int, metavar="SECONDS", help="py-spy one worker under mixed load")
    parser.add_argument("--profile-rate", type=float, help="open-loop rate while profiling (default: closed loop)")
    parser.add_argument("--profile-workload", choices=sorted(MIXES), default="mixed")
    parser.add_argument("--py-spy", help="path to py-spy")
    parser.add_argument("--plot-only", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--report", type=Path, metavar="RESULTS.json", help="print the tables of a saved run again")
    args = parser.parse_args()

    if args.report:
        reprint(args.report, args)
        return
    if args.plot_only:
        report = json.loads(args.plot_only.read_text())
        sys.exit(0 if plot(report, args.plot_only.with_suffix(".png")) else 1)
    if args.quick:
        args.users = min(args.users, 1000)
        args.duration, args.warmup = 5, 1
        if args.rates == parser.get_default("rates"):
            args.rates = "500,1000"
    args.rates = [float(r) for r in str(args.rates).split(",") if r.strip()]
    args.extra_env = dict(item.split("=", 1) for item in args.env)
    args.servers = [name.strip() for name in args.servers.split(",") if name.strip()]
    sys.path.insert(0, str(ROOT))
    from serve import SERVERS  # what serve.py can start

    if not args.servers or not set(args.servers) <= set(SERVERS):
        parser.error(f"--servers: one or more of {', '.join(SERVERS)}")
    if args.users < args.connections:
        log(f"warning: {args.users} users < {args.connections} connections: some connections share a user")

    def interrupted(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    # Explicit handlers: a background job may start with SIGINT ignored, and SIGTERM would
    # otherwise skip the clean-up (gunicorn, database, Redis keys, temp files).
    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)
    raise_nofile()
    build_loadgen()
    args.app_root, source_info = prepare_source(args.source)
    timestamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir = RESULTS / timestamp
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    report = {"timestamp": timestamp, "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "machine": versions(), "source": source_info,
              "config": {"users": args.users, "tasks_per_user": args.tasks_per_user,
                         "connections": args.connections, "rates": args.rates, "duration_s": args.duration,
                         "warmup_s": args.warmup, "timeout_s": args.timeout, "mix": MIXED,
                         "rate_limits": args.rate_limits, "extra_env": args.extra_env,
                         "sweep_rate": args.sweep_rate},
              "backends": []}
    json_path = RESULTS / f"{timestamp}.json"
    kinds = ["postgresql", "sqlite"] if args.backend == "both" else [args.backend]
    report["machine"]["busy_cores_before"] = quiet_check()
    try:
        run_modes(args, report, kinds, run_dir, json_path, started)
    finally:
        if args.app_root != ROOT:
            shutil.rmtree(args.app_root, ignore_errors=True)


def run_modes(args, report: dict, kinds: list[str], run_dir: Path, json_path: Path, started: float) -> None:
    if args.profile:
        report["profile"] = run_profile(args, run_dir)
        json_path = RESULTS / f"{report['timestamp']}-profile.json"
    elif args.sweep:
        report["sweep"] = run_sweep(args, run_dir)
        json_path = RESULTS / f"{report['timestamp']}-sweep.json"
    else:
        per_backend = (11 + 2 * len(args.rates)) * len(args.servers) + (len(PEER_PLAN) if args.peer else 0)
        log(f"plan: {len(kinds)} backend(s) x {per_backend} runs of {args.warmup:g}+{args.duration:g}s "
            f"(about {len(kinds) * (per_backend * (args.warmup + args.duration + 6) + 20) / 60:.1f} min; "
            f"overloaded runs drain for up to --timeout {args.timeout:g}s)")
        for kind in kinds:
            report["backends"].extend(run_backend(kind, args, run_dir))
            json_path.write_text(json.dumps(report, indent=1))
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    report["waited_for_quiet_s"] = round(WAITED[0], 1)
    json_path.write_text(json.dumps(report, indent=1))
    if report["backends"]:
        for result in report["backends"]:
            print_backend(result, args)
        print_peer_ratios(report["backends"])
        png = plot(report, json_path.with_suffix(".png"))
        print()
        print(f"results: {json_path.relative_to(ROOT)}" + (f", plot: {Path(png).relative_to(ROOT)}" if png else ""))
        print(f"raw loadgen output and gunicorn logs: {run_dir.relative_to(ROOT)}/")
    else:
        print(f"results: {json_path.relative_to(ROOT)}; raw files: {run_dir.relative_to(ROOT)}/")
    print(f"elapsed: {report['elapsed_s']:.0f}s" + (f" (of which {WAITED[0]:.0f}s waiting for other processes to "
                                                   "leave the CPUs idle)" if WAITED[0] else ""))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt as interrupt:
        log(f"interrupted ({interrupt or 'Ctrl-C'}); gunicorn, the database and the Redis keys were cleaned up")
        sys.exit(130)
