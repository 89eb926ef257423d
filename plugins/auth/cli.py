"""``sandrun auth new-key|new-wallet``: credentials for the ``auth`` plugin.

Contributed to the ``sandrun`` command through the entry-point group
``sandrun.commands`` (``auth = "plugins.auth.cli:auth"``).

A key is a key id and a random secret (for workers' ``keys``/``keys_file`` and a
producer's ``hmac`` or ``static`` provider); a wallet is an Ed25519 private key
in a PEM file readable by its owner only, whose address the command prints.
cryptography is imported when a wallet is made: ``sandrun --help`` imports this
module to list ``auth``.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from pathlib import Path

import click

from worker import ConfigurationError
from worker import cli_fail as fail


@click.group()
def auth() -> None:
    """Make credentials for the auth plugin."""


@auth.command("new-key")
@click.option("--key-id", default=None, help="default: a random id")
def new_key(key_id: str | None) -> None:
    """Print a new key as JSON: {"key_id": ..., "secret": ...} (keep the secret secret)."""
    click.echo(json.dumps({"key_id": key_id or f"key-{secrets.token_hex(4)}",
                           "secret": secrets.token_urlsafe(32)}))


@auth.command("new-wallet")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
def new_wallet(path: Path) -> None:
    """Write a new Ed25519 wallet to PATH (mode 0600) and print its address."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        fail(ConfigurationError(f"{path} exists; choose a new path (an existing wallet is "
                                "never overwritten)"))
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    raw = key.public_key().public_bytes_raw()
    click.echo(base64.urlsafe_b64encode(raw).rstrip(b"=").decode())
