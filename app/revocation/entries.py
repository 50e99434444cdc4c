"""A revocation as the fields of its bucket's hash (app.revocation.scripts.APPLY): the denial
itself, and its log entry, from which the table can be given it back (ARCHITECTURE.md, "The data")."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import orjson

from app.revocation import layout
from app.revocation.records import Record


def _time(value: datetime | float) -> str:
    return f"{value.timestamp() if isinstance(value, datetime) else value:.6f}"


def log_entry(record: Record) -> str:
    """The record as its bucket's log holds it: its expiry, then the row (the same text for the
    same row, whichever process writes it)."""
    row = {"kind": record.kind, "target": record.target, "user_id": record.user_id, "actor": record.actor,
           "reason": record.reason, "created_at": _time(record.created_at), "expires_at": _time(record.expires_at),
           "cutoff": None if record.cutoff is None else _time(record.cutoff), "covers": record.covers,
           "client_id": record.client_id}
    return f"{_time(record.expires_at)} {orjson.dumps(row, option=orjson.OPT_SORT_KEYS).decode()}"


def _datetime(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(float(value), UTC)


def from_log_entry(entry: str, bucket: int, seq: int) -> Record:
    row = orjson.loads(entry.partition(" ")[2])
    return Record(None, row["kind"], row["target"], row["user_id"], row["actor"], row["reason"],
                  _datetime(row["created_at"]), _datetime(row["expires_at"]), _datetime(row["cutoff"]),
                  row["covers"], bucket, seq, row.get("client_id"))


def denials(record: Record) -> list[tuple[str, str, str]]:
    """The (op, field, value) entries that deny what the record revokes."""
    expiry = _time(record.expires_at)
    if record.kind == "grant":
        return [("c", layout.grant_field(record.user_id or "", record.target), f"{expiry} {_time(record.cutoff)}")]
    if record.kind == "client":
        return [("c", layout.client_field(record.target), f"{expiry} {_time(record.cutoff)}")]
    if record.kind in ("user", "sidless"):
        field = layout.cutoff_field if record.kind == "user" else layout.sidless_field
        entries = [("c", field(record.target), f"{expiry} {_time(record.cutoff)}")]
        entries += [("d", layout.covered_field(record.target, name), expiry) for name, _ in record.covers or ()]
        return entries
    if record.kind == "token":
        return [("d", layout.token_field(record.user_id or "", record.target), expiry)]
    field = layout.jti_field if record.kind == "jti" else layout.session_field
    return [("d", field(record.target), expiry)]


def apply_args(records: Iterable[Record], now: float, with_log: bool = True) -> list[Any]:
    """APPLY's entries for records of one bucket; those that can deny nothing any more are left out."""
    args: list[Any] = []
    for record in records:
        if record.expires_at.timestamp() <= now:
            continue
        for entry in denials(record):
            args.extend(entry)
        if with_log:
            args.extend(("l", layout.log_field(record.seq), log_entry(record)))
    return args
