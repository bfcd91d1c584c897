"""Run due jobs by their cron schedules, one runner per job across every scheduler process.

Each job has a lease row in the store (gateway/store/jobs.py). A scheduler takes the lease with one
atomic UPDATE, and only then decides whether the job is due, from the lease row's
``last_started_at``: so two schedulers never both run one due time, on SQLite or on any number of
processes sharing one PostgreSQL. The lease is renewed by a heartbeat while the job runs; a holder
that crashed is replaced once its lease expires (at once, when it was a dead process on this host).

Due times: the next cron time after the last start (after the job was first seen, before its first
run). A scheduler that was down over several due times runs the job once, not once per missed slot.
Schedules are read in the machine's local time zone.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from croniter import croniter
from sqlalchemy.exc import SQLAlchemyError

from .errors import GatewayError
from .store.jobs import SchedulerLease, new_holder, utcnow
from .sync import LEASE_TTL_S, HeldLease, RunSummary, run_job

if TYPE_CHECKING:
    from .site import Site
    from .sync import Progress

log = logging.getLogger(__name__)


def _aware(utc_naive: dt.datetime) -> dt.datetime:
    return utc_naive.replace(tzinfo=dt.UTC)


def next_due(schedule: str, after_utc: dt.datetime) -> dt.datetime:
    """The first cron time (local time zone) after ``after_utc``, as naive UTC."""
    base = _aware(after_utc).astimezone()  # local, aware
    nxt = croniter(schedule, base).get_next(dt.datetime)
    return nxt.astimezone(dt.UTC).replace(tzinfo=None)


@dataclass
class Scheduler:
    site: Site
    holder: str = field(default_factory=new_holder)
    ttl_s: float = LEASE_TTL_S
    poll_s: float = 5.0
    stop: threading.Event = field(default_factory=threading.Event)
    progress: Progress | None = None

    def scheduled_jobs(self) -> list[str]:
        return sorted(n for n, j in self.site.settings.jobs.items() if j.schedule)

    def _claim_if_due(self, job: str) -> bool:
        """Under the lease: is the job due? If so, record this start (committed before it runs)."""
        schedule = self.site.settings.jobs[job].schedule
        assert schedule is not None
        now = utcnow()
        with self.site.begin() as session:
            lease = session.get(SchedulerLease, job)
            assert lease is not None  # acquire_lease created it
            base = lease.last_started_at or lease.first_seen_at
            if next_due(schedule, base) > now:
                return False
            lease.last_started_at = now
        return True

    def run_once(self) -> list[RunSummary]:
        """Run every job that is due now and whose lease this process gets; returns their summaries."""
        done: list[RunSummary] = []
        for job in self.scheduled_jobs():
            if self.stop.is_set():
                break
            lease = HeldLease(self.site, job, self.holder, self.ttl_s)
            try:
                if not lease.acquire():
                    continue  # another scheduler (or `gateway sync`) runs it
            except SQLAlchemyError as exc:
                log.error("scheduler: store unreachable: %s", str(exc).splitlines()[0])
                continue
            try:
                if not self._claim_if_due(job):
                    continue
                log.info("scheduler: running job %s", job)
                try:
                    summary = run_job(
                        self.site, job, lease=lease, stop=self.stop, progress=self.progress
                    )
                except GatewayError as exc:
                    log.error("scheduler: %s", exc)
                    continue
                log.info("scheduler: %s", summary.line())
                done.append(summary)
            finally:
                lease.release()
        return done

    def run_forever(self) -> None:
        """Until ``stop`` is set (SIGTERM): run what is due, sleep ``poll_s``, again."""
        from . import audit

        log.info("scheduler %s: %d scheduled job(s)", self.holder, len(self.scheduled_jobs()))
        while not self.stop.is_set():
            self.run_once()
            try:
                audit.checkpoint_if_due(self.site)
            except (GatewayError, SQLAlchemyError) as exc:
                log.warning("scheduler: audit checkpoint: %s", exc)
            self.stop.wait(self.poll_s)
        log.info("scheduler %s: stopped", self.holder)
