"""The canonical datasets and the mapping files, described as marshmallow schemas.

Two families live here:

* the five canonical datasets (``students``, ``poverty``, ``disability``, ``assistance``,
  ``residents``): every field with its type, sensitivity class (``national_id`` / ``personal`` /
  ``plain``), its Chinese label and, for coded fields, the stable codes with the Chinese label kept
  beside each. ``validate_record`` checks a mapped row against them; it is compiled once per dataset
  into plain closures because it runs for every row of every sync (marshmallow's ``load`` would cost
  tens of microseconds a row);
* the structure of a mapping file (``[mapping]`` header and the ``[fields.*]`` tables), used by
  ``gateway.mapping.load_mapping`` before it checks the meaning (transforms, code tables, fields).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any, NamedTuple

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

SENSITIVITY = ("national_id", "personal", "plain")
# Higher rank = more protected; a mapping may never lower a canonical field's class.
SENSITIVITY_RANK = {"plain": 0, "personal": 1, "national_id": 2}
DIRECTIONS = ("inbound", "outbound")


class FieldError(NamedTuple):
    """One field of one row that could not be mapped or is not valid. ``message`` never holds an ID
    number in the clear (values that look like one are masked before they get here)."""

    field: str
    code: str
    message: str


# --- code values, the Chinese label beside each --------------------------------------------------

ID_TYPES = {
    "1": "居民身份证",
    "6": "香港特区护照/身份证明",
    "7": "澳门特区护照/身份证明",
    "8": "台湾居民来往大陆通行证",
    "9": "境外永久居住证",
    "A": "护照",
    "Z": "其他",
}
SEX = {"1": "男", "2": "女"}
STUDENT_STATUS = {
    "enrolled": "在读",
    "suspended": "休学",
    "transferred_out": "转出",
    "suspected_dropout": "疑似辍学",
    "dropout": "辍学",
    "graduated": "毕业",
    "deceased": "死亡",
}
POVERTY_TYPE = {
    "lifted": "脱贫户",
    "unstable": "脱贫不稳定户",
    "marginal": "边缘易致贫户",
    "hardship": "突发严重困难户",
}
DISABILITY_CATEGORY = {1: "视力", 2: "听力", 3: "言语", 4: "肢体", 5: "智力", 6: "精神", 7: "多重"}
DISABILITY_GRADE = {1: "一级", 2: "二级", 3: "三级", 4: "四级"}
ASSISTANCE_TYPE = {
    "dibao": "低保",
    "tekun": "特困供养",
    "orphan": "孤儿",
    "unsupported_child": "事实无人抚养儿童",
    "temporary": "临时救助",
}


def _f(
    kind: type[fields.Field],
    label: str,
    *,
    sensitivity: str = "plain",
    required: bool = False,
    codes: Mapping[Any, str] | None = None,
    max_length: int | None = None,
    pattern: str | None = None,
    **kwargs: Any,
) -> fields.Field:
    """A canonical field: marshmallow type plus our metadata (label, class, codes)."""
    validators: list[Callable[[Any], Any]] = []
    if codes:
        validators.append(validate.OneOf(list(codes)))
    if max_length:
        validators.append(validate.Length(max=max_length))
    if pattern:
        validators.append(validate.Regexp(pattern))
    meta = {"label": label, "sensitivity": sensitivity, "codes": dict(codes or {})}
    meta.update(max_length=max_length, pattern=pattern)
    return kind(
        required=required, allow_none=not required, validate=validators, metadata=meta, **kwargs
    )


class _Identity(Schema):
    """Who a record is about: what every canonical dataset and the flags share."""

    class Meta:
        unknown = RAISE

    # Not produced by a mapping: the blind index, computed by gateway.protect.
    subject_key = _f(fields.String, "主体索引 (盲索引)", max_length=100)
    id_type = _f(fields.String, "身份证件类型", codes=ID_TYPES)
    id_number = _f(
        fields.String, "身份证件号", sensitivity="national_id", required=True, max_length=40
    )


class _Canonical(_Identity):
    name = _f(fields.String, "姓名", sensitivity="personal", required=True, max_length=100)
    sex = _f(fields.String, "性别", codes=SEX)
    birth_date = _f(fields.Date, "出生日期")
    # The township (乡镇/街道) code: the first 9 digits of the 12-digit statistical code; 6 digits
    # when the source only knows the county.
    area_code = _f(
        fields.String, "户籍地行政区划 (乡镇)", pattern=r"^\d{6}(\d{3})?$", max_length=12
    )
    village = _f(fields.String, "村(社区)", max_length=100)
    source_updated_at = _f(fields.DateTime, "源系统更新时间")


class StudentSchema(_Canonical):
    student_no = _f(fields.String, "全国学籍号", sensitivity="national_id", max_length=40)
    school_code = _f(fields.String, "学校标识码", max_length=32)
    school_name = _f(fields.String, "学校名称", max_length=200)
    grade = _f(fields.String, "年级", max_length=32)
    class_name = _f(fields.String, "班级", max_length=64)
    status = _f(fields.String, "学籍状态", required=True, codes=STUDENT_STATUS)
    transfer_to = _f(fields.String, "转入学校", max_length=200)
    guardian_phone = _f(fields.String, "监护人联系电话", sensitivity="personal", max_length=40)


class PovertySchema(_Canonical):
    household_no = _f(fields.String, "户编号", required=True, max_length=64)
    person_no = _f(fields.String, "人编号", max_length=64)
    relation = _f(fields.String, "与户主关系", max_length=32)
    poverty_type = _f(fields.String, "户类型/监测对象类别", required=True, codes=POVERTY_TYPE)
    risk_eliminated = _f(fields.Boolean, "风险是否消除")


class DisabilitySchema(_Canonical):
    cert_no = _f(
        fields.String, "残疾人证号", sensitivity="national_id", required=True, max_length=40
    )
    category = _f(fields.Integer, "残疾类别", required=True, codes=DISABILITY_CATEGORY, strict=True)
    grade = _f(fields.Integer, "残疾等级", required=True, codes=DISABILITY_GRADE, strict=True)
    issued_on = _f(fields.Date, "发证日期")
    valid_until = _f(fields.Date, "有效期至")


class AssistanceSchema(_Canonical):
    assistance_type = _f(fields.String, "救助类别", required=True, codes=ASSISTANCE_TYPE)
    household_no = _f(fields.String, "户编号", max_length=64)
    start_date = _f(fields.Date, "开始日期")
    end_date = _f(fields.Date, "结束日期")
    active = _f(fields.Boolean, "是否在保 (状态 正常)")


class ResidentSchema(_Canonical):
    address = _f(fields.String, "住址", sensitivity="personal", max_length=400)


class AidGrantedSchema(_Canonical):
    """Aid actually granted to a student (两免一补, 营养改善计划, 助学金 ...), for the aid-gap list:
    the table ``aid_granted`` (gateway.store.records.AidGranted)."""

    program = _f(fields.String, "资助项目", required=True, max_length=64)
    granted_on = _f(fields.Date, "发放日期")
    amount = _f(fields.Integer, "发放金额 (元)", strict=True)


DATASET_SCHEMAS: dict[str, type[Schema]] = {
    "students": StudentSchema,
    "poverty": PovertySchema,
    "disability": DisabilitySchema,
    "assistance": AssistanceSchema,
    "residents": ResidentSchema,
    "aid_granted": AidGrantedSchema,
}
DATASETS = tuple(DATASET_SCHEMAS)


class FlagsSchema(_Identity):
    """A student's flags from a match run (list ``flags`` of ``gateway.match``) as a target is
    sent them by ``gateway.match_delivery``. Computed by the gateway, not read from a source: an
    outbound-only dataset with no store table. A cleared record (the student left the flags list)
    has every flag false and ``flagged`` false."""

    student_no = _f(fields.String, "全国学籍号", sensitivity="national_id", max_length=40)
    school_code = _f(fields.String, "学校标识码", max_length=32)
    school_name = _f(fields.String, "学校名称", max_length=200)
    grade = _f(fields.String, "年级", max_length=32)
    class_name = _f(fields.String, "班级", max_length=64)
    status = _f(fields.String, "学籍状态", codes=STUDENT_STATUS)
    area_code = _f(fields.String, "户籍地行政区划 (乡镇)", max_length=12)
    village = _f(fields.String, "村(社区)", max_length=100)
    flagged = _f(fields.Boolean, "有标注 (否: 标注已解除)")
    poverty_lifted = _f(fields.Boolean, "脱贫户 (建档立卡)")
    monitor_type = _f(
        fields.String,
        "监测对象类别",
        codes={k: v for k, v in POVERTY_TYPE.items() if k != "lifted"},
    )
    disability_category = _f(fields.Integer, "残疾类别", codes=DISABILITY_CATEGORY, strict=True)
    disability_grade = _f(fields.Integer, "残疾等级", codes=DISABILITY_GRADE, strict=True)
    dibao = _f(fields.Boolean, "低保")
    tekun = _f(fields.Boolean, "特困供养")
    orphan = _f(fields.Boolean, "孤儿")
    unsupported_child = _f(fields.Boolean, "事实无人抚养儿童")
    poverty_source = _f(fields.String, "防返贫来源系统", max_length=64)
    poverty_date = _f(fields.DateTime, "防返贫记录日期")
    disability_source = _f(fields.String, "残疾来源系统", max_length=64)
    disability_date = _f(fields.DateTime, "残疾记录日期")
    assistance_source = _f(fields.String, "救助来源系统", max_length=64)
    assistance_date = _f(fields.DateTime, "救助记录日期")
    as_of = _f(fields.Date, "比对截止日期 (标注日期)")
    run_id = _f(fields.Integer, "比对批次", strict=True)


# Datasets the gateway computes and only sends (outbound mappings only; no table, no API).
OUTBOUND_SCHEMAS: dict[str, type[Schema]] = {"flags": FlagsSchema}
# Fields a mapping never produces: computed later by the protect step.
COMPUTED_FIELDS = frozenset({"subject_key"})


class FieldInfo(NamedTuple):
    """What the mapper and the validator need to know about one canonical field."""

    name: str
    type: str  # "str" | "int" | "bool" | "date" | "datetime"
    sensitivity: str
    label: str
    required: bool
    codes: dict[Any, str]
    max_length: int | None
    pattern: str | None


def _type_name(field: fields.Field) -> str:
    # DateTime before Date? they are unrelated classes in marshmallow; order kept for clarity.
    if isinstance(field, fields.DateTime):
        return "datetime"
    if isinstance(field, fields.Date):
        return "date"
    if isinstance(field, fields.Boolean):
        return "bool"
    if isinstance(field, fields.Integer):
        return "int"
    return "str"


@cache
def dataset_fields(dataset: str) -> dict[str, FieldInfo]:
    """Canonical fields of ``dataset`` in declaration order (KeyError for an unknown dataset);
    the outbound-only datasets (``OUTBOUND_SCHEMAS``) included."""
    schema = (DATASET_SCHEMAS.get(dataset) or OUTBOUND_SCHEMAS[dataset])()
    out: dict[str, FieldInfo] = {}
    for name, field in schema.fields.items():
        meta = field.metadata
        out[name] = FieldInfo(
            name=name,
            type=_type_name(field),
            sensitivity=meta["sensitivity"],
            label=meta["label"],
            required=field.required,
            codes=meta["codes"],
            max_length=meta["max_length"],
            pattern=meta["pattern"],
        )
    return out


def describe_datasets() -> dict[str, list[dict[str, Any]]]:
    """The canonical datasets as plain data (for documentation, ``gateway plugins``, the API)."""
    return {
        ds: [
            {
                "field": f.name,
                "type": f.type,
                "sensitivity": f.sensitivity,
                "label": f.label,
                "required": f.required,
                "codes": {str(k): v for k, v in f.codes.items()},
            }
            for f in dataset_fields(ds).values()
        ]
        for ds in DATASETS
    }


# --- masking values that might be ID numbers before they go into a message ------------------------

# 15 to 18 characters, digits (ASCII or full-width) and a final check character: legacy and
# current resident ID numbers, and the ID part of anything longer (a certificate number).
_ID_LIKE = re.compile(r"[0-9０-９]{14,17}[0-9０-９XxＸｘ]")


def _mask_match(m: re.Match[str]) -> str:
    s = m.group(0)
    return s[:6] + "*" * (len(s) - 10) + s[-4:]


def scrub(text: str) -> str:
    """``text`` with every run that looks like an ID number masked (first 6, last 4)."""
    return _ID_LIKE.sub(_mask_match, text)


def safe_text(value: Any, limit: int = 40) -> str:
    """``repr``-like text for an error message, with anything that looks like an ID number masked
    (first 6, last 4) and long values cut: a bad value may be an ID typed into the wrong column."""
    text = scrub(str(value))  # mask before cutting, or a cut ID would no longer look like one
    if len(text) > limit:
        text = text[:limit] + "…"
    return repr(text)


# --- validating a mapped record -------------------------------------------------------------------

Check = Callable[[Mapping[str, Any], list[FieldError]], None]

# Exact classes: bool is an int subclass and datetime a date subclass, both must be refused.
_EXACT_CLASS = {"str": "str", "int": "int", "bool": "bool", "date": "date"}


def _field_code(info: FieldInfo, ref: Callable[[Any], str]) -> list[str]:
    """Source lines checking one field (see ``_write_validator``)."""
    name, label = info.name, info.label
    shown = info.sensitivity == "plain"  # never echo a personal or ID value

    def problem(code: str, text: str) -> str:
        return f"errors.append({ref(FieldError(name, code, text))})"

    lines = [f"    v = rec.get({name!r})", '    if v is None or v == "":']
    lines.append(
        f"        {problem('required', f'{label} ({name}) is missing')}"
        if info.required
        else "        pass"
    )
    cls = _EXACT_CLASS.get(info.type)
    bad_type = problem("bad_type", f"{label} ({name}) must be {info.type}")
    lines += [
        f"    elif v.__class__ is not {cls}:" if cls else "    elif not isinstance(v, datetime):",
        f"        {bad_type}",
    ]
    if info.codes:
        allowed = ", ".join(f"{k} {v}" for k, v in info.codes.items())

        def bad_code(value: Any) -> FieldError:
            what = safe_text(value) if shown else "the value"
            return FieldError(name, "bad_code", f"{label} ({name}): {what} is not one of {allowed}")

        lines += [
            f"    elif v not in {ref(frozenset(info.codes))}:",
            f"        errors.append({ref(bad_code)}(v))",
        ]
    if info.max_length:
        too_long = problem(
            "too_long", f"{label} ({name}) is longer than {info.max_length} characters"
        )
        lines += [f"    elif len(v) > {info.max_length}:", f"        {too_long}"]
    if info.pattern:
        pattern = re.compile(info.pattern)

        def bad_format(value: Any) -> FieldError:
            what = safe_text(value) if shown else "the value"
            return FieldError(
                name, "bad_format", f"{label} ({name}): {what} does not match {pattern.pattern}"
            )

        lines += [
            f"    elif not {ref(pattern.match)}(v):",
            f"        errors.append({ref(bad_format)}(v))",
        ]
    return lines


# date -> "YYYYMMDD": birth dates repeat across a county's rows, formatting each is the slow part.
_DATE_DIGITS: dict[dt.date, str] = {}
_BIRTH_MISMATCH = FieldError(
    "birth_date", "birth_date_mismatch", "出生日期 differs from the birth date in the ID number"
)
_SEX_MISMATCH = FieldError(
    "sex", "sex_mismatch", "性别 differs from the sex encoded in the ID number"
)
_BAD_LENGTH = FieldError(
    "id_number", "bad_length", "resident ID number (type 1) must have 18 characters"
)


def _id_consistency(record: Mapping[str, Any], errors: list[FieldError]) -> None:
    """Birth date and sex must agree with a resident ID number when both are there."""
    number = record.get("id_number")
    if number.__class__ is not str or (record.get("id_type") or "1") != "1":
        return
    if len(number) != 18:
        errors.append(_BAD_LENGTH)
        return
    birth = record.get("birth_date")
    if birth.__class__ is dt.date:
        digits = _DATE_DIGITS.get(birth)
        if digits is None:
            digits = f"{birth.year:04d}{birth.month:02d}{birth.day:02d}"
            if len(_DATE_DIGITS) < 200_000:
                _DATE_DIGITS[birth] = digits
        if number[6:14] != digits:
            errors.append(_BIRTH_MISMATCH)
    sex = record.get("sex")
    if sex is not None and sex in SEX and sex != ("1" if number[16] in "13579" else "2"):
        errors.append(_SEX_MISMATCH)


def _date_order(first: str, last: str, code: str, message: str) -> Check:
    def check(record: Mapping[str, Any], errors: list[FieldError]) -> None:
        a, b = record.get(first), record.get(last)
        if isinstance(a, dt.date) and isinstance(b, dt.date) and b < a:
            errors.append(FieldError(last, code, message))

    return check


def _cert_consistency(record: Mapping[str, Any], errors: list[FieldError]) -> None:
    """The certificate number is the ID number + category digit + grade digit: all must agree."""
    cert, number = record.get("cert_no"), record.get("id_number")
    if not isinstance(cert, str) or len(cert) != 20:
        return
    if isinstance(number, str) and cert[:18] != number:
        errors.append(
            FieldError(
                "cert_no", "cert_id_mismatch", "残疾人证号 does not start with the ID number"
            )
        )
    for field, pos in (("category", 18), ("grade", 19)):
        value = record.get(field)
        if isinstance(value, int) and str(value) != cert[pos]:
            errors.append(
                FieldError(
                    field,
                    f"cert_{field}_mismatch",
                    f"{field} {value} differs from the certificate's {cert[pos]}",
                )
            )


def _no_number(record: Mapping[str, Any], errors: list[FieldError]) -> None:
    # Type Z ("other") may come without a number (domain.md); such a person cannot be keyed or matched.
    if record.get("id_type") == "Z" and not record.get("id_number"):
        errors.append(
            FieldError(
                "id_number",
                "no_document_number",
                "身份证件类型 Z (其他) without a number: cannot be matched",
            )
        )


@cache
def _validator(dataset: str) -> Check:
    """One generated function checking every field of ``dataset``, then the cross-field checks.

    Generated once per dataset, like the mapper's row function (``gateway.mapping``), because it
    runs for every row of every sync: a closure per field cost more than the checks themselves.
    """
    ns: dict[str, Any] = {"datetime": dt.datetime, "date": dt.date}

    def ref(value: Any) -> str:
        key = f"_k{len(ns)}"
        ns[key] = value
        return key

    lines = ["def validate(rec, errors):"]
    for info in dataset_fields(dataset).values():
        if info.name in COMPUTED_FIELDS:
            continue
        if info.name == "id_number":
            lines.append(f"    {ref(_no_number)}(rec, errors)")
        lines += _field_code(info, ref)
    extra: list[Check] = [_id_consistency]
    if dataset == "assistance":
        extra.append(
            _date_order("start_date", "end_date", "end_before_start", "结束日期 is before 开始日期")
        )
    if dataset == "disability":
        extra.append(
            _date_order(
                "issued_on", "valid_until", "valid_before_issued", "有效期至 is before 发证日期"
            )
        )
        extra.append(_cert_consistency)
    lines += [f"    {ref(check)}(rec, errors)" for check in extra]
    exec(compile("\n".join(lines) + "\n", f"<validator {dataset}>", "exec"), ns)  # noqa: S102
    return ns["validate"]


def validate_record(
    dataset: str, record: Mapping[str, Any], *, skip: frozenset[str] | set[str] = frozenset()
) -> list[FieldError]:
    """Check a mapped canonical record: required fields present, types, codes in range, lengths the
    store accepts, birth date and sex consistent with a resident ID number, date order.

    ``skip``: fields already reported by the mapper (their errors are not repeated).
    Returns the problems, empty when the record is valid. Unknown dataset: KeyError.
    """
    errors: list[FieldError] = []
    _validator(dataset)(record, errors)
    if errors:
        seen = set(skip)
        kept = []
        for error in errors:  # one problem per field: the first found is the most specific
            if error.field not in seen:
                seen.add(error.field)
                kept.append(error)
        errors = kept
    return errors


# --- the structure of a mapping file ---------------------------------------------------------------


class StrictBool(fields.Field):
    """TOML ``true``/``false`` only: marshmallow's Boolean would also take "yes" or 1."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise ValidationError("must be true or false")
        return value


