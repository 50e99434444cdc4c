"""The revocation core's parts, each on its own (ARCHITECTURE.md, "The revocation model"), on the
in-process store (fakeredis) and SQLite: floors that only rise, sequences never handed out twice,
a table given back what Redis holds, losses in both stores reported, evictions noticed."""

from __future__ import annotations

import logging
import sys
import threading
import time
from datetime import UTC, datetime

import pytest
from redis.exceptions import ResponseError

from app.errors import ServiceUnavailable
from app.metrics import REVOCATIONS_LOST
from app.redis_client import ScriptCall
from app.revocation import entries
from app.revocation import records as records_module
from app.revocation.eviction import EvictingRedis, EvictionWatch, Memory, refuse_evicting
from app.revocation.floors import Epochs, Floors
from app.revocation.layout import STATE, bucket_of, jti_field
from app.revocation.records import Record
from app.revocation.replica import LOCK_MS, Replica
from app.revocation.replies import Applied, apply_reply, check_reply, user_cutoff_reply
from app.revocation.targets import RevocationTarget


def jti_target(jti: str, seconds: float = 600) -> RevocationTarget:
    return RevocationTarget("jti", jti, time.time() + seconds)


def table_loses(store, *seqs_of: Record) -> None:
    """The table loses these rows, as a lost replication tail would."""
    from sqlalchemy import delete

    from app.models import Revocation

    for record in seqs_of:
        store.records.database.rows(delete(Revocation).where(Revocation.id == record.id).returning(Revocation.id))


# --- floors and epochs --------------------------------------------------------------------


