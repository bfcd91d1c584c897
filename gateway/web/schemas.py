"""The API's requests and responses as marshmallow schemas: loading, and the source of /openapi.json.

Request bodies and query strings are loaded with these schemas (unknown keys refused in bodies,
ignored in query strings). Two hot lists are checked by hand instead, with the schema kept for the
documentation: the up to 10,000 ``subjects`` of a lookup (marshmallow takes ~200 ms for them, a
fifth of the batch budget) and the pushed ``records`` (the sync engine validates those row by row,
like any other source, and quarantines what fails).
"""

from __future__ import annotations

from typing import Any

from marshmallow import EXCLUDE, RAISE, Schema, ValidationError, fields, validate, validates_schema

from ..config import ID_RETURN
from ..match import LISTS
from ..schemas import DATASETS, ID_TYPES, dataset_fields

# Text that goes into SQL filters or the audit log: no control characters (PostgreSQL refuses NUL).
PRINTABLE = validate.Regexp(r"^[^\x00-\x1f\x7f]*$", error="must not contain control characters")
PURPOSE = [validate.Length(min=1, max=100), PRINTABLE]
# A subject key: "<blind_index key id>:<hex HMAC>" (SHA-256 and SM3 both give 64 hex digits).
SUBJECT_KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}:[0-9a-f]{64}$"
SUBJECT_KEY = validate.Regexp(SUBJECT_KEY_PATTERN, error="not a subject key of this gateway")
LIMIT_MAX = 1000


class _Body(Schema):
    class Meta:
        unknown = RAISE


class _Query(Schema):
    class Meta:
        unknown = EXCLUDE


# -- shared pieces ----------------------------------------------------------------------------------


class SealedSchema(Schema):
    sealed = fields.String(
        required=True,
        metadata={
            "description": "x25519:<base64url>: sealed to the calling department's public key; "
            "open with `gateway open` or GatewayClient(private_key=...). The associated data is "
            "'<dataset>/<field>'.",
            "pattern": "^x25519:[A-Za-z0-9_-]+$",
        },
    )


def _record_properties() -> dict[str, fields.Field]:
    """Every canonical field of every dataset, typed; sealed-able ones as Raw (string or sealed)."""
    out: dict[str, fields.Field] = {}
    kinds = {
        "str": fields.String,
        "int": fields.Integer,
        "bool": fields.Boolean,
        "date": fields.Date,
        # Times are passed on as the source gave them (local, no zone): not RFC 3339 date-times.
        "datetime": fields.String,
    }
    for dataset in DATASETS:
        for name, info in dataset_fields(dataset).items():
            if name in out or name in ("id_number", "subject_key"):
                continue
            meta = {"description": f"{info.label} ({info.sensitivity})"}
            if info.sensitivity == "plain":
                out[name] = kinds[info.type](allow_none=True, metadata=meta)
            else:
                meta["description"] += ": text, or {sealed: ...} when the policy returns sealed IDs"
                out[name] = fields.Raw(allow_none=True, metadata=meta)
    return out


RecordSchema = Schema.from_dict(
    {
        "record_id": fields.Integer(
            required=True, metadata={"description": "stable id of the record in this gateway"}
        ),
        "subject_key": fields.String(
            metadata={"description": "blind index of the person (ids = subject_key)"}
        ),
        "id_masked": fields.String(
            allow_none=True, metadata={"description": "first 6 and last 4 (ids = masked)"}
        ),
        "id_number": fields.Nested(
            SealedSchema, metadata={"description": "the ID number sealed (ids = sealed)"}
        ),
        "id_type": fields.String(allow_none=True),
        **_record_properties(),
    },
    name="Record",
)


# -- lookup -----------------------------------------------------------------------------------------


