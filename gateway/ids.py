"""Resident ID numbers (GB 11643-1999) and the other identity documents of the student-status system.

``check()`` turns whatever a department exported (text, an Excel cell that became a number, a
legacy 15-digit number) into a normalised 18-character number, or says precisely why it cannot:

* ``empty``            nothing there (blank, spaces, None)
* ``bad_charset``      characters other than ASCII digits and a final X survive cleaning
* ``bad_length``       neither 18 characters nor 15 (legacy) digits
* ``bad_area``         the first two digits are not a province-level code
* ``bad_birth_date``   the birth date does not exist, is in the future or before 1900
* ``bad_check_digit``  the check character does not match the first 17 digits
* ``excel_damaged``    the number went through Excel's 15-significant-digit floats (scientific
                       notation, ``.0``, trailing zeros): the last digits are gone and are never guessed
* ``bad_type``         the document type is not one of 1 6 7 8 9 A Z (``id_type`` is then "?")

Messages never carry the number: at most a position, a count or the province part, which the
mask (first 6, last 4) shows anyway.

Documents other than the resident ID card (type 6 Hong Kong, 7 Macao, 8 Taiwan, 9 foreign permanent
residence, A passport, Z other) are not GB 11643 numbers: they are only cleaned (NFKC, whitespace and
invisible characters, the formatting characters ``( ) - .`` removed, upper case) and carried with
their type. Type Z may be blank: that is ``ok`` with ``value=None`` (such a record has no number to
match on, so ``index_material`` refuses it and callers key it otherwise).

Performance: ``check()`` has a fast path for the common case, an already clean 18-character ``str``,
that skips Unicode normalisation and validates with a handful of C-level string operations.
"""

from __future__ import annotations

import math
import re
import time
import unicodedata
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal

__all__ = [
    "CODES",
    "DOCUMENT_TYPES",
    "PROVINCE_CODES",
    "IdResult",
    "InvalidId",
    "age_at",
    "birth_date",
    "check",
    "check_char",
    "index_material",
    "mask",
    "normalise_text",
    "normalise_type",
    "parse",
    "sex",
]

CODES = (
    "empty",
    "bad_charset",
    "bad_length",
    "bad_area",
    "bad_birth_date",
    "bad_check_digit",
    "excel_damaged",
    "bad_type",
)

# 身份证件类型 of the student-status system. Only "1" follows GB 11643.
DOCUMENT_TYPES: dict[str, str] = {
    "1": "resident identity card",
    "6": "Hong Kong document",
    "7": "Macao document",
    "8": "Taiwan document",
    "9": "foreign permanent residence ID",
    "A": "passport",
    "Z": "other",
}

# The 34 province-level codes of GB/T 2260, plus 83: the Ministry of Public Security gives the
# residence permits of Taiwan residents (台湾居民居住证, since 2018) GB 11643 numbers in 830000,
# as it does 810000/820000 for Hong Kong and Macao residents.
PROVINCE_CODES = frozenset(
    ("11", "12", "13", "14", "15", "21", "22", "23", "31", "32", "33", "34", "35", "36", "37")
    + ("41", "42", "43", "44", "45", "46", "50", "51", "52", "53", "54", "61", "62", "63", "64")
    + ("65", "71", "81", "82", "83")
)

# GB 11643 weights are 2**(17-i) mod 11, and 13 = 2 (mod 11): so the weighted sum of the first 17
# digits is 2 * int(first17, 13) (mod 11), one C-level call instead of a Python loop.
_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK_OF_SUM = "10X98765432"  # weighted sum mod 11 -> check character
_CHECK_CHARS = frozenset("0123456789X")
_DIGITS_AND_X = dict.fromkeys(map(ord, "0123456789X"))  # a deletion table

_EARLIEST_BIRTH = "19000101"  # older than that is a typo, not a person
_OTHER_MIN_LEN, _OTHER_MAX_LEN = 4, 32
_EXCEL_DIGITS = 15  # Excel keeps 15 significant digits of a number

