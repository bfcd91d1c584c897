"""A job run: read -> map -> validate -> protect -> diff -> deliver -> write -> audit.

Every batch the connector yields is mapped and validated row by row (bad rows go to quarantine),
keyed and hashed, compared with the stored rows in one SELECT, delivered to the job's targets, and
then applied to the store together with the cursor, the run's counts and its audit entry in ONE
transaction. Targets are written *before* that commit: a run killed in between delivers the batch
again next time (targets take idempotent upserts) instead of never.

Unchanged rows skip all of that: each native row's keyed fingerprint (protect.RowFingerprints:
under a key derived from the blind_index key, the job's dataset, source, mapping name and version,
plugin and gateway versions, stored fields) is looked up first; a row whose fingerprint a present
record carries was mapped to that record before, and would be again, so it is unchanged without
being mapped, validated, keyed, hashed or sealed. A connector that gives its rows' source bytes
(``Batch.raw``: the csv connector) has those fingerprinted instead, and its rows are built only
for the fingerprints not found; the look-up reads the stored rows that follow the last match, in
store order, as one window. Every other row takes the full path; a row found
unchanged there gets its new fingerprint stored (nothing else of the record changes, so the change
feed sees nothing). A removed record loses its fingerprint, so a row that comes back is updated.
Replays and ``--full`` runs map every row (``--full`` is the way to re-map after changing code
that no version number records).

Snapshot mode: rows of the source that the run did not see are marked ``removed`` at the end
(never deleted). "Seen" is an in-memory array indexed by the store row id (4 bytes per row id, the
batch number that saw it), persisted per committed batch as a small blob so that a resumed
snapshot neither removes rows its dead predecessor saw nor misses a duplicate across the two.
Unchanged rows are therefore never written: re-reading an unchanged export costs SELECTs only.

Duplicates: the first row with a record key wins; a later row with the same key in the same run
is quarantined with reason ``duplicate``, naming the first row's position (its batch's range
when the first was in an earlier batch). A fingerprint match counts as that record's key: a later
copy of a row is a duplicate, and an earlier row that maps to the key wins over a later one that
matched by fingerprint.

Speed (benchmarks/bench_ingest.py): the hot statements go through the driver (sync_store.py), the
sensitive fields of a batch are sealed per field in one call, one connection serves every batch of
a run (a warm page cache), and full garbage collections leave the pre-existing objects alone
while batches stream (``_quiet_gc``). A first ingest into SQLite is a bulk load (``_bulk_load``:
the table's indexes are built once at its end), and one from a local file is read, mapped and
keyed in a forked reading worker while this process seals and writes (gateway/sync_worker.py).
"""

from __future__ import annotations

import bisect
import contextlib
import datetime as dt
import gc
import itertools
import json
import logging
import pickle
import random
import re
import threading
import time
import uuid
import zlib
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from . import audit, sync_worker
from .connectors import Batch, LazyRows, Row
from .errors import ConfigError, GatewayError, SourceError, TransientSourceError
from .protect import KeyProblem, RecordProtector, RowFingerprints
from .store.jobs import (
    JobCursor,
    QuarantineRow,
    Run,
    SnapshotSeen,
    acquire_lease,
    new_holder,
    release_lease,
    renew_lease,
    utcnow,
)
from .store.records import DATASET_MODELS
from .sync_store import DatasetTable, Found
from .sync_worker import Prepared, Rows

if TYPE_CHECKING:
    from sqlalchemy import Connection, Table

    from .config import JobSettings
    from .connectors import Connector
    from .site import Site

log = logging.getLogger(__name__)

LEASE_TTL_S = 60.0  # a crashed holder's lease frees itself after this long (another host)
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0
REMOVAL_SCAN_CHUNK = 20_000
ANALYZE_MIN_ROWS = 10_000  # PostgreSQL: rows inserted before the table's statistics are refreshed
WINDOW_BACKOFF = 8  # batches looked up without a window after one the window served badly


class SyncFailed(GatewayError):
    """The run was recorded as failed; the message is its cause, on one line."""

    exit_code = 1


class JobBusy(GatewayError):
    """Another process holds the job's lease."""

    exit_code = 1


# -- the run summary --------------------------------------------------------------------------------


@dataclass
class RunSummary:
    """What a run did. ``read == inserted + updated + unchanged + quarantined`` always; ``removed``
    (snapshot rows no longer in the source) is reported beside them."""

    job: str
    mode: str
    run_id: int | None = None
    kind: str = "sync"
    status: str = "running"
    dry_run: bool = False
    read: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    quarantined: int = 0
    removed: int = 0
    delivered: int = 0
    batches: int = 0
    duration_s: float = 0.0
    mapping_name: str | None = None
    mapping_version: str | None = None
    snapshot_id: int | None = None
    resumed_from: int | None = None
    error: str | None = None
    total: int | None = None  # rows the source said it holds, when it can tell

    @property
    def adds_up(self) -> bool:
        return self.read == self.inserted + self.updated + self.unchanged + self.quarantined

    def counts(self) -> dict[str, int]:
        return {
            "read": self.read,
            "inserted": self.inserted,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "quarantined": self.quarantined,
            "removed": self.removed,
            "delivered": self.delivered,
        }

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        rate = f", {self.read / self.duration_s:,.0f} rows/s" if self.duration_s > 0 else ""
        head = f"{self.job}: {'dry run: ' if self.dry_run else ''}{self.status}"
        if self.run_id is not None:
            head += f" (run {self.run_id}"
            head += f", resumes run {self.resumed_from})" if self.resumed_from else ")"
        return (
            f"{head}: read {self.read} = inserted {self.inserted} + updated {self.updated} + "
            f"unchanged {self.unchanged} + quarantined {self.quarantined}; removed {self.removed}; "
            f"delivered {self.delivered}; {self.duration_s:.1f} s{rate}"
        )


class Progress(Protocol):
    """What the run reports to a progress display (a rich bar on a terminal, log lines otherwise)."""

    def start(self, summary: RunSummary) -> None: ...

    def advance(self, summary: RunSummary) -> None: ...

    def finish(self, summary: RunSummary) -> None: ...


# -- the job, resolved from the config -----------------------------------------------------------


@dataclass
class Target:
    system: str
    connector: Connector
    mapper: Any  # gateway.mapping.OutboundMapper


@dataclass
class ResolvedJob:
    settings: JobSettings
    source: str
    dataset: str
    mapper: Any  # gateway.mapping.Mapper
    protector: RecordProtector
    table: Table
    targets: list[Target] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.settings.name


def _mapping_dirs(site: Site) -> list[Any]:
    return [site.path("mappings")]


def load_job_mapping(site: Site, source: str, dataset: str, spec: str | None) -> Any:
    """The inbound mapper of a job: ``spec`` (the job's ``mapping``), else the system's, else the
    system plugin's default for the dataset; the site's copy in mappings/ wins over the shipped one."""
    from .mapping import load_for
    from .plugins import systems

    system = site.settings.systems[source]
    spec = spec or system.mapping
    if spec is None:
        system_spec = systems(site.plugins).get(system.plugin)
        if system_spec is None or dataset not in system_spec.datasets:
            raise ConfigError(
                f"jobs: system {source!r} (plugin {system.plugin!r}) has no default mapping for "
                f"dataset {dataset!r}: set `mapping` on the job or the system"
            )
        spec = system_spec.datasets[dataset]
    return load_for(spec, site.plugins, base_dirs=_mapping_dirs(site))


def _job_dataset(site: Site, job: JobSettings) -> str:
    from .plugins import systems

    if job.dataset:
        return job.dataset
    system = site.settings.systems[job.source]
    if system.dataset:
        return system.dataset
    spec = systems(site.plugins).get(system.plugin)
    if spec is not None and len(spec.datasets) == 1:
        return next(iter(spec.datasets))
    raise ConfigError(
        f"jobs.{job.name}.dataset: required (system {job.source!r} has several datasets)"
    )


def outbound_spec(site: Site, target: str, dataset: str) -> str:
    """The outbound mapping for ``dataset`` into ``target``: ``<target plugin>/<dataset>.out``."""
    return f"{site.settings.systems[target].plugin}/{dataset}.out"


