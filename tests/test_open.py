"""``gateway request`` and ``gateway open`` as a department runs them: the installed command, its own
keyring, against a real gateway on loopback."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import pytest

from gateway import ids
from gateway.crypto import Keyring, write_secret_file
from tests.fixtures.live_server import VENV_BIN


def make_id(seq: str) -> str:
    first17 = "522636" + "20120305" + seq
    return first17 + ids.check_char(first17)


ID_A, ID_B = make_id("124"), make_id("246")
DEPARTMENTS = {
    "education": {
        "key_id": "edu-2026",
        "public_key": "keys/education.pub",
        "rate_limit": 10_000,
        "allow": [
            {
                "dataset": "poverty",
                "fields": ["poverty_type", "name"],
                "purposes": ["dropout-control"],
                "ids": "sealed",
            }
        ],
    },
    "registry": {
        "key_id": "fp-1",
        "rate_limit": 10_000,
        "allow": [
            {
                "dataset": "poverty",
                "fields": ["name", "household_no", "poverty_type"],
                "purposes": ["sync"],
                "write": True,
            }
        ],
    },
}


def gateway(*args: str, stdin: str | None = None, cwd: Path | None = None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return subprocess.run(
        [str(VENV_BIN / "gateway"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )


@pytest.fixture
def department(api_site, live_server, tmp_path: Path):
    """The education bureau's machine: its keyring (request secret + open key), a secret file,
    and the gateway's URL, with two poverty records on the gateway."""
    site, depts = api_site(DEPARTMENTS, {"api": {"changes_settle_seconds": 0}})
    url = live_server(site)
    records = [
        {"id_number": n, "name": f"学生{i}", "household_no": f"H{i}", "poverty_type": "lifted"}
        for i, n in enumerate((ID_A, ID_B))
    ]
    depts["registry"].client(url).push("poverty", records, purpose="sync")
    edu = depts["education"]
    home = tmp_path / "education"
    home.mkdir()
    ring = Keyring(suite="aes-gcm+hmac-sha256")
    ring.new("department", key_id=edu.key_id, material=edu.secret)
    ring.new("open", key_id="education-open", material=edu.private_key)
    ring.save(home / "dept.json")
    write_secret_file(home / "edu.secret", edu.key_id, edu.secret, "aes-gcm+hmac-sha256")
    (home / "ask.json").write_text(
        json.dumps(
            {
                "purpose": "dropout-control",
                "fields": ["poverty_type", "name"],
                "subjects": [{"id_number": ID_A}, {"id_number": ID_B}],
            }
        ),
        encoding="utf-8",
    )
    return home, url, edu


def creds(home: Path, url: str) -> list[str]:
    return ["--url", url, "--keyring", str(home / "dept.json"), "--key-id", "edu-2026"]


def test_request_opens_sealed_ids_with_the_department_keyring(department) -> None:
    home, url, edu = department
    lookup = "/api/v1/datasets/poverty/lookup"
    done = gateway("request", "POST", lookup, "--json", f"@{home / 'ask.json'}", *creds(home, url))
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    records = [r["records"][0] for r in answer["results"]]
    assert [r["id_number"] for r in records] == [ID_A, ID_B]
    assert [r["name"] for r in records] == ["学生0", "学生1"]
    secret_b64 = base64.b64encode(edu.secret).decode()
    assert secret_b64 not in done.stdout + done.stderr


def test_open_a_saved_sealed_answer(department) -> None:
    home, url, edu = department
    lookup = "/api/v1/datasets/poverty/lookup"
    sealed = gateway(
        "request", "POST", lookup, "--json", f"@{home / 'ask.json'}", "--sealed", *creds(home, url)
    )
    assert sealed.returncode == 0, sealed.stderr
    assert ID_A not in sealed.stdout and "x25519:" in sealed.stdout
    (home / "answer.json").write_text(sealed.stdout, encoding="utf-8")
    opened = gateway("open", str(home / "answer.json"), "--keyring", str(home / "dept.json"))
    assert opened.returncode == 0, opened.stderr
    records = [r["records"][0] for r in json.loads(opened.stdout)["results"]]
    assert [r["id_number"] for r in records] == [ID_A, ID_B]
    # From stdin too.
    piped = gateway("open", "-", "--keyring", str(home / "dept.json"), stdin=sealed.stdout)
    assert json.loads(piped.stdout) == json.loads(opened.stdout)
    # Another department's key does not open it: a one-line error, exit 1, nothing leaked.
    other = Keyring(suite=None)
    other.new("open", key_id="someone-else")
    other.save(home / "other.json")
    refused = gateway("open", str(home / "answer.json"), "--keyring", str(home / "other.json"))
    assert refused.returncode == 1 and refused.stderr.startswith("error: ")
    assert "Traceback" not in refused.stderr and ID_A not in refused.stdout + refused.stderr


def test_request_with_a_secret_file_and_pagination(department) -> None:
    home, url, edu = department
    lines = gateway(
        "request",
        "GET",
        "/api/v1/datasets/poverty/changes",
        "-p",
        "purpose=dropout-control",
        "-p",
        "limit=1",
        "--all",
        "--url",
        url,
        "--secret-file",
        str(home / "edu.secret"),
        "--keyring",
        str(home / "dept.json"),
    )
    assert lines.returncode == 0, lines.stderr
    items = [json.loads(line) for line in lines.stdout.splitlines()]
    assert len(items) == 2 and {i["record"]["id_number"] for i in items} == {ID_A, ID_B}


def test_problem_answers_and_usage_errors(department) -> None:
    home, url, edu = department
    body = json.dumps({"purpose": "marketing", "subjects": [{"id_number": ID_A}]})
    refused = gateway(
        "request", "POST", "/api/v1/datasets/poverty/lookup", "--json", body, *creds(home, url)
    )
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: 403 forbidden-purpose: purpose 'marketing'")
    assert ID_A not in refused.stderr
    usage = gateway("request", "GET", "/api/v1/jobs", "--url", url)
    assert usage.returncode == 2 and "--keyring" in usage.stderr
    bad_json = gateway("request", "POST", "/x", "--json", "{oops", *creds(home, url))
    assert bad_json.returncode == 2 and "not JSON" in bad_json.stderr
    missing = gateway("open", str(home / "nothing.json"), "--keyring", str(home / "dept.json"))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
