"""Redis as a copy of the audit table, kept honest both ways: `verify`, `repair` and the periodic
look, `sync` (ARCHITECTURE.md, "Knowing Redis is current")."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

from app.errors import ServiceUnavailable
from app.metrics import REVOCATION_REPAIRS, REVOCATIONS_LOST, labelled
from app.redis_client import RedisClient, ScriptCall
from app.revocation import entries
from app.revocation.eviction import EvictionWatch, read_memory
from app.revocation.floors import Epochs, Floors
from app.revocation.layout import BUCKETS, STATE, Layout, log_field, rebuild_marker
from app.revocation.records import PAGE, Record, Records
from app.revocation.replies import Applied, ApplyReply, apply_reply
from app.revocation.targets import RevocationTarget

log = logging.getLogger(__name__)
LOCK_MS = 2_000  # a repair's lock lives this long unless its holder renews it (a holder may die, or
# a rollback may bring back a lock released since): a stale lock holds a bucket's requests at most this long
LOCK_WAIT_SECONDS = 0.5  # how long a request waits for another's repair before a 503
REBUILD_ATTEMPTS = 3  # a bucket lost again while it is rebuilt is rebuilt again, this often
REPAIR_THREADS = 4  # buckets repaired at once (their reads, Python and Redis overlap)
SWEEP_FIELDS = 500  # fields a sweep step looks at
SWEEP_GRACE_SECONDS = 3600  # an entry is swept this long after its expiry (clocks may disagree)
RESTORING = "The revocation list is being restored; try again shortly."


@dataclass(frozen=True)
class Lease:
    """A bucket's repair lock as its holder has it: renewed at each page of a long repair."""

    client: RedisClient
    key: str
    holder: str

    def renew(self) -> None:
        self.client.run(ScriptCall("renew", [self.key], [self.holder, LOCK_MS]))