def resolve_job(site: Site, job_name: str, *, with_targets: bool = True) -> ResolvedJob:
    """The job's settings, source, dataset, mapper, store table and targets (ConfigError if wrong)."""
    from .mapping import load_for
    from .plugins import make_connector

    job = site.settings.jobs.get(job_name)
    if job is None:
        known = ", ".join(sorted(site.settings.jobs)) or "none configured"
        raise ConfigError(f"jobs.{job_name}: no such job in [jobs] (known: {known})")
    dataset = _job_dataset(site, job)
    mapper = load_job_mapping(site, job.source, dataset, job.mapping)
    if getattr(mapper, "dataset", dataset) != dataset:
        raise ConfigError(
            f"jobs.{job_name}.mapping: mapping {mapper.name!r} is for dataset {mapper.dataset!r}, "
            f"not {dataset!r}"
        )
    model = DATASET_MODELS[dataset]
    table = model.__table__
    protector = RecordProtector(
        site.protector,
        dataset,
        [c.name for c in table.columns],
        getattr(mapper, "sensitivity", {}),
        getattr(mapper, "record_key_fields", None) or ("subject_key",),
    )
    targets: list[Target] = []
    if with_targets:
        for name in job.targets:
            outbound = load_for(
                outbound_spec(site, name, dataset), site.plugins, base_dirs=_mapping_dirs(site)
            )
            targets.append(Target(name, make_connector(site, name), outbound))
    return ResolvedJob(job, job.source, dataset, mapper, protector, table, targets)


# -- the job's lease ------------------------------------------------------------------------------


class HeldLease:
    """The job's lease while this process runs it, renewed by a heartbeat thread.

    ``lost`` is set when a renewal finds the lease taken (it expired, e.g. the database was
    unreachable longer than the TTL): the run then stops after its current batch.
    """

    def __init__(self, site: Site, job: str, holder: str | None = None, ttl_s: float = LEASE_TTL_S):
        self.site, self.job, self.ttl_s = site, job, ttl_s
        self.holder = holder or new_holder()
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> bool:
        with self.site.begin() as session:
            if not acquire_lease(session, self.job, self.holder, self.ttl_s):
                return False
        self._thread = threading.Thread(target=self._beat, name=f"lease-{self.job}", daemon=True)
        self._thread.start()
        return True

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                with self.site.begin() as session:
                    if not renew_lease(session, self.job, self.holder, self.ttl_s):
                        self.lost.set()
                        return
            except SQLAlchemyError as exc:  # the next beat tries again; expiry decides
                log.warning("job %s: lease heartbeat failed: %s", self.job, _first_line(exc))

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            with self.site.begin() as session:
                release_lease(session, self.job, self.holder)
        except SQLAlchemyError as exc:  # it expires by itself
            log.warning("job %s: could not release the lease: %s", self.job, _first_line(exc))

    def __enter__(self) -> HeldLease:
        if not self.acquire():
            raise JobBusy(f"job {self.job} is being run by another process; try again when it ends")
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# -- rows seen in this run ----------------------------------------------------------------------


class SeenIds:
    """Store row ids seen in this run -> the (1-based) batch number that saw them.

    An ``array('I')`` indexed by row id: 4 bytes per id up to the table's highest id, whatever the
    input holds (1M rows: 4 MB), instead of a set of keys that would grow with every row read.
    """

    def __init__(self) -> None:
        self._batch = array("I")
        self.count = 0

    def batch_of(self, row_id: int) -> int:
        return self._batch[row_id] if row_id < len(self._batch) else 0

    def _cover(self, top: int) -> None:
        if top >= len(self._batch):
            grow = max(top + 1, len(self._batch) * 2) - len(self._batch)
            self._batch.frombytes(bytes(4 * grow))

    def any_seen(self, row_ids: Sequence[int]) -> bool:
        """Whether any of ``row_ids`` was seen (one pass in C, no Python per id)."""
        if not row_ids or not self.count:
            return False
        self._cover(max(row_ids))
        return any(map(self._batch.__getitem__, row_ids))

    def mark(self, row_ids: Sequence[int], batch_no: int) -> None:
        if not row_ids:
            return
        ids = set(row_ids)
        low, top = min(ids), max(ids)
        self._cover(top)
        b = self._batch
        self.count += len(ids) - sum(map(bool, map(b.__getitem__, ids)))
        if top - low + 1 == len(ids):  # consecutive ids (a snapshot read in store order)
            b[low : top + 1] = array("I", [batch_no]) * len(ids)
        else:
            for rid in ids:
                b[rid] = batch_no

    @staticmethod
    def pack(row_ids: Sequence[int]) -> bytes:
        return zlib.compress(array("Q", row_ids).tobytes(), 1)

    @staticmethod
    def unpack(blob: bytes) -> array:
        return array("Q", zlib.decompress(blob))


# -- the runner ----------------------------------------------------------------------------------


@dataclass
class _Q:
    """A row bound for quarantine."""

    row: Row
    stage: str
    field: str | None
    reason: str
    message: str


@dataclass(slots=True)
class _Mapped:
    """What mapping a batch's rows gave (``JobRunner._map_rows``)."""

    # (index in the batch, row, stage, field, reason, message) of rows bound for quarantine
    quarantine: list[tuple[int, Row, str, str | None, str, str]] = field(default_factory=list)
    # record key -> (index, row, record, subject key, content hash, fingerprint), first row only
    pending: dict[str, tuple[int, Row, dict[str, Any], str, str, bytes | None]] = field(
        default_factory=dict
    )
    keep: list[str] = field(default_factory=list)  # keys of quarantined rows whose stored row stays


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__


def _no_long_numbers(text: str) -> str:
    """An error text for the audit log, which refuses anything shaped like an ID number."""
    return re.sub(r"\d{15,}[\dXx]?", "[number]", text)


def _errors_message(errors: Sequence[Any]) -> str:
    return "; ".join(f"{e.field}: {e.message}" for e in errors)


# The hash of a record key in a bulk load's temporary table (a 64-bit int; tests replace it to
# make keys collide).
_key_hash: Callable[[str], int] = hash

_gc_lock = threading.Lock()
_gc_users = 0
_gc_saved: tuple[int, ...] = ()


@contextlib.contextmanager
def _quiet_gc(young: int = 10_000) -> Iterator[None]:
    """Less garbage-collector work while batches stream through: the objects that exist before
    (modules, the ORM's metadata, the site) are frozen out of full collections, and the youngest
    generation is collected every ``young`` allocations instead of 700. Batches make no cycles
    worth chasing sooner; a full collection walking every long-lived object costs a quarter of
    an unchanged snapshot's time. Process-wide while any run (thread) is inside; the first in
    sets it, the last out restores it."""
    global _gc_users, _gc_saved
    with _gc_lock:
        if _gc_users == 0:
            _gc_saved = gc.get_threshold()
            gc.freeze()
            gc.set_threshold(max(_gc_saved[0], young), *_gc_saved[1:])
        _gc_users += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_users -= 1
            if _gc_users == 0:
                gc.set_threshold(*_gc_saved)
                gc.unfreeze()


def _rows_at(rows: Sequence[Row], indexes: Sequence[int]) -> Sequence[Row]:
    """The rows at ``indexes`` (ascending); LazyRows build them together."""
    if isinstance(indexes, range) and len(indexes) == len(rows):
        return rows
    if isinstance(rows, LazyRows):
        return rows.take(indexes)
    return [rows[i] for i in indexes]


def _aligned(blob: bytes, fingerprints: Sequence[bytes | None], size: int) -> int:
    """Where ``fingerprints`` (none None) appear one after the other in ``blob`` (``size`` bytes
    each), as a row index into it; -1 if they do not."""
    if None in fingerprints:
        return -1
    joined = b"".join(fingerprints)  # type: ignore[arg-type]
    at = blob.find(joined[:size])
    while at >= 0 and at % size:
        at = blob.find(joined[:size], at + 1)
    if at < 0 or blob[at : at + len(joined)] != joined:
        return -1
    return at // size


def backoff_delay(attempt: int, base: float = BACKOFF_BASE_S, cap: float = BACKOFF_CAP_S) -> float:
    """Exponential backoff with jitter: between half and all of ``base * 2**(attempt-1)``."""
    delay = min(cap, base * 2 ** (attempt - 1))
    return random.uniform(delay / 2, delay)