class SubjectSchema(_Body):
    """One person asked about: an ID number, or a subject key the gateway returned earlier."""

    id_number = fields.String(
        validate=validate.Length(min=1, max=40),
        metadata={"description": "resident ID (15 or 18 characters) or another document number"},
    )
    id_type = fields.String(
        validate=validate.OneOf(list(ID_TYPES)),
        metadata={"description": "document type, default 1"},
    )
    subject_key = fields.String(
        validate=[validate.Length(max=100), SUBJECT_KEY],
        metadata={"description": "a subject key this gateway returned earlier (ids = subject_key)"},
    )


class LookupRequestSchema(_Body):
    purpose = fields.String(required=True, validate=PURPOSE)
    fields_ = fields.List(
        fields.String(validate=validate.Length(min=1, max=64)),
        data_key="fields",
        load_default=list,
        metadata={"description": "fields to return (default: all the policy allows)"},
    )
    subjects = fields.List(
        fields.Raw(),
        required=True,
        metadata={"description": "at most [api] max_batch (10,000) subjects"},
    )


class LookupResultSchema(Schema):
    index = fields.Integer(required=True, metadata={"description": "position in subjects"})
    found = fields.Boolean(required=True)
    error = fields.String(metadata={"description": "why the subject could not be looked up"})
    records = fields.List(fields.Nested(RecordSchema), required=True)


class LookupResponseSchema(Schema):
    dataset = fields.String(required=True, validate=validate.OneOf(DATASETS))
    purpose = fields.String(required=True)
    ids = fields.String(required=True, validate=validate.OneOf(ID_RETURN))
    fields_ = fields.List(fields.String(), data_key="fields", required=True)
    results = fields.List(fields.Nested(LookupResultSchema), required=True)


# -- changes ----------------------------------------------------------------------------------------


class ChangesQuerySchema(_Query):
    purpose = fields.String(required=True, validate=PURPOSE)
    cursor = fields.String(
        validate=[validate.Length(max=400), PRINTABLE],
        metadata={"description": "opaque: the cursor of the previous page; absent: from the start"},
    )
    limit = fields.Integer(
        load_default=500,
        validate=validate.Range(1, LIMIT_MAX),
        metadata={"description": "page size"},
    )
    fields_ = fields.String(
        data_key="fields",
        validate=[validate.Length(max=1000), PRINTABLE],
        metadata={"description": "comma-separated fields (default: all the policy allows)"},
    )


class ChangeSchema(Schema):
    change = fields.String(required=True, validate=validate.OneOf(["upsert", "removed"]))
    updated_at = fields.DateTime(required=True)
    record = fields.Nested(RecordSchema, required=True)


class ChangesResponseSchema(Schema):
    dataset = fields.String(required=True, validate=validate.OneOf(DATASETS))
    purpose = fields.String(required=True)
    ids = fields.String(required=True, validate=validate.OneOf(ID_RETURN))
    fields_ = fields.List(fields.String(), data_key="fields", required=True)
    items = fields.List(fields.Nested(ChangeSchema), required=True)
    cursor = fields.String(
        allow_none=True,
        required=True,
        metadata={"description": "where this page ends: keep it and poll again from here"},
    )
    next_cursor = fields.String(
        allow_none=True,
        required=True,
        metadata={"description": "the next page, when more changes are already waiting"},
    )


# -- push -------------------------------------------------------------------------------------------


class PushRequestSchema(_Body):
    purpose = fields.String(required=True, validate=PURPOSE)
    records = fields.List(
        fields.Dict(keys=fields.String()),
        required=True,
        metadata={
            "description": "canonical records (field names of the dataset, dates as YYYY-MM-DD, "
            "id_number in the clear: the gateway protects it on arrival)"
        },
    )


class PushProblemSchema(Schema):
    index = fields.Integer(required=True, metadata={"description": "position in records"})
    field = fields.String(allow_none=True)
    code = fields.String(required=True)
    message = fields.String(required=True)


class PushResponseSchema(Schema):
    dataset = fields.String(required=True)
    run_id = fields.Integer(required=True)
    read = fields.Integer(required=True)
    inserted = fields.Integer(required=True)
    updated = fields.Integer(required=True)
    unchanged = fields.Integer(required=True)
    quarantined = fields.Integer(required=True)
    problems = fields.List(fields.Nested(PushProblemSchema), required=True)


