"""The built-in mapping transforms (registered by the ``transforms`` built-in plugin).

A transform is used in a mapping file as ``"name"``, ``"name:argument"`` or
``{ name = "...", param = ... }``. Each built-in is a :class:`Transform`: called plainly as
``t(value, **params)`` (the ``register_transforms`` hook contract), and compiled once per mapping
field by ``t.compile(**params)`` into a small closure with its parameters already checked and
prepared (regex compiled, code table reversed, accepted date formats chosen), so that mapping a row
does no work but the transformation itself.

Values never reach a transform as ``None`` or ``""`` (the mapper stops the chain at an empty value)
unless the transform says ``accepts_none`` (``const``, ``concat``). A transform rejects a value by
raising :class:`gateway.mapping.TransformError` with a stable code; messages never carry an ID
number in the clear (:func:`gateway.schemas.safe_text` masks anything that looks like one).
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from . import ids
from .mapping import CodeTable, TransformError
from .schemas import safe_text

Fn = Callable[..., Any]


class Transform:
    """A built-in transform: ``factory(**params)`` checks the parameters (ValueError/TypeError with a
    readable reason) and returns the fast function.

    context: the compiled function is called as ``fn(value, native, record)`` (the native row and
    the canonical record built so far) instead of ``fn(value)``.
    accepts_none: called even when the value is empty (``const``) or a list of values (``concat``).
    shorthand: the parameter that ``"name:argument"`` sets.
    """

    def __init__(
        self,
        name: str,
        factory: Callable[..., Fn],
        *,
        doc: str,
        shorthand: str | None = None,
        context: bool = False,
        accepts_none: bool = False,
    ):
        self.name = name
        self.factory = factory
        self.__doc__ = doc
        self.shorthand = shorthand
        self.context = context
        self.accepts_none = accepts_none

    def compile(self, **params: Any) -> Fn:
        return self.factory(**params)

    def __call__(
        self,
        value: Any,
        *,
        native: Mapping[str, Any] | None = None,
        record: dict[str, Any] | None = None,
        **params: Any,
    ) -> Any:
        fn = self.factory(**params)
        if self.context:
            return fn(
                value, native if native is not None else {}, record if record is not None else {}
            )
        return fn(value)

    def __repr__(self) -> str:
        return f"<transform {self.name}>"


def number_text(value: Any) -> str:
    """Cell value -> text: Excel gives 3 or 3.0 for a cell that says 3."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# --- text ----------------------------------------------------------------------------------------

# Every character str.strip() removes (Unicode White_Space, U+3000 included, and the separators
# U+001C-U+001F), plus BOM and zero-width characters, which are not whitespace: one C-level strip.
STRIPPED = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680"
    + "".join(chr(c) for c in range(0x2000, 0x200B))
    + "\u2028\u2029\u202f\u205f\u3000"
    + "\ufeff\u200b\u200c\u200d\u2060"
)


def _strip() -> Fn:
    chars = STRIPPED

    def strip(value: Any) -> Any:
        if value.__class__ is not str:
            return value
        return value.strip(chars) or None

    return strip


def _fullwidth() -> Fn:
    normalize = unicodedata.normalize

    def fullwidth(value: Any) -> Any:
        if value.__class__ is not str or value.isascii():
            return value
        return normalize("NFKC", value)

    return fullwidth


def _upper() -> Fn:
    def upper(value: Any) -> Any:
        return value.upper() if value.__class__ is str else value

    return upper


def _text() -> Fn:
    return number_text


def _int() -> Fn:
    def to_int(value: Any) -> int:
        if isinstance(value, bool):
            raise TransformError("bad_int", f"{value} is not a whole number")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            return int(value)
        raise TransformError("bad_int", f"{safe_text(value)} is not a whole number")

    return to_int