class JobRunner:
    """One run of one job. Use ``run_job``; this class holds the run's state."""

    def __init__(
        self,
        site: Site,
        job: ResolvedJob,
        *,
        dry_run: bool = False,
        full: bool = False,
        progress: Progress | None = None,
        stop: threading.Event | None = None,
        lease: HeldLease | None = None,
        actor: str | None = None,
    ):
        self.site = site
        self.job = job
        self.dry_run = dry_run
        self.full = full
        self.progress = progress
        self.stop = stop or threading.Event()
        self.lease = lease
        self.actor = actor or f"job:{job.name}"
        self.table = job.table
        self.store = DatasetTable(job.table, site.engine.dialect.name, site.engine.dialect)
        self.rp = job.protector
        # Set when the run starts (a replay and a --full run map every row).
        self.fingerprinter: RowFingerprints | None = None
        self._match_fingerprints = True
        # Fingerprint look-ups: the stored row id the next window of stored rows starts after,
        # and how many batches still look up without a window.
        self._window_after = 0
        self._window_skip = 0
        self._window_misses = 0  # windowed batches in a row the window served badly
        # PostgreSQL planner statistics: the rows they count, the rows inserted since.
        self._stats_rows: int | None = None
        self._grown = 0
        self._conn: Connection | None = None  # the batches' connection while reading
        # Bulk load (``_bulk_load``): the table's natural-key index is away, so this run finds its
        # own earlier rows by the hash of their record key in a temporary table instead.
        self._bulk_keys = False
        # No row of the source stored when the run started but what this run's input wrote (the
        # batches of this snapshot before a resume): every keyed row is an insert or a duplicate,
        # so a reading worker may map ahead without fingerprint look-ups (gateway/sync_worker.py).
        self._fresh_source = False
        self.mapper = job.mapper
        self.snapshot = job.settings.mode == "snapshot"
        self.seen = SeenIds()
        # Runs whose writes belong to this run's input: the runs of this snapshot (a resumed one
        # has several), or this run alone. A stored row they wrote was already read in this input.
        self.run_ids: set[int] = set()
        self.batch_ranges: dict[int, tuple[str, str]] = {}
        # (highest table id after a batch's inserts, batch number), ascending: which batch
        # inserted a row (inserted ids are not tracked one by one).
        self.insert_bounds: list[tuple[int, int]] = []
        self.new_keys: set[str] = set()  # dry run only: keys an earlier batch would have inserted
        # Replaying quarantined rows: id(Row) -> its quarantine row (updated, never re-inserted).
        self.replaying: dict[int, QuarantineRow] | None = None
        self.summary = RunSummary(
            job=job.name,
            mode=job.settings.mode,
            dry_run=dry_run,
            mapping_name=getattr(self.mapper, "name", None),
            mapping_version=str(getattr(self.mapper, "version", "")) or None,
        )
        self.cursor: Any = None
        self.batch_no = 0
        self.reading_done = False
        self._started = time.monotonic()
        self._deliveries: list[tuple[str, list[str]]] = []
        from .schemas import validate_record

        self._validate: Callable[..., list[Any]] = validate_record

    # ---- start ----------------------------------------------------------------------------

    def _start(self, connector: Connector) -> None:
        from .reindex import stale_rows

        s = self.summary
        if stale_rows(self.site, self.job.dataset, self.job.source):
            # Diffing by record keys under the new key would store every person twice.
            raise ConfigError(
                f"jobs.{self.job.name}: stored {self.job.dataset} rows of {self.job.source} are indexed "
                "under an older blind_index key: run `gateway keys reindex` first (it runs online)"
            )
        total = getattr(connector, "estimate_rows", None)
        with contextlib.suppress(Exception):  # an estimate is a nicety, never a failure
            s.total = total() if callable(total) else None
        if not self.full:
            self.fingerprinter = RowFingerprints(self.site.protector, self._fingerprint_context())
            # Nothing of the source stored yet (a first ingest): no fingerprint can match, so
            # none is looked up (rows this run inserts are found by their record key).
            with self.site.engine.connect() as conn:
                self._match_fingerprints = self.store.any_present(conn, self.job.source)
        if not self.dry_run:
            # A bulk load killed before its end left the table's plain indexes out: build them
            # before anything reads (this run's fingerprint look-ups, match, the API).
            with self.site.engine.begin() as conn:
                rebuilt = self.store.create_missing_indexes(conn)
            if rebuilt:
                log.info("job %s: built indexes %s", self.job.name, ", ".join(rebuilt))
            with self.site.engine.connect() as conn:
                counts = self.store.planner_rows(conn)
            if counts is not None:
                self._stats_rows, live = counts
                # Filled since its statistics were made (by another run, a restore): the grown
                # part counts as grown in this run, so the first batch refreshes them.
                self._grown = max(0, live - self._stats_rows)
                self._keep_planner_stats(0)
        if self.dry_run:
            # A dry run compares the whole export (snapshot) or what follows the cursor
            # (incremental) with the store, writing nothing.
            if not self.snapshot and not self.full:
                with self.site.begin() as session:
                    state = session.get(JobCursor, self.job.name)
                    self.cursor = json.loads(state.cursor) if state and state.cursor else None
            return

        now = utcnow()
        with self.site.begin() as session:
            # We hold the lease: a run of this job still marked running died without recording.
            session.execute(
                update(Run)
                .where(Run.job == self.job.name, Run.status == "running")
                .values(
                    status="failed",
                    finished_at=now,
                    error="the process ended before the run finished (killed or crashed); "
                    "the next run resumed from its last committed batch",
                )
            )
            previous = session.execute(
                select(Run.id, Run.status)
                .where(Run.job == self.job.name, Run.kind == "sync")
                .order_by(Run.id.desc())
                .limit(1)
            ).first()
            state = session.get(JobCursor, self.job.name)
            if state is None:
                state = JobCursor(job=self.job.name, cursor=None, batch_no=0)
                session.add(state)
            resuming = not self.full and (state.snapshot_id is not None or not self.snapshot)
            if self.full:
                if state.snapshot_id is not None:
                    session.execute(
                        delete(SnapshotSeen).where(SnapshotSeen.snapshot_id == state.snapshot_id)
                    )
                state.cursor, state.snapshot_id, state.batch_no, state.reading_done = (
                    None,
                    None,
                    0,
                    False,
                )
            run = self._add_run(session, s, "sync", now, full=self.full)
            if previous is not None and previous.status != "succeeded" and resuming:
                s.resumed_from = previous.id
            if self.snapshot:
                if state.snapshot_id is None:
                    state.snapshot_id = run.id
                    state.cursor, state.batch_no, state.reading_done = None, 0, False
                s.snapshot_id = run.snapshot_id = state.snapshot_id
                session.flush()
                self.run_ids = set(
                    session.execute(
                        select(Run.id).where(Run.snapshot_id == state.snapshot_id)
                    ).scalars()
                )
                for batch_no, blob, first, last, upto in session.execute(
                    select(
                        SnapshotSeen.batch_no,
                        SnapshotSeen.ids,
                        SnapshotSeen.first_position,
                        SnapshotSeen.last_position,
                        SnapshotSeen.inserted_upto,
                    )
                    .where(SnapshotSeen.snapshot_id == state.snapshot_id)
                    .order_by(SnapshotSeen.batch_no)
                ):
                    self.seen.mark(SeenIds.unpack(blob), batch_no)
                    self.batch_ranges[batch_no] = (first or "", last or "")
                    if upto is not None:
                        self.insert_bounds.append((upto, batch_no))
            self.cursor = json.loads(state.cursor) if state.cursor else None
            self.batch_no = state.batch_no
            self.reading_done = bool(state.reading_done)
            state.updated_at = now
        with self.site.engine.connect() as conn:
            self._fresh_source = not self.store.any_rows(
                conn, self.job.source, besides=self.run_ids
            )

    def _fingerprint_context(self) -> str:
        """Everything that decides what a native row of this job maps to and how it is stored:
        a change to any of it makes every stored fingerprint of the job stale."""
        from importlib.metadata import PackageNotFoundError, version

        from .plugins import plugin_versions

        try:
            gateway_version = version("county-gateway")
        except PackageNotFoundError:
            gateway_version = "unknown"
        rp = self.rp
        return json.dumps(
            {
                "dataset": self.job.dataset,
                "source": self.job.source,
                "mapping": [self.summary.mapping_name, self.summary.mapping_version],
                "mapper": type(self.mapper).__qualname__,
                "gateway": gateway_version,
                "plugins": plugin_versions(self.site.plugins),
                "fields": [rp.fields, rp.sealed, rp.record_key_fields],
            },
            sort_keys=True,
        )

    # ---- the loop ------------------------------------------------------------------------

    def run(self, connector: Connector) -> RunSummary:
        s = self.summary
        self._start(connector)
        if self.progress:
            self.progress.start(s)
        try:
            if not self.reading_done:
                with self._bulk_load(), self._work_connection(), _quiet_gc():
                    self._read_all(connector)
            if self.lease is not None and self.lease.lost.is_set():
                self._finish("failed")
                return s
            if self.stop.is_set():
                self._finish("interrupted")
                return s
            if self.snapshot:
                self._mark_reading_done()
                self._removals()
            self._finish("succeeded")
        except GatewayError as exc:
            self._fail(str(exc))
            raise SyncFailed(f"job {self.job.name}: run {s.run_id or '-'} failed: {exc}") from None
        except SQLAlchemyError as exc:
            cause = f"store: {_first_line(exc)}"
            self._fail(cause)
            raise SyncFailed(
                f"job {self.job.name}: run {s.run_id or '-'} failed: {cause}"
            ) from None
        return s

    def _read_all(self, connector: Connector) -> None:
        attempt = 0
        retries = self.job.settings.retries
        while True:
            batches: Iterator[Any]
            if self._fresh_source and not self._shares_source() and sync_worker.usable(connector):
                batches = sync_worker.batches(
                    self._prepare,
                    connector,
                    self.cursor,
                    self.job.settings.batch_size,
                    self.job.source,
                )
            else:
                batches = connector.read(self.cursor, self.job.settings.batch_size)
            try:
                for batch in batches:
                    if isinstance(batch, Prepared):
                        self._batch_prepared(batch)
                    else:
                        self._batch(batch)
                    attempt = 0
                    if self.stop.is_set() or (self.lease is not None and self.lease.lost.is_set()):
                        return
                return
            except TransientSourceError as exc:
                attempt += 1
                if attempt > retries:
                    raise
                delay = backoff_delay(attempt)
                log.warning(
                    "job %s: %s; retry %d of %d in %.1f s from the last committed batch",
                    self.job.name,
                    exc,
                    attempt,
                    retries,
                    delay,
                )
                if self.stop.wait(delay):
                    return
            finally:
                close = getattr(batches, "close", None)
                if close is not None:
                    close()

    # ---- one batch --------------------------------------------------------------------------

    def _batch(self, batch: Batch) -> None:
        run_ids = self.run_ids
        rows = batch.rows
        quarantine: list[_Q] = []
        # Stored rows this batch matched so far: row id -> index in the batch of the row. The
        # first row of the input wins; a later one with the same stored row is a duplicate.
        claimed: dict[int, int] = {}
        seen_ids: list[int] = []
        unchanged = 0
        fingerprints = self._fingerprints(batch)
        ids_at, lasts = self._by_fingerprint(fingerprints)
        todo: Sequence[int] = range(len(rows))
        if ids_at is not None:
            # The very native rows stored records were made from: unchanged, unless a row is a
            # duplicate of one read before in this run. Decided for all of them at once; the
            # rows themselves are not even built (batch.rows may be LazyRows).
            todo = [i for i, rid in enumerate(ids_at) if rid is None]
            hit_at: Sequence[int] = range(len(rows))
            ids = ids_at
            if todo:
                hit_at = [i for i, rid in enumerate(ids_at) if rid is not None]
                ids = [ids_at[i] for i in hit_at]
            if (
                len(set(ids)) == len(ids)
                and run_ids.isdisjoint(lasts.values())
                and not self.seen.any_seen(ids)  # type: ignore[arg-type]
            ):
                seen_ids = ids  # type: ignore[assignment]
                unchanged = len(ids)
                if todo:
                    claimed = dict(zip(ids, hit_at, strict=True))  # type: ignore[arg-type]
            else:
                unchanged = self._hit_duplicates(
                    rows, hit_at, ids, lasts, claimed, seen_ids, quarantine
                )
        mapped = self._map_rows(zip(todo, _rows_at(rows, todo), strict=True), fingerprints)
        quarantine.extend(_Q(row, *why) for _, row, *why in mapped.quarantine)
        pending, keep = mapped.pending, mapped.keep

        positions = (rows[0].position, rows[-1].position) if rows else ("", "")
        self._apply(batch, positions, quarantine, pending, keep, claimed, seen_ids, unchanged)

    def _map_rows(
        self, rows_at: Iterable[tuple[int, Row]], fingerprints: Sequence[bytes | None]
    ) -> _Mapped:
        """Map, validate and key the rows (index in the batch, row) that no fingerprint settled:
        the one mapping path of ``_batch`` and of the reading worker (``_prepare``)."""
        rp = self.rp
        map_row = self.mapper.map_row
        validate = self._validate
        dataset = self.job.dataset
        key_and_hash = rp.key_and_hash
        out = _Mapped()
        quarantine, pending, keep = out.quarantine, out.pending, out.keep
        for i, row in rows_at:
            if row.problems:
                fld, code, _ = row.problems[0]
                msg = "; ".join(p[2] for p in row.problems)
                quarantine.append((i, row, "read", fld, code, msg))
                continue
            record, errors = map_row(row.data)
            stage = "map"
            if not errors:
                errors = validate(dataset, record)
                stage = "validate"
            if errors:
                first = errors[0]
                quarantine.append((i, row, stage, first.field, first.code, _errors_message(errors)))
                if not any(
                    e.field in rp.record_key_fields or e.field == "id_number" for e in errors
                ):
                    with contextlib.suppress(KeyProblem, ValueError, TypeError):
                        sk = rp.subject_key(record)
                        keep.append(rp.record_key(record, sk))
                continue
            try:
                subject_key, record_key, content_hash = key_and_hash(record)
            except KeyProblem as problem:
                quarantine.append((i, row, "key", problem.field, problem.code, problem.message))
                continue
            first_pending = pending.get(record_key)
            if first_pending is not None:
                q = self._duplicate_of(row, first_pending[1])
                quarantine.append((i, row, q.stage, q.field, q.reason, q.message))
                continue
            pending[record_key] = (i, row, record, subject_key, content_hash, fingerprints[i])
        return out

    def _prepare(self, batch: Batch) -> Prepared:
        """The mapping path of ``_batch`` for every row of a batch, without the store: what the
        reading worker (gateway/sync_worker.py) hands over. Only for a source with no row stored
        but this input's, where a fingerprint hit could only be a duplicate, which the look-up by
        record key finds as well: no fingerprint is looked up."""
        rows = batch.rows
        mapped = self._map_rows(enumerate(rows), self._fingerprints(batch))
        quarantine = [(i, *why) for i, _, *why in mapped.quarantine]
        pending = {
            rk: (i, rec, sk, ch, fp) for rk, (i, _, rec, sk, ch, fp) in mapped.pending.items()
        }
        keep = mapped.keep
        records = [p[1] for p in pending.values()]
        return Prepared(
            cursor=batch.cursor,
            count=len(rows),
            positions=(rows[0].position, rows[-1].position) if rows else ("", ""),
            rows=pickle.dumps(
                [(r.position, r.data, r.problems) for r in rows], pickle.HIGHEST_PROTOCOL
            ),
            quarantine=quarantine,
            keep=keep,
            pending=[(i, rk, sk, ch, fp) for rk, (i, _, sk, ch, fp) in pending.items()],
            records=records,
        )

    def _batch_prepared(self, prepared: Prepared) -> None:
        """A batch the reading worker prepared: looked up, sealed, written and committed as
        ``_batch`` does (``_apply``)."""
        rows = Rows(prepared)
        records = prepared.records
        pending = {
            rk: (i, rows.ref(i), records[j], sk, ch, fp)
            for j, (i, rk, sk, ch, fp) in enumerate(prepared.pending)
        }
        quarantine = [_Q(rows.ref(i), *q) for i, *q in prepared.quarantine]
        self._apply(
            Batch(rows, prepared.cursor),  # type: ignore[arg-type]
            prepared.positions,
            quarantine,
            pending,
            prepared.keep,
            {},
            [],
            0,
        )

    def _apply(
        self,
        batch: Batch,
        positions: tuple[str, str],
        quarantine: list[_Q],
        pending: dict[str, tuple[int, Any, Any, str, str, bytes | None]],
        keep: list[str],
        claimed: dict[int, int],
        seen_ids: list[int],
        unchanged: int,
    ) -> None:
        """The rest of a batch, from the look-up by record key on: inserts, updates, duplicates
        of stored rows, then the write transaction."""
        rp = self.rp
        rows = batch.rows
        run_ids = self.run_ids
        seen_batch_of = self.seen.batch_of
        existing = self._existing(list(pending) + keep)
        this_batch = self.batch_no + 1
        inserts: list[tuple[str, dict[str, Any], str, str, bytes | None]] = []
        updates: list[tuple[int, str, dict[str, Any], str, str, bytes | None]] = []
        refresh: list[tuple[bytes, int]] = []  # (fingerprint, id): unchanged, newly fingerprinted
        for record_key, (i, row, record, subject_key, content_hash, fp) in pending.items():
            found = existing.get(record_key)
            if found is None:
                if self.dry_run and record_key in self.new_keys:
                    quarantine.append(self._duplicate(row, None))
                    continue
                inserts.append((record_key, record, subject_key, content_hash, fp))
                continue
            row_id, stored_hash, removed, last_run, stored_fp = found
            if (
                self.replaying is not None
                and self.replaying[id(row)].reason == "duplicate"
                and not removed
            ):
                quarantine.append(
                    _Q(
                        row,
                        "duplicate",
                        "record_key",
                        "duplicate",
                        "the stored record with this record key is still there",
                    )
                )
                continue
            first = claimed.get(row_id)
            if first is not None:
                # Matched by its fingerprint by another row of this batch.
                if first < i:
                    quarantine.append(self._duplicate_of(row, rows[first]))
                    continue
                # That row comes later in the input: this one wins, that one is the duplicate.
                quarantine.append(self._duplicate_of(rows[first], row))
                unchanged -= 1
            else:
                earlier = seen_batch_of(row_id)
                if earlier or last_run in run_ids:
                    # Seen in an earlier batch, or inserted by one (inserted ids are not tracked:
                    # their last_run_id says it).
                    quarantine.append(self._duplicate(row, earlier or self._inserted_by(row_id)))
                    continue
                seen_ids.append(row_id)
            claimed[row_id] = i
            if removed or stored_hash != content_hash:
                updates.append((row_id, record_key, record, subject_key, content_hash, fp))
            else:
                unchanged += 1
                if fp is not None and fp != stored_fp:
                    refresh.append((fp, row_id))
        for record_key in keep:
            found = existing.get(record_key)
            if found is not None and not found[2] and not seen_batch_of(found[0]):
                seen_ids.append(found[0])

        s = self.summary
        if self.dry_run:
            self.new_keys.update(k for k, *_ in inserts)
            self.seen.mark(seen_ids, this_batch)
            self._count(batch, len(inserts), len(updates), unchanged, len(quarantine), 0)
            return

        delivered = self._deliver(
            [(rec, sk, "inserted") for _, rec, sk, _, _ in inserts]
            + [(rec, sk, "updated") for _, _, rec, sk, _, _ in updates]
        )
        now = utcnow()
        store = self.store
        with self._writing() as session:
            conn = session.connection()
            inserted_upto: int | None = None
            if inserts:
                columns = rp.stored_batch(
                    [rec for _, rec, _, _, _ in inserts], [sk for _, _, sk, _, _ in inserts]
                )
                n = len(inserts)
                columns.update(
                    source=[self.job.source] * n,
                    record_key=[rk for rk, *_ in inserts],
                    content_hash=[ch for _, _, _, ch, _ in inserts],
                    removed=[False] * n,
                    first_run_id=[s.run_id] * n,
                    last_run_id=[s.run_id] * n,
                    updated_at=[now] * n,
                    fingerprint=[fp for *_, fp in inserts],
                )
                store.insert(conn, columns)
                inserted_upto = conn.execute(select(func.max(self.table.c.id))).scalar_one()
                if self._bulk_keys:
                    store.bulk_keys_add(conn, [_key_hash(rk) for rk, *_ in inserts], this_batch)
            if updates:
                columns = rp.stored_batch(
                    [rec for _, _, rec, _, _, _ in updates], [sk for _, _, _, sk, _, _ in updates]
                )
                n = len(updates)
                columns.update(
                    source=[self.job.source] * n,
                    record_key=[rk for _, rk, *_ in updates],
                    content_hash=[ch for _, _, _, _, ch, _ in updates],
                    removed=[False] * n,
                    last_run_id=[s.run_id] * n,
                    updated_at=[now] * n,
                    fingerprint=[fp for *_, fp in updates],
                )
                store.update(conn, columns, [row_id for row_id, *_ in updates])
            store.set_fingerprints(conn, refresh)
            if quarantine:
                self._store_quarantine(conn, quarantine, now)
            if self.replaying is not None:
                self._resolve_replayed(conn, batch, quarantine, now)
            elif self.snapshot:
                session.add(
                    SnapshotSeen(
                        snapshot_id=s.snapshot_id,
                        batch_no=this_batch,
                        ids=SeenIds.pack(seen_ids),
                        first_position=positions[0][:200],
                        last_position=positions[1][:200],
                        inserted_upto=inserted_upto,
                    )
                )
            if self.replaying is None:
                state = session.get(JobCursor, self.job.name)
                if batch.cursor is not None:
                    state.cursor = json.dumps(batch.cursor, default=str)
                state.batch_no = this_batch
                state.updated_at = now
            n_read = len(batch.rows)
            session.execute(
                update(Run)
                .where(Run.id == s.run_id)
                .values(
                    read=Run.read + n_read,
                    inserted=Run.inserted + len(inserts),
                    updated=Run.updated + len(updates),
                    unchanged=Run.unchanged + unchanged,
                    quarantined=Run.quarantined + len(quarantine),
                    delivered=Run.delivered + delivered,
                    batches=Run.batches + 1,
                    heartbeat_at=now,
                )
            )
            audit.record(
                session,
                site=self.site,
                actor=self.actor,
                action="sync.batch",
                dataset=self.job.dataset,
                detail={
                    "job": self.job.name,
                    "run": s.run_id,
                    "batch": this_batch,
                    "source": self.job.source,
                    "read": n_read,
                    "inserted": len(inserts),
                    "updated": len(updates),
                    "unchanged": unchanged,
                    "quarantined": len(quarantine),
                },
            )
            self._audit_deliveries(session)
        if self._stats_rows is not None:
            self._keep_planner_stats(len(inserts))
        # Only now, with the batch committed, does it count as seen.
        self.batch_no = this_batch
        self.batch_ranges[this_batch] = positions
        self.seen.mark(seen_ids, this_batch)
        if inserted_upto is not None:
            self.insert_bounds.append((inserted_upto, this_batch))
        self.cursor = batch.cursor if batch.cursor is not None else self.cursor
        s.delivered += delivered
        self._count(batch, len(inserts), len(updates), unchanged, len(quarantine), 0)

    def _hit_duplicates(
        self,
        rows: Sequence[Row],
        hit_at: Sequence[int],
        ids: Sequence[int | None],
        lasts: dict[int, int | None],
        claimed: dict[int, int],
        seen_ids: list[int],
        quarantine: list[_Q],
    ) -> int:
        """Fingerprint hits of a batch where some row is a duplicate, one by one in input order:
        the first row of the input with a stored row wins; the others go to quarantine. Returns
        the number of unchanged rows."""
        run_ids = self.run_ids
        unchanged = 0
        for i, row_id in zip(hit_at, ids, strict=True):
            assert row_id is not None
            first = claimed.get(row_id)
            if first is not None:
                quarantine.append(self._duplicate_of(rows[i], rows[first]))
                continue
            earlier = self.seen.batch_of(row_id)
            if earlier or lasts.get(row_id) in run_ids:
                quarantine.append(self._duplicate(rows[i], earlier or self._inserted_by(row_id)))
                continue
            claimed[row_id] = i
            seen_ids.append(row_id)
            unchanged += 1
        return unchanged

    def _count(self, batch: Batch, ins: int, upd: int, unch: int, quar: int, removed: int) -> None:
        s = self.summary
        s.read += len(batch.rows)
        s.inserted += ins
        s.updated += upd
        s.unchanged += unch
        s.quarantined += quar
        s.removed += removed
        s.batches += 1
        s.duration_s = time.monotonic() - self._started
        if self.progress:
            self.progress.advance(s)

    def _resolve_replayed(
        self, conn: Any, batch: Batch, still_bad: list[_Q], now: dt.datetime
    ) -> None:
        assert self.replaying is not None
        bad = {id(q.row) for q in still_bad}
        resolved = [self.replaying[id(r)].id for r in batch.rows if id(r) not in bad]
        if resolved:
            conn.execute(
                update(QuarantineRow.__table__)
                .where(QuarantineRow.__table__.c.id.in_(resolved))
                .values(status="resolved", resolved_run_id=self.summary.run_id, updated_at=now)
            )

    def _add_run(
        self, session: Session, s: RunSummary, kind: str, now: dt.datetime, *, full: bool = False
    ) -> Run:
        """The run's history row, flushed so the run id is known; the summary and this runner
        follow it from here."""
        from .plugins import plugin_versions

        run = Run(
            job=self.job.name,
            kind=kind,
            mode=self.job.settings.mode,
            status="running",
            full=full,
            source=self.job.source,
            dataset=self.job.dataset,
            mapping_name=s.mapping_name,
            mapping_version=s.mapping_version,
            plugin_versions=json.dumps(plugin_versions(self.site.plugins), sort_keys=True),
            holder=self.lease.holder if self.lease else None,
            started_at=now,
            heartbeat_at=now,
        )
        session.add(run)
        session.flush()
        s.run_id = run.id
        self.run_ids = {run.id}
        return run

    def replay(self, rows: Sequence[QuarantineRow]) -> RunSummary:
        """Run quarantined rows again through the current mapping: resolved rows are stored and
        marked resolved; rows still bad keep their quarantine row with the new reason."""
        s = self.summary
        s.kind = "replay"
        self.snapshot = False  # a replay neither resumes nor removes anything
        now = utcnow()

        with self.site.begin() as session:
            self._add_run(session, s, "replay", now)
        if self.progress:
            self.progress.start(s)
        try:
            with self._work_connection(), _quiet_gc():
                self._replay_batches(rows)
            self._finish("succeeded")
        except GatewayError as exc:
            self._fail(str(exc))
            raise SyncFailed(f"job {self.job.name}: replay run {s.run_id} failed: {exc}") from None
        except SQLAlchemyError as exc:
            cause = f"store: {_first_line(exc)}"
            self._fail(cause)
            raise SyncFailed(
                f"job {self.job.name}: replay run {s.run_id} failed: {cause}"
            ) from None
        return s

    def _replay_batches(self, rows: Sequence[QuarantineRow]) -> None:
        open_ = self.site.protector.open
        size = self.job.settings.batch_size
        for i in range(0, len(rows), size):
            chunk = rows[i : i + size]
            native = []
            self.replaying = {}
            for q in chunk:
                data = json.loads(
                    open_(q.row_sealed, dataset="quarantine", field="row", record=q.uid)
                )
                problems = [(q.field or "", q.reason, q.message)] if q.stage == "read" else []
                row = Row(q.position, data, problems)
                self.replaying[id(row)] = q
                native.append(row)
            self._batch(Batch(native, cursor=None))

    def _inserted_by(self, row_id: int) -> int | None:
        """The batch of this run that inserted row ``row_id``."""
        i = bisect.bisect_left(self.insert_bounds, (row_id, 0))
        return self.insert_bounds[i][1] if i < len(self.insert_bounds) else None

    def _duplicate(self, row: Row, earlier_batch: int | None) -> _Q:
        if earlier_batch is None or earlier_batch not in self.batch_ranges:
            where = "an earlier row of this run"
        else:
            first, last = self.batch_ranges[earlier_batch]
            where = f"a row of this run between {first} and {last}" if first != last else first
        return _Q(
            row,
            "duplicate",
            "record_key",
            "duplicate",
            f"same record key as {where}; the first is kept",
        )

    # ---- the connection the batches work on ----------------------------------------------------

    @contextlib.contextmanager
    def _work_connection(self) -> Iterator[None]:
        """One connection for every batch's look-ups and writes, so that its page cache stays
        warm from one batch to the next (on SQLite a write through another connection empties
        it). Between batches it holds no transaction."""
        with self.site.engine.connect() as conn:
            self.store.tune(conn)
            bulk_keys = self._bulk_keys
            if bulk_keys:
                self.store.bulk_keys_drop(conn)  # a pooled connection's, from a failed run
                self.store.bulk_keys_create(conn)
            conn.commit()
            self._conn = conn
            try:
                yield
            finally:
                self._conn = None
                if bulk_keys:  # not left to the next user of the pooled connection
                    if conn.in_transaction():
                        conn.rollback()
                    with contextlib.suppress(SQLAlchemyError):  # else it goes with the connection
                        self.store.bulk_keys_drop(conn)
                        conn.commit()

    @contextlib.contextmanager
    def _bulk_load(self) -> Iterator[None]:
        """A first ingest into a table holding nothing of the source (SQLite): the table's indexes
        (natural key, subject key, fingerprint, area code, ...) are dropped while the batches are
        written and built once at the end (sorted, instead of a random insert per row and index
        that every commit writes to the WAL), before removals, match or the API read them; after
        a failure too. Killed in between: the next run of any job on the table builds them
        first (``_start``). Meanwhile this run reads none of them: no fingerprint can match, and
        its own earlier rows (a later duplicate) are found through ``_bulk_existing``. Not taken
        when another job writes the same source into the same table: nothing would keep the two
        from storing one record key twice."""
        if self.dry_run or self._shares_source():
            yield
            return
        with self.site.engine.begin() as conn:
            bulk = self.store.can_bulk_load(conn, self.job.source)
            if bulk:
                self.store.drop_deferred_indexes(conn)
        if not bulk:
            yield
            return
        self._bulk_keys = True
        try:
            yield
        except BaseException:
            try:
                with self.site.engine.begin() as conn:
                    self.store.create_missing_indexes(conn)
            except SQLAlchemyError as exc:  # the next run builds them
                log.warning(
                    "job %s: indexes of %s not rebuilt: %s",
                    self.job.name,
                    self.table.name,
                    _first_line(exc),
                )
            raise
        finally:
            self._bulk_keys = False
        with self.site.engine.begin() as conn:
            self.store.create_missing_indexes(conn)

    def _shares_source(self) -> bool:
        """Whether another configured job writes this job's source into the same dataset."""
        for name, other in self.site.settings.jobs.items():
            if name == self.job.name or other.source != self.job.source:
                continue
            try:
                if _job_dataset(self.site, other) == self.job.dataset:
                    return True
            except ConfigError:
                return True
        return False

    def _bulk_existing(self, keys: Sequence[str]) -> dict[str, Found] | None:
        """``_existing`` during a bulk load: rows an earlier batch of this run inserted, found by
        their key's hash in the temporary table, then read by id within that batch's id range
        (exactly: a hash is not a key). None when two keys share a hash (64 bits: about once in
        10^7 runs of a million rows): the run then builds the natural-key index and looks up as
        usual from there on."""
        hashes = {_key_hash(k): k for k in keys}
        if len(hashes) < len(keys):
            self._end_bulk_keys()
            return None
        with self._reading() as conn:
            hits = self.store.bulk_keys_hits(conn, list(hashes))
            out: dict[str, Found] = {}
            bounds = self.insert_bounds
            for h, batch in hits:
                key = hashes[h]
                j = next((j for j, (_, b) in enumerate(bounds) if b == batch), None)
                found = None
                if j is not None:
                    after = bounds[j - 1][0] if j > 0 else 0
                    found = self.store.by_record_key_between(
                        conn, self.job.source, key, after, bounds[j][0]
                    )
                if found is None:  # another key with the same hash
                    break
                out[key] = found
            else:
                return out
        self._end_bulk_keys()
        return None

    def _end_bulk_keys(self) -> None:
        """Leave the hash look-ups: build the natural-key index now (the run has written no key
        twice) and drop the temporary table; the plain indexes still wait for the end."""
        with self._writing() as session:
            conn = session.connection()
            self.store.create_missing_indexes(conn, unique=True)
            self.store.bulk_keys_drop(conn)
        self._bulk_keys = False

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Connection]:
        """The work connection for look-ups; its read transaction ends right after (a long one
        would hold back SQLite's WAL checkpoints)."""
        conn = self._conn
        if conn is None:
            with self.site.engine.connect() as own:
                self.store.tune(own)
                yield own
            return
        try:
            yield conn
        finally:
            conn.rollback()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[Session]:
        """A session in one transaction on the work connection, committed at the end."""
        conn = self._conn
        if conn is None:
            with self.site.begin() as session:
                self.store.tune(session.connection())
                yield session
            return
        if conn.in_transaction():  # never join a transaction left open: ours must commit
            conn.rollback()
        with Session(bind=conn, expire_on_commit=False) as session, session.begin():
            yield session

    def _keep_planner_stats(self, inserted: int) -> None:
        """Each time the table has grown by as much as the planner's statistics count (at least
        ANALYZE_MIN_ROWS), refresh them: a first ingest of 1M rows analyzes ~7 times instead of
        reading every stored row of the source per batch. A failure (no permission) is logged,
        once, and the run goes on."""
        assert self._stats_rows is not None
        self._grown += inserted
        if self._grown < max(ANALYZE_MIN_ROWS, self._stats_rows):
            return
        try:
            with self._writing() as session:
                self.store.analyze(session.connection())
        except SQLAlchemyError as exc:
            log.warning(
                "job %s: could not refresh the planner statistics of %s: %s",
                self.job.name,
                self.table.name,
                _first_line(exc),
            )
            self._stats_rows = None
            return
        self._stats_rows += self._grown
        self._grown = 0

    def _existing(self, keys: Sequence[str]) -> dict[str, Found]:
        """record_key -> (id, content_hash, removed, last_run_id, fingerprint) of the stored rows
        among ``keys``."""
        if not keys:
            return {}
        if self._bulk_keys:
            found = self._bulk_existing(keys)
            if found is not None:
                return found
        with self._reading() as conn:
            return self.store.by_record_key(conn, self.job.source, keys)

    def _fingerprints(self, batch: Batch) -> list[bytes | None]:
        """The rows' fingerprints (None for rows read with problems), or all None when this run
        maps every row (a replay, a --full run). Of the rows' source bytes when the connector
        gives them (``Batch.raw``): no row is built for it."""
        rows = batch.rows
        if self.fingerprinter is None:
            return [None] * len(rows)
        raw = batch.raw
        if raw is not None and len(raw.records) == len(rows):
            # A row read with problems never has its fingerprint stored (it is quarantined), and
            # equal bytes in the same form read with the same problems: it can never match.
            return self.fingerprinter.many_raw(raw)
        return self.fingerprinter.many([None if r.problems else r.data for r in rows])

    def _by_fingerprint(
        self, fingerprints: Sequence[bytes | None]
    ) -> tuple[list[int | None] | None, dict[int, int | None]]:
        """The id of the present stored row carrying each fingerprint (None: no such row), or
        None when nothing is looked up; and the last_run_id of those found rows that this run's
        input may have written (the others were not).

        A snapshot exported in the same order as before meets its stored rows in id order: the
        stored rows after the last one matched (leaving out rows this run's input wrote) are
        read as one window, in store order, and compared with the batch as a whole; only the
        fingerprints not in it are looked up one by one. When the window holds less than half
        of what is found (the export was reordered) or nothing (new rows) twice in a row, the
        next batches look up one by one, and try a window again after WINDOW_BACKOFF batches."""
        n = len(fingerprints)
        if not self._match_fingerprints or fingerprints.count(None) == n:
            return None, {}
        ids_at: list[int | None] = [None] * n
        lasts: dict[int, int | None] = {}
        size = RowFingerprints.SIZE
        with self._reading() as conn:
            in_window = 0
            windowed = not self._window_skip
            if not windowed:
                self._window_skip -= 1
            else:
                blob, ids = self.store.following(
                    conn, self.job.source, self._window_after, n + n // 16 + 16, self.run_ids
                )
                if len(blob) != size * len(ids):  # a stored fingerprint of another size
                    blob = b""
                at = _aligned(blob, fingerprints, size) if blob else -1
                if at >= 0:  # the batch is a stretch of the window, row for row
                    ids_at = list(ids[at : at + n])
                elif blob:
                    parts = [blob[k : k + size] for k in range(0, len(blob), size)]
                    index = dict(zip(parts, ids, strict=True))
                    ids_at = [index.get(fp) if fp is not None else None for fp in fingerprints]
                in_window = n - ids_at.count(None)
            if in_window < n:
                wanted = [fp for fp, rid in zip(fingerprints, ids_at, strict=True) if rid is None]
                wanted = [fp for fp in wanted if fp is not None]
                found = self.store.by_fingerprint(conn, self.job.source, wanted) if wanted else {}
                if found:
                    for i, fp in enumerate(fingerprints):
                        if ids_at[i] is None and fp is not None and (hit := found.get(fp)):
                            ids_at[i] = hit[0]
                            lasts[hit[0]] = hit[1]
        hits = n - ids_at.count(None)
        if windowed:
            if in_window * 2 >= max(hits, 1):
                self._window_misses = 0
            else:  # reordered, rows new to the store, or a jump (a block of rows gone)
                self._window_misses += 1
                if self._window_misses >= 2:  # not a jump: the next window is no better
                    self._window_skip, self._window_misses = WINDOW_BACKOFF, 0
        if hits:
            # Carry on after where the input's last rows are stored: the median id of the last
            # few found, so that a row stored elsewhere (new in the last run) does not lead.
            last = list(itertools.islice((rid for rid in reversed(ids_at) if rid is not None), 9))
            self._window_after = sorted(last)[len(last) // 2]  # type: ignore[type-var]
        return (ids_at if hits else None), lasts

    def _duplicate_of(self, row: Row, first: Row) -> _Q:
        return _Q(
            row,
            "duplicate",
            "record_key",
            "duplicate",
            f"same record key as the row at {first.position} in this run; the first is kept",
        )

    def _store_quarantine(self, conn: Any, rows: list[_Q], now: dt.datetime) -> None:
        if self.replaying is not None:
            # Still bad after a replay: the same quarantine row, with its new reason.
            q_table = QuarantineRow.__table__
            conn.execute(
                update(q_table).where(q_table.c.id == bindparam("_id")),
                [
                    {
                        "_id": self.replaying[id(q.row)].id,
                        "stage": q.stage,
                        "field": (q.field or None) and q.field[:100],
                        "reason": q.reason[:40],
                        "message": q.message,
                        "attempts": self.replaying[id(q.row)].attempts + 1,
                        "updated_at": now,
                    }
                    for q in rows
                ],
            )
            return
        seal = self.site.protector.seal
        values = []
        for q in rows:
            uid = uuid.uuid4().hex
            raw = json.dumps(q.row.data, ensure_ascii=False, default=str, sort_keys=True)
            values.append(
                {
                    "uid": uid,
                    "run_id": self.summary.run_id,
                    "job": self.job.name,
                    "source": self.job.source,
                    "dataset": self.job.dataset,
                    "position": q.row.position[:200],
                    "stage": q.stage,
                    "field": (q.field or None) and q.field[:100],
                    "reason": q.reason[:40],
                    "message": q.message,
                    "row_sealed": seal(raw, dataset="quarantine", field="row", record=uid),
                    "status": "open",
                    "attempts": 1,
                    "created_at": now,
                    "updated_at": now,
                }
            )
        conn.execute(insert(QuarantineRow.__table__), values)

    # ---- targets ------------------------------------------------------------------------------

    def _deliver(self, changes: list[tuple[dict[str, Any], str, str]]) -> int:
        """Upsert the changed records into every target (before the store commit: at least once,
        idempotent). Returns the number of records written, all targets together."""
        self._deliveries = []
        if not changes or not self.job.targets:
            return 0
        from .plugins import emit_record_delivered

        total = 0
        for target in self.job.targets:
            native = []
            for record, subject_key, change in changes:
                rec = dict(record)
                rec["subject_key"] = subject_key
                rec["removed"] = change == "removed"
                rec["change"] = change
                native.append(target.mapper.map_record(rec))
            self._write_target(target, native)
            keys = [sk for _, sk, _ in changes]
            emit_record_delivered(self.site.plugins, target.system, self.job.dataset, keys)
            self._deliveries.append((target.system, keys))
            total += len(native)
        return total

    def _write_target(self, target: Target, rows: list[dict[str, Any]]) -> None:
        attempt = 0
        while True:
            try:
                target.connector.write(rows, list(target.mapper.key))
                return
            except TransientSourceError as exc:
                attempt += 1
                if attempt > self.job.settings.retries:
                    raise
                delay = backoff_delay(attempt)
                log.warning(
                    "job %s: target %s: %s; retry in %.1f s",
                    self.job.name,
                    target.system,
                    exc,
                    delay,
                )
                time.sleep(delay)

    def _audit_deliveries(self, session: Session) -> None:
        for system, keys in self._deliveries:
            audit.record(
                session,
                site=self.site,
                actor=self.actor,
                action="sync.deliver",
                outcome="delivered",
                dataset=self.job.dataset,
                purpose="sync",
                subject_keys=keys,
                detail={
                    "job": self.job.name,
                    "run": self.summary.run_id,
                    "target": system,
                    "records": len(keys),
                },
            )
        self._deliveries = []

    # ---- snapshot removals ---------------------------------------------------------------------

    def _mark_reading_done(self) -> None:
        if self.dry_run or self.reading_done:
            return
        with self.site.begin() as session:
            session.get(JobCursor, self.job.name).reading_done = True
        self.reading_done = True

    def _removals(self) -> None:
        """Mark rows of the source this snapshot did not see as removed, in batches; deliver them
        as removed events first. Skipped without a scan when the counts show nothing is missing."""
        t = self.table
        source = self.job.source
        with self.site.engine.connect() as conn:
            present = self.store.present(conn, source)
        inserted = 0
        if self.run_ids and not self.dry_run:
            with self.site.engine.connect() as conn:
                inserted = conn.execute(
                    select(func.coalesce(func.sum(Run.inserted), 0)).where(Run.id.in_(self.run_ids))
                ).scalar_one()
        # Present rows = inserted by this input + seen (unchanged, updated, kept) + not seen.
        if present - inserted - self.seen.count <= 0:
            return
        written_here = t.c.last_run_id.is_(None) | t.c.last_run_id.not_in(self.run_ids or {0})
        last_id = 0
        gone: list[int] = []
        while True:
            with self.site.engine.connect() as conn:
                ids = (
                    conn.execute(
                        select(t.c.id)
                        .where(t.c.source == source, t.c.removed.is_(False), t.c.id > last_id)
                        .where(written_here)
                        .order_by(t.c.id)
                        .limit(REMOVAL_SCAN_CHUNK)
                    )
                    .scalars()
                    .all()
                )
            if not ids:
                break
            last_id = ids[-1]
            gone.extend(i for i in ids if not self.seen.batch_of(i))
            while len(gone) >= self.job.settings.batch_size:
                self._remove(gone[: self.job.settings.batch_size])
                del gone[: self.job.settings.batch_size]
                if self.stop.is_set():
                    return
        if gone:
            self._remove(gone)

    def _remove(self, row_ids: list[int]) -> None:
        t = self.table
        s = self.summary
        if self.dry_run:
            s.removed += len(row_ids)
            return
        with self.site.engine.connect() as conn:
            rows = [
                dict(r._mapping)
                for r in conn.execute(select(t).where(t.c.id.in_(row_ids), t.c.removed.is_(False)))
            ]
        if not rows:
            return
        changes = []
        if self.job.targets:
            changes = [(self.rp.open_row(r), r["subject_key"], "removed") for r in rows]
        delivered = self._deliver(changes)
        now = utcnow()
        with self.site.begin() as session:
            session.execute(
                update(t)
                .where(t.c.id.in_([r["id"] for r in rows]), t.c.removed.is_(False))
                .values(removed=True, last_run_id=s.run_id, updated_at=now, fingerprint=None)
            )
            session.execute(
                update(Run)
                .where(Run.id == s.run_id)
                .values(
                    removed=Run.removed + len(rows),
                    delivered=Run.delivered + delivered,
                    heartbeat_at=now,
                )
            )
            audit.record(
                session,
                site=self.site,
                actor=self.actor,
                action="sync.remove",
                dataset=self.job.dataset,
                subject_keys=[r["subject_key"] for r in rows],
                detail={
                    "job": self.job.name,
                    "run": s.run_id,
                    "source": self.job.source,
                    "removed": len(rows),
                },
            )
            self._audit_deliveries(session)
        s.removed += len(rows)
        s.delivered += delivered
        if self.progress:
            self.progress.advance(s)

    # ---- the end -----------------------------------------------------------------------------

    def _finish(self, status: str) -> None:
        s = self.summary
        s.status = status
        s.duration_s = time.monotonic() - self._started
        if status == "failed" and self.lease is not None and self.lease.lost.is_set():
            s.error = "lost the job's lease (the store was unreachable for longer than its expiry)"
        elif status == "interrupted":
            s.error = f"stopped after batch {self.batch_no}; the next run resumes there"
        if self.dry_run:
            if self.progress:
                self.progress.finish(s)
            return
        now = utcnow()
        with self.site.begin() as session:
            if status == "succeeded" and self.snapshot:
                snapshot_runs = select(Run.id).where(Run.snapshot_id == s.snapshot_id)
                session.execute(
                    delete(SnapshotSeen).where(SnapshotSeen.snapshot_id == s.snapshot_id)
                )
                session.execute(
                    update(QuarantineRow)
                    .where(
                        QuarantineRow.job == self.job.name,
                        QuarantineRow.status == "open",
                        QuarantineRow.run_id.not_in(snapshot_runs),
                    )
                    .values(status="superseded", updated_at=now)
                )
                state = session.get(JobCursor, self.job.name)
                state.cursor, state.snapshot_id, state.batch_no, state.reading_done = (
                    None,
                    None,
                    0,
                    False,
                )
                state.updated_at = now
            self._record_end(session, now)
        self._after_end()

    def _fail(self, cause: str) -> None:
        s = self.summary
        s.status = "failed"
        s.error = cause
        s.duration_s = time.monotonic() - self._started
        if self.dry_run or s.run_id is None:
            if self.progress:
                self.progress.finish(s)
            return
        try:
            with self.site.begin() as session:
                self._record_end(session, utcnow())
        except SQLAlchemyError as exc:  # the store itself is down: the next run cleans up
            log.error(
                "job %s: could not record the failed run: %s", self.job.name, _first_line(exc)
            )
            if self.progress:
                self.progress.finish(s)
            return
        self._after_end()

    def _record_end(self, session: Session, now: dt.datetime) -> None:
        s = self.summary
        session.execute(
            update(Run)
            .where(Run.id == s.run_id)
            .values(status=s.status, finished_at=now, duration_s=s.duration_s, error=s.error)
        )
        audit.record(
            session,
            site=self.site,
            actor=self.actor,
            action="sync.run",
            outcome="failed" if s.status == "failed" else "ok",
            dataset=self.job.dataset,
            detail={
                "job": self.job.name,
                "run": s.run_id,
                "status": s.status,
                "source": self.job.source,
                "mapping": s.mapping_name,
                "mapping_version": s.mapping_version,
                **s.counts(),
                **({"error": _no_long_numbers(s.error)} if s.error else {}),
            },
        )

    def _after_end(self) -> None:
        from .plugins import emit_run_finished

        s = self.summary
        finished = utcnow()
        emit_run_finished(
            self.site.plugins,
            {
                "job": s.job,
                "kind": s.kind,
                "run_id": s.run_id,
                "status": s.status,
                "counts": s.counts(),
                "mapping_version": s.mapping_version,
                "started_at": finished - dt.timedelta(seconds=s.duration_s),
                "finished_at": finished,
                "error": s.error,
            },
        )
        try:
            audit.checkpoint(self.site)
        except GatewayError as exc:
            log.warning("job %s: audit checkpoint not written: %s", s.job, exc)
        if self.progress:
            self.progress.finish(s)


def run_job(
    site: Site,
    job_name: str,
    *,
    dry_run: bool = False,
    full: bool = False,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
    lease: HeldLease | None = None,
) -> RunSummary:
    """Run one job now; returns its summary. ``stop`` (set it, e.g. on SIGTERM) ends the run
    after the current batch, recorded as ``interrupted`` and resumable. ``lease``: the job's lease
    when the caller (the scheduler) already holds it; otherwise it is taken here, and JobBusy is
    raised if another process runs the job. A run that fails is recorded and raises SyncFailed."""
    job = resolve_job(site, job_name, with_targets=not dry_run)
    connector = _source_connector(site, job)
    try:
        if dry_run:
            return JobRunner(site, job, dry_run=True, full=full, progress=progress, stop=stop).run(
                connector
            )
        held = lease or HeldLease(site, job_name)
        with held if lease is None else contextlib.nullcontext(held):
            return JobRunner(site, job, full=full, progress=progress, stop=stop, lease=held).run(
                connector
            )
    finally:
        _close(connector, *(t.connector for t in job.targets))


def _source_connector(site: Site, job: ResolvedJob) -> Connector:
    from .plugins import make_connector

    return make_connector(site, job.source)


def _close(*connectors: Connector) -> None:
    for c in connectors:
        try:
            c.close()
        except (GatewayError, OSError, SQLAlchemyError) as exc:
            log.warning("closing connector %s: %s", c.name, exc)


def recent_runs(site: Site, job: str | None = None, limit: int = 20) -> list[Run]:
    """The run history, newest first."""
    stmt = select(Run).order_by(Run.id.desc()).limit(limit)
    if job:
        stmt = stmt.where(Run.job == job)
    with site.begin() as session:
        return list(session.execute(stmt).scalars().all())


__all__ = [
    "HeldLease",
    "JobBusy",
    "JobRunner",
    "Progress",
    "ResolvedJob",
    "RunSummary",
    "SourceError",
    "SyncFailed",
    "load_job_mapping",
    "recent_runs",
    "resolve_job",
    "run_job",
]


def summary_from_run(run: Run) -> RunSummary:
    """A stored run as a RunSummary (the scheduler's history, the API)."""
    return RunSummary(
        job=run.job,
        mode=run.mode or "",
        run_id=run.id,
        kind=run.kind,
        status=run.status,
        read=run.read,
        inserted=run.inserted,
        updated=run.updated,
        unchanged=run.unchanged,
        quarantined=run.quarantined,
        removed=run.removed,
        delivered=run.delivered,
        batches=run.batches,
        duration_s=run.duration_s or 0.0,
        mapping_name=run.mapping_name,
        mapping_version=run.mapping_version,
        snapshot_id=run.snapshot_id,
        error=run.error,
    )