# -- match ------------------------------------------------------------------------------------------


class MatchQuerySchema(_Query):
    purpose = fields.String(required=True, validate=PURPOSE)
    cursor = fields.String(validate=[validate.Length(max=400), PRINTABLE])
    limit = fields.Integer(load_default=500, validate=validate.Range(1, LIMIT_MAX))
    school_code = fields.String(validate=[validate.Length(min=1, max=32), PRINTABLE])


class MatchRunSchema(Schema):
    run_id = fields.Integer(required=True)
    as_of = fields.Date(required=True)
    period = fields.String(required=True)
    cutoff = fields.Date(required=True)


def _match_row_properties() -> dict[str, fields.Field]:
    """The stored list columns (gateway.match.OUTPUT_COLUMNS), typed from the model."""
    from sqlalchemy import Boolean, Date, DateTime, Integer, SmallInteger

    from ..match import OUTPUT_COLUMNS
    from ..store.matches import MatchRow

    out: dict[str, fields.Field] = {"row_id": fields.Integer(required=True)}
    for name in OUTPUT_COLUMNS:
        if name in ("subject_key", "id_masked"):
            continue
        kind = MatchRow.__table__.c[name].type
        if isinstance(kind, Boolean):
            out[name] = fields.Boolean(allow_none=True)
        elif isinstance(kind, (Integer, SmallInteger)):
            out[name] = fields.Integer(allow_none=True)
        elif isinstance(kind, DateTime):
            out[name] = fields.String(
                allow_none=True, metadata={"description": "ISO 8601, no zone"}
            )
        elif isinstance(kind, Date):
            out[name] = fields.Date(allow_none=True)
        else:
            out[name] = fields.String(allow_none=True)
    out["subject_key"] = fields.String(metadata={"description": "ids = subject_key"})
    out["id_masked"] = fields.String(allow_none=True, metadata={"description": "ids = masked"})
    out["id_number"] = fields.Nested(SealedSchema, metadata={"description": "ids = sealed"})
    return out


MatchRowSchema = Schema.from_dict(_match_row_properties(), name="MatchRow")


class MatchListResponseSchema(Schema):
    list = fields.String(required=True, validate=validate.OneOf(list(LISTS)))
    title = fields.String(required=True)
    purpose = fields.String(required=True)
    ids = fields.String(required=True, validate=validate.OneOf(ID_RETURN))
    run = fields.Nested(MatchRunSchema, required=True)
    items = fields.List(fields.Nested(MatchRowSchema), required=True)
    next_cursor = fields.String(allow_none=True, required=True)


# -- audit ------------------------------------------------------------------------------------------


class AuditQuerySchema(_Query):
    actor = fields.String(validate=[validate.Length(min=1, max=100), PRINTABLE])
    department = fields.String(validate=[validate.Length(min=1, max=64), PRINTABLE])
    dataset = fields.String(validate=[validate.Length(min=1, max=64), PRINTABLE])
    action = fields.String(validate=[validate.Length(min=1, max=64), PRINTABLE])
    outcome = fields.String(validate=validate.OneOf(["ok", "delivered", "refused", "failed"]))
    purpose = fields.String(validate=PURPOSE)
    since = fields.DateTime()
    until = fields.DateTime()
    before_seq = fields.Integer(validate=validate.Range(1))
    limit = fields.Integer(load_default=100, validate=validate.Range(1, LIMIT_MAX))


class AuditEntrySchema(Schema):
    seq = fields.Integer(required=True)
    ts = fields.String(required=True)
    actor = fields.String(required=True)
    action = fields.String(required=True)
    outcome = fields.String(required=True)
    dataset = fields.String(allow_none=True, required=True)
    purpose = fields.String(allow_none=True, required=True)
    fields_ = fields.List(fields.String(), data_key="fields", required=True)
    subject_count = fields.Integer(required=True)
    detail = fields.Dict(allow_none=True, required=True)
    alg = fields.String(required=True)
    prev_hash = fields.String(required=True)
    hash = fields.String(required=True)