def _regex(pattern: str, group: int | str | None = None, missing: str = "error") -> Fn:
    if not isinstance(pattern, str) or not pattern:
        raise ValueError("pattern must be a non-empty string")
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"bad regular expression: {exc}") from None
    if group is None:
        group = 1 if rx.groups else 0
    if isinstance(group, int) and not 0 <= group <= rx.groups:
        raise ValueError(f"group {group} does not exist (the pattern has {rx.groups})")
    if isinstance(group, str) and group not in rx.groupindex:
        raise ValueError(f"no group named {group!r} in the pattern")
    if missing not in ("error", "null", "keep"):
        raise ValueError('missing must be "error", "null" or "keep"')
    search = rx.search

    def regex(value: Any) -> Any:
        text = number_text(value)
        m = search(text)
        if m is None or m.group(group) is None:
            if missing == "null":
                return None
            if missing == "keep":
                return value
            raise TransformError("no_match", f"{safe_text(text)} does not match {pattern}")
        return m.group(group) or None

    return regex


def _const(value: Any) -> Fn:
    def const(_: Any) -> Any:
        return value

    return const


def _concat(sep: str = "") -> Fn:
    if not isinstance(sep, str):
        raise ValueError("sep must be a string")

    def concat(value: Any) -> Any:
        if not isinstance(value, (list, tuple)):
            return None if value is None else number_text(value)
        parts = [number_text(v).strip() for v in value if v is not None and v != ""]
        parts = [p for p in parts if p]
        return sep.join(parts) if parts else None

    return concat


# --- codes ---------------------------------------------------------------------------------------


def _table_arg(table: Any) -> CodeTable:
    if not isinstance(table, Mapping):
        raise ValueError("table must name a code table")
    return table if isinstance(table, CodeTable) else CodeTable("inline", table)


def _code(table: Any) -> Fn:
    table = _table_arg(table)
    get = table.get
    name = table.name

    def code(value: Any) -> Any:
        out = get(value if value.__class__ is str else number_text(value))
        if out is None:
            raise TransformError("unknown_code", f"{safe_text(value)} is not in code table {name}")
        return out

    return code


def _map(values: Any, default: Any = None) -> Fn:
    if not isinstance(values, Mapping) or not values:
        raise ValueError("values must be a table of native value = canonical value")
    return (
        _code(CodeTable("map", {str(k): v for k, v in values.items()}))
        if default is None
        else _map_default(values, default)
    )


def _map_default(values: Mapping[str, Any], default: Any) -> Fn:
    table = {str(k): v for k, v in values.items()}

    def map_(value: Any) -> Any:
        return table.get(number_text(value), default)

    return map_


def _label(table: Any) -> Fn:
    """Canonical code -> the native label: the first native code listed for it in the table."""
    table = _table_arg(table)
    reverse: dict[str, Any] = {}
    for native, canonical in table.items():
        reverse.setdefault(number_text(canonical), native)
    name = table.name

    def label(value: Any) -> Any:
        out = reverse.get(number_text(value))
        if out is None:
            raise TransformError(
                "unknown_code", f"{safe_text(value)} has no label in code table {name}"
            )
        return out

    return label


# --- dates ---------------------------------------------------------------------------------------

DATE_FORMATS = (
    "YYYYMMDD",
    "YYYY-MM-DD",
    "YYYY/M/D",
    "YYYY.M.D",
    "YYYY年M月D日",
    "excel",
    "datetime",
)
_SEPARATED = re.compile(
    r"^(\d{4})([-/.年])(\d{1,2})[-/.月](\d{1,2})日?(?:[ T]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?$"
)
_SEP_FORMAT = {"-": "YYYY-MM-DD", "/": "YYYY/M/D", ".": "YYYY.M.D", "年": "YYYY年M月D日"}
_EXCEL_EPOCH = dt.date(1899, 12, 30)
_EXCEL_MAX = 2958465  # 9999-12-31


def excel_serial_date(serial: float) -> dt.date:
    """Excel's day number -> date (1900 date system, with Excel's phantom 1900-02-29 = 60)."""
    days = int(serial)
    if days < 1 or days > _EXCEL_MAX:
        raise TransformError("bad_date", f"{serial} is outside Excel's date range")
    if days == 60:
        raise TransformError("no_such_date", "Excel day 60 is 1900-02-29, which does not exist")
    if days < 60:
        return dt.date(1899, 12, 31) + dt.timedelta(days=days)
    return _EXCEL_EPOCH + dt.timedelta(days=days)


