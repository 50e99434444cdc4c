"""The Prometheus metrics, created unregistered: `/metrics` collects them per scrape, from this
process or, under a multi-process server, from every worker (ARCHITECTURE.md, "Observability")."""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST

REQUESTS = Counter("taskgate_http_requests_total", "HTTP requests", ["method", "route", "status"], registry=None)
LATENCY = Histogram("taskgate_http_request_duration_seconds", "HTTP request latency", ["method", "route"],
                    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), registry=None)
TOKEN_FAILURES = Counter("taskgate_token_failures_total", "Rejected tokens", ["code"], registry=None)
REVOCATION_CHECKS = Counter("taskgate_revocation_checks_total", "Revocation checks", ["result"], registry=None)
BACKEND_ERRORS = Counter("taskgate_backend_errors_total", "Database/Redis/JWKS failures", ["backend"],
                         registry=None)
REVOCATION_REPAIRS = Counter("taskgate_revocation_repairs_total",
                             "Redis buckets repaired from the database, or the database from Redis", ["kind"],
                             registry=None)
# Labelled, so that a process that never counts one (a CLI command) writes no multiprocess file.
REVOCATIONS_LOST = Counter("taskgate_revocations_lost_total",
                           "Acknowledged revocations found missing from both Redis and the database", ["bucket"],
                           registry=None)
REDIS_EVICTING = Gauge("taskgate_redis_evicting_policy", "1 while Redis's maxmemory-policy (the label) evicts keys",
                       ["policy"], registry=None, multiprocess_mode="max")
METRICS = (REQUESTS, LATENCY, TOKEN_FAILURES, REVOCATION_CHECKS, BACKEND_ERRORS, REVOCATION_REPAIRS,
           REVOCATIONS_LOST, REDIS_EVICTING)

_labelled: dict[tuple, Any] = {}
CONTENT_TYPE = CONTENT_TYPE_LATEST


def exposition() -> bytes:
    """Prometheus text: this process's metrics, or every worker's under PROMETHEUS_MULTIPROC_DIR."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)
    else:
        for metric in METRICS:
            registry.register(metric)
    return generate_latest(registry)


def labelled(metric: Any, *labels: str) -> Any:
    """`metric.labels(*labels)`, looked up once: `labels()` is costly on the hot path."""
    key = (metric, labels)
    child = _labelled.get(key)
    if child is None:
        child = _labelled[key] = metric.labels(*labels)
    return child
