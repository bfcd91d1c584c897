"""``gateway keys reindex``: after a blind_index or seal key rotation, bring the stored rows under
the active keys — online (short transactions, one per batch), resumable (progress saved per batch).

For each row not yet under the active keys: open its sealed fields (bound to its old subject key),
recompute the subject key from the plaintext ID number with the active blind_index key, put it in
the record key, recompute the keyed content hash, seal every sealed field again with the active seal
key, bound to the new subject key. The UPDATE is conditional on the row's old content hash, so a sync
that rewrote the row meanwhile (already under the active keys) wins. Quarantined rows are re-sealed.

Not re-keyed: audit entries (immutable; searches use the blind indexes under every key) and the
match tables (the next match run rebuilds them from the re-keyed datasets).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, select, update

from . import audit, ids
from .protect import RecordProtector
from .store.jobs import QuarantineRow, ReindexProgress, Run, utcnow
from .store.records import DATASET_MODELS

if TYPE_CHECKING:
    import threading

    from .site import Site


@dataclass
class ReindexSummary:
    blind_key: str
    seal_key: str
    run_id: int | None = None
    tables: dict[str, dict[str, int]] = field(
        default_factory=dict
    )  # table -> {seen, rekeyed, skipped}
    finished: bool = False

    def line(self) -> str:
        parts = [f"{t}: {c['rekeyed']} re-keyed of {c['seen']}" for t, c in self.tables.items()]
        state = "done" if self.finished else "stopped (run it again to go on)"
        return f"reindex under {self.blind_key} / {self.seal_key}: {state}; " + "; ".join(parts)


def _progress(site: Site, table: str, blind: str, seal: str) -> ReindexProgress:
    with site.begin() as session:
        row = session.get(ReindexProgress, (table, blind, seal))
        if row is None:
            row = ReindexProgress(
                table_name=table, blind_key=blind, seal_key=seal, last_id=0, rows_done=0
            )
            session.add(row)
        return row


def _save(
    site: Site, table: str, blind: str, seal: str, last_id: int, done: int, finished: bool
) -> None:
    with site.begin() as session:
        row = session.get(ReindexProgress, (table, blind, seal))
        row.last_id, row.rows_done, row.finished, row.updated_at = (
            last_id,
            row.rows_done + done,
            finished,
            utcnow(),
        )


def reindex(
    site: Site, *, batch_size: int = 1000, stop: threading.Event | None = None, progress: Any = None
) -> ReindexSummary:
    keyring, protector = site.keyring, site.protector
    blind = keyring.active("blind_index").id
    seal = keyring.active("seal").id
    seal_ids = {k.id for k in keyring.keys("seal")}
    summary = ReindexSummary(blind, seal)
    with site.begin() as session:
        run = Run(job="keys.reindex", kind="reindex", status="running", started_at=utcnow())
        session.add(run)
        session.flush()
        summary.run_id = run.id
    stopped = False
    for dataset, model in DATASET_MODELS.items():
        table = model.__table__
        rp = RecordProtector(protector, dataset, [c.name for c in table.columns], {})
        counts = summary.tables.setdefault(dataset, {"seen": 0, "rekeyed": 0, "skipped": 0})
        state = _progress(site, dataset, blind, seal)
        if state.finished:
            continue
        last_id = state.last_id
        text_cols = [
            c.name
            for c in table.columns
            if c.name not in ("subject_key", "record_key", "content_hash")
        ]
        while not stopped:
            with site.engine.connect() as conn:
                rows = [
                    dict(r._mapping)
                    for r in conn.execute(
                        select(table)
                        .where(table.c.id > last_id)
                        .order_by(table.c.id)
                        .limit(batch_size)
                    )
                ]
            if not rows:
                _save(site, dataset, blind, seal, last_id, 0, True)
                break
            changes = []
            for row in rows:
                counts["seen"] += 1
                sealed = [
                    c
                    for c in text_cols
                    if isinstance(row[c], str)
                    and row[c].partition(":")[0] in seal_ids
                    and ":" in row[c]
                ]
                if row["subject_key"].startswith(blind + ":") and all(
                    row[c].startswith(seal + ":") for c in sealed
                ):
                    continue
                old_sk = row["subject_key"]
                plain = {c: row[c] for c in rp.fields}
                for c in sealed:
                    plain[c] = protector.open(row[c], dataset=dataset, field=c, record=old_sk)
                number = plain.get("id_number")
                if not number:
                    counts["skipped"] += (
                        1  # cannot be re-indexed without its number (never stored so)
                    )
                    continue
                new_sk = protector.blind_index(
                    ids.index_material(str(row["id_type"] or "1"), number)
                )
                new = {
                    c: protector.seal(plain[c], dataset=dataset, field=c, record=new_sk)
                    for c in sealed
                }
                new["subject_key"] = new_sk
                new["record_key"] = new_sk + row["record_key"][len(old_sk) :]
                new["content_hash"] = rp.content_hash(plain)
                changes.append((row["id"], row["content_hash"], new))
            with site.begin() as session:
                for row_id, old_hash, values in changes:
                    done = session.execute(
                        update(table)
                        .where(and_(table.c.id == row_id, table.c.content_hash == old_hash))
                        .values(**values)
                    ).rowcount
                    counts["rekeyed"] += done
            last_id = rows[-1]["id"]
            _save(site, dataset, blind, seal, last_id, len(rows), False)
            if progress:
                progress(dataset, counts)
            stopped = bool(stop and stop.is_set())
    if not stopped:
        _reseal_quarantine(site, seal, seal_ids, summary, batch_size)
    summary.finished = not stopped
    with site.begin() as session:
        session.execute(
            update(Run)
            .where(Run.id == summary.run_id)
            .values(
                status="succeeded" if summary.finished else "interrupted",
                finished_at=utcnow(),
                updated=sum(c["rekeyed"] for c in summary.tables.values()),
                read=sum(c["seen"] for c in summary.tables.values()),
                unchanged=sum(c["seen"] - c["rekeyed"] for c in summary.tables.values()),
            )
        )
        audit.record(
            session,
            site=site,
            actor="keys:reindex",
            action="keys.reindex",
            outcome="ok",
            detail={
                "run": summary.run_id,
                "blind_key": blind,
                "seal_key": seal,
                "finished": summary.finished,
                "tables": json.loads(json.dumps(summary.tables)),
            },
        )
    audit.checkpoint(site)
    return summary


def _reseal_quarantine(
    site: Site, seal: str, seal_ids: set[str], summary: ReindexSummary, batch_size: int
) -> None:
    protector = site.protector
    counts = summary.tables.setdefault("quarantine", {"seen": 0, "rekeyed": 0, "skipped": 0})
    last_id = 0
    t = QuarantineRow.__table__
    while True:
        with site.engine.connect() as conn:
            rows = conn.execute(
                select(t.c.id, t.c.uid, t.c.row_sealed)
                .where(t.c.id > last_id)
                .order_by(t.c.id)
                .limit(batch_size)
            ).all()
        if not rows:
            return
        with site.begin() as session:
            for row_id, uid, token in rows:
                counts["seen"] += 1
                if token.startswith(seal + ":"):
                    continue
                plain = protector.open(token, dataset="quarantine", field="row", record=uid)
                fresh = protector.seal(plain, dataset="quarantine", field="row", record=uid)
                counts["rekeyed"] += session.execute(
                    update(t)
                    .where(t.c.id == row_id, t.c.row_sealed == token)
                    .values(row_sealed=fresh)
                ).rowcount
        last_id = rows[-1][0]


def stale_rows(site: Site, dataset: str, source: str) -> bool:
    """True when some stored rows of ``source`` are indexed under an older blind_index key."""
    keys = site.keyring.keys("blind_index")
    if len(keys) < 2:
        return False
    prefix = site.keyring.active("blind_index").id + ":"
    table = DATASET_MODELS[dataset].__table__
    with site.engine.connect() as conn:
        return (
            conn.execute(
                select(table.c.id)
                .where(
                    table.c.source == source,
                    ~table.c.subject_key.startswith(prefix, autoescape=True),
                )
                .limit(1)
            ).first()
            is not None
        )
