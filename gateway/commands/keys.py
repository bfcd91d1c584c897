"""``gateway keys``: create, rotate and inspect the keyring. No secret is ever printed.

Secrets leave the keyring only through ``keys export-secret ID --out FILE`` (a 0600 file for
handing a department its request secret out of band).
"""

from __future__ import annotations

from pathlib import Path

import click

from .. import crypto
from ..errors import KeyringError

_KEYRING_HELP = "Keyring file (or env:VAR); default: gateway.keyring of the config."


def _keyring_source(obj, keyring_opt: str | None) -> Path | str:
    """--keyring if given, else the config's gateway.keyring resolved beside the config file."""
    if keyring_opt:
        return keyring_opt if keyring_opt.startswith("env:") else Path(keyring_opt)
    spec = obj.settings.gateway.keyring
    return spec if spec.startswith("env:") else obj.path(spec)


def _config_suite(obj) -> str | None:
    """The config's suite when a config file exists; ``keys new --keyring`` works without one."""
    if Path(obj.config_path).exists():
        return obj.settings.gateway.suite
    return None


def _load(obj, keyring_opt: str | None) -> crypto.Keyring:
    return crypto.Keyring.load(_keyring_source(obj, keyring_opt))


def _echo_table(ring: crypto.Keyring) -> None:
    rows = [("ID", "PURPOSE", "CREATED", "ACTIVE")] + [
        (s["id"], s["purpose"], s["created"], "yes" if s["active"] else "no (old data only)")
        for s in ring.status()
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        click.echo(
            "  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True))
            + "  "
            + row[3]
        )


@click.group("keys")
def keys_group() -> None:
    """The keyring: blind-index, sealing, audit-signing and department keys. Never prints a secret."""


@keys_group.command("new")
@click.option("--keyring", "keyring_opt", metavar="PATH", help=_KEYRING_HELP)
@click.option(
    "--suite",
    type=click.Choice(crypto.SUITES),
    help="Suite of a new keyring (default: gateway.suite of the config, else aes-gcm+hmac-sha256).",
)
@click.option(
    "--purpose",
    type=click.Choice(crypto.PURPOSES),
    help="Add one key to an existing keyring instead of creating a keyring.",
)
@click.option("--id", "key_id", metavar="ID", help="Key id (department/open keys: e.g. edu-2026).")
@click.option(
    "--public-out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="With --purpose open: where to write the public key file (default ID.pub).",
)
@click.pass_obj
def new(
    obj,
    keyring_opt: str | None,
    suite: str | None,
    purpose: str | None,
    key_id: str | None,
    public_out: Path | None,
) -> None:
    """Create a keyring, or add a department secret (--purpose department) or open key pair.

    \b
    gateway keys new --keyring keyring.json
    gateway keys new --purpose department --id edu-2026
    gateway keys new --purpose open --id education --public-out education.pub
    """
    if purpose is None:
        _create_keyring(obj, keyring_opt, suite, key_id)
        return
    if purpose in ("department", "open") and not key_id:
        raise click.UsageError(f"--purpose {purpose} needs --id (e.g. --id edu-2026)")
    if public_out is not None and purpose != "open":
        raise click.UsageError("--public-out only goes with --purpose open")
    source = _keyring_source(obj, keyring_opt)
    if purpose == "open" and isinstance(source, Path) and not source.exists():
        # A department's own machine: a keyring holding just its private open key.
        ring = crypto.Keyring(suite=suite or _config_suite(obj) or crypto.DEFAULT_SUITE)
        created = True
    else:
        ring = crypto.Keyring.load(source)
        created = False
    if suite is not None and ring.suite is not None and suite != ring.suite:
        raise click.UsageError(f"--suite {suite} does not match the keyring's suite {ring.suite}")
    if purpose == "open":
        out = public_out or Path(f"{key_id}.pub")
        if out.exists():  # checked first so a refused write leaves the keyring untouched
            raise KeyringError(
                f"{out}: already exists; refusing to overwrite it (give --public-out)"
            )
    key = ring.new(purpose, key_id=key_id)
    if created:
        crypto.write_private_file(Path(source), ring.to_json().encode("utf-8"), overwrite=False)
        ring.source = source
        click.echo(f"created keyring {source} (mode 0600)")
    else:
        ring.save()
    if purpose == "department":
        click.echo(f"added department request secret {key.id} to {ring.source}")
        click.echo(
            "Hand the secret to the department out of band (never by e-mail or chat):\n"
            f"  gateway keys export-secret {key.id} --out {key.id}.secret\n"
            "writes it to a file only you can read; carry it over on an encrypted medium and delete\n"
            "it after the department has imported it. In gateway.toml, set\n"
            f'  [departments.NAME] key_id = "{key.id}"'
        )
    elif purpose == "open":
        crypto.write_public_key(out, key.public_key(), kind="x25519")
        click.echo(f"added open key {key.id} (X25519) to {ring.source}")
        click.echo(
            f"wrote its public key to {out}: send it to the gateway operator, who sets\n"
            f'  [departments.NAME] public_key = "{out.name}"\n'
            "The private key stays in this keyring; `gateway open` uses it."
        )
    else:
        click.echo(f"added active {purpose} key {key.id} to {ring.source}")


def _create_keyring(obj, keyring_opt: str | None, suite: str | None, key_id: str | None) -> None:
    if key_id:
        raise click.UsageError("--id goes with --purpose department or --purpose open")
    source = _keyring_source(obj, keyring_opt)
    config_suite = _config_suite(obj)
    if isinstance(source, str):
        raise KeyringError(
            f"the keyring is {source}: `keys new` writes a file; give --keyring FILE, "
            "then put the file's content into the variable"
        )
    chosen = suite or config_suite or crypto.DEFAULT_SUITE
    ring = crypto.Keyring.create(source, suite=chosen)
    click.echo(f"created keyring {source} (suite {chosen}, mode 0600)")
    _echo_table(ring)
    if config_suite is not None and config_suite != chosen:
        click.echo(
            f"note: gateway.suite in {obj.config_path} is {config_suite}; "
            f"this keyring is for {chosen}",
            err=True,
        )


@keys_group.command("rotate")
@click.argument("purpose", type=click.Choice(crypto.SINGLE_ACTIVE))
@click.option("--keyring", "keyring_opt", metavar="PATH", help=_KEYRING_HELP)
@click.pass_obj
def rotate(obj, purpose: str, keyring_opt: str | None) -> None:
    """Make a new active key for PURPOSE; old keys stay to open and verify old data."""
    ring = _load(obj, keyring_opt)
    previous = [k.id for k in ring.keys(purpose) if k.active]
    key = ring.rotate(purpose)
    ring.save()
    click.echo(f"new active {purpose} key: {key.id}")
    if previous:
        click.echo(f"previous key {', '.join(previous)} kept (inactive) for old data")
    if purpose in ("blind_index", "seal"):
        click.echo(
            "next: run `gateway keys reindex` to re-compute blind indexes and re-seal stored "
            "fields under the new key (online, resumable)"
        )
    else:
        click.echo(
            "next: publish the new verification key for auditors: "
            f"`gateway keys public audit_signing --out {key.id}.pem`"
        )


@keys_group.command("status")
@click.option("--keyring", "keyring_opt", metavar="PATH", help=_KEYRING_HELP)
@click.pass_obj
def status(obj, keyring_opt: str | None) -> None:
    """Key ids, purposes, creation dates and which are active. Never a secret."""
    ring = _load(obj, keyring_opt)
    click.echo(f"keyring {ring.source} (suite {ring.suite or 'not recorded'})")
    _echo_table(ring)


@keys_group.command("public")
@click.argument("purpose", type=click.Choice(["audit_signing", "open"]))
@click.option(
    "--id", "key_id", metavar="ID", help="Key id (default: the active audit_signing key)."
)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write to FILE.")
@click.option(
    "--format", "fmt", type=click.Choice(["pem", "base64"]), default="pem", show_default=True
)
@click.option("--keyring", "keyring_opt", metavar="PATH", help=_KEYRING_HELP)
@click.pass_obj
def public(
    obj, purpose: str, key_id: str | None, out: Path | None, fmt: str, keyring_opt: str | None
) -> None:
    """The public key of an audit_signing (Ed25519) or open (X25519) key: not secret."""
    ring = _load(obj, keyring_opt)
    if key_id is not None:
        key = ring.get(key_id)
        if key.purpose != purpose:
            raise KeyringError(f"key {key_id} is a {key.purpose} key, not {purpose}")
    elif purpose == "audit_signing":
        key = ring.active("audit_signing")
    else:
        candidates = ring.keys("open")
        if len(candidates) != 1:
            raise click.UsageError(
                f"{len(candidates)} open keys in the keyring: choose one with --id"
            )
        key = candidates[0]
    kind = "ed25519" if purpose == "audit_signing" else "x25519"
    if out is None:
        click.echo(crypto.encode_public_key(key.public_key(), kind=kind, fmt=fmt), nl=False)
    else:
        crypto.write_public_key(out, key.public_key(), kind=kind, fmt=fmt)
        click.echo(f"wrote the {kind} public key of {key.id} to {out}")


@keys_group.command("export-secret")
@click.argument("key_id", metavar="ID")
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="File to write (mode 0600; never overwritten).",
)
@click.option("--keyring", "keyring_opt", metavar="PATH", help=_KEYRING_HELP)
@click.pass_obj
def export_secret(obj, key_id: str, out: Path, keyring_opt: str | None) -> None:
    """Write department ID's request secret to a 0600 file for hand-over out of band."""
    ring = _load(obj, keyring_opt)
    secret = ring.department_secret(key_id)
    suite = ring.suite or _config_suite(obj)
    crypto.write_secret_file(out, key_id, secret, suite)
    click.echo(
        f"wrote the request secret of {key_id} to {out} (mode 0600). Carry it to the department\n"
        "on an encrypted medium or in person, then delete it here."
    )
