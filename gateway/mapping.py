"""Mapping files -> compiled mappers: native rows <-> canonical records.

A mapping file (``mappings/<system>/<name>.toml``) has a ``[mapping]`` header and one
``[fields.<name>]`` table per field::

    [mapping]
    name = "student_status/students"
    system = "student_status"
    dataset = "students"
    direction = "inbound"            # or "outbound"
    version = "1"
    record_key = ["subject_key"]     # inbound: canonical fields of the natural key in the source
    id_type = "1"                    # inbound: document type when no [fields.id_type] gives one
    # key = ["证件号码"]              # outbound: the target's natural key (native fields)

    [fields.id_number]               # inbound: canonical field; outbound: native field
    from = "身份证件号"               # a column, or a list: the first non-empty one is taken
    transforms = ["strip", "fullwidth", "id_number"]
    required = true
    sensitivity = "national_id"

Other field keys: ``from_field`` (inbound: derive from an earlier canonical field of this
mapping), ``default``, ``label``, ``description``. Transforms are ``"name"``, ``"name:argument"``
or ``{ name = "...", param = ... }``; a ``table`` parameter names a code table of the systems
(``code:sex`` looks up ``<this system>.sex`` first, then ``sex``; ``code:other_system.sex`` is
explicit). When the first transform is ``concat``, ``from`` lists columns to join instead of
alternatives.

Transforms come from the ``register_transforms`` hook: a plain ``fn(value, **params)``, or an object
with ``compile(**params)`` (see ``gateway.transforms.Transform``) that prepares its parameters once.
A transform declaring keyword-only parameters ``native`` / ``record`` receives the native row and the
canonical record built so far (``id_number`` reads the record's ``id_type`` that way).

``load_mapping`` checks the whole file before compiling and reports every problem with file, line
and key (:class:`MappingFileError`); the compiled :class:`Mapper` runs a tuple of per-field closures
with no lookups of the specification per row.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import inspect
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from marshmallow import ValidationError

from .errors import GatewayError
from .schemas import (
    COMPUTED_FIELDS,
    SENSITIVITY_RANK,
    FieldError,
    FieldInfo,
    InboundFieldSchema,
    MappingHeaderSchema,
    OutboundFieldSchema,
    dataset_fields,
    flatten_messages,
    scrub,
    validate_record,
)

if TYPE_CHECKING:
    import pluggy

    from .systems import SystemSpec

__all__ = [
    "CodeTable",
    "FieldError",
    "Mapper",
    "MappingFileError",
    "MappingNotFound",
    "OutboundMapper",
    "OutboundRecordError",
    "TransformError",
    "builtin_mapping_path",
    "builtin_mappings",
    "builtin_mappings_dir",
    "check_mapping",
    "code_tables_of",
    "find_mapping_file",
    "load_for",
    "load_mapping",
    "plugin_context",
]


class TransformError(Exception):
    """A transform rejected a value: ``code`` is stable (``bad_date``, an ids code ...), ``message``
    says why without the ID number in the clear."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class MappingFileError(GatewayError):
    """A mapping file cannot be used: ``problems`` are ``"file:line: key: reason"`` lines."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        head = (
            f"{len(self.problems)} problem(s) in mapping file"
            if len(self.problems) != 1
            else "mapping file"
        )
        super().__init__(head + ":\n  " + "\n  ".join(self.problems))


class MappingNotFound(MappingFileError):
    """No mapping file under that name or path."""


class OutboundRecordError(GatewayError):
    """A canonical record could not be mapped to the target's layout."""

    exit_code = 1

    def __init__(self, mapping: str, errors: Sequence[FieldError]):
        self.errors = list(errors)
        super().__init__(
            f"{mapping}: " + "; ".join(f"{e.field}: {e.code}: {e.message}" for e in self.errors)
        )


class CodeTable(dict):
    """A code table (native code -> canonical code) that remembers its name for messages."""

    def __init__(self, name: str, items: Mapping[str, Any]):
        super().__init__(items)
        self.name = name


# --- where mapping files are ----------------------------------------------------------------------


def builtin_mappings_dir() -> Path | None:
    """The shipped mapping files: the ``gateway_mappings`` package when installed, else the
    repository's ``mappings/`` folder (a source checkout)."""
    try:
        from importlib.resources import files

        root = files("gateway_mappings")
        path = Path(str(root))
        if path.is_dir():
            return path
    except (ImportError, TypeError, ValueError):
        pass
    repo = Path(__file__).resolve().parent.parent / "mappings"
    return repo if repo.is_dir() else None


def builtin_mapping_path(spec: str) -> Path:
    """``"student_status/students"`` -> the shipped file (the path even if missing, for messages)."""
    root = builtin_mappings_dir()
    return (root if root is not None else Path("mappings")) / f"{spec}.toml"


def builtin_mappings() -> list[tuple[str, Path]]:
    """Every shipped mapping as (spec, path), sorted: what ``gateway init`` copies into a site."""
    root = builtin_mappings_dir()
    if root is None:
        return []
    return sorted(
        (p.relative_to(root).with_suffix("").as_posix(), p) for p in root.glob("*/*.toml")
    )


