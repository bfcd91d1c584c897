"""``gateway keys``: create, add, rotate, status, public, export-secret. Outputs are scanned for secrets."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w
from click.testing import CliRunner, Result

from gateway import crypto
from gateway.cli import cli
from gateway.commands.keys import keys_group
from gateway.crypto import Keyring, Protector, get_suite

cli.add_command(keys_group)  # main() does this for the console script


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def assert_no_secret(text: str, *rings: Keyring) -> None:
    for ring in rings:
        for key in ring:
            for form in (
                base64.b64encode(key.material).decode(),
                base64.urlsafe_b64encode(key.material).decode().rstrip("="),
                key.material.hex(),
                key.material.hex().upper(),
            ):
                assert form not in text, f"material of {key.id} leaked"


def write_config(folder: Path, **gateway: str) -> Path:
    path = folder / "gateway.toml"
    path.write_text(tomli_w.dumps({"gateway": {"store": "sqlite:///gw.db", **gateway}}))
    return path


def test_new_with_keyring_needs_no_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no gateway.toml here
    result = run("keys", "new", "--keyring", "kr.json")
    assert result.exit_code == 0, result.output
    path = tmp_path / "kr.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    ring = Keyring.load(path)
    assert ring.suite == "aes-gcm+hmac-sha256"
    for key in ring:
        assert key.id in result.output
    assert_no_secret(result.output, ring)
    again = run("keys", "new", "--keyring", "kr.json")
    assert again.exit_code == 2 and "refusing to overwrite" in again.output
    assert Keyring.load(path).status() == ring.status()


def test_new_uses_config_path_and_suite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "secrets").mkdir()
    config = write_config(site, keyring="secrets/keyring.json", suite="sm4-gcm+hmac-sm3")
    monkeypatch.chdir(tmp_path)  # the keyring path is relative to the config, not the cwd
    result = run("--config", str(config), "keys", "new")
    assert result.exit_code == 0, result.output
    ring = Keyring.load(site / "secrets" / "keyring.json")
    assert ring.suite == "sm4-gcm+hmac-sm3" and len(ring.active("seal").material) == 16
    assert_no_secret(result.output, ring)
    env_config = write_config(tmp_path, keyring="env:GW_KR")
    refused = run("--config", str(env_config), "keys", "new")
    assert refused.exit_code == 2 and "--keyring FILE" in refused.output


def test_status_lists_keys_never_secrets(tmp_path: Path) -> None:
    path = tmp_path / "kr.json"
    ring = Keyring.create(path)
    ring.new("department", key_id="edu-2026")
    ring.rotate("seal")
    ring.save()
    result = run("keys", "status", "--keyring", str(path))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[1].split() == ["ID", "PURPOSE", "CREATED", "ACTIVE"]
    for key in ring:
        row = next(line for line in lines if line.startswith(key.id))
        assert key.purpose in row and ("yes" in row) == key.active
    assert_no_secret(result.output, ring)


def test_rotate_prints_new_id_and_keeps_old_data_open(tmp_path: Path) -> None:
    path = tmp_path / "kr.json"
    suite = get_suite("aes-gcm+hmac-sha256")
    before = Keyring.create(path)
    token = Protector(before, suite).seal(
        "王五", dataset="students", field="name", record="bi-1:00"
    )
    old_id = before.active("seal").id
    result = run("keys", "rotate", "seal", "--keyring", str(path))
    assert result.exit_code == 0, result.output
    after = Keyring.load(path)
    new_id = after.active("seal").id
    assert new_id != old_id and f"new active seal key: {new_id}" in result.output
    assert old_id in result.output and "gateway keys reindex" in result.output
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not after.get(old_id).active
    opened = Protector(after, suite).open(token, dataset="students", field="name", record="bi-1:00")
    assert opened == "王五"
    assert_no_secret(result.output, after)
    for purpose in ("department", "open", "nonsense"):
        bad = run("keys", "rotate", purpose, "--keyring", str(path))
        assert bad.exit_code == 2


def test_department_secret_hand_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Keyring.create(tmp_path / "kr.json")
    result = run(
        "keys", "new", "--keyring", "kr.json", "--purpose", "department", "--id", "edu-2026"
    )
    assert result.exit_code == 0, result.output
    assert "export-secret edu-2026 --out" in result.output and "out of band" in result.output
    ring = Keyring.load(tmp_path / "kr.json")
    secret = ring.department_secret("edu-2026")
    assert_no_secret(result.output, ring)

    exported = run(
        "keys", "export-secret", "edu-2026", "--out", "edu.secret", "--keyring", "kr.json"
    )
    assert exported.exit_code == 0, exported.output
    assert_no_secret(exported.output, ring)
    assert stat.S_IMODE((tmp_path / "edu.secret").stat().st_mode) == 0o600
    handed = crypto.read_secret_file(tmp_path / "edu.secret")
    assert handed == ("edu-2026", secret, "aes-gcm+hmac-sha256")
    # The secret signs requests the gateway accepts.
    suite = get_suite(handed.suite)
    sig = crypto.request_signature(suite, handed.secret, "GET", "/api/v1/jobs", "1", "n", b"")
    assert crypto.verify_request_signature(suite, secret, "GET", "/api/v1/jobs", "1", "n", b"", sig)

    again = run("keys", "export-secret", "edu-2026", "--out", "edu.secret", "--keyring", "kr.json")
    assert again.exit_code == 2 and "refusing to overwrite" in again.output
    dup = run("keys", "new", "--keyring", "kr.json", "--purpose", "department", "--id", "edu-2026")
    assert dup.exit_code == 2 and "already in the keyring" in dup.output
    no_id = run("keys", "new", "--keyring", "kr.json", "--purpose", "department")
    assert no_id.exit_code == 2 and "--id" in no_id.output
    not_dept = run(
        "keys", "export-secret", ring.active("seal").id, "--out", "x.secret", "--keyring", "kr.json"
    )
    assert not_dept.exit_code == 2 and not (tmp_path / "x.secret").exists()
    assert_no_secret(not_dept.output, ring)


def test_open_key_for_a_department(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    # The department's own machine: no keyring yet, so one is made holding only the open key.
    result = run(
        "keys", "new", "--keyring", "dept.json", "--purpose", "open", "--id", "education",
        "--public-out", "education.pub",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    ring = Keyring.load(tmp_path / "dept.json")
    assert [k.purpose for k in ring] == ["open"]
    assert stat.S_IMODE((tmp_path / "dept.json").stat().st_mode) == 0o600
    assert_no_secret(result.output, ring)
    public = crypto.read_public_key(tmp_path / "education.pub")
    token = crypto.seal_for(public, "110105194912310021")
    assert ring.open_sealed(token) == "110105194912310021"
    shown = run("keys", "public", "open", "--keyring", "dept.json", "--format", "base64")
    assert shown.exit_code == 0 and base64.b64decode(shown.output.strip()) == public
    # A second key refuses to clobber an existing public key file, and leaves the keyring alone.
    clash = run(
        "keys", "new", "--keyring", "dept.json", "--purpose", "open", "--id", "edu-2",
        "--public-out", "education.pub",
    )  # fmt: skip
    assert clash.exit_code == 2 and "refusing to overwrite" in clash.output
    assert "edu-2" not in Keyring.load(tmp_path / "dept.json")


def test_public_audit_signing_key_verifies_signatures(tmp_path: Path) -> None:
    path = tmp_path / "kr.json"
    ring = Keyring.create(path)
    result = run(
        "keys", "public", "audit_signing", "--keyring", str(path), "--out", str(tmp_path / "a.pem")
    )
    assert result.exit_code == 0, result.output
    public = crypto.read_public_key(tmp_path / "a.pem", kind="ed25519")
    _, signature = Protector(ring, get_suite(ring.suite)).sign(b"checkpoint")
    assert crypto.verify_signature(public, b"checkpoint", signature)
    printed = run("keys", "public", "audit_signing", "--keyring", str(path))
    assert printed.output.startswith("-----BEGIN PUBLIC KEY-----")
    assert_no_secret(result.output + printed.output, ring)


def test_refused_keyring_file_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "kr.json"
    ring = Keyring.create(path)
    path.chmod(0o644)
    result = run("keys", "status", "--keyring", str(path))
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and f"chmod 600 {path}" in result.output
    assert "Traceback" not in result.output
    assert_no_secret(result.output, ring)
    missing = run("keys", "status", "--keyring", str(tmp_path / "none.json"))
    assert missing.exit_code == 2 and "gateway keys new" in missing.output


def test_env_keyring_status_and_rotation_refused(tmp_path: Path) -> None:
    ring = Keyring.create(tmp_path / "kr.json")
    env = {"GW_TEST_KR": ring.to_json()}
    status = run("keys", "status", "--keyring", "env:GW_TEST_KR", env=env)
    assert status.exit_code == 0 and ring.active("seal").id in status.output
    rotated = run("keys", "rotate", "blind_index", "--keyring", "env:GW_TEST_KR", env=env)
    assert rotated.exit_code == 2 and "cannot be written back" in rotated.output
    assert_no_secret(status.output + rotated.output, ring)


def test_console_script_subprocess(tmp_path: Path) -> None:
    """The installed `gateway` command end to end, with stdout and stderr scanned for secrets."""
    script = Path(sys.executable).parent / "gateway"
    env = {**os.environ, "GATEWAY_CONFIG": str(tmp_path / "absent.toml")}
    outputs = []
    for args in (
        ["keys", "new", "--keyring", "kr.json"],
        ["keys", "new", "--keyring", "kr.json", "--purpose", "department", "--id", "civ-2026"],
        ["keys", "rotate", "blind_index", "--keyring", "kr.json"],
        ["keys", "status", "--keyring", "kr.json"],
        ["keys", "export-secret", "civ-2026", "--out", "civ.secret", "--keyring", "kr.json"],
    ):
        proc = subprocess.run(
            [str(script), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stderr
        outputs.append(proc.stdout + proc.stderr)
    ring = Keyring.load(tmp_path / "kr.json")
    assert len(ring.keys("blind_index")) == 2 and "civ-2026" in ring
    assert json.loads((tmp_path / "civ.secret").read_text())["key_id"] == "civ-2026"
    assert_no_secret("\n".join(outputs), ring)
    assert "civ-2026" in outputs[3] and "ACTIVE" in outputs[3]