class NameOrNames(fields.Field):
    """A field name or a non-empty list of field names; always loaded as a list."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> list[str]:
        if isinstance(value, str) and value.strip():
            return [value]
        if (
            isinstance(value, list)
            and value
            and all(isinstance(v, str) and v.strip() for v in value)
        ):
            return list(value)
        raise ValidationError("must be a field name or a non-empty list of field names")


class TransformSpec(fields.Field):
    """``"name"``, ``"name:argument"`` or an inline table ``{ name = "...", param = ... }``;
    loaded as ``(name, shorthand argument or None, params dict)``."""

    def _deserialize(
        self, value: Any, attr: str | None, data: Any, **kwargs: Any
    ) -> tuple[str, Any, dict[str, Any]]:
        if isinstance(value, str):
            name, sep, arg = value.partition(":")
            if not name.strip():
                raise ValidationError("transform name is empty")
            return (name.strip(), arg if sep else None, {})
        if isinstance(value, dict):
            params = dict(value)
            name = params.pop("name", None)
            if not isinstance(name, str) or not name.strip():
                raise ValidationError('a transform table needs name = "..."')
            return (name.strip(), None, params)
        raise ValidationError('must be "name", "name:argument" or { name = "...", ... }')


class _StrictSchema(Schema):
    class Meta:
        unknown = RAISE


class MappingHeaderSchema(_StrictSchema):
    """The ``[mapping]`` table."""

    name = fields.String(required=True, validate=validate.Length(min=1))
    system = fields.String(required=True, validate=validate.Regexp(r"^[A-Za-z][A-Za-z0-9_]*$"))
    dataset = fields.String(
        required=True, validate=validate.OneOf(DATASETS + tuple(OUTBOUND_SCHEMAS))
    )
    direction = fields.String(required=True, validate=validate.OneOf(DIRECTIONS))
    version = fields.String(required=True, validate=validate.Length(min=1))
    title = fields.String()
    description = fields.String()
    # inbound: canonical fields forming the natural key of a record within the source
    record_key = fields.List(fields.String(), validate=validate.Length(min=1))
    # inbound: the document type of every row when no [fields.id_type] gives one (default "1")
    id_type = fields.String(validate=validate.OneOf(list(ID_TYPES)))
    # outbound: the target's natural key (native field names of this mapping)
    key = fields.List(fields.String(), validate=validate.Length(min=1))

    @validates_schema
    def _outbound_only(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("dataset") in OUTBOUND_SCHEMAS and data.get("direction") == "inbound":
            raise ValidationError(
                f"dataset {data['dataset']} is computed by the gateway: outbound mappings only",
                field_name="dataset",
            )


class InboundFieldSchema(_StrictSchema):
    """One ``[fields.<canonical field>]`` table of an inbound mapping."""

    from_ = NameOrNames(data_key="from")  # native column, or alternatives (first non-empty wins)
    from_field = fields.String()  # an earlier canonical field of this mapping (derived values)
    transforms = fields.List(TransformSpec(), load_default=list)
    required = StrictBool(load_default=False)
    default = fields.Raw()
    sensitivity = fields.String(validate=validate.OneOf(SENSITIVITY))
    label = fields.String()
    description = fields.String()


class OutboundFieldSchema(_StrictSchema):
    """One ``[fields."<native field>"]`` table of an outbound mapping."""

    from_ = NameOrNames(data_key="from")  # canonical field(s)
    transforms = fields.List(TransformSpec(), load_default=list)
    required = StrictBool(load_default=False)
    default = fields.Raw()
    sensitivity = fields.String(validate=validate.OneOf(SENSITIVITY))
    label = fields.String()
    description = fields.String()


def flatten_messages(
    messages: Any, path: tuple[Any, ...] = ()
) -> list[tuple[tuple[Any, ...], str]]:
    """marshmallow's nested error dict -> [(key path, message)]."""
    out: list[tuple[tuple[Any, ...], str]] = []
    if isinstance(messages, dict):
        for key, value in messages.items():
            sub = path if key == "_schema" else path + (key,)
            out.extend(flatten_messages(value, sub))
    elif isinstance(messages, list):
        if all(isinstance(m, str) for m in messages):
            out.extend((path, m) for m in messages)
        else:
            for m in messages:
                out.extend(flatten_messages(m, path))
    else:
        out.append((path, str(messages)))
    return out