def find_mapping_file(spec: str | Path, base_dirs: Sequence[Path | str] = ()) -> Path:
    """A mapping by path, or by name ``system/name`` looked up in ``base_dirs`` (a site's own
    copies, in order) and then among the shipped files."""
    text = str(spec)
    builtin = builtin_mappings_dir()
    if builtin is not None and Path(text).is_absolute() and text.endswith(".toml"):
        # A system plugin's default names the shipped file: the site's own copy still wins.
        with contextlib.suppress(ValueError):
            text = Path(text).relative_to(builtin).with_suffix("").as_posix()
    candidates: list[Path] = []
    if text.endswith(".toml") or Path(text).is_absolute():
        candidates += [Path(d) / text for d in base_dirs] + [Path(text)]
    else:
        candidates += [Path(d) / f"{text}.toml" for d in base_dirs]
        candidates.append(builtin_mapping_path(text))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = ", ".join(str(c) for c in candidates)
    raise MappingNotFound([f"{text}: no such mapping file (looked in {looked})"])


# --- line numbers for keys ------------------------------------------------------------------------


class KeyLocator:
    """Line number of each table, key and array element of a TOML text.

    Hand-written because tomllib returns plain dicts without positions, and neither tomllib nor
    tomli-w/tomlkit expose line numbers; this scanner only follows the structure of a file that
    tomllib has already accepted (strings, arrays, inline tables, comments), values are skipped.
    """

    _BARE = re.compile(r"[A-Za-z0-9_-]+")

    def __init__(self, text: str):
        self.s = text
        self.i = 0
        self.line = 1
        self.lines: dict[tuple[Any, ...], int] = {}
        # Best effort: whatever was located before a surprise still helps.
        with contextlib.suppress(IndexError, ValueError):
            self._document()

    def find(self, path: Sequence[Any]) -> int:
        """The line of ``path`` or of its closest located parent; 1 if nothing matches."""
        key = tuple(path)
        while key:
            if key in self.lines:
                return self.lines[key]
            key = key[:-1]
        return 1

    # scanning helpers
    def _peek(self, n: int = 1) -> str:
        return self.s[self.i : self.i + n]

    def _advance(self, n: int) -> None:
        self.line += self.s.count("\n", self.i, self.i + n)
        self.i += n

    def _skip_blank(self, newlines: bool) -> None:
        s = self.s
        while self.i < len(s):
            c = s[self.i]
            if c in " \t\r" or (newlines and c == "\n"):
                self._advance(1)
            elif c == "#":
                end = s.find("\n", self.i)
                self.i = len(s) if end < 0 else end
            else:
                return

    def _key(self) -> tuple[str, ...]:
        parts: list[str] = []
        while True:
            self._skip_blank(False)
            c = self._peek()
            if c in ('"', "'"):
                start = self.i
                self._string()
                token = self.s[start : self.i]
                parts.append(tomllib.loads(f"k = {token}")["k"])
            else:
                m = self._BARE.match(self.s, self.i)
                if not m:
                    raise ValueError("not a key")
                parts.append(m.group(0))
                self.i = m.end()
            self._skip_blank(False)
            if self._peek() != ".":
                return tuple(parts)
            self.i += 1

    def _string(self) -> None:
        s = self.s
        for quote in ('"""', "'''"):
            if s.startswith(quote, self.i):
                end = self.i + 3
                while True:
                    end = s.index(quote, end)
                    if quote == '"""' and _escaped(s, end):
                        end += 1
                        continue
                    break
                while s.startswith(quote[0], end + 3):  # up to two quotes may end the content
                    end += 1
                self._advance(end + 3 - self.i)
                return
        quote = s[self.i]
        end = self.i + 1
        while True:
            end = s.index(quote, end)
            if quote == '"' and _escaped(s, end):
                end += 1
                continue
            break
        self._advance(end + 1 - self.i)

    def _value(self, path: tuple[Any, ...]) -> None:
        c = self._peek()
        if c in ('"', "'"):
            self._string()
        elif c == "[":
            self._advance(1)
            index = 0
            while True:
                self._skip_blank(True)
                if self._peek() == "]":
                    self._advance(1)
                    return
                self.lines.setdefault(path + (index,), self.line)
                self._value(path + (index,))
                self._skip_blank(True)
                if self._peek() == ",":
                    self._advance(1)
                    index += 1
        elif c == "{":
            self._advance(1)
            while True:
                self._skip_blank(False)
                if self._peek() == "}":
                    self._advance(1)
                    return
                key = self._key()
                self.lines.setdefault(path + key, self.line)
                self._skip_blank(False)
                self._advance(1)  # "="
                self._skip_blank(False)
                self._value(path + key)
                self._skip_blank(False)
                if self._peek() == ",":
                    self._advance(1)
        else:
            m = _SCALAR.match(self.s, self.i)
            if m is None or m.end() == self.i:
                raise ValueError("unexpected character")  # not TOML we understand: stop locating
            self.i = m.end()

    def _document(self) -> None:
        table: tuple[Any, ...] = ()
        counts: dict[tuple[Any, ...], int] = {}
        while True:
            self._skip_blank(True)
            if self.i >= len(self.s):
                return
            if self.s.startswith("[[", self.i):
                self.i += 2
                path = self._key()
                self._skip_blank(False)
                self.i += 2
                counts[path] = counts.get(path, -1) + 1
                self.lines.setdefault(path, self.line)
                table = path + (counts[path],)
                self.lines.setdefault(table, self.line)
            elif self._peek() == "[":
                self.i += 1
                table = self._key()
                self._skip_blank(False)
                self.i += 1
                self.lines.setdefault(table, self.line)
            else:
                key = self._key()
                for n in range(1, len(key) + 1):  # dotted keys define their parents here
                    self.lines.setdefault(table + key[:n], self.line)
                self._skip_blank(False)
                self.i += 1  # "="
                self._skip_blank(False)
                self._value(table + key)


