"""``sandrun auth new-key|new-wallet``."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from plugins.auth.tokens import HMACProvider, wallet_address
from worker.cli import main


def test_new_key_is_usable_by_the_hmac_provider() -> None:
    result = CliRunner().invoke(main, ["auth", "new-key", "--key-id", "k7"])
    assert result.exit_code == 0, result.output
    key = json.loads(result.output)
    assert key["key_id"] == "k7" and len(key["secret"]) >= 32
    HMACProvider(key["key_id"], key["secret"]).authenticate()
    other = json.loads(CliRunner().invoke(main, ["auth", "new-key"]).output)
    assert other["secret"] != key["secret"] and other["key_id"].startswith("key-")


def test_new_wallet_is_private_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "wallet.pem"
    result = CliRunner().invoke(main, ["auth", "new-wallet", str(path)])
    assert result.exit_code == 0, result.output
    assert (path.stat().st_mode & 0o777) == 0o600
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    assert result.output.strip() == wallet_address(key)
    before = path.read_bytes()
    again = CliRunner().invoke(main, ["auth", "new-wallet", str(path)])
    assert again.exit_code == 2 and "exists" in again.output
    assert path.read_bytes() == before