class Replica:
    def __init__(self, client: RedisClient, layout: Layout, records: Records, floors: Floors,
                 epochs: Epochs) -> None:
        self.client, self.layout, self.records = client, layout, records
        self.floors, self.epochs = floors, epochs
        self.eviction = EvictionWatch()
        self._verifying = threading.Lock()
        self._next_sweep = 0

    # --- applying ---------------------------------------------------------------------

    def apply(self, bucket: int, records: Sequence[Record], mode: str, after: int | str = 0,
              to: int | str = 0) -> ApplyReply:
        """One APPLY (scripts.APPLY): `after` is the state the revocations follow (`ordered`), or
        the rebuild's marker (`start`, `load`, `seal`; `load` moves it to `to`)."""
        args = [mode, after, to, *entries.apply_args(records, time.time())]
        return apply_reply(self.client.run(ScriptCall("apply", [self.layout.bucket(bucket)], args)))

    def state(self, bucket: int) -> int | None:
        state = self.client.client.hget(self.layout.bucket(bucket), STATE)
        return None if state is None else int(state)

    def states(self) -> list[int | None]:
        """Every bucket's state, in one exchange (None: the bucket is lost)."""
        states = self.client.hget_many([self.layout.bucket(b) for b in range(BUCKETS)], STATE)
        return [None if state is None else int(state) for state in states]

    # --- every bucket -------------------------------------------------------------------

    def verify(self, wait: float = -1) -> list[int]:
        """Every bucket against the table: missing, behind, or ahead of it (the table came back
        older), it is repaired; then Redis is trusted up to the epoch this verification began in.
        `wait`: how long to wait for a verification under way in another thread (-1: as long as
        it takes). Returns the buckets it repaired."""
        if not self._verifying.acquire(timeout=wait):
            log.warning("a request waited for this instance's verification of Redis too long: 503",
                        extra={"fields": {"waited": wait}})
            raise ServiceUnavailable(RESTORING)
        try:
            self.client.ping()  # a connection to read with, opened before the epoch is read
            epoch = self.epochs.start()
            # Redis first, then the table: a state above the table's top is then never a race
            # (a revocation is committed before Redis hears of it).
            states = self.states()
            tops = self.records.tops()
            self.floors.raise_all(tops)
            wrong = [bucket for bucket, state in enumerate(states)
                     if state is None or not self.floors[bucket] <= state <= tops[bucket]]
            if len(wrong) > 1:
                with ThreadPoolExecutor(min(REPAIR_THREADS, len(wrong)), thread_name_prefix="repair") as pool:
                    list(pool.map(self.repair, wrong))
            elif wrong:
                self.repair(wrong[0])
            self.epochs.verified(epoch)
        finally:
            self._verifying.release()
        return wrong

    def sync(self) -> None:
        """The periodic look: Redis's states, then the table's tops (a table below a state or a
        floor came back older: given back what Redis holds), the eviction count (keys evicted:
        verify everything), one sweep step. Skipped while a verification runs."""
        if not self._verifying.acquire(blocking=False):
            return
        try:
            # Redis and the floors first, then the table: a state or a floor above a top is then
            # never a race (a revocation is committed before Redis or any floor hears of it).
            states, floors = self.states(), self.floors.snapshot()
            tops = self.records.tops()
            older = [bucket for bucket, top in enumerate(tops) if top < max(floors[bucket], states[bucket] or 0)]
            self.floors.raise_all(tops)
            if not self.client.in_process and self.eviction.changed(read_memory(self.client)):
                self.epochs.bump()
            self._sweep()
        finally:
            self._verifying.release()
        for bucket in older:
            log.error("the database holds fewer revocations than Redis or this instance has seen: it came back older",
                      extra={"fields": {"bucket": bucket}})
            self.repair(bucket)

    def _sweep(self) -> None:
        bucket, self._next_sweep = self._next_sweep, (self._next_sweep + 1) % BUCKETS
        self.client.run(ScriptCall("sweep", [self.layout.bucket(bucket)],
                                   [SWEEP_FIELDS, time.time() - SWEEP_GRACE_SECONDS]))

    # --- one bucket -----------------------------------------------------------------------

    @contextmanager
    def _locked(self, bucket: int) -> Iterator[Lease]:
        lock, holder = self.layout.repair_lock(bucket), uuid.uuid4().hex
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while not self.client.client.set(lock, holder, nx=True, px=LOCK_MS):
            if time.monotonic() > deadline:
                log.warning("a request waited for another's repair of a bucket too long: 503",
                            extra={"fields": {"bucket": bucket, "waited": LOCK_WAIT_SECONDS}})
                raise ServiceUnavailable(RESTORING)
            time.sleep(0.01)
        try:
            yield Lease(self.client, lock, holder)
        finally:
            self.client.run(ScriptCall("release", [lock], [holder]))

    def repair(self, bucket: int) -> None:
        """Bring the bucket and the table level with each other, under the bucket's repair lock:
        the table first given what only Redis holds, then Redis what only the table holds, up to
        the highest sequence known to exist."""
        with self._locked(bucket) as lease:
            state, top = self.state(bucket), self.records.top(bucket)
            if state is not None and state > top:
                self._write_back(bucket, top, state, lease)
                top = state
            if state is None:
                self._rebuild(bucket, top, lease)
                state = top
            target = max(top, self.floors[bucket])
            if state < target:
                self._catch_up(bucket, state, target, lease)
                if target > top:
                    self._lost(bucket, top, target)
            self.floors.raise_to(bucket, max(state, target))

    def _write_back(self, bucket: int, top: int, state: int, lease: Lease) -> None:
        """The table lost revocations (top, state] that Redis holds: written back from the bucket's log."""
        restored = 0
        for first in range(top + 1, state + 1, PAGE):
            seqs = range(first, min(first + PAGE, state + 1))
            logged = self.client.client.hmget(self.layout.bucket(bucket), [log_field(seq) for seq in seqs])
            restored += self.records.restore([entries.from_log_entry(entry, bucket, seq)
                                              for seq, entry in zip(seqs, logged, strict=True) if entry is not None])
            lease.renew()
        labelled(REVOCATION_REPAIRS, "written_back").inc()
        log.error("the database was missing revocations Redis holds: written back to it", extra={"fields": {
            "bucket": bucket, "from": top + 1, "to": state, "restored": restored}})

    def _rebuild(self, bucket: int, top: int, lease: Lease) -> None:
        """Redis lost the bucket: every live revocation up to `top` loaded, then its state sealed
        at `top`; begun again if the bucket is lost meanwhile (memory full and evicting, say)."""
        started = time.monotonic()
        for _ in range(REBUILD_ATTEMPTS):
            loaded = self._load(bucket, top, lease)
            if loaded is not None:
                break
            log.warning("a bucket was lost again while it was rebuilt: begun again", extra={"fields": {
                "bucket": bucket}})
        else:
            raise ServiceUnavailable(RESTORING)
        labelled(REVOCATION_REPAIRS, "rebuilt").inc()
        log.log(logging.WARNING if top else logging.INFO, "revocations of a bucket restored from the database",
                extra={"fields": {
            "bucket": bucket, "entries": loaded, "sequence": top, "seconds": round(time.monotonic() - started, 3)}})

    def _load(self, bucket: int, top: int, lease: Lease) -> int | None:
        """One rebuild (scripts.APPLY, modes start, load, seal): the entries loaded, or None
        when the bucket did not stay whole until its seal."""
        loaded, written = 0, 0
        for page in self.records.pages(bucket, 0, top, live_only=True):
            if not self._write_page(bucket, page, lease.holder, written):
                return None
            loaded, written = loaded + len(page), written + 1
            lease.renew()
        if written == 0:  # nothing live to load: the holder named all the same
            self._write_page(bucket, (), lease.holder, written)
            written = 1
        sealed = self.apply(bucket, (), "seal", rebuild_marker(lease.holder, written), top)
        return loaded if sealed.outcome is Applied.APPLIED else None

    def _write_page(self, bucket: int, page: Sequence[Record], holder: str, written: int) -> bool:
        """A rebuild's next page, if the bucket still holds every page before it."""
        if written == 0:
            reply = self.apply(bucket, page, "start", rebuild_marker(holder, 1))
        else:
            reply = self.apply(bucket, page, "load", rebuild_marker(holder, written),
                               rebuild_marker(holder, written + 1))
        return reply.outcome is Applied.APPLIED

    def _catch_up(self, bucket: int, state: int, target: int, lease: Lease) -> None:
        """Redis is behind: what the table holds in (state, target] applied in order."""
        while state < target:
            page = next(self.records.pages(bucket, state, target, live_only=False), [])
            to = page[-1].seq if len(page) == PAGE else target
            reply = self.apply(bucket, page, "ordered", state, to)
            if reply.displaced is not None:
                self.readmit(bucket, reply.displaced)
            if reply.outcome is Applied.MISSING:  # lost meanwhile: start again from the table
                top = self.records.top(bucket)
                self._rebuild(bucket, top, lease)
                state = top
            else:
                state = reply.state if reply.state is not None else to
            lease.renew()
        labelled(REVOCATION_REPAIRS, "caught_up").inc()
        log.warning("revocations of a bucket caught up from the database", extra={"fields": {
            "bucket": bucket, "sequence": target}})

    def _lost(self, bucket: int, top: int, target: int) -> None:
        labelled(REVOCATIONS_LOST, str(bucket)).inc(target - top)
        log.critical("acknowledged revocations are missing from both Redis and the database: the tokens they "
                     "covered may be accepted again (docs/DEPLOY.md: synchronous replication and AOF)",
                     extra={"fields": {"bucket": bucket, "from": top + 1, "to": target}})

    def readmit(self, bucket: int, displaced: str) -> None:
        """Redis holds, under a sequence the table gave to another revocation, one the table lost:
        it is recorded again under a new sequence (and applied, so Redis's log has it too)."""
        record = entries.from_log_entry(displaced, bucket, 0)
        target = RevocationTarget(record.kind, record.target, record.expires_at.timestamp(), record.user_id,
                                  None if record.cutoff is None else record.cutoff.timestamp(),
                                  tuple((name, float(last)) for name, last in record.covers or ()), record.client_id)
        known = max(self.floors[bucket], self.state(bucket) or 0)
        again = self.records.insert(target, record.actor, record.reason, at_least=known)
        self.apply(bucket, [again], "ordered", again.seq - 1, again.seq)
        self.floors.raise_to(bucket, again.seq)
        log.error("a revocation Redis held under a sequence the database reused was recorded again",
                  extra={"fields": {"bucket": bucket, "sequence": again.seq}})
