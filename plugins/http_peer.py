"""The ``http`` connector: another gateway (or a paginated REST service), over signed requests.

This is how one county's gateway talks to another's: a cross-region transfer (台账划转) is a job
of county A whose target is county B's gateway (``write``: records pushed to B's
``POST /api/v1/datasets/{dataset}/records``), and county A learns what became of the child by a
job whose source is B's gateway (``read``: B's change feed, page by page, its cursor stored with
each batch so a run resumes where the last one stopped). Every request is signed with this
gateway's secret at the peer (GatewayClient), under the peer's suite.

System options (``[systems.<name>]``, connector = "http")::

    url = "https://gateway.county-b.example"   # the peer (required)
    key_id = "county-a"          # this gateway's key id at the peer (required)
    purpose = "transfer"         # the purpose every request names (required)
    remote_dataset = "students"  # the peer's dataset (default: the system's dataset)
    secret_file = "keys/county-a-at-b.secret"  # default: the keyring's department key key_id
    suite = "sm4-gcm+hmac-sm3"   # the peer's suite (default: the secret file's, else ours)
    fields = ["status", ...]     # change feed: fields asked for (default: all the peer allows)
    page_size = 500              # change feed (or REST limit_param) page, at most the batch size
    push_batch = 1000            # records per push request (the peer's max_batch or less)
    timeout = 60                 # seconds per request
    retries = 3
    verify = true                # TLS: true, false or a CA bundle path
    # A REST service that is not a gateway (read only): where the items and the next cursor are.
    path = "/v1/persons"  items = "items"  cursor_param = "cursor"  next_field = "next_cursor"
    params = { region = "5226" }
    key = ["id"]            # the item fields naming an item: its position is "/v1/persons id=42"
    limit_param = "limit"   # the service's page-size parameter, if it has one (sent: page_size,
                            # at most the batch size); without it the service's page is the batch

The REST service's next cursor is stored after each page: a service that gives one after every
page with items (null only on an empty page) is resumed exactly; one that gives null on its last
page has that page read again by the next run (unchanged rows are then counted unchanged).
An item that is not a JSON object, or lacks a ``key`` field, is a row with a problem (quarantined
with its position: the item's index in the page and the cursor the page was asked with).

The peer answers with ID numbers sealed to this gateway's open key when its policy says
``ids = "sealed"`` (give the peer this gateway's public key: ``gateway keys public open``); they
are opened here with the keyring. Records whose ID the peer does not disclose cannot be keyed and go
to quarantine with that reason. The records travel in canonical form: the mappings
``gateway_peer/<dataset>`` (inbound) and ``gateway_peer/<dataset>.out`` (outbound) are the identity
(``peer_mapping_text`` writes them). Removal events of a peer's feed are not applied (the push API
upserts only); they are counted in the log.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from gateway.connectors import Batch, Connector, ConnectorContext, Row, WriteResult
from gateway.errors import ConfigError, GatewayError, SourceError, TransientSourceError
from gateway.hookspecs import hookimpl

log = logging.getLogger("gateway.plugins.http")

NAME = "http"
MAX_PAGE = 1000  # the API's page limit
RETRYABLE = {0, 429, 500, 502, 503, 504}
# Fields the outbound push never sends: the engine's bookkeeping.
_ENGINE_KEYS = frozenset({"change", "removed", "subject_key"})
_JSON_TYPES = {str: "string", int: "number", float: "number", bool: "boolean", list: "array"}


class HttpPeerConnector(Connector):
    name = NAME
    options = (
        "url",
        "key_id",
        "purpose",
        "remote_dataset",
        "secret_file",
        "suite",
        "fields",
        "page_size",
        "push_batch",
        "timeout",
        "retries",
        "verify",
        "path",
        "items",
        "cursor_param",
        "next_field",
        "params",
        "key",
        "limit_param",
    )

    def __init__(self, options: Mapping[str, Any], context: ConnectorContext):
        super().__init__(options, context)
        where = f"systems.{context.system}"
        for required in ("url", "key_id", "purpose"):
            if not isinstance(self.config.get(required), str) or not self.config[required]:
                raise ConfigError(f"{where}.{required}: required for the http connector (text)")
        self.url = self.config["url"].rstrip("/")
        self.purpose = self.config["purpose"]
        self.site = context.extras.get("site")
        system = self.site.settings.systems.get(context.system) if self.site else None
        self.dataset = self.config.get("remote_dataset") or (system.dataset if system else None)
        self.fields = list(self.config.get("fields") or [])
        self.page_size = int(self.config.get("page_size", 500))
        self.push_batch = int(self.config.get("push_batch", 1000))
        if not 1 <= self.page_size <= MAX_PAGE:
            raise ConfigError(f"{where}.page_size: between 1 and {MAX_PAGE}")
        if self.push_batch < 1:
            raise ConfigError(f"{where}.push_batch: at least 1")
        self.rest_path = self.config.get("path")
        key = self.config.get("key") or []
        self.rest_key = [key] if isinstance(key, str) else list(key)
        self._client: Any = None
        self._where = where

    # -- the signed client ------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self._make_client()
        return self._client

    def _make_client(self) -> Any:
        from gateway.client import GatewayClient
        from gateway.crypto import get_suite, read_secret_file

        key_id = self.config["key_id"]
        handed_suite = None
        if self.config.get("secret_file"):
            path = Path(self.config["secret_file"])
            if not path.is_absolute():
                path = Path(self.context.base_dir) / path
            handed = read_secret_file(path)
            if handed.key_id != key_id:
                raise ConfigError(
                    f"{self._where}.secret_file: holds key {handed.key_id}, not key_id {key_id}"
                )
            secret, handed_suite = handed.secret, handed.suite
        elif self.site is not None:
            secret = self.site.keyring.department_secret(key_id)
        else:
            raise ConfigError(f"{self._where}: needs secret_file (no site keyring here)")
        suite_name = (
            self.config.get("suite")
            or handed_suite
            or (self.site.settings.gateway.suite if self.site else "aes-gcm+hmac-sha256")
        )
        verify = self.config.get("verify", True)
        if isinstance(verify, str) and not Path(verify).is_absolute():
            verify = str(Path(self.context.base_dir) / verify)
        return GatewayClient(
            self.url,
            key_id,
            secret,
            get_suite(suite_name),
            keyring=self.site.keyring if self.site else None,
            timeout=(5.0, float(self.config.get("timeout", 60))),
            retries=int(self.config.get("retries", 3)),
            verify=verify,
        )

    def _failure(self, what: str, exc: Exception) -> SourceError:
        from gateway.client import ClientError

        status = exc.status if isinstance(exc, ClientError) else 0
        cls = TransientSourceError if status in RETRYABLE else SourceError
        return cls(self.context.system, f"{self.url} {what}", str(exc))

    # -- read ---------------------------------------------------------------------------------

    def read(self, cursor: Any = None, batch_size: int = 5000) -> Iterator[Batch]:
        from gateway.client import ClientError

        if self.rest_path:
            yield from self._read_rest(cursor, batch_size)
            return
        if not self.dataset:
            raise ConfigError(f"{self._where}: set remote_dataset (or the system's dataset)")
        limit = max(1, min(self.page_size, batch_size, MAX_PAGE))
        while True:
            try:
                page = self.client.changes_page(
                    self.dataset,
                    purpose=self.purpose,
                    cursor=cursor,
                    limit=limit,
                    fields=self.fields,
                )
            except ClientError as exc:
                raise self._failure(f"changes of {self.dataset}", exc) from None
            except GatewayError as exc:  # a sealed value that does not open with our keys
                raise SourceError(self.context.system, f"{self.url} changes", str(exc)) from None
            rows, removed = [], 0
            for item in page.get("items", []):
                if item.get("change") == "removed":
                    removed += 1
                    continue
                rows.append(self._row(item.get("record") or {}))
            if removed:
                log.info(
                    "%s: %d removal event(s) of %s not applied (pushes upsert only)",
                    self.context.system,
                    removed,
                    self.dataset,
                )
            cursor = page.get("cursor") or cursor
            if rows or page.get("next_cursor"):
                yield Batch(rows, cursor=cursor)
            if not page.get("next_cursor"):
                if not rows and cursor is not None:
                    yield Batch([], cursor=cursor)  # keep the position even when nothing came
                return

    def _row(self, record: Mapping[str, Any]) -> Row:
        position = f"{self.url} {self.dataset} record {record.get('record_id', '?')}"
        data = {k: v for k, v in record.items() if k not in ("record_id", "id_masked")}
        problems = []
        if isinstance(data.get("id_number"), dict):
            problems.append(
                (
                    "id_number",
                    "sealed",
                    "the ID number is sealed and this gateway's keyring has no open key for it",
                )
            )
        elif not isinstance(data.get("id_number"), str):
            problems.append(
                (
                    "id_number",
                    "not_disclosed",
                    "the peer did not disclose the ID number (its policy for this gateway must "
                    'say ids = "sealed", with this gateway\'s open public key)',
                )
            )
        return Row(position, data, problems)

    def _read_rest(self, cursor: Any, batch_size: int) -> Iterator[Batch]:
        from gateway.client import ClientError

        items_key = self.config.get("items", "items")
        cursor_param = self.config.get("cursor_param", "cursor")
        next_field = self.config.get("next_field", "next_cursor")
        params = dict(self.config.get("params") or {})
        limit_param = self.config.get("limit_param")
        if limit_param:
            params[limit_param] = max(1, min(self.page_size, batch_size))
        while True:
            query = {**params, cursor_param: cursor}
            try:
                page = self.client.page(self.rest_path, query)
            except ClientError as exc:
                raise self._failure(self.rest_path, exc) from None
            items = page.get(items_key)
            if not isinstance(items, list):
                raise SourceError(
                    self.context.system,
                    f"{self.url}{self.rest_path}",
                    f"the answer has no list {items_key!r}",
                )
            # Positions name the page by the cursor it was asked with, not by a page counter, so
            # they are the same whether a run read from the start or resumed.
            page_at = "the first page" if cursor is None else f"page {cursor_param}={cursor}"
            rows = [self._rest_row(item, f"item {i} of {page_at}") for i, item in enumerate(items)]
            nxt = page.get(next_field)
            cursor = nxt or cursor
            yield Batch(rows, cursor=cursor)
            if not nxt:
                return

    def _rest_row(self, item: Any, where: str) -> Row:
        """One item of a REST page; a malformed one is a row with a problem, not the end."""
        from gateway.client import open_document
        from gateway.schemas import scrub

        # Scrubbed: a key or a cursor may be an ID number, and positions are stored in the clear.
        position = scrub(f"{self.rest_path} {where}")
        if not isinstance(item, dict):
            kind = "null" if item is None else _JSON_TYPES.get(type(item), type(item).__name__)
            return Row(
                position,
                {"_item": item},
                [("", "not_an_object", f"the item is a JSON {kind}, not an object")],
            )
        opener = self.client._opener
        if opener is not None:
            item = open_document(item, opener, dataset=self.dataset)
        key = self.rest_key
        missing = [k for k in key if item.get(k) is None or item.get(k) == ""]
        if missing:
            return Row(
                position,
                dict(item),
                [(missing[0], "missing_key", f"the item has no {', '.join(missing)} (its key)")],
            )
        if key:
            position = scrub(f"{self.rest_path} " + ",".join(f"{k}={item[k]}" for k in key))
        return Row(position, dict(item))

    # -- write --------------------------------------------------------------------------------

    def write(self, rows: Sequence[Mapping[str, Any]], key: Sequence[str]) -> WriteResult:
        from gateway.client import ClientError

        if self.rest_path:
            raise ConfigError(f"{self._where}: a REST source (path) cannot be written to")
        if not self.dataset:
            raise ConfigError(f"{self._where}: set remote_dataset (or the system's dataset)")
        records = []
        skipped = 0
        for row in rows:
            if row.get("change") == "removed" or row.get("removed") is True:
                skipped += 1
                continue
            # Empty fields are left out: the peer's policy then only needs what is really sent.
            records.append(
                {k: v for k, v in row.items() if k not in _ENGINE_KEYS and v is not None}
            )
        if skipped:
            log.info(
                "%s: %d removal(s) not pushed (pushes upsert only)", self.context.system, skipped
            )
        result = WriteResult()
        for i in range(0, len(records), self.push_batch):
            chunk = records[i : i + self.push_batch]
            try:
                answer = self.client.push(self.dataset, chunk, purpose=self.purpose)
            except ClientError as exc:
                raise self._failure(f"push to {self.dataset}", exc) from None
            result.inserted += int(answer.get("inserted", 0))
            result.updated += int(answer.get("updated", 0))
            result.unchanged += int(answer.get("unchanged", 0))
            if answer.get("quarantined"):
                log.warning(
                    "%s: the peer quarantined %d of %d pushed record(s) (run %s there): %s",
                    self.context.system,
                    answer["quarantined"],
                    len(chunk),
                    answer.get("run_id"),
                    "; ".join(
                        f"records[{p['index'] + i}] {p.get('field')}: {p.get('code')}"
                        for p in answer.get("problems", [])[:5]
                    ),
                )
        return result

    def close(self) -> None:
        if self._client is not None:
            self._client.session.close()
            self._client = None


# -- the identity mappings of a peer gateway ------------------------------------------------------


def peer_mapping_text(dataset: str, direction: str = "inbound") -> str:
    """The TOML of ``gateway_peer/<dataset>`` (inbound) or ``gateway_peer/<dataset>.out``: the
    canonical fields unchanged, with the canonical sensitivity classes."""
    from gateway.schemas import COMPUTED_FIELDS, dataset_fields

    outbound = direction == "outbound"
    name = f"gateway_peer/{dataset}" + (".out" if outbound else "")
    lines = [
        "# Generated by gateway_plugins.http_peer.peer_mapping_text: canonical <-> canonical.",
        "[mapping]",
        f'name = "{name}"',
        'system = "gateway_peer"',
        f'dataset = "{dataset}"',
        f'direction = "{direction}"',
        'version = "1"',
    ]
    if outbound:
        lines.append('key = ["id_number"]')
    else:
        from gateway.web.push import record_key_fields

        keys = record_key_fields(dataset)
        lines.append("record_key = [" + ", ".join(f'"{k}"' for k in keys) + "]")
    transforms = {"date": '["date"]', "datetime": '["datetime"]', "int": '["int"]'}
    for field, info in dataset_fields(dataset).items():
        if field in COMPUTED_FIELDS:
            continue
        lines += ["", f"[fields.{field}]", f'from = "{field}"']
        if not outbound:
            if field == "id_number":
                lines.append('transforms = ["id_number"]')
            elif info.type in transforms:
                lines.append(f"transforms = {transforms[info.type]}")
            if field == "id_type":
                lines.append('default = "1"')
        if info.required and field != "id_type":
            lines.append("required = true")
        lines.append(f'sensitivity = "{info.sensitivity}"')
    if outbound:
        lines += ["", "[fields.change]", 'from = "change"']
    return "\n".join(lines) + "\n"


def write_peer_mappings(folder: Path, datasets: Sequence[str] | None = None) -> list[Path]:
    """Write the peer mappings into ``folder`` (a site's ``mappings/``): gateway_peer/*.toml."""
    from gateway.schemas import DATASETS

    target = Path(folder) / "gateway_peer"
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for dataset in datasets or DATASETS:
        for direction, suffix in (("inbound", ""), ("outbound", ".out")):
            path = target / f"{dataset}{suffix}.toml"
            path.write_text(peer_mapping_text(dataset, direction), encoding="utf-8")
            written.append(path)
    return written


@hookimpl
def register_connectors() -> list[type[Connector]]:
    return [HttpPeerConnector]
