"""``/api/v1/jobs``: job status and a manual trigger, for admins (or the ``trigger`` permission).

A triggered run takes the job's lease in the request (409 ``job-busy`` if another process runs it)
and then runs in a background thread of this process; the answer (202) does not wait for it. Its
progress and outcome are in ``GET /api/v1/jobs/{name}`` and the audit log. A run cut short by the
process ending resumes from its last committed batch next time, like any other.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from flask import Blueprint, Response, jsonify

from ..errors import GatewayError
from ..sync import HeldLease, recent_runs, run_job, summary_from_run
from .auth import commit_answer, commit_nonce, record_answer, require_role
from .context import current_site
from .openapi import operation
from .problems import Problem
from .schemas import JobListResponseSchema, JobRunResponseSchema, JobSchema

log = logging.getLogger("gateway.web.jobs")
bp = Blueprint("jobs_api", __name__, url_prefix="/api/v1/jobs")
JOB_PARAM = {"in": "path", "name": "name", "required": True, "schema": {"type": "string"}}
RUNS_SHOWN = 5


def _run_dict(run: Any) -> dict[str, Any]:
    s = summary_from_run(run)
    return {
        "run_id": s.run_id,
        "job": s.job,
        "kind": s.kind,
        "mode": s.mode,
        "status": s.status,
        "read": s.read,
        "inserted": s.inserted,
        "updated": s.updated,
        "unchanged": s.unchanged,
        "quarantined": s.quarantined,
        "removed": s.removed,
        "delivered": s.delivered,
        "duration_s": float(s.duration_s),
        "error": s.error,
    }


def _job_dict(name: str, runs: int = RUNS_SHOWN) -> dict[str, Any]:
    site = current_site()
    job = site.settings.jobs[name]
    return {
        "name": name,
        "source": job.source,
        "dataset": job.dataset,
        "mode": job.mode,
        "schedule": job.schedule,
        "targets": list(job.targets),
        "runs": [_run_dict(r) for r in recent_runs(site, name, limit=runs)],
    }


def _job_name(name: str) -> str:
    if name not in current_site().settings.jobs:
        raise Problem("not-found", "no job of that name in [jobs]")
    return name


@bp.get("")
@operation(summary="Jobs and their latest runs", tag="jobs", response=JobListResponseSchema)
def list_jobs() -> Response:
    require_role("admin", permission="trigger")
    names = sorted(current_site().settings.jobs)
    return jsonify({"items": [_job_dict(n, runs=1) for n in names]})


@bp.get("/<name>")
@operation(
    summary="One job and its recent runs", tag="jobs", response=JobSchema, params=[JOB_PARAM]
)
def get_job(name: str) -> Response:
    require_role("admin", permission="trigger")
    return jsonify(_job_dict(_job_name(name)))


@bp.post("/<name>/run")
@operation(
    summary="Run a job now",
    tag="jobs",
    response=JobRunResponseSchema,
    status=202,
    problems=[409],
    params=[JOB_PARAM],
)
def trigger(name: str) -> Response:
    """Start a run in the background; 409 job-busy when another process runs the job."""
    caller = require_role("admin", permission="trigger")
    site = current_site()
    name = _job_name(name)
    commit_nonce()  # the lease is taken through another connection
    lease = HeldLease(site, name)
    if not lease.acquire():
        raise Problem("job-busy", "the job is being run by another process")

    def work() -> None:
        try:
            run_job(site, name, lease=lease)
        except GatewayError as exc:
            log.warning("job %s (triggered by %s): %s", name, caller.actor, exc)
        except Exception:  # noqa: BLE001 - a background thread must log, not die silently
            log.exception("job %s (triggered by %s) failed", name, caller.actor)
        finally:
            lease.release()

    record_answer(
        actor=caller.actor,
        action="api.job_trigger",
        detail={"job": name},
    )
    try:
        commit_answer()  # the trigger is on record before the run starts
    except BaseException:
        lease.release()
        raise
    threading.Thread(target=work, name=f"api-run-{name}", daemon=True).start()
    return jsonify({"job": name, "status": "started"}), 202