def test_a_floor_only_ever_rises_whatever_threads_race_to_raise_it():
    floors, switching, done = Floors(), sys.getswitchinterval(), threading.Event()
    drops: list[tuple[int, int]] = []

    def raise_many(start: int) -> None:
        for seq in range(start, 20_000, 8):
            floors.raise_to(3, seq)

    def watch() -> None:  # a lost update shows as a floor going down
        last = 0
        while not done.is_set():
            if (now := floors[3]) < last:
                drops.append((last, now))
            last = max(last, now)

    sys.setswitchinterval(1e-6)  # a thread switch between any two bytecodes
    try:
        watcher = threading.Thread(target=watch)
        watcher.start()
        threads = [threading.Thread(target=raise_many, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        done.set()
        watcher.join()
    finally:
        sys.setswitchinterval(switching)
    assert not drops and floors[3] == 19_999, (drops[:5], floors.snapshot())
    floors.raise_to(3, 5)
    assert floors[3] == 19_999


def test_redis_is_trusted_only_once_verified_after_the_last_event_that_could_replace_it():
    epochs = Epochs()
    assert not epochs.trusted  # nothing verified yet
    started = epochs.start()
    epochs.bump()  # a connection opened while the verification ran
    epochs.verified(started)
    assert not epochs.trusted
    epochs.verified(epochs.start())
    assert epochs.trusted


# --- replies and entries ------------------------------------------------------------------


def test_each_script_reply_is_read_into_a_typed_value():
    assert check_reply([1, 1, 7, "4", "9"]).states == (4, 9)
    assert check_reply([1, 1, 7, "4", "9"]).revoked and check_reply([1, 0, 7, "4"]).count == 7
    assert check_reply([0, 2]).missing == 1
    assert apply_reply([2, "3"]).outcome is Applied.BEHIND and apply_reply([2, "3"]).state == 3
    assert apply_reply([1, ""]).outcome is Applied.MISSING and apply_reply([1, ""]).state is None
    assert apply_reply([0, "5", "l:5", "entry"]).displaced == "entry"
    assert user_cutoff_reply(["10.5", "jti:a", "20.0"]).covers == (("jti:a", 20.0),)


def test_a_log_entry_gives_back_the_row_it_was_made_from():
    now = datetime.now(UTC).replace(microsecond=123456)
    record = Record(7, "user", "alice", "alice", "admin:root", "stolen laptop", now, now, now,
                    [["jti:x", 1234.5]], 3, 42)
    again = entries.from_log_entry(entries.log_entry(record), 3, 42)
    assert again == Record(None, *[getattr(record, name) for name in ("kind", "target", "user_id", "actor",
                                   "reason", "created_at", "expires_at", "cutoff", "covers", "bucket", "seq")])
    assert entries.log_entry(record) == entries.log_entry(again)  # the same text whoever writes it


# --- sequences and the table ----------------------------------------------------------------


def test_a_sequence_known_elsewhere_is_never_handed_out_again(store):
    first = store.records.insert(jti_target("a"), "test", None)
    again = store.records.insert(RevocationTarget("jti", "a2", time.time() + 60), "test", None,
                                 at_least=first.seq + 5)
    assert again.seq == first.seq + 6


def test_a_table_that_lost_its_newest_rows_is_given_them_back_and_reuses_no_sequence(store, caplog):
    lost = store.revoke(jti_target("lost"), "user:alice", "logout")
    table_loses(store, lost)
    assert store.records.top(lost.bucket) == lost.seq - 1
    caplog.set_level(logging.ERROR)
    neighbour = next(f"after-{n}" for n in range(1000) if bucket_of(f"after-{n}") == lost.bucket)
    after = store.revoke(jti_target(neighbour), "test", None)  # seen where it shows: the next revocation
    rows = {row.seq: row for page in store.records.pages(lost.bucket, 0, 10**9, False) for row in page}
    assert rows[lost.seq].target == "lost" and rows[lost.seq].actor == "user:alice"  # at its own sequence
    assert after.seq == lost.seq + 1
    assert "the database was missing revocations Redis holds" in caplog.text


def test_the_periodic_look_at_the_table_gives_it_back_what_redis_holds(store):
    lost = store.revoke(jti_target("synced"), "test", None)
    table_loses(store, lost)
    store.replica.sync()
    assert store.records.top(lost.bucket) == lost.seq


def test_an_instance_that_never_heard_of_a_revocation_still_gives_the_table_back_what_redis_holds(store):
    """Found by a long run of the model: the revoking instance stops, the table loses the row,
    and the one left had not heard of it; Redis's state shows the table came back older."""
    lost = store.revoke(jti_target("heard-elsewhere"), "test", None)
    table_loses(store, lost)
    another_process = Replica(store.client, store.layout, store.records, Floors(), Epochs())
    another_process.sync()
    assert store.records.top(lost.bucket) == lost.seq


def test_a_revocation_committed_while_the_periodic_look_reads_the_table_is_not_taken_for_a_loss(
        store, monkeypatch, caplog):
    """The look reads this instance's floors before the table: a revocation committed in between
    raises a floor above the top it read, and is no sign that the table came back older."""
    read_tops = store.records.tops

    def tops_then_a_revocation() -> list[int]:
        tops = read_tops()
        store.revoke(jti_target("meanwhile"), "test", None)  # committed after the read, floor raised
        return tops

    monkeypatch.setattr(store.records, "tops", tops_then_a_revocation)
    caplog.set_level(logging.ERROR)
    store.replica.sync()
    assert "came back older" not in caplog.text, caplog.text


def test_revocations_lost_by_both_stores_are_reported_loudly(store, caplog):
    lost_before = sum(sample.value for metric in REVOCATIONS_LOST.collect() for sample in metric.samples
                      if sample.name.endswith("_total"))
    lost = store.revoke(jti_target("gone"), "test", None)
    table_loses(store, lost)
    store.client.client.flushall()  # Redis too, before anything could write it back
    caplog.set_level(logging.CRITICAL)
    store.verify()
    assert "missing from both Redis and the database" in caplog.text
    lost_after = sum(sample.value for metric in REVOCATIONS_LOST.collect() for sample in metric.samples
                     if sample.name.endswith("_total"))
    assert lost_after - lost_before == 1
    assert int(store.client.client.hget(store.layout.bucket(lost.bucket), STATE)) >= lost.seq


def test_a_sequence_redis_holds_for_another_revocation_records_both_again(store):
    """The table handed out a sequence Redis holds for a revocation the table lost (a stale read
    raced a failover): both end up in the table, each under a sequence of its own."""
    kept = store.revoke(jti_target("redis-only"), "test", "first")
    other = next(f"clash-{n}" for n in range(1000) if bucket_of(f"clash-{n}") == kept.bucket)
    table_loses(store, kept)
    clash = store.records.insert(jti_target(other), "test", "second", at_least=kept.seq - 1)
    assert clash.seq == kept.seq
    store._apply(clash, jti_target(other))  # noqa: SLF001 - the revocation's step after its INSERT
    targets = [row.target for page in store.records.pages(kept.bucket, 0, 10**9, False) for row in page]
    assert "redis-only" in targets and targets.count(other) == 2, targets


# --- repairs ------------------------------------------------------------------------------------


def in_one_bucket(prefix: str, count: int) -> list[str]:
    """`count` names that share the bucket of f"{prefix}-0"."""
    names = (f"{prefix}-{n}" for n in range(10_000))
    return [name for name in names if bucket_of(name) == bucket_of(f"{prefix}-0")][:count]


def lose_state(store, bucket: int) -> None:
    """The bucket's state goes, its entries stay: the next repair rebuilds it from the table."""
    store.client.client.hdel(store.layout.bucket(bucket), STATE)


def test_a_repair_lock_left_behind_holds_its_bucket_for_seconds_not_a_minute(store, caplog):
    """A holder that died mid-repair, or a rollback that brought back a lock released since:
    the bucket's requests get 503 (fail closed) for one lease (LOCK_MS), then the repair goes ahead."""
    record = store.revoke(jti_target("leased"), "test", None)
    lose_state(store, record.bucket)
    dead_holder = store.replica._locked(record.bucket)  # noqa: SLF001 - a holder that never comes back
    dead_holder.__enter__()
    caplog.set_level(logging.WARNING)
    with pytest.raises(ServiceUnavailable):
        store.replica.repair(record.bucket)
    assert "waited for another's repair of a bucket too long" in caplog.text
    left_at, repaired_at = time.monotonic(), None
    while repaired_at is None and time.monotonic() - left_at < 5:
        try:
            store.replica.repair(record.bucket)
            repaired_at = time.monotonic()
        except ServiceUnavailable:
            continue
    dead_holder.__exit__(None, None, None)  # its release, long after: the lock is another's, or gone
    assert repaired_at is not None and repaired_at - left_at <= 3, "the bucket stayed locked more than 3 s"
    assert int(store.client.client.hget(store.layout.bucket(record.bucket), STATE)) == record.seq


def test_a_long_repair_renews_its_lock_at_every_page(store, monkeypatch):
    records = [store.revoke(jti_target(jti), "test", None) for jti in in_one_bucket("page", 6)]
    first = records[0]
    lose_state(store, first.bucket)
    monkeypatch.setattr(records_module, "PAGE", 2)  # 6 rows: three pages
    calls: list[ScriptCall] = []
    run = store.client.run
    monkeypatch.setattr(store.client, "run", lambda call: calls.append(call) or run(call))
    store.replica.repair(first.bucket)
    renewals = [call for call in calls if call.script == "renew"]
    assert len(renewals) == 3, [call.script for call in calls]
    assert all(call.args[1] == LOCK_MS for call in renewals), renewals


def test_a_bucket_lost_in_the_middle_of_its_rebuild_is_never_sealed_without_its_denials(store, monkeypatch,
                                                                                         caplog):
    jtis = in_one_bucket("rebuilt", 6)
    bucket = bucket_of(jtis[0])
    for jti in jtis:
        store.revoke(jti_target(jti), "test", None)
    lose_state(store, bucket)
    monkeypatch.setattr(records_module, "PAGE", 2)  # three pages
    evict_once, run = iter([True]), store.client.run

    def run_then_evict(call: ScriptCall):
        reply = run(call)
        if call.script == "apply" and call.args[0] in ("start", "load") and next(evict_once, False):
            store.client.client.delete(store.layout.bucket(bucket))  # memory full: the whole hash goes
        return reply

    monkeypatch.setattr(store.client, "run", run_then_evict)
    caplog.set_level(logging.WARNING)
    store.replica.repair(bucket)
    held = set(store.client.client.hkeys(store.layout.bucket(bucket)))
    assert {jti_field(jti) for jti in jtis} <= held, sorted(held)
    assert "a bucket was lost again while it was rebuilt" in caplog.text


def test_a_closed_store_stops_retrying_the_revocations_redis_refused(store, monkeypatch):
    """A revocation committed but refused by Redis is retried in the background; an app being
    discarded (its store closed) writes nothing more."""
    run = store.client.run

    def refuse_applies(call: ScriptCall):
        if call.script == "apply":
            raise ResponseError("OOM command not allowed when used memory > 'maxmemory'")
        return run(call)

    monkeypatch.setattr(store.client, "run", refuse_applies)
    with pytest.raises(ServiceUnavailable):
        store.revoke(jti_target("refused"), "test", None)
    assert [t for t in threading.enumerate() if t.name == "repair-soon"], "no retry started"
    store.close()
    assert not [t for t in threading.enumerate() if t.name == "repair-soon"], "a retry outlived its store"


# --- eviction ---------------------------------------------------------------------------------


def test_an_evicting_policy_is_refused_and_evictions_seen_at_run_time_ask_for_verification(caplog):
    with pytest.raises(EvictingRedis, match="volatile-lru: revocations need noeviction"):
        refuse_evicting(Memory(("noeviction", "volatile-lru"), 0))
    refuse_evicting(Memory(("noeviction",), 0))
    watch = EvictionWatch()
    assert not watch.changed(Memory(("noeviction",), 0))
    caplog.set_level(logging.ERROR)
    assert not watch.changed(Memory(("allkeys-lru",), 0))  # switched at run time: said loudly
    assert "allkeys-lru" in caplog.text
    assert watch.changed(Memory(("allkeys-lru",), 12))  # keys evicted: every bucket verified


def test_an_evicted_bucket_takes_its_state_with_it_so_the_next_check_restores_it(client, store, make_token):
    from tests.conftest import bearer

    token = make_token("alice")
    assert client.post("/api/v1/auth/logout", headers=bearer(token)).status_code == 204
    for bucket in range(16):  # what eviction does: whole keys go, never one field of a hash
        store.client.client.delete(store.layout.bucket(bucket))
    assert client.get("/api/v1/auth/me", headers=bearer(token)).get_json()["code"] == "token_revoked"


def test_a_bucket_rolled_back_in_the_middle_of_its_rebuild_is_never_sealed_without_its_denials(
        store, monkeypatch, caplog):
    """Redis goes back to a snapshot taken after the first page, once the second is written, with
    its connections kept (a proxy hiding a failover): the seal finds the pages missing."""
    jtis = in_one_bucket("rolled", 6)
    bucket = bucket_of(jtis[0])
    for jti in jtis:
        store.revoke(jti_target(jti), "test", None)
    key, redis, run = store.layout.bucket(bucket), store.client.client, store.client.run
    redis.delete(key)  # lost, denials and all: only the rebuild brings them back
    monkeypatch.setattr(records_module, "PAGE", 2)  # three pages
    after_each_page: list[dict[str, str]] = []

    def run_then_roll_back(call: ScriptCall):
        reply = run(call)
        if call.script == "apply" and call.args[0] in ("start", "load"):
            after_each_page.append(redis.hgetall(key))
            if len(after_each_page) == 2:  # once, after the second page: back to after the first
                redis.delete(key)
                redis.hset(key, mapping=after_each_page[0])
        return reply

    monkeypatch.setattr(store.client, "run", run_then_roll_back)
    caplog.set_level(logging.WARNING)
    store.replica.repair(bucket)
    held = set(redis.hkeys(key))
    assert {jti_field(jti) for jti in jtis} <= held, sorted(held)
    assert "a bucket was lost again while it was rebuilt" in caplog.text
