"""What the API keeps between requests: the nonces seen within the signature window.

``api_nonces`` has the primary key (key_id, nonce): recording a nonce is one
``INSERT .. ON CONFLICT DO NOTHING``, and a second request with the same nonce, in any process
sharing the store, finds the row and is refused as a replay. On PostgreSQL a concurrent duplicate
waits on the first request's uncommitted row and then sees the conflict, so exactly one of two
simultaneous replays gets through. Rows are only needed while their timestamp is inside the window;
``purge_nonces`` deletes the expired ones (the API calls it now and then, see gateway/web/auth.py).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy import DateTime, String, delete, insert
from sqlalchemy.orm import Mapped, Session, mapped_column

from .base import Base


class ApiNonce(Base):
    __tablename__ = "api_nonces"

    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    # Naive UTC: when the signed timestamp leaves the window, after which the nonce may be forgotten
    # (a request that old is refused for its timestamp anyway).
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime, index=True)


NONCES = ApiNonce.__table__


def remember_nonce(session: Session, key_id: str, nonce: str, expires_at: dt.datetime) -> bool:
    """Record a nonce in the caller's transaction; False if it was already recorded (a replay)."""
    values = {"key_id": key_id, "nonce": nonce, "expires_at": expires_at}
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    else:  # MySQL-family stores: a duplicate key error is the replay signal
        from sqlalchemy.exc import IntegrityError

        try:
            with session.begin_nested():
                session.execute(insert(NONCES).values(values))
        except IntegrityError:
            return False
        return True
    # RETURNING, not rowcount: drivers disagree on rowcount for a skipped conflict.
    inserted = session.execute(
        dialect_insert(NONCES)
        .values(values)
        .on_conflict_do_nothing(index_elements=["key_id", "nonce"])
        .returning(NONCES.c.nonce)
    ).first()
    return inserted is not None


def remember_nonces(
    session: Session, nonces: Sequence[tuple[str, str, dt.datetime]]
) -> set[tuple[str, str]]:
    """Record many distinct (key id, nonce, expiry) in one statement; returns those that were new.

    The others were recorded before: replays. Give each (key id, nonce) once.
    """
    if not nonces:
        return set()
    dialect = session.get_bind().dialect.name
    if dialect not in ("postgresql", "sqlite"):
        return {(k, n) for k, n, e in nonces if remember_nonce(session, k, n, e)}
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    rows = [{"key_id": k, "nonce": n, "expires_at": e} for k, n, e in nonces]
    result = session.execute(
        dialect_insert(NONCES)
        .values(rows)
        .on_conflict_do_nothing(index_elements=["key_id", "nonce"])
        .returning(NONCES.c.key_id, NONCES.c.nonce)
    )
    return {(k, n) for k, n in result}


def purge_nonces(session: Session, now: dt.datetime) -> int:
    """Delete nonces whose window has passed; returns how many."""
    return session.execute(delete(NONCES).where(NONCES.c.expires_at < now)).rowcount or 0