_SCALAR = re.compile(r"[^,\]}\n#]+")


def _escaped(s: str, pos: int) -> bool:
    """Is the character at ``pos`` escaped by an odd number of backslashes?"""
    n = 0
    while pos - 1 - n >= 0 and s[pos - 1 - n] == "\\":
        n += 1
    return n % 2 == 1


def key_text(path: Sequence[Any]) -> str:
    """("fields", "姓名", "transforms", 2) -> 'fields.姓名.transforms[2]'."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(file)"


class _Problems:
    """Collects problems of one file as ``file:line: key: reason``."""

    def __init__(self, path: Path, locator: KeyLocator | None):
        self.path = path
        self.locator = locator
        self.items: list[tuple[int, str]] = []

    def add(self, key: Sequence[Any], reason: str) -> None:
        line = self.locator.find(key) if self.locator else 1
        self.items.append((line, f"{self.path}:{line}: {key_text(key)}: {reason}"))

    def lines(self) -> list[str]:
        return [text for _, text in sorted(self.items, key=lambda item: item[0])]

    def __bool__(self) -> bool:
        return bool(self.items)


# --- compiling transforms -------------------------------------------------------------------------

_MISSING: Any = object()
# A compiled transform: (function, takes (value, native, record) instead of (value))
Step = tuple[Callable[..., Any], bool]


class _Unusable(Exception):
    """A transform or parameter that cannot be compiled; the message is the problem's reason."""


def _resolve_table(name: Any, system: str, tables: Mapping[str, Mapping[str, Any]]) -> CodeTable:
    if not isinstance(name, str) or not name:
        raise _Unusable("table must be the name of a code table")
    for candidate in (f"{system}.{name}", name):
        table = tables.get(candidate)
        if table is not None:
            return table if isinstance(table, CodeTable) else CodeTable(candidate, table)
    known = sorted({k.split(".", 1)[-1] if k.startswith(f"{system}.") else k for k in tables})
    raise _Unusable(f"unknown code table {name!r} (known: {', '.join(known) or 'none'})")


def _compile_transform(
    name: str,
    arg: Any,
    params: dict[str, Any],
    registry: Mapping[str, Callable[..., Any]],
    system: str,
    tables: Mapping[str, Mapping[str, Any]],
) -> tuple[Step, bool]:
    """-> ((fn, context), accepts_none). Raises _Unusable with a readable reason."""
    impl = registry.get(name)
    if impl is None:
        raise _Unusable(f"unknown transform {name!r} (known: {', '.join(sorted(registry))})")
    params = dict(params)
    compiler = getattr(impl, "compile", None)
    plain_sig: inspect.Signature | None = None
    if not callable(compiler):
        # Some callables (builtins such as str.upper) have no signature to inspect: call them plainly.
        with contextlib.suppress(TypeError, ValueError):
            plain_sig = inspect.signature(impl)
    if arg is not None:
        shorthand = getattr(impl, "shorthand", None)
        if shorthand is None and plain_sig is not None:
            positional = [p for p in plain_sig.parameters.values() if p.kind is not p.KEYWORD_ONLY][
                1:
            ]
            shorthand = positional[0].name if positional else None
        if shorthand is None:
            raise _Unusable(f"transform {name!r} takes no argument after ':'")
        params[shorthand] = arg
    if "table" in params:
        params["table"] = _resolve_table(params["table"], system, tables)
    accepts_none = bool(getattr(impl, "accepts_none", False))
    if callable(compiler):
        try:
            fn = compiler(**params)
        except (TypeError, ValueError) as exc:
            raise _Unusable(f"transform {name!r}: {exc}") from None
        return (fn, bool(getattr(impl, "context", False))), accepts_none
    # A plain third-party function: fn(value, **params), maybe with keyword-only native/record.
    wants = [n for n in ("native", "record") if plain_sig is not None and n in plain_sig.parameters]
    if plain_sig is not None:
        try:
            plain_sig.bind(None, **params, **dict.fromkeys(wants))
        except TypeError as exc:
            raise _Unusable(f"transform {name!r}: {exc}") from None
    return (_wrap_plain(name, impl, params, wants), bool(wants)), accepts_none


def _wrap_plain(
    name: str, fn: Callable[..., Any], params: dict[str, Any], wants: list[str]
) -> Callable[..., Any]:
    """A plugin's plain function as a compiled step; its own exceptions become field errors."""

    def fail(exc: Exception) -> TransformError:
        return TransformError(
            "transform_failed", f"{name}: {exc.__class__.__name__}: {scrub(str(exc))[:200]}"
        )

    if wants:
        want_native, want_record = "native" in wants, "record" in wants

        def contextual(value: Any, native: Mapping[str, Any], record: dict[str, Any]) -> Any:
            extra: dict[str, Any] = {}
            if want_native:
                extra["native"] = native
            if want_record:
                extra["record"] = record
            try:
                return fn(value, **params, **extra)
            except TransformError:
                raise
            except Exception as exc:  # noqa: BLE001 - a plugin's bug must not end the run
                raise fail(exc) from None

        return contextual

    def plain(value: Any) -> Any:
        try:
            return fn(value, **params)
        except TransformError:
            raise
        except Exception as exc:  # noqa: BLE001 - a plugin's bug must not end the run
            raise fail(exc) from None

    return plain


