"""Group commit of the API's audit entries and nonces: durable before the answer, batched.

Every answer waits until its audit entry (and its request's nonce) is committed. The audit log is
one hash chain, so appends are serialised by the chain head's row lock, held until the commit's
WAL flush: one request per transaction would cap a whole province at one fsync per request. Here
the requests of a process that finish while another commit is in flight are committed together,
in one transaction and one flush, by whichever request thread gets there first (leader/follower:
no extra thread, no added wait when the gateway is quiet, bigger batches as load grows).

A nonce that turns out to be recorded already (a replay, from this batch or from any process
sharing the store) makes its request a refusal: its data entry is replaced by the refusal's entry
in the same transaction, and the caller is told with ``Replayed``.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .. import audit
from ..store.api import remember_nonces

if TYPE_CHECKING:
    from ..site import Site

Nonce = tuple[str, str, dt.datetime]  # key id, nonce, expiry (naive UTC)
MAX_BATCH = 500  # requests per transaction


class Replayed(Exception):
    """The request's nonce was already recorded: it has been audited as a replay instead."""


@dataclass(eq=False)  # identity: two requests may carry equal contents (a replay)
class _Item:
    nonce: Nonce | None
    events: Sequence[audit.AuditEvent]
    on_replay: Sequence[audit.AuditEvent]
    done: bool = False
    replayed: bool = False
    error: BaseException | None = None


@dataclass
class GroupCommitter:
    site: Site
    max_batch: int = MAX_BATCH
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _pending: list[_Item] = field(default_factory=list)
    _leading: bool = False
    batches: int = 0  # transactions written (for the benchmark)
    items: int = 0

    def commit(
        self,
        nonce: Nonce | None,
        events: Sequence[audit.AuditEvent],
        on_replay: Sequence[audit.AuditEvent] = (),
    ) -> None:
        """Return once the nonce and the events are committed; ``Replayed`` if the nonce was used
        before (``on_replay`` was committed instead of ``events``); the store's error if it failed."""
        item = _Item(nonce, events, on_replay)
        with self._cond:
            self._pending.append(item)
            while not item.done and self._leading:
                self._cond.wait()
            if not item.done:
                # Lead: this request's item and whatever else is waiting, up to max_batch.
                self._leading = True
                self._pending.remove(item)
                take = self.max_batch - 1
                batch = [item, *self._pending[:take]]
                del self._pending[:take]
        if not item.done:
            try:
                self._write(batch)
            except BaseException:  # noqa: BLE001 - every item of the batch carries the error
                pass
            finally:
                with self._cond:
                    self._leading = False
                    self._cond.notify_all()
        if item.error is not None:
            raise item.error
        if item.replayed:
            raise Replayed()

    def _write(self, batch: list[_Item]) -> None:
        try:
            with self.site.begin() as session:
                seen: set[tuple[str, str]] = set()
                wanted: list[Nonce] = []
                for item in batch:
                    if item.nonce is None:
                        continue
                    key = item.nonce[:2]
                    if key in seen:  # the same nonce twice in one batch: the second is a replay
                        item.replayed = True
                    else:
                        seen.add(key)
                        wanted.append(item.nonce)
                fresh = remember_nonces(session, wanted)
                events: list[audit.AuditEvent] = []
                for item in batch:
                    if item.nonce is not None and item.nonce[:2] not in fresh:
                        item.replayed = True
                    events.extend(item.on_replay if item.replayed else item.events)
                if events:
                    audit.append_many(session, events, site=self.site)
        except BaseException as exc:
            for item in batch:
                item.error = exc
                item.done = True
            raise
        finally:
            self.batches += 1
            self.items += len(batch)
        for item in batch:
            item.done = True