def _real_date(y: int, m: int, d: int, text: Any) -> dt.date:
    try:
        return dt.date(y, m, d)
    except ValueError:
        raise TransformError("no_such_date", f"{safe_text(text)} is not a real date") from None


def _formats_arg(formats: Any) -> frozenset[str]:
    if formats is None:
        return frozenset(DATE_FORMATS)
    if isinstance(formats, str):
        formats = [f.strip() for f in formats.split(",")]
    if not isinstance(formats, Sequence) or not formats:
        raise ValueError("formats must be a format name or a list of them")
    unknown = [f for f in formats if f not in DATE_FORMATS]
    if unknown:
        raise ValueError(f"unknown date format {unknown[0]!r}; known: {', '.join(DATE_FORMATS)}")
    return frozenset(formats)


def _date(formats: Any = None) -> Fn:
    allowed = _formats_arg(formats)
    compact = "YYYYMMDD" in allowed
    excel = "excel" in allowed
    cells = "datetime" in allowed
    separated = {sep for sep, fmt in _SEP_FORMAT.items() if fmt in allowed}
    match = _SEPARATED.match
    date_cls, datetime_cls = dt.date, dt.datetime
    # Birth dates and start dates repeat a lot across a county's rows: remember parsed strings.
    memo: dict[str, dt.date] = {}

    def bad(value: Any) -> TransformError:
        return TransformError(
            "bad_date",
            f"{safe_text(value)} is not a date in a known format ({', '.join(sorted(allowed))})",
        )

    def parse_text(text: str) -> dt.date:
        if len(text) == 8 and text.isdigit() and compact:
            return _real_date(int(text[:4]), int(text[4:6]), int(text[6:]), text)
        m = match(text)
        if m is not None and m.group(2) in separated:
            return _real_date(int(m.group(1)), int(m.group(3)), int(m.group(4)), text)
        if excel and 1 <= len(text) <= 7 and text.replace(".", "", 1).isdigit():
            return excel_serial_date(float(text))
        raise bad(text)

    def date(value: Any) -> dt.date:
        cls = value.__class__
        if cls is str:
            out = memo.get(value)
            if out is None:
                out = parse_text(value.strip())
                if len(memo) > 100_000:
                    memo.clear()
                memo[value] = out
            return out
        if cls is datetime_cls or isinstance(value, datetime_cls):
            if not cells:
                raise bad(value)
            return value.date()
        if cls is date_cls or isinstance(value, date_cls):
            if not cells:
                raise bad(value)
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            # A YYYYMMDD column that Excel or a database turned into a number.
            if compact and 10000101 <= value <= 99991231 and float(value).is_integer():
                return parse_text(str(int(value)))
            if excel:
                return excel_serial_date(value)
        raise bad(value)

    return date


def _datetime() -> Fn:
    def to_datetime(value: Any) -> dt.datetime:
        if isinstance(value, dt.datetime):
            return value
        if isinstance(value, dt.date):
            return dt.datetime(value.year, value.month, value.day)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            day = excel_serial_date(value)
            seconds = round((value - int(value)) * 86400)
            return dt.datetime(day.year, day.month, day.day) + dt.timedelta(seconds=seconds)
        if isinstance(value, str):
            text = value.strip().replace("/", "-")
            try:
                return dt.datetime.fromisoformat(text)
            except ValueError:
                pass
            m = _SEPARATED.match(value.strip())
            if m is not None:
                try:
                    return dt.datetime.strptime(
                        f"{m.group(1)}-{m.group(3)}-{m.group(4)}"
                        + value.strip()[m.end(4) :].lstrip("日"),
                        "%Y-%m-%d %H:%M:%S"
                        if value.count(":") == 2
                        else "%Y-%m-%d %H:%M"
                        if ":" in value
                        else "%Y-%m-%d",
                    )
                except ValueError:
                    raise TransformError(
                        "no_such_date", f"{safe_text(value)} is not a real date and time"
                    ) from None
        raise TransformError("bad_datetime", f"{safe_text(value)} is not a date and time")

    return to_datetime