# --- canonical type coercion ----------------------------------------------------------------------


def _coercer(kind: str) -> Callable[[Any], Any]:
    from .transforms import number_text

    if kind == "str":

        def to_str(v: Any) -> Any:
            if v.__class__ is str:
                return v
            if isinstance(v, dt.date):
                return v.isoformat()
            return number_text(v)

        return to_str
    if kind == "int":

        def to_int(v: Any) -> int:
            if v.__class__ is int:
                return v
            if isinstance(v, float) and v.is_integer():
                return int(v)
            if isinstance(v, str) and v.strip().isdigit():
                return int(v)
            raise TransformError("bad_int", f"{scrub(str(v))[:40]!r} is not a whole number")

        return to_int
    if kind == "bool":
        truth = {"true": True, "false": False, "1": True, "0": False, "是": True, "否": False}

        def to_bool(v: Any) -> bool:
            if v.__class__ is bool:
                return v
            out = truth.get(str(v).strip().lower())
            if out is None:
                raise TransformError(
                    "bad_bool", f"{scrub(str(v))[:40]!r} is not true/false (use a code table)"
                )
            return out

        return to_bool
    if kind == "date":

        def to_date(v: Any) -> dt.date:
            if v.__class__ is dt.date:
                return v
            if isinstance(v, dt.datetime):
                return v.date()
            raise TransformError("bad_type", "not a date: the mapping needs the date transform")

        return to_date

    def to_datetime(v: Any) -> dt.datetime:
        if isinstance(v, dt.datetime):
            return v
        if isinstance(v, dt.date):
            return dt.datetime(v.year, v.month, v.day)
        raise TransformError(
            "bad_type", "not a date and time: the mapping needs the datetime transform"
        )

    return to_datetime


# --- the compiled mappers -------------------------------------------------------------------------

RowFunction = Callable[[Mapping[str, Any]], tuple[dict[str, Any], list[FieldError]]]
# What the sync engine adds to a canonical record it delivers: the change (inserted / updated /
# removed), whether the record left the source, and whether its ID was converted from 15 digits.
OUTBOUND_EXTRA_FIELDS = ("change", "removed", "converted")
_FAILED: Any = object()  # a field whose transform raised: its error is recorded, no value


@dataclass
class _FieldPlan:
    """One field, resolved: where its value comes from and what happens to it."""

    name: str
    sources: list[str] | None  # columns (inbound) or canonical fields (outbound)
    from_field: str | None  # inbound: an earlier canonical field of the mapping
    as_list: bool  # the first transform (concat) takes every source's value
    chain: tuple[Step, ...]
    run_on_none: bool  # the first transform runs on an empty value (const)
    coerce: Callable[[Any], Any] | None
    coerce_kind: str | None
    default: Any
    required: bool
    missing_text: str


class _RowFunctionWriter:
    """Writes one Python function for a whole mapping and compiles it once.

    Hand-written code generation (the technique of ``dataclasses`` and ``attrs``): a loop of
    per-field closures spent more time calling closures than transforming values (measured in
    benchmarks/bench_mapping.py). The generated body reads each column, runs the field's
    transforms, coerces, applies the default or records the missing value, straight through with
    no lookups of the specification. Only literals (``repr`` of column and field names) and
    references to prepared objects go into the source; ``source`` keeps it for inspection.
    """

    def __init__(self, title: str):
        self.title = title
        self.ns: dict[str, Any] = {
            "FieldError": FieldError,
            "TransformError": TransformError,
            "FAILED": _FAILED,
        }
        self.lines: list[str] = []

    def ref(self, value: Any) -> str:
        name = f"_k{len(self.ns)}"
        self.ns[name] = value
        return name

    def field(self, p: _FieldPlan) -> None:
        out = self.lines.append
        name = repr(p.name)
        out(f"    # field {name}")
        if p.from_field is not None:
            out(f"    v = rec.get({p.from_field!r})")
        elif not p.sources:
            out("    v = None")
        elif p.as_list:
            out(f"    v = [{', '.join(f'get({c!r})' for c in p.sources)}]")
        else:
            out(f"    v = get({p.sources[0]!r})")
            for column in p.sources[1:]:  # alternatives: the first non-empty value
                out('    if v is None or v == "":')
                out(f"        v = get({column!r})")
            out('    if v == "":')
            out("        v = None")
        out("    if True:" if p.run_on_none else "    if v is not None:")
        out("        try:")
        body = []
        for index, (fn, context) in enumerate(p.chain):
            call = f"{self.ref(fn)}(v, native, rec)" if context else f"{self.ref(fn)}(v)"
            body.append(
                f"v = {call}" if index == 0 else f"if v is not None:\n                v = {call}"
            )
        if p.coerce_kind == "str":  # the common case inline: text stays text
            body.append(
                f"if v is not None and v.__class__ is not str:\n                v = {self.ref(p.coerce)}(v)"
            )
        elif p.coerce is not None:
            body.append(f"if v is not None:\n                v = {self.ref(p.coerce)}(v)")
        for line in body or ["pass"]:
            out(f"            {line}")
        out("        except TransformError as exc:")
        out(f"            errors.append(FieldError({name}, exc.code, exc.message))")
        out("            v = FAILED")
        if p.default is not _MISSING:
            out("    if v is None:")
            out(f"        v = {self.ref(p.default)}")
            out("    if v is not FAILED:")
            out(f"        rec[{name}] = v")
        elif p.required:
            missing = self.ref(FieldError(p.name, "required", p.missing_text))
            out("    if v is None:")
            if p.from_field is not None:  # its source failed: that error says it all
                out(f"        if not any(e.field == {p.from_field!r} for e in errors):")
                out(f"            errors.append({missing})")
            else:
                out(f"        errors.append({missing})")
            out("    elif v is not FAILED:")
            out(f"        rec[{name}] = v")
        else:
            out("    if v is not None and v is not FAILED:")
            out(f"        rec[{name}] = v")

    def build(self, template: dict[str, Any]) -> tuple[RowFunction, str]:
        self.ns["TEMPLATE"] = template
        source = "\n".join(
            [
                "def row_function(native):",
                "    rec = TEMPLATE.copy()",
                "    errors = []",
                "    get = native.get",
                *self.lines,
                "    return rec, errors",
                "",
            ]
        )
        exec(compile(source, f"<mapping {self.title}>", "exec"), self.ns)  # noqa: S102 - see class doc
        return self.ns["row_function"], source