# Characters that carry no content but survive NFKC: BOM, zero-width and direction marks, soft hyphen.
_INVISIBLE = dict.fromkeys(
    [0x00AD, 0x180E, 0xFEFF, *range(0x200B, 0x2010), *range(0x202A, 0x202F)]
    + [*range(0x2060, 0x2065), *range(0x2066, 0x206A)]
)
# A text prefix Excel users type (or a Chinese IME turns ' into) to keep a number as text.
_APOSTROPHES = ("'", "\u2018", "\u2019", "`")
# Formatting characters dropped from non-resident document numbers: A123456(7) == A1234567.
_OTHER_FORMATTING = dict.fromkeys(map(ord, "()-."))

# Scientific notation as Excel (1.10105194912310E+17) or Python (1.1010519491231e+17) writes it.
_SCIENTIFIC = re.compile(r"[0-9]+(?:\.[0-9]*)?E[+-]?[0-9]{1,3}")
# For other documents the sign is required: 12E3456 may be a real document number.
_SCIENTIFIC_SIGNED = re.compile(r"[0-9]+(?:\.[0-9]*)?E[+-][0-9]{1,3}")
_DECIMAL_FORM = re.compile(r"([0-9]+)\.([0-9]*)")

_REEXPORT = "re-export the column formatted as text"


@dataclass(frozen=True, slots=True)
class IdResult:
    """The outcome of ``check()``: a normalised number, or a stable ``code`` and a ``message``."""

    ok: bool
    value: str | None  # normalised number (18 characters for type "1"); None when not ok
    id_type: str
    converted: bool  # True when a legacy 15-digit number was converted to 18
    code: str | None
    message: str | None

    @property
    def masked(self) -> str | None:
        """The value as it may appear in logs and reports."""
        return None if self.value is None else mask(self.value)