class AuditSearchResponseSchema(Schema):
    items = fields.List(fields.Nested(AuditEntrySchema), required=True)
    next_before_seq = fields.Integer(
        allow_none=True, required=True, metadata={"description": "pass as before_seq for more"}
    )


class AuditSubjectQuerySchema(_Query):
    subject_key = fields.List(
        fields.String(validate=[validate.Length(max=100), SUBJECT_KEY]),
        required=True,
        validate=validate.Length(min=1, max=100),
        metadata={"description": "one or more subject keys (repeat the parameter)"},
    )


class AuditSubjectRequestSchema(_Body):
    """By ID number (in the body, so it never appears in a URL or an access log) or subject keys."""

    id_number = fields.String(validate=validate.Length(min=1, max=40))
    id_type = fields.String(load_default="1", validate=validate.OneOf(list(ID_TYPES)))
    subject_keys = fields.List(
        fields.String(validate=[validate.Length(max=100), SUBJECT_KEY]),
        validate=validate.Length(max=100),
    )

    @validates_schema
    def _one(self, data: dict[str, Any], **_: Any) -> None:
        if not data.get("id_number") and not data.get("subject_keys"):
            raise ValidationError("give id_number or subject_keys", "_schema")


class SubjectReportItemSchema(Schema):
    seq = fields.Integer(required=True)
    ts = fields.String(required=True)
    actor = fields.String(required=True)
    recipient = fields.String(required=True)
    action = fields.String(required=True)
    outcome = fields.String(required=True)
    dataset = fields.String(allow_none=True, required=True)
    fields_ = fields.List(fields.String(), data_key="fields", required=True)
    purpose = fields.String(allow_none=True, required=True)
    subject_count = fields.Integer(required=True)
    detail = fields.Dict(allow_none=True, required=True)


class AuditSubjectResponseSchema(Schema):
    items = fields.List(fields.Nested(SubjectReportItemSchema), required=True)


# -- jobs -------------------------------------------------------------------------------------------


class RunSchema(Schema):
    run_id = fields.Integer(allow_none=True, required=True)
    job = fields.String(required=True)
    kind = fields.String(required=True)
    mode = fields.String(required=True)
    status = fields.String(required=True)
    read = fields.Integer(required=True)
    inserted = fields.Integer(required=True)
    updated = fields.Integer(required=True)
    unchanged = fields.Integer(required=True)
    quarantined = fields.Integer(required=True)
    removed = fields.Integer(required=True)
    delivered = fields.Integer(required=True)
    duration_s = fields.Float(required=True)
    error = fields.String(allow_none=True, required=True)


class JobSchema(Schema):
    name = fields.String(required=True)
    source = fields.String(required=True)
    dataset = fields.String(allow_none=True, required=True)
    mode = fields.String(required=True)
    schedule = fields.String(allow_none=True, required=True)
    targets = fields.List(fields.String(), required=True)
    runs = fields.List(fields.Nested(RunSchema), required=True)


class JobListResponseSchema(Schema):
    items = fields.List(fields.Nested(JobSchema), required=True)


class JobRunResponseSchema(Schema):
    job = fields.String(required=True)
    status = fields.String(required=True, validate=validate.OneOf(["started"]))


# -- health -----------------------------------------------------------------------------------------


class HealthSchema(Schema):
    status = fields.String(required=True)


class ReadySchema(Schema):
    status = fields.String(required=True, validate=validate.OneOf(["ready", "not ready"]))
    checks = fields.Dict(keys=fields.String(), values=fields.String(), required=True)


DATASET_PARAM = {
    "in": "path",
    "name": "dataset",
    "required": True,
    "schema": {"type": "string", "enum": list(DATASETS)},
}
LIST_PARAM = {
    "in": "path",
    "name": "list_name",
    "required": True,
    "schema": {"type": "string", "enum": list(LISTS)},
}