def _date_format(format: str = "%Y-%m-%d") -> Fn:  # noqa: A002 - the mapping-file parameter name
    if not isinstance(format, str) or "%" not in format:
        raise ValueError('format must be a strftime pattern such as "%Y%m%d"')

    def date_format(value: Any) -> Any:
        if isinstance(value, dt.date):
            return value.strftime(format)
        raise TransformError("bad_date", f"{safe_text(value)} is not a date")

    return date_format


# --- IDs, areas, certificates --------------------------------------------------------------------


def _id_error(result: ids.IdResult) -> TransformError:
    return TransformError(result.code or "invalid_id", result.message or "invalid ID number")


def _id_number() -> Fn:
    check = ids.check

    def id_number(value: Any, native: Mapping[str, Any], record: dict[str, Any]) -> Any:
        result = check(value, record.get("id_type") or "1")
        if not result.ok:
            raise _id_error(result)
        if result.converted:
            record["converted"] = True
        return result.value

    return id_number


def _id_birth_date() -> Fn:
    def id_birth_date(value: Any, native: Mapping[str, Any], record: dict[str, Any]) -> Any:
        if (record.get("id_type") or "1") != "1" or not isinstance(value, str) or len(value) != 18:
            return None
        return ids.birth_date(value)

    return id_birth_date


def _id_sex() -> Fn:
    def id_sex(value: Any, native: Mapping[str, Any], record: dict[str, Any]) -> Any:
        if (record.get("id_type") or "1") != "1" or not isinstance(value, str) or len(value) != 18:
            return None
        return ids.sex(value)

    return id_sex


def _mask() -> Fn:
    def mask(value: Any) -> Any:
        return ids.mask(number_text(value))

    return mask


def _area() -> Fn:
    def area(value: Any) -> str:
        text = number_text(value).strip()
        if text.isdigit() and text.isascii():
            n = len(text)
            if n == 12 or n == 9:
                return text[:9]
            if n == 6:
                return text
        raise TransformError(
            "bad_area_code",
            f"{safe_text(value)} is not a 12-digit statistical, 9-digit township or 6-digit county code",
        )

    return area


_CERT_PARTS = ("cert", "id", "category", "grade")
_CERT_LIMITS = {"category": 7, "grade": 4}


def parse_disability_cert(value: Any) -> tuple[str, int, int, bool]:
    """A 残疾人证号 -> (normalised 18-character ID, category 1-7, grade 1-4, ID converted from 15).

    20 characters = 18-character ID + category digit + grade digit (17 for a legacy 15-digit ID).
    """
    if isinstance(value, float):
        raise TransformError(
            "excel_damaged", "残疾人证号 was stored by Excel as a number: its last digits are lost"
        )
    text = number_text(value).strip()
    if len(text) == 20:
        id_part, tail = text[:18], text[18:]
    elif len(text) == 17:
        id_part, tail = text[:15], text[15:]
    else:
        raise TransformError(
            "bad_cert_length",
            f"残疾人证号 must have 20 characters (ID + category + grade), not {len(text)}",
        )
    result = ids.check(id_part, "1")
    if not result.ok:
        raise _id_error(result)
    category, grade = tail[0], tail[1]
    if not ("1" <= category <= "7"):
        raise TransformError(
            "bad_cert_category", f"残疾人证号 category digit {category!r} is not 1-7"
        )
    if not ("1" <= grade <= "4"):
        raise TransformError("bad_cert_grade", f"残疾人证号 grade digit {grade!r} is not 1-4")
    return result.value or id_part, int(category), int(grade), result.converted