class InvalidId(ValueError):
    """Raised by ``parse()``; ``code`` and ``message`` as in ``IdResult`` (no number in them)."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


# --------------------------------------------------------------------------- helpers others use


def mask(value: str) -> str:
    """First 6 + one ``*`` per hidden character + last 4; 10 characters or fewer: all ``*``.

    Same rule as ``gateway.crypto.mask_id`` (kept here too so that ID handling does not import
    the cryptography stack).
    """
    if len(value) <= 10:
        return "*" * len(value)
    return value[:6] + "*" * (len(value) - 10) + value[-4:]


def check_char(first17: str) -> str:
    """The GB 11643 check character of 17 ASCII digits."""
    if len(first17) != 17 or not (first17.isascii() and first17.isdigit()):
        raise ValueError("check_char needs exactly 17 ASCII digits")
    return _CHECK_OF_SUM[2 * int(first17, 13) % 11]


def index_material(id_type: str, value: str) -> str:
    """What the blind index is computed over: the 18-character number for type 1, else ``type:number``.

    The type prefix keeps a passport number from colliding with an equal number of another document.
    """
    if not value:
        raise ValueError("a record without a document number has no blind index")
    if id_type == "1":
        if len(value) != 18:
            raise ValueError("index material of a resident ID must be the normalised 18 characters")
        return value
    return f"{id_type}:{value}"


def birth_date(id18: str) -> date:
    """Birth date of a normalised 18-character (or legacy 15-digit) number."""
    if len(id18) == 18:
        digits = id18[6:14]
    elif len(id18) == 15:
        digits = "19" + id18[6:12]
    else:
        raise ValueError("not an 18- or 15-character ID number")
    return date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))


def sex(id18: str) -> str:
    """``"1"`` male, ``"2"`` female (GB/T 2261.1): the sequence number is odd for men."""
    if len(id18) == 18:
        digit = id18[16]
    elif len(id18) == 15:
        digit = id18[14]
    else:
        raise ValueError("not an 18- or 15-character ID number")
    return "1" if int(digit) % 2 else "2"


def age_at(id18_or_birth: str | date, at: date) -> int:
    """Age in whole years on ``at``; negative if ``at`` is before the birth.

    Someone born on 29 February turns a year older on 1 March in common years (the birthday has
    not been reached on 28 February), the usual reading of 周岁.
    """
    born = birth_date(id18_or_birth) if isinstance(id18_or_birth, str) else id18_or_birth
    if isinstance(at, datetime):
        at = at.date()
    return at.year - born.year - ((at.month, at.day) < (born.month, born.day))


# --------------------------------------------------------------------------- normalisation


def normalise_text(raw: object) -> str:
    """The cleaning step only: NFKC, whitespace and invisible characters out, Excel's text prefix
    (a leading apostrophe, or ``="..."``) removed, upper case. Numbers become their plain digits
    (a float keeps its ``.0`` so that ``check()`` can still see it went through a float).
    """
    if raw is None:
        return ""
    if isinstance(raw, str):
        text = raw
    elif isinstance(raw, bool):
        return str(raw).upper()
    elif isinstance(raw, int):
        # Python refuses str() of ints over 4300 digits; "?" is rejected by every validator.
        return "?" if raw.bit_length() > 14000 else str(raw)
    elif isinstance(raw, float):
        if math.isnan(raw):
            return ""  # pandas reads a blank cell as NaN
        if math.isfinite(raw) and raw == int(raw):
            return f"{int(raw)}.0"
        return repr(raw).upper()
    elif isinstance(raw, Decimal):
        if raw.is_finite() and raw == raw.to_integral_value() and raw.adjusted() < 40:
            return str(int(raw))
        return str(raw).upper()
    elif isinstance(raw, bytes | bytearray):
        text = bytes(raw).decode("utf-8", errors="replace")
    else:
        text = str(raw)
    text = unicodedata.normalize("NFKC", text).translate(_INVISIBLE)
    text = "".join(text.split())  # every Unicode whitespace, anywhere
    if text.startswith(_APOSTROPHES):
        text = text[1:]
    elif text.startswith('="') and text.endswith('"') and len(text) >= 3:
        text = text[2:-1]  # CSV written by tools that force Excel to keep text: ="110105..."
    return text.upper()


def normalise_type(id_type: object) -> str | None:
    """The canonical document type (``"1"``, ``"6"`` ... ``"Z"``), or None if it is not one.

    A missing type means a resident ID card: sources without a type column hold only those.
    """
    if id_type is None:
        return "1"
    if isinstance(id_type, str) and id_type in DOCUMENT_TYPES:
        return id_type
    if isinstance(id_type, int) and not isinstance(id_type, bool):
        text = str(id_type)
    elif isinstance(id_type, str):
        text = "".join(unicodedata.normalize("NFKC", id_type).translate(_INVISIBLE).split())
        text = text.upper()
    else:
        return None
    if not text:
        return "1"
    return text if text in DOCUMENT_TYPES else None


# --------------------------------------------------------------------------- validation

# Birth-date strings seen so far -> whether the date exists. Only strings inside
# [_EARLIEST_BIRTH, today] get here, so the cache is bounded (a few hundred thousand keys at worst).
_DATE_EXISTS: dict[str, bool] = {}
_DATE_CACHE_LIMIT = 1 << 19


def _date_exists(yyyymmdd: str) -> bool:
    known = _DATE_EXISTS.get(yyyymmdd)
    if known is not None:
        return known
    try:
        date(int(yyyymmdd[:4]), int(yyyymmdd[4:6]), int(yyyymmdd[6:8]))
        exists = True
    except ValueError:
        exists = False
    if len(_DATE_EXISTS) < _DATE_CACHE_LIMIT:
        _DATE_EXISTS[yyyymmdd] = exists
    return exists


# date.today() costs more than the rest of the fast path: keep today's YYYYMMDD until local midnight.
_today_until = 0.0  # epoch seconds of the next local midnight
_today_digits = ""
_given_today: dict[date, str] = {}


def _today_key(today: date | None) -> str:
    global _today_until, _today_digits
    if today is None:
        if time.time() < _today_until:
            return _today_digits
        current = date.today()
        midnight = datetime.combine(current + timedelta(days=1), datetime.min.time())
        _today_until, _today_digits = midnight.timestamp(), f"{current:%Y%m%d}"
        return _today_digits
    key = _given_today.get(today)
    if key is None:
        key = f"{today:%Y%m%d}"
        if len(_given_today) < 64:
            _given_today[today] = key
    return key


def _bad(code: str, message: str, id_type: str = "1") -> IdResult:
    return IdResult(False, None, id_type, False, code, message)


def _birth_problem(birth: str, today_key: str, where: str = "characters 7-14") -> IdResult | None:
    if birth > today_key:
        return _bad("bad_birth_date", f"the birth date ({where}) is in the future")
    if birth < _EARLIEST_BIRTH:
        return _bad("bad_birth_date", f"the birth date ({where}) is before 1900")
    if not _date_exists(birth):
        return _bad("bad_birth_date", f"the birth date ({where}) is not a real date")
    return None


def _area_problem(province: str) -> IdResult:
    return _bad(
        "bad_area",
        f"the area code starts with {province!r}, which is not a province-level code (GB/T 2260)",
    )


def _check_digit_problem(value: str) -> IdResult:
    if value.endswith("00"):
        return _bad(
            "excel_damaged",
            "the check character does not match and the number ends in zeros: this is what Excel "
            "does to an ID stored as a number (it keeps 15 significant digits and turns the rest "
            f"into 0); the last digits are lost and cannot be recovered; {_REEXPORT}",
        )
    return _bad(
        "bad_check_digit",
        "the check character (18th) does not match the first 17 digits: a digit is mistyped or "
        "two digits are swapped",
    )


def _validate18(value: str, today_key: str) -> IdResult:
    """``value`` is 17 ASCII digits and a digit or X."""
    if value[:2] not in PROVINCE_CODES:
        return _area_problem(value[:2])
    birth = value[6:14]
    if not (_EARLIEST_BIRTH <= birth <= today_key and _date_exists(birth)):
        problem = _birth_problem(birth, today_key)
        if problem is not None:
            return problem
    if _CHECK_OF_SUM[2 * int(value[:17], 13) % 11] != value[17]:
        return _check_digit_problem(value)
    return IdResult(True, value, "1", False, None, None)


def _validate15(value: str, today_key: str) -> IdResult:
    """``value`` is 15 ASCII digits: a pre-1999 number, converted to 18."""
    if value[:2] not in PROVINCE_CODES:
        return _area_problem(value[:2])
    problem = _birth_problem("19" + value[6:12], today_key, "characters 7-12")
    if problem is not None:
        return problem
    first17 = value[:6] + "19" + value[6:]
    return IdResult(True, first17 + _CHECK_OF_SUM[2 * int(first17, 13) % 11], "1", True, None, None)


def _charset_problem(text: str, allowed: str = "only digits and a final X are allowed") -> IdResult:
    for position, char in enumerate(text, 1):
        if char.isascii() and char.isdigit():
            continue
        if char == "X":
            if position == len(text):
                continue
            return _bad(
                "bad_charset",
                f"character {position} is X, which may only be the last (check) character",
            )
        # Name an ASCII character, never a non-ASCII one: it may be part of a name typed in the wrong column.
        if char.isascii() and char.isprintable():
            what = repr(char)
        elif char.isascii():
            what = "a control character"
        else:
            what = "a non-ASCII character"
        return _bad("bad_charset", f"character {position} is {what}; {allowed}")
    raise AssertionError("unreachable: text has only digits and a final X")  # pragma: no cover


def _length_problem(length: int) -> IdResult:
    return _bad(
        "bad_length",
        f"has {length} character{'s' if length != 1 else ''}; a resident ID number has 18 (or 15 digits for a pre-1999 number)",
    )


def _float_problem(digits: int, id_type: str = "1") -> IdResult:
    lost = max(digits - _EXCEL_DIGITS, 1)
    return _bad(
        "excel_damaged",
        f"the number went through a floating-point cell (Excel keeps 15 significant digits): "
        f"the last {lost} of its {digits} digits are lost and cannot be recovered; {_REEXPORT}",
        id_type,
    )


def _scientific_problem(text: str, today_key: str, id_type: str = "1") -> IdResult:
    number = Decimal(text)
    written = len(number.as_tuple().digits)  # trailing zeros count: they were written out
    digits = number.adjusted() + 1 if number else 0
    # Only a legacy number whose 15 digits are all written out survives scientific notation:
    # fewer written digits may be a display rounding (1.10105E+14) of other digits.
    if id_type == "1" and digits == 15 and written == 15:
        return _validate15(str(int(number)), today_key)
    if digits >= _EXCEL_DIGITS:
        detail = f"only the first {min(written, digits)} of its {digits} digits were kept"
    else:
        detail = "it is a number, not a document number"
    return _bad(
        "excel_damaged",
        f"is in scientific notation, as Excel shows long numbers: {detail}; the rest cannot be "
        f"recovered; {_REEXPORT}",
        id_type,
    )


def _check_text(text: str, today_key: str) -> IdResult:
    """``text`` is already cleaned (``normalise_text``) and not empty."""
    if text.isascii():
        if text.isdigit():
            if len(text) == 18:
                return _validate18(text, today_key)
            if len(text) == 15:
                return _validate15(text, today_key)
            return _length_problem(len(text))
        if not text.translate(_DIGITS_AND_X):  # digits and X only: the length decides first
            if len(text) not in (15, 18):
                return _length_problem(len(text))
            if len(text) == 18 and text[:-1].isdigit():
                return _validate18(text, today_key)
            if len(text) == 15 and text[:-1].isdigit():
                return _bad(
                    "bad_charset",
                    "a 15-digit (pre-1999) number has no check character, so it cannot end in X",
                )
            return _charset_problem(text)
        if _SCIENTIFIC.fullmatch(text):
            return _scientific_problem(text, today_key)
        match = _DECIMAL_FORM.fullmatch(text)
        if match:
            whole, fraction = match.groups()
            if fraction.strip("0"):
                return _bad("bad_charset", "is a number with a fractional part, not an ID number")
            if len(whole) == 15:
                return _validate15(whole, today_key)  # below 2**53: exact even as a float
            if len(whole) > _EXCEL_DIGITS:
                return _float_problem(len(whole))
            return _length_problem(len(whole))
    return _charset_problem(text)


def _far_too_long(raw: int | Decimal) -> bool:
    """More than 19 digits: no document number, and spares converting a giant number to text."""
    if isinstance(raw, int):
        return raw.bit_length() > 64
    return raw.is_finite() and raw.adjusted() > 19


def _check_number(raw: int | float | Decimal, today_key: str) -> IdResult:
    """An Excel or database cell that holds a number instead of text."""
    if isinstance(raw, bool):
        return _bad("bad_charset", "is a true/false value, not an ID number")
    if not isinstance(raw, float) and _far_too_long(raw):
        return _bad("bad_length", "is a number far longer than an ID number")
    if isinstance(raw, int):
        number, exact = raw, True
    else:
        if not (raw.is_finite() if isinstance(raw, Decimal) else math.isfinite(raw)):
            return _bad("bad_charset", "is not a number")
        number = int(raw)
        if number != raw:
            return _bad("bad_charset", "is a number with a fractional part, not an ID number")
        # A float holds every integer below 2**53, but Excel keeps only 15 significant digits.
        exact = isinstance(raw, Decimal) or len(str(abs(number))) <= _EXCEL_DIGITS
    if number < 0:
        return _bad("bad_charset", "is a negative number, not an ID number")
    text = str(number)
    if not exact:
        return _float_problem(len(text))
    if len(text) == 18 and text.endswith("000"):
        # At most 15 significant digits: exactly what an Excel number cell leaves of an 18-digit ID.
        # Even if the check happened to match (1 time in 11) the number would be a guess.
        return _float_problem(18)
    return _check_text(text, today_key)


def _check_other(raw: object, id_type: str) -> IdResult:
    """A document that is not a resident ID card: cleaned and carried, not checked as GB 11643."""
    if isinstance(raw, bool):
        return _bad("bad_charset", "is a true/false value, not a document number", id_type)
    if isinstance(raw, int | Decimal) and _far_too_long(raw):
        return _bad("bad_length", "is a number far longer than a document number", id_type)
    text = normalise_text(raw)  # a float cell keeps its ".0" here, handled below
    if _SCIENTIFIC_SIGNED.fullmatch(text):
        return _scientific_problem(text, "", id_type)
    match = _DECIMAL_FORM.fullmatch(text)
    if match:
        whole, fraction = match.groups()
        if fraction.strip("0"):
            return _bad(
                "bad_charset", "is a number with a fractional part, not a document number", id_type
            )
        if len(whole) > _EXCEL_DIGITS:
            return _float_problem(len(whole), id_type)
        text = whole
    text = text.translate(_OTHER_FORMATTING)
    if not text:
        if id_type == "Z":
            return IdResult(True, None, id_type, False, None, None)
        return _bad("empty", f"no document number (document type {id_type})", id_type)
    if not (text.isascii() and text.isalnum()):
        position = next(i for i, c in enumerate(text, 1) if not (c.isascii() and c.isalnum()))
        return _bad(
            "bad_charset",
            f"character {position} is not a letter or digit (document type {id_type})",
            id_type,
        )
    if not _OTHER_MIN_LEN <= len(text) <= _OTHER_MAX_LEN:
        return _bad(
            "bad_length",
            f"has {len(text)} characters; a document number has {_OTHER_MIN_LEN} to "
            f"{_OTHER_MAX_LEN} (document type {id_type})",
            id_type,
        )
    return IdResult(True, text, id_type, False, None, None)


def check(raw: object, id_type: str = "1", *, today: date | None = None) -> IdResult:
    """Normalise and validate one document number; never raises for bad input.

    ``raw`` may be text or an Excel/database cell value (int, float, Decimal). ``today`` is the
    reference for "birth date in the future" (default: the local date).
    """
    if id_type != "1":
        canonical = normalise_type(id_type)
        if canonical is None:
            return _bad("bad_type", "unknown document type; expected one of 1 6 7 8 9 A Z", "?")
        if canonical != "1":
            return _check_other(raw, canonical)
    # Fast path: a clean 18-character string, by far the commonest input.
    if (
        type(raw) is str
        and len(raw) == 18
        and raw.isascii()
        and raw[:17].isdigit()
        and raw[17] in _CHECK_CHARS
    ):
        return _validate18(raw, _today_key(today))
    today_key = _today_key(today)
    if raw is None or (type(raw) is float and math.isnan(raw)):
        return _bad("empty", "no ID number")
    if isinstance(raw, int | float | Decimal):
        return _check_number(raw, today_key)
    text = normalise_text(raw)
    if not text:
        return _bad("empty", "no ID number (blank after removing spaces and invisible characters)")
    return _check_text(text, today_key)


def parse(raw: object, id_type: str = "1", *, today: date | None = None) -> IdResult:
    """Like ``check()`` but raises ``InvalidId`` unless the number is valid."""
    result = check(raw, id_type, today=today)
    if not result.ok:
        raise InvalidId(result.code or "invalid", result.message or "invalid document number")
    return result
