"""``gateway request`` and ``gateway open``: a department's side of the API, on the command line.

A department keeps its own keyring (``gateway keys new --purpose open --id NAME --keyring
dept.json`` makes it with the X25519 key pair; the request secret handed over by the gateway
operator goes in with ``--purpose department`` or is given as ``--secret-file``). Neither command
needs the gateway's config.

    gateway request POST /api/v1/datasets/poverty/lookup --json @ask.json \\
        --url https://gateway.county.example --keyring dept.json --key-id edu-2026
    gateway request GET /api/v1/datasets/poverty/changes -p purpose=dropout-control --all ...
    gateway open answer.json --keyring dept.json

Sealed ID numbers are opened in the output when the keyring holds the department's open key
(``--sealed`` keeps them sealed). A problem answer prints ``error: STATUS TYPE: DETAIL`` on stderr
and exits 1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from ..errors import EXIT_PROBLEMS, GatewayError, KeyringError

PROBLEM_PREFIX = "https://gateway.invalid/problems/"


def _load_keyring(path: str) -> Any:
    from ..crypto import Keyring

    return Keyring.load(path if path.startswith("env:") else Path(path))


def _body(value: str | None) -> Any:
    if value is None:
        return None
    if value.startswith("@"):
        source = value[1:]
        try:
            text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
        except OSError as exc:
            raise click.BadParameter(f"{source}: {exc.strerror}", param_hint="--json") from None
        except UnicodeDecodeError:
            raise click.BadParameter(f"{source}: not UTF-8 text", param_hint="--json") from None
    else:
        text = value
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(
            f"not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})", param_hint="--json"
        ) from None


def _params(pairs: tuple[str, ...]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{pair!r}: use NAME=VALUE", param_hint="--param")
        out.setdefault(name, []).append(value)
    return out


def _echo_json(doc: Any) -> None:
    click.echo(json.dumps(doc, ensure_ascii=False, indent=2))


def _problem_message(status: int, problem: dict[str, Any], fallback: str) -> str:
    kind = str(problem.get("type", "")).removeprefix(PROBLEM_PREFIX) or "error"
    detail = problem.get("detail") or problem.get("title") or fallback
    return f"{status} {kind}: {detail}"


class AnswerProblem(GatewayError):
    exit_code = EXIT_PROBLEMS


@click.command("request")
@click.argument("method", type=click.Choice(["GET", "POST", "PUT", "DELETE"], case_sensitive=False))
@click.argument("path")
@click.option("--json", "json_body", metavar="BODY|@FILE", help="JSON body (@- reads stdin).")
@click.option(
    "-p", "--param", "params", multiple=True, metavar="NAME=VALUE", help="Query parameter."
)
@click.option("--url", envvar="GATEWAY_URL", required=True, help="The gateway ($GATEWAY_URL).")
@click.option(
    "--keyring",
    "keyring_path",
    envvar="GATEWAY_DEPT_KEYRING",
    metavar="FILE|env:VAR",
    help="The department's own keyring: request secret and open key ($GATEWAY_DEPT_KEYRING).",
)
@click.option(
    "--key-id", envvar="GATEWAY_KEY_ID", help="The department's key id ($GATEWAY_KEY_ID)."
)
@click.option(
    "--secret-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The secret file from `gateway keys export-secret` instead of a keyring secret.",
)
@click.option("--all", "follow", is_flag=True, help="GET: follow next_cursor, print JSON lines.")
@click.option("--sealed", "keep_sealed", is_flag=True, help="Leave sealed values sealed.")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds per request.")
def request_command(
    method: str,
    path: str,
    json_body: str | None,
    params: tuple[str, ...],
    url: str,
    keyring_path: str | None,
    key_id: str | None,
    secret_file: Path | None,
    follow: bool,
    keep_sealed: bool,
    timeout: float,
) -> None:
    """Send one signed request to a gateway as a department; print the JSON answer."""
    from ..client import ClientError, GatewayClient, split_path
    from ..crypto import get_suite, read_secret_file

    keyring = _load_keyring(keyring_path) if keyring_path else None
    if secret_file is not None:
        handed = read_secret_file(secret_file)
        if key_id and key_id != handed.key_id:
            raise click.UsageError(
                f"--key-id {key_id} differs from {secret_file}'s {handed.key_id}"
            )
        suite = get_suite(
            handed.suite or (keyring.suite if keyring else None) or "aes-gcm+hmac-sha256"
        )
        client = GatewayClient(
            url,
            handed.key_id,
            handed.secret,
            suite,
            keyring=None if keep_sealed else keyring,
            timeout=(5.0, timeout),
        )
    else:
        if keyring is None or not key_id:
            raise click.UsageError("give --keyring and --key-id (or --secret-file)")
        try:
            client = GatewayClient.from_keyring(url, keyring, key_id, timeout=(5.0, timeout))
        except KeyringError as exc:
            raise KeyringError(
                f"{exc} (the department's request secret goes in with "
                "`gateway keys new --purpose department --id ID`)"
            ) from None
        if keep_sealed:
            client._opener = None
    path = split_path(path)
    query = _params(params)
    if "?" in path:
        raise click.UsageError("give query parameters with -p NAME=VALUE, not in PATH")
    body = _body(json_body)
    method = method.upper()
    try:
        if follow:
            if method != "GET":
                raise click.UsageError("--all only goes with GET")
            # Page by page: each page says which dataset its sealed values belong to.
            params: dict[str, Any] = dict(query)
            while True:
                page = client.open_sealed(client.page(path, params))
                for item in page.get("items", []):
                    click.echo(json.dumps(item, ensure_ascii=False))
                if not page.get("next_cursor"):
                    return
                params["cursor"] = page["next_cursor"]
        response = client.request(method, path, json=body, params=query)
    except ClientError as exc:
        if exc.problem:
            raise AnswerProblem(_problem_message(exc.status, exc.problem, str(exc))) from None
        raise AnswerProblem(str(exc)) from None
    try:
        doc = response.json() if response.content else None
    except ValueError:
        doc = None
    if response.status_code >= 400:
        problem = doc if isinstance(doc, dict) else {}
        raise AnswerProblem(_problem_message(response.status_code, problem, response.reason))
    if doc is None:
        click.echo(response.text)
        return
    _echo_json(client.open_sealed(doc))


@click.command("open")
@click.argument("source", type=click.File("r", encoding="utf-8"), default="-")
@click.option(
    "--keyring",
    "keyring_path",
    envvar="GATEWAY_DEPT_KEYRING",
    required=True,
    metavar="FILE|env:VAR",
    help="The department's own keyring with its open key ($GATEWAY_DEPT_KEYRING).",
)
@click.option("--dataset", help="Dataset of the values, when the document does not say.")
def open_command(source, keyring_path: str, dataset: str | None) -> None:
    """Open the sealed ID numbers of a JSON document (FILE or - for stdin) with this department's
    private key; prints the document with the values in the clear."""
    from ..client import open_document

    keyring = _load_keyring(keyring_path)
    if not keyring.keys("open"):
        raise KeyringError(
            f"{keyring_path}: no open key (create one with `gateway keys new --purpose open "
            "--id NAME --keyring FILE`)"
        )
    text = source.read()
    name = getattr(source, "name", "-")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AnswerProblem(
            f"{name}: not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    from ..crypto import CryptoError

    try:
        opened = open_document(
            doc, lambda token, aad: keyring.open_sealed(token, aad=aad), dataset=dataset
        )
    except CryptoError as exc:
        raise AnswerProblem(f"{name}: {exc}") from None
    _echo_json(opened)