@dataclass
class Mapper:
    """A compiled inbound mapping (native row -> canonical record)."""

    name: str
    system: str
    dataset: str
    version: str
    path: Path
    sensitivity: dict[str, str]
    record_key_fields: list[str]
    required_columns: list[str]
    # every group of alternative columns of a required field (one of each must be present)
    required_groups: list[tuple[str, ...]]
    columns: list[str]  # every native column the mapping reads
    id_type: str  # document type of rows whose own type is not given
    title: str = ""
    # the generated row function and its source (see _RowFunctionWriter)
    source: str = field(default="", repr=False)
    _row: RowFunction | None = field(default=None, repr=False)
    # derived field -> the field it is computed from (from_field)
    _derived: dict[str, str] = field(default_factory=dict, repr=False)

    direction = "inbound"

    def __post_init__(self) -> None:
        if self._row is not None:
            self.__dict__["map_row"] = self._row  # the call site gets the generated function itself

    def map_row(self, native: Mapping[str, Any]) -> tuple[dict[str, Any], list[FieldError]]:
        """Canonical record (every field of the dataset but ``subject_key``; plaintext values: the ID
        normalised, dates as ``date``, codes canonical; plus ``converted``) and the field errors."""
        assert self._row is not None
        return self._row(native)

    def validate(self, record: Mapping[str, Any], skip: Iterable[str] = ()) -> list[FieldError]:
        """The canonical dataset's checks (``gateway.schemas.validate_record``)."""
        return validate_record(self.dataset, record, skip=frozenset(skip))

    def map_checked(self, native: Mapping[str, Any]) -> tuple[dict[str, Any], list[FieldError]]:
        """``map_row`` then ``validate_record``, each field reported once."""
        rec, errors = self.map_row(native)
        more = validate_record(
            self.dataset, rec, skip=self.failed_fields(errors) if errors else frozenset()
        )
        if more:
            errors.extend(more)
        return rec, errors

    def failed_fields(self, errors: Iterable[FieldError]) -> set[str]:
        """Fields with an error, plus those derived from them (empty because their source failed):
        what ``validate_record`` should skip after a mapping error."""
        failed = {e.field for e in errors}
        grew = True
        while grew:
            grew = False
            for derived, source in self._derived.items():
                if source in failed and derived not in failed:
                    failed.add(derived)
                    grew = True
        return failed

    def missing_columns(self, columns: Iterable[str]) -> list[str]:
        """Required columns absent from a source's header, as readable names (``a`` or ``a | b``)."""
        present = set(columns)
        return [
            " | ".join(group) for group in self.required_groups if not present.intersection(group)
        ]

    def record_key(self, record: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(record.get(f) for f in self.record_key_fields)


@dataclass
class OutboundMapper:
    """A compiled outbound mapping (canonical record -> a target's native layout)."""

    name: str
    system: str
    dataset: str
    version: str
    path: Path
    key: list[str]
    fields: list[str]  # native fields, in file order
    sensitivity: dict[str, str]  # native field -> class of the canonical data it carries
    title: str = ""
    source: str = field(default="", repr=False)
    _row: RowFunction | None = field(default=None, repr=False)

    direction = "outbound"

    def __post_init__(self) -> None:
        if self._row is not None:
            self.__dict__["map_record_checked"] = self._row

    def map_record_checked(
        self, record: Mapping[str, Any]
    ) -> tuple[dict[str, Any], list[FieldError]]:
        """Native row (every field of the mapping, None when empty) and the field errors."""
        assert self._row is not None
        return self._row(record)

    def map_record(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Native row for the target; raises :class:`OutboundRecordError` if a field fails."""
        out, errors = self.map_record_checked(record)
        if errors:
            raise OutboundRecordError(self.name, errors)
        return out


# --- loading --------------------------------------------------------------------------------------


@dataclass
class _Parsed:
    header: dict[str, Any]
    fields: dict[str, dict[str, Any]]  # loaded field specs, file order (the valid part of each)
    names: list[str]  # every field table in the file, valid or not
    path: Path
    version: str


_FIELD_DEFAULTS = {"transforms": [], "required": False}


def _read(path: Path, problems: _Problems) -> tuple[dict[str, Any], bytes] | None:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        problems.add((), f"cannot read: {exc.strerror or exc}")
        return None
    try:
        text = raw.decode("utf-8-sig")
        doc = tomllib.loads(text)
    except UnicodeDecodeError:
        problems.add((), "not UTF-8 text")
        return None
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        line = int(m.group(1)) if m else 1
        problems.items.append((line, f"{path}:{line}: (toml): {exc}"))
        return None
    problems.locator = KeyLocator(text)
    return doc, raw


def _load_part(
    schema: Any, data: dict[str, Any], where: tuple[Any, ...], problems: _Problems
) -> dict[str, Any]:
    """Load with ``schema``; on errors report each and go on with the valid part, so that one
    mistake does not hide the others."""
    try:
        return schema.load(data)
    except ValidationError as exc:
        for key, message in flatten_messages(exc.messages):
            problems.add(where + key, message)
        valid = exc.valid_data if isinstance(exc.valid_data, dict) else {}
        return valid


def _parse(path: Path, problems: _Problems) -> _Parsed | None:
    got = _read(path, problems)
    if got is None:
        return None
    doc, raw = got
    for key in doc:
        if key not in ("mapping", "fields"):
            problems.add((key,), "unknown top-level key (expected [mapping] and [fields.*])")
    header_raw = doc.get("mapping")
    if not isinstance(header_raw, dict):
        problems.add(("mapping",), "missing [mapping] table")
        header_raw = {}
    header = _load_part(MappingHeaderSchema(), header_raw, ("mapping",), problems)
    direction = header.get("direction", "inbound")
    if direction == "inbound" and "key" in header:
        problems.add(
            ("mapping", "key"), "key is for outbound mappings; inbound ones use record_key"
        )
    if direction == "outbound" and "direction" in header:
        for name in ("record_key", "id_type"):
            if name in header:
                problems.add(("mapping", name), f"{name} is for inbound mappings")
        if "key" not in header_raw:
            problems.add(
                ("mapping",), "an outbound mapping needs key = [the target's natural key fields]"
            )
    fields_raw = doc.get("fields")
    if not isinstance(fields_raw, dict) or not fields_raw:
        problems.add(("fields",), "no [fields.<name>] tables")
        fields_raw = {}
    schema = InboundFieldSchema() if direction == "inbound" else OutboundFieldSchema()
    loaded: dict[str, dict[str, Any]] = {}
    for name, spec in fields_raw.items():
        if not isinstance(spec, dict):
            problems.add(("fields", name), "must be a table ([fields.<name>])")
            continue
        loaded[name] = {**_FIELD_DEFAULTS, **_load_part(schema, spec, ("fields", name), problems)}
    version = f"{header.get('version', '?')}+{hashlib.sha256(raw).hexdigest()[:8]}"
    return _Parsed(header=header, fields=loaded, names=list(fields_raw), path=path, version=version)


def _compile_chain(
    where: tuple[Any, ...],
    specs: list[tuple[str, Any, dict[str, Any]]],
    registry: Mapping[str, Callable[..., Any]],
    system: str,
    tables: Mapping[str, Mapping[str, Any]],
    problems: _Problems,
) -> tuple[tuple[Step, ...], bool, bool]:
    """-> (steps, first transform accepts an empty value, first transform is concat)."""
    steps: list[Step] = []
    first_accepts_none = False
    for index, (name, arg, params) in enumerate(specs):
        if name == "concat" and index > 0:
            problems.add(
                where + ("transforms", index),
                "concat must be the first transform (it joins the from columns)",
            )
            continue
        try:
            step, accepts_none = _compile_transform(name, arg, params, registry, system, tables)
        except _Unusable as exc:
            problems.add(where + ("transforms", index), str(exc))
            continue
        if index == 0:
            first_accepts_none = accepts_none
        steps.append(step)
    is_concat = bool(specs) and specs[0][0] == "concat"
    return tuple(steps), first_accepts_none, is_concat


def _check_default(
    where: tuple[Any, ...], value: Any, coerce: Callable[[Any], Any] | None, problems: _Problems
) -> Any:
    if coerce is None:
        return value
    try:
        return coerce(value)
    except TransformError as exc:
        problems.add(where + ("default",), f"wrong type for this field: {exc.message}")
        return _MISSING


def _compile_inbound(
    parsed: _Parsed,
    registry: Mapping[str, Callable[..., Any]],
    tables: Mapping[str, Mapping[str, Any]],
    problems: _Problems,
) -> Mapper | None:
    header, dataset, system = parsed.header, parsed.header["dataset"], parsed.header["system"]
    canonical: dict[str, FieldInfo] = dataset_fields(dataset)
    id_type = header.get("id_type", "1")
    plans: list[_FieldPlan] = []
    seen: list[str] = []
    derived: dict[str, str] = {}
    sensitivity: dict[str, str] = {}
    columns: list[str] = []
    required_groups: list[tuple[str, ...]] = []
    for name, spec in parsed.fields.items():
        where = ("fields", name)
        info = canonical.get(name)
        if info is None or name in COMPUTED_FIELDS:
            why = (
                "is computed by the gateway, not mapped"
                if name in COMPUTED_FIELDS
                else "unknown canonical field"
            )
            problems.add(
                where,
                f"{why} for dataset {dataset} (fields: {', '.join(f for f in canonical if f not in COMPUTED_FIELDS)})",
            )
            continue
        sources: list[str] | None = spec.get("from_")
        from_field: str | None = spec.get("from_field")
        chain, run_on_none, is_concat = _compile_chain(
            where, spec["transforms"], registry, system, tables, problems
        )
        if sources and from_field:
            problems.add(
                where,
                "give either from (native columns) or from_field (an earlier field), not both",
            )
        elif from_field is not None and from_field not in seen:
            problems.add(
                where + ("from_field",), f"{from_field!r} is not a field mapped above this one"
            )
        elif from_field is not None:
            derived[name] = from_field
        elif not sources and from_field is None and not run_on_none and "default" not in spec:
            problems.add(where, "no source: give from, from_field, a const transform or a default")
        given = spec.get("sensitivity")
        if given is not None and given != info.sensitivity:
            lower = SENSITIVITY_RANK[given] < SENSITIVITY_RANK[info.sensitivity]
            problems.add(
                where + ("sensitivity",),
                f"{given!r} {'would lower' if lower else 'differs from'} the canonical class of {name}: "
                f"must be {info.sensitivity!r}",
            )
        sensitivity[name] = info.sensitivity
        coerce = _coercer(info.type)
        default = (
            _check_default(where, spec["default"], coerce, problems)
            if "default" in spec
            else _MISSING
        )
        if name == "id_type" and default is _MISSING:
            default = id_type  # an empty document-type cell means the mapping's default type
        required = spec["required"] or (info.required and default is _MISSING)
        if sources:
            columns.extend(c for c in sources if c not in columns)
            if required and not is_concat:
                required_groups.append(tuple(sources))
            elif required:
                required_groups.extend((c,) for c in sources)
        for _, _, params in spec["transforms"]:
            check_col = params.get("check")
            if isinstance(check_col, str) and check_col not in columns:
                columns.append(check_col)
        if from_field is not None:
            missing_text = f"{info.label} ({name}) is missing: {from_field} is empty"
        elif sources:
            missing_text = (
                f"{info.label} ({name}) is missing: column {' / '.join(sources)} is empty or absent"
            )
        else:
            missing_text = f"{info.label} ({name}) is missing"
        plans.append(
            _FieldPlan(
                name=name,
                sources=sources,
                from_field=from_field,
                as_list=is_concat,
                chain=chain,
                run_on_none=run_on_none,
                coerce=coerce,
                coerce_kind=info.type,
                default=default,
                required=required,
                missing_text=missing_text,
            )
        )
        seen.append(name)
    mapped = set(seen)
    for info in canonical.values():
        if info.required and info.name not in mapped and info.name not in parsed.names:
            problems.add(
                ("mapping", "dataset"),
                f"dataset {dataset} requires field {info.name!r} ({info.label}); map it in [fields.{info.name}]",
            )
    record_key = header.get("record_key", ["subject_key"])
    for index, key in enumerate(record_key):
        if key not in canonical:
            problems.add(
                ("mapping", "record_key", index), f"{key!r} is not a field of dataset {dataset}"
            )
        elif key not in COMPUTED_FIELDS and key not in parsed.fields:
            problems.add(("mapping", "record_key", index), f"{key!r} is not mapped in this file")
    if problems:
        return None
    # The document type must be known before the ID number is checked against it.
    plans.sort(key=lambda plan: plan.name != "id_type")
    template = {f: None for f in canonical if f not in COMPUTED_FIELDS}
    template["id_type"] = id_type
    template["converted"] = False
    writer = _RowFunctionWriter(header["name"])
    for plan in plans:
        writer.field(plan)
    row_function, source = writer.build(template)
    return Mapper(
        name=header["name"],
        system=system,
        dataset=dataset,
        version=parsed.version,
        path=parsed.path,
        title=header.get("title", ""),
        sensitivity=sensitivity,
        record_key_fields=list(record_key),
        required_columns=[g[0] for g in required_groups if len(g) == 1],
        required_groups=required_groups,
        columns=columns,
        id_type=id_type,
        source=source,
        _row=row_function,
        _derived=derived,
    )


def _compile_outbound(
    parsed: _Parsed,
    registry: Mapping[str, Callable[..., Any]],
    tables: Mapping[str, Mapping[str, Any]],
    problems: _Problems,
) -> OutboundMapper | None:
    header, dataset, system = parsed.header, parsed.header["dataset"], parsed.header["system"]
    canonical = dataset_fields(dataset)
    writer = _RowFunctionWriter(header.get("name", str(parsed.path)))
    sensitivity: dict[str, str] = {}
    for name, spec in parsed.fields.items():
        where = ("fields", name)
        sources: list[str] | None = spec.get("from_")
        chain, run_on_none, is_concat = _compile_chain(
            where, spec["transforms"], registry, system, tables, problems
        )
        if not sources and not run_on_none and "default" not in spec:
            problems.add(
                where, "no source: give from (canonical fields), a const transform or a default"
            )
        classes = []
        for source in sources or ():
            if source in OUTBOUND_EXTRA_FIELDS:
                continue
            if source not in canonical:
                problems.add(
                    where + ("from",),
                    f"{source!r} is not a field of dataset {dataset} (nor one of {', '.join(OUTBOUND_EXTRA_FIELDS)})",
                )
            else:
                classes.append(SENSITIVITY_RANK[canonical[source].sensitivity])
        derived = max(classes, default=0)
        given = spec.get("sensitivity")
        if given is not None and SENSITIVITY_RANK[given] < derived:
            problems.add(
                where + ("sensitivity",),
                f"{given!r} is lower than the class of the data it carries",
            )
        sensitivity[name] = given or next(k for k, v in SENSITIVITY_RANK.items() if v == derived)
        default = spec.get("default", _MISSING)
        writer.field(
            _FieldPlan(
                name=name,
                sources=sources,
                from_field=None,
                as_list=is_concat,
                chain=chain,
                run_on_none=run_on_none,
                coerce=None,
                coerce_kind=None,
                default=default,
                required=spec["required"],
                missing_text=f"{name} is missing: {' / '.join(sources or ['(no source)'])} is empty",
            )
        )
    for index, key in enumerate(header.get("key", [])):
        if key not in parsed.fields:
            problems.add(("mapping", "key", index), f"{key!r} is not a field of this mapping")
    if problems:
        return None
    row_function, source = writer.build(dict.fromkeys(parsed.fields))
    return OutboundMapper(
        name=header["name"],
        system=system,
        dataset=dataset,
        version=parsed.version,
        path=parsed.path,
        title=header.get("title", ""),
        key=list(header["key"]),
        fields=list(parsed.fields),
        sensitivity=sensitivity,
        source=source,
        _row=row_function,
    )


def _load(
    path: Path,
    transforms: Mapping[str, Callable[..., Any]],
    code_tables: Mapping[str, Mapping[str, Any]],
) -> tuple[Mapper | OutboundMapper | None, list[str]]:
    problems = _Problems(path, None)
    parsed = _parse(path, problems)
    mapper: Mapper | OutboundMapper | None = None
    # The fields can only be checked against a known dataset (and system, for its code tables).
    if parsed is not None and "dataset" in parsed.header:
        parsed.header.setdefault("system", "")
        parsed.header.setdefault("name", str(path))
        compile_ = (
            _compile_outbound if parsed.header.get("direction") == "outbound" else _compile_inbound
        )
        mapper = compile_(parsed, transforms, code_tables, problems)
    return (None if problems else mapper), problems.lines()


def load_mapping(
    spec: str | Path,
    *,
    transforms: Mapping[str, Callable[..., Any]],
    code_tables: Mapping[str, Mapping[str, Any]],
    base_dirs: Sequence[Path | str] = (),
) -> Mapper | OutboundMapper:
    """Load and compile a mapping: ``spec`` is a path or ``system/name`` (site copies in
    ``base_dirs`` first, then the shipped files). ``code_tables`` maps ``system.table`` (or bare
    ``table``) names to tables. Raises :class:`MappingFileError` listing every problem."""
    path = find_mapping_file(spec, base_dirs)
    mapper, problems = _load(path, transforms, code_tables)
    if mapper is None:
        raise MappingFileError(problems)
    return mapper


def check_mapping(
    path: Path | str,
    *,
    transforms: Mapping[str, Callable[..., Any]],
    code_tables: Mapping[str, Mapping[str, Any]],
) -> list[str]:
    """Every problem of one mapping file as ``file:line: key: reason`` (empty: the file is good)."""
    return _load(Path(path), transforms, code_tables)[1]


# --- what the plugins provide ---------------------------------------------------------------------


def code_tables_of(systems: Mapping[str, SystemSpec]) -> dict[str, CodeTable]:
    """Every system's code tables under ``<system>.<table>``."""
    return {
        f"{name}.{table}": CodeTable(f"{name}.{table}", codes)
        for name, spec in systems.items()
        for table, codes in spec.code_tables.items()
    }


def plugin_context(
    pm: pluggy.PluginManager,
) -> tuple[dict[str, Callable[..., Any]], dict[str, CodeTable]]:
    """(transforms, code tables) offered by the plugins of ``pm``."""
    from . import plugins as plugins_mod

    get_transforms = getattr(plugins_mod, "transforms", None)
    get_systems = getattr(plugins_mod, "systems", None)
    if get_transforms is not None and get_systems is not None:
        transforms = dict(get_transforms(pm))
        systems = dict(get_systems(pm))
    else:  # the plugin manager module without its helpers: ask the hooks directly
        transforms = {}
        for result in pm.hook.register_transforms():
            transforms.update(result or {})
        systems = {s.name: s for result in pm.hook.register_systems() for s in (result or ())}
    return transforms, code_tables_of(systems)


def load_for(
    spec: str | Path, pm: pluggy.PluginManager, *, base_dirs: Sequence[Path | str] = ()
) -> Mapper | OutboundMapper:
    """``load_mapping`` with the transforms and code tables of the plugin manager ``pm``."""
    transforms, tables = plugin_context(pm)
    return load_mapping(spec, transforms=transforms, code_tables=tables, base_dirs=base_dirs)