def _disability_cert(part: str = "cert", check: str | None = None, table: Any = None) -> Fn:
    if part not in _CERT_PARTS:
        raise ValueError(f"part must be one of {', '.join(_CERT_PARTS)}")
    if check is not None and part not in ("category", "grade"):
        raise ValueError("check (a column to cross-check) only applies to part category or grade")
    if (check is None) != (table is None):
        raise ValueError("check and table go together: the column and the code table that reads it")
    lookup = _table_arg(table).get if table is not None else None

    def disability_cert(value: Any, native: Mapping[str, Any], record: dict[str, Any]) -> Any:
        id18, category, grade, converted = parse_disability_cert(value)
        if part == "cert":
            if converted:
                record["converted"] = True
            return f"{id18}{category}{grade}"
        if part == "id":
            return id18
        found = category if part == "category" else grade
        if check is not None and lookup is not None:
            raw = native.get(check)
            text = number_text(raw).strip() if raw is not None else ""
            if text:
                stated = lookup(text)
                if stated is None:
                    raise TransformError(
                        "unknown_code",
                        f"{check} {safe_text(text)} is not in code table {table.name}",
                    )
                if int(stated) != found:
                    raise TransformError(
                        f"cert_{part}_mismatch",
                        f"{check} {safe_text(text)} differs from the certificate's {part} {found}",
                    )
        return found

    return disability_cert


BUILTIN_TRANSFORMS: dict[str, Transform] = {
    t.name: t
    for t in (
        Transform(
            "strip", _strip, doc="Trim whitespace (also U+3000, BOM, zero-width); empty -> missing."
        ),
        Transform(
            "fullwidth", _fullwidth, doc="NFKC: full-width digits, letters and spaces to ASCII."
        ),
        Transform(
            "upper", _upper, doc="Upper-case text (x -> X in ID numbers, a -> A in document types)."
        ),
        Transform("text", _text, doc="Cell value to text (3.0 -> '3')."),
        Transform("int", _int, doc="Whole number."),
        Transform(
            "id_number",
            _id_number,
            context=True,
            doc="Normalise and check an ID number against the record's id_type (gateway.ids.check); "
            "15-digit numbers become 18; the error code is the ids code.",
        ),
        Transform(
            "date",
            _date,
            shorthand="formats",
            doc="A date from YYYYMMDD, YYYY-MM-DD, YYYY/M/D, YYYY.M.D, YYYY年M月D日, an Excel serial number or a "
            "date cell; formats = [...] restricts them.",
        ),
        Transform(
            "datetime",
            _datetime,
            doc="A date and time from an ISO text, an Excel serial or a datetime cell.",
        ),
        Transform(
            "date_format",
            _date_format,
            shorthand="format",
            doc="Outbound: a date as text (strftime format).",
        ),
        Transform(
            "code",
            _code,
            shorthand="table",
            doc="Native code -> canonical code through a system's code table.",
        ),
        Transform(
            "label",
            _label,
            shorthand="table",
            doc="Outbound: canonical code -> the table's first native label.",
        ),
        Transform(
            "map", _map, doc="Inline code table: values = { native = canonical }, optional default."
        ),
        Transform(
            "regex",
            _regex,
            shorthand="pattern",
            doc="Extract a group of a regular expression (group, missing).",
        ),
        Transform(
            "const",
            _const,
            shorthand="value",
            accepts_none=True,
            doc="A constant value, whatever the input.",
        ),
        Transform(
            "concat",
            _concat,
            shorthand="sep",
            accepts_none=True,
            doc="Join the values of several columns (from = [...]) with sep, skipping empty ones.",
        ),
        Transform("area", _area, doc="12-digit statistical area code -> 9-digit township code."),
        Transform(
            "disability_cert",
            _disability_cert,
            shorthand="part",
            context=True,
            doc="Parse a 残疾人证号 (ID + category + grade); part = cert|id|category|grade; check/table "
            "cross-check a category or grade column.",
        ),
        Transform(
            "id_birth_date",
            _id_birth_date,
            context=True,
            doc="Birth date encoded in a resident ID number.",
        ),
        Transform(
            "id_sex", _id_sex, context=True, doc="Sex encoded in a resident ID number ('1'/'2')."
        ),
        Transform("mask", _mask, doc="Outbound: an ID number masked (first 6, last 4)."),
    )
}
