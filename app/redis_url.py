"""Which Redis `REDIS_URL` names, parsed once when the settings are read
(ARCHITECTURE.md, "Redis"); the forms it takes: docs/DEPLOY.md, "Redis topologies"."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel", "redis+cluster", "rediss+cluster")
HOST_PORT = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]/]+)):(?P<port>\d{1,5})$")


class RedisUrlError(ValueError):
    """REDIS_URL is not one of the forms in docs/DEPLOY.md ("Redis topologies"); the message says why, in one line."""


@dataclass(frozen=True)
class RedisTarget:
    kind: str  # standalone, sentinel or cluster
    url: str = field(default="", repr=False)  # standalone: as given (redis-py parses it)
    hosts: tuple[tuple[str, int], ...] = ()
    service: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False


def _hosts(netloc: str) -> tuple[tuple[str, int], ...]:
    hosts = []
    for part in netloc.split(","):
        match = HOST_PORT.match(part.strip())
        if match is None or not 0 < int(match["port"]) < 65536:
            raise RedisUrlError(f"REDIS_URL hosts must be host:port, comma-separated; got {part.strip()!r}")
        hosts.append((match["v6"] or match["host"], int(match["port"])))
    return tuple(hosts)


def _standalone(url: str, scheme: str) -> RedisTarget:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsed for its check
    except ValueError as error:
        raise RedisUrlError(f"REDIS_URL is not a valid URL ({error})") from None
    if scheme == "unix":
        if not parts.path:
            raise RedisUrlError("REDIS_URL unix:// needs a socket path")
        return RedisTarget("standalone", url=url)
    if not parts.hostname:
        raise RedisUrlError("REDIS_URL needs a host")
    database = parts.path.lstrip("/")
    if database and not database.isdigit():
        raise RedisUrlError(f"REDIS_URL database must be a number, got {database!r}")
    return RedisTarget("standalone", url=url)


def _sentinel(segments: list[str], common: dict) -> RedisTarget:
    if not segments or len(segments) > 2:
        raise RedisUrlError("REDIS_URL redis+sentinel:// needs /service_name (and optionally /db) after the hosts")
    if len(segments) == 2 and not segments[1].isdigit():
        raise RedisUrlError(f"REDIS_URL database must be a number, got {segments[1]!r}")
    return RedisTarget("sentinel", service=segments[0], db=int(segments[1]) if len(segments) == 2 else 0, **common)


def parse_redis_url(url: str) -> RedisTarget:
    """The Redis `url` names, or a one-line RedisUrlError."""
    scheme, separator, rest = url.partition("://")
    if not separator or scheme not in SCHEMES:
        raise RedisUrlError(f"REDIS_URL must start with one of {', '.join(s + '://' for s in SCHEMES)}; "
                            f"got {scheme + '://' if separator else repr(url[:20])}")
    if scheme in ("redis", "rediss", "unix"):
        return _standalone(url, scheme)
    credentials, _, location = rest.rpartition("@")
    username, _, password = credentials.partition(":") if credentials else ("", "", "")
    netloc, _, path = location.partition("/")
    common = {"hosts": _hosts(netloc), "username": unquote(username) or None, "password": unquote(password) or None,
              "tls": scheme.startswith("rediss")}
    segments = [segment for segment in path.split("/") if segment]
    if scheme.endswith("sentinel"):
        return _sentinel(segments, common)
    if segments:
        raise RedisUrlError("REDIS_URL redis+cluster:// takes no path (a cluster has one database)")
    return RedisTarget("cluster", **common)
