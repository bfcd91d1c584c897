"""Prometheus ``/metrics``: request counts and latency, plus figures read from the store.

Request metrics are per process (prometheus-client's registry); the store-derived gauges (rows
synced, quarantine size, audit chain length) are the same whichever worker answers.
"""

from __future__ import annotations

import time
from typing import Any

from flask import Flask, Response, g, request
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from .context import current_site
from .openapi import operation


class StoreCollector(Collector):
    """Gauges computed from the store at scrape time."""

    def __init__(self, app: Flask):
        self.app = app

    def collect(self):
        from ..store import records

        with self.app.app_context():
            site = current_site()
            rows = GaugeMetricFamily(
                "gateway_records", "Records in the store by dataset", labels=["dataset"]
            )
            extra = []
            try:
                with site.engine.connect() as conn:
                    for name, model in records.DATASET_MODELS.items():
                        count = conn.scalar(
                            select(func.count()).select_from(model).where(model.removed.is_(False))
                        )
                        rows.add_metric([name], count or 0)
                    for name, help_text, query in _extra_queries():
                        value = conn.scalar(query)
                        extra.append(GaugeMetricFamily(name, help_text, value=value or 0))
            except SQLAlchemyError:
                return
            yield rows
            yield from extra


def _extra_queries() -> list[tuple[str, str, Any]]:
    """(metric, help, query) for the figures other modules' tables hold."""
    from ..store.audit_log import AuditHead
    from ..store.jobs import QuarantineRow, Run

    return [
        (
            "gateway_quarantine_rows",
            "Quarantined rows still open",
            select(func.count()).select_from(QuarantineRow).where(QuarantineRow.status == "open"),
        ),
        (
            "gateway_rows_synced_total",
            "Rows read by sync runs (pushes included)",
            select(func.coalesce(func.sum(Run.read), 0)),
        ),
        (
            "gateway_audit_chain_length",
            "Entries appended to the audit chain (the head's seq)",
            select(func.coalesce(func.max(AuditHead.seq), 0)),
        ),
    ]


def init_app(app: Flask) -> None:
    registry = CollectorRegistry()
    requests_total = Counter(
        "gateway_http_requests",
        "HTTP requests",
        ["method", "endpoint", "status"],
        registry=registry,
    )
    latency = Histogram(
        "gateway_http_request_seconds",
        "Request latency",
        ["endpoint"],
        registry=registry,
        buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
    )
    registry.register(StoreCollector(app))

    @app.before_request
    def _start() -> None:
        g._started = time.perf_counter()

    # The labelled children, looked up once each (labels() builds and locks on every call).
    counters: dict[tuple[str, str, int], Any] = {}
    timers: dict[str, Any] = {}

    @app.after_request
    def _count(response: Response) -> Response:
        rule = request.url_rule
        endpoint = rule.rule if rule else "unmatched"
        key = (request.method, endpoint, response.status_code)
        counter = counters.get(key)
        if counter is None:
            counter = counters[key] = requests_total.labels(key[0], endpoint, str(key[2]))
        counter.inc()
        started = g.get("_started")
        if started is not None:
            timer = timers.get(endpoint)
            if timer is None:
                timer = timers[endpoint] = latency.labels(endpoint)
            timer.observe(time.perf_counter() - started)
        return response

    @app.get("/metrics")
    @operation(
        summary="Prometheus metrics", tag="meta", signed=False, response_content="text/plain"
    )
    def metrics() -> Response:
        return Response(generate_latest(registry), mimetype="text/plain; version=0.0.4")
