"""``gateway id check``: output lines, exit codes, masking, stdin mode, and no ID number in the clear.

Most cases run the click command in-process (CliRunner); the installed ``gateway`` script is also
run for real in a directory without any configuration.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from gateway.commands.ids import _stdin_lines, id_group
from gateway.ids import check_char


def make_id(first17: str) -> str:
    return first17 + check_char(first17)


STD = "11010519491231002X"  # GB 11643's own example
BEIJING = make_id("11010520100315123")
GUIZHOU = make_id("52263620120229046")
LEGACY = "522636120229046"  # 15 digits, 1912-02-29
LEGACY_18 = make_id("52263619120229046")
WRONG_CHECK = BEIJING[:-1] + ("1" if BEIJING[-1] != "1" else "2")
BAD_DATE = make_id("11010519990230002")
FUTURE = make_id("11010520991231002")
BAD_AREA = make_id("99010520100315123")
EXCEL_TEXT = "110105194912310000"
SCIENTIFIC = "1.10105194912310E+17"
FLOAT_FORM = "110105194912310000.0"
KNOWN = [STD, BEIJING, GUIZHOU, LEGACY, LEGACY_18, WRONG_CHECK, BAD_DATE, FUTURE, BAD_AREA]

GATEWAY = Path(sys.executable).with_name("gateway")


def run(*args: str, input: str | bytes | None = None) -> Result:
    return CliRunner().invoke(id_group, ["check", *args], input=input, catch_exceptions=False)


def lines(result: Result) -> list[str]:
    return result.stdout.splitlines()


def assert_no_id_in_clear(text: str, numbers: list[str] = KNOWN) -> None:
    for number in numbers:
        assert number not in text
        assert number.lower() not in text
        if len(number) == 18:
            assert number[6:14] not in text  # the masked middle: the birth date
    for damaged in (EXCEL_TEXT, SCIENTIFIC, FLOAT_FORM):
        assert damaged not in text


def test_valid_numbers_are_masked() -> None:
    result = run(STD, BEIJING)
    assert result.exit_code == 0
    assert lines(result) == ["OK 110105********002X", f"OK {BEIJING[:6]}********{BEIJING[-4:]}"]
    assert_no_id_in_clear(result.output)


def test_show_prints_the_normalised_number() -> None:
    result = run("--show", STD.lower(), f" '{BEIJING} ")
    assert result.exit_code == 0
    assert lines(result) == [f"OK {STD}", f"OK {BEIJING}"]


def test_legacy_number_is_converted_and_says_so() -> None:
    result = run(LEGACY)
    assert lines(result) == [f"OK 522636********{LEGACY_18[-4:]} converted-from-15"]
    assert run("--show", LEGACY).stdout == f"OK {LEGACY_18} converted-from-15\n"


@pytest.mark.parametrize(
    "raw,code",
    [
        (WRONG_CHECK, "bad_check_digit"),
        (BAD_DATE, "bad_birth_date"),
        (FUTURE, "bad_birth_date"),
        (BAD_AREA, "bad_area"),
        (EXCEL_TEXT, "excel_damaged"),
        (SCIENTIFIC, "excel_damaged"),
        (FLOAT_FORM, "excel_damaged"),
        (STD[:-1], "bad_length"),
        ("1101O519491231002X", "bad_charset"),
        ("", "empty"),
    ],
)
def test_invalid_input_gives_code_and_reason_and_is_never_echoed(raw: str, code: str) -> None:
    result = run(raw)
    assert result.exit_code == 1
    [line] = lines(result)
    assert line.startswith(f"INVALID {code}: ")
    assert len(line) > len(f"INVALID {code}: ") + 10  # a reason, not just the code
    assert_no_id_in_clear(result.output + result.stderr, KNOWN + [raw] if len(raw) > 8 else KNOWN)


def test_one_line_per_input_in_order_exit_1_if_any_invalid() -> None:
    result = run(STD, WRONG_CHECK, LEGACY, SCIENTIFIC)
    assert result.exit_code == 1
    out = lines(result)
    assert len(out) == 4
    assert out[0] == "OK 110105********002X"
    assert out[1].startswith("INVALID bad_check_digit: ")
    assert out[2].endswith(" converted-from-15")
    assert out[3].startswith("INVALID excel_damaged: ")
    assert_no_id_in_clear(result.output)


def test_stdin_mode_one_per_line() -> None:
    text = f"{STD.lower()}\r\n\n{LEGACY}\n{WRONG_CHECK}\n \t{BEIJING}\ufeff\n"
    result = run("-", input=text)
    assert result.exit_code == 1
    out = lines(result)
    assert out[0] == "OK 110105********002X"
    assert out[1].startswith("INVALID empty: ")  # the blank line keeps its place
    assert out[2].endswith("converted-from-15")
    assert out[3].startswith("INVALID bad_check_digit")
    assert out[4] == f"OK {BEIJING[:6]}********{BEIJING[-4:]}"
    assert len(out) == 5
    assert_no_id_in_clear(result.output)


def test_stdin_that_is_a_text_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{STD}\r\n\n"))
    assert list(_stdin_lines()) == [STD, ""]


def test_stdin_mixed_with_arguments() -> None:
    result = run(BEIJING, "-", GUIZHOU, input=f"{STD}\n")
    assert result.exit_code == 0
    assert [line[:9] for line in lines(result)] == ["OK 110105", "OK 110105", "OK 522636"]


def test_stdin_in_gb18030_from_chinese_windows() -> None:
    full_width = "".join(chr(ord(c) + 0xFEE0) for c in STD)  # １１０１０５…Ｘ
    result = run("--show", "-", input=(full_width + "\r\n").encode("gb18030"))
    assert result.stdout == f"OK {STD}\n"


def test_all_valid_from_stdin_exits_0() -> None:
    result = run("-", input=f"{STD}\n{BEIJING}\n")
    assert result.exit_code == 0
    assert len(lines(result)) == 2


def test_other_document_types() -> None:
    result = run("--type", "A", "e1234 5678", "X12")
    assert lines(result)[0] == "OK *********"  # short numbers are masked completely
    assert lines(result)[1].startswith("INVALID bad_length: ")
    assert result.exit_code == 1
    shown = run("--type", "a", "--show", "e1234 5678")
    assert shown.stdout == "OK E12345678\n"
    long_permit = run("--type", "6", "81000019900101001X")
    assert long_permit.stdout == "OK 810000********001X\n"  # carried, not checked as GB 11643


def test_type_z_may_be_blank() -> None:
    result = run("--type", "Z", "-", input="\n")
    assert result.exit_code == 0
    assert result.stdout.startswith("OK (blank")
    assert run("--type", "A", "-", input="\n").stdout.startswith("INVALID empty: ")


def test_usage_errors_exit_2() -> None:
    assert run().exit_code == 2  # no ID at all
    result = run("--type", "3", STD)
    assert result.exit_code == 2
    assert "--type" in result.output
    assert_no_id_in_clear(result.output)


def test_help_describes_stdin() -> None:
    result = run("--help")
    assert result.exit_code == 0
    assert "stdin" in result.output and "--show" in result.output and "--type" in result.output


# --------------------------------------------------------------------------- the real command


def run_gateway(args: list[str], stdin: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_CONFIG"}
    return subprocess.run(
        [str(GATEWAY), "id", "check", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=60,
        check=False,
    )


@pytest.fixture()
def empty_dir(tmp_path: Path) -> Path:
    assert not (tmp_path / "gateway.toml").exists()  # the command needs no configuration
    return tmp_path


def test_installed_command_masks_and_never_echoes(empty_dir: Path) -> None:
    assert GATEWAY.exists(), GATEWAY
    stdin = (
        "\n".join([STD, WRONG_CHECK, LEGACY, SCIENTIFIC, FLOAT_FORM, BAD_DATE, EXCEL_TEXT]) + "\n"
    )
    proc = run_gateway(["-", BAD_AREA], stdin, empty_dir)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == ""
    out = proc.stdout.splitlines()
    assert len(out) == 8
    assert out[0] == "OK 110105********002X"
    assert out[2] == f"OK 522636********{LEGACY_18[-4:]} converted-from-15"
    codes = [line.split(":")[0] for line in out if line.startswith("INVALID")]
    assert codes == [
        "INVALID bad_check_digit",
        "INVALID excel_damaged",
        "INVALID excel_damaged",
        "INVALID bad_birth_date",
        "INVALID excel_damaged",
        "INVALID bad_area",
    ]
    assert_no_id_in_clear(proc.stdout + proc.stderr)


def test_installed_command_show_and_exit_0(empty_dir: Path) -> None:
    proc = run_gateway(["--show", "-"], f"{STD.lower()}\n{GUIZHOU}\n", empty_dir)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"OK {STD}\nOK {GUIZHOU}\n"


def test_installed_command_usage_error(empty_dir: Path) -> None:
    proc = run_gateway(["--type", "Q", STD], "", empty_dir)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert_no_id_in_clear(proc.stdout + proc.stderr)
