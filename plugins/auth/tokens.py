"""Credentials of the ``auth`` plugin: tokens, the providers that issue them, and
the storages that keep them between submits (``token_storage_for`` picks one by
name).

A provider proves who the producer is and returns an :class:`AuthToken`; the
plugin keeps it in a :class:`TokenStorage` and asks again when it is within the
refresh threshold of its expiry. Every provider also says how jobs are signed
(:class:`SigningKey`): the worker's keyring must hold the matching key.

* :class:`StaticTokenProvider`: a long-lived shared secret (a "bearer token")
  under a key id; it never expires; jobs are signed HS256 with it.
* :class:`HMACProvider`: a key id and secret; issues short-lived JWT session
  tokens (HS256), and a job signature never outlives the session token.
* :class:`WalletProvider`: an Ed25519 private key (the wallet; its public key,
  base64url, is the address) signs ``"Authenticate with Sandrun at <ms>"`` and
  exchanges it with an issuer (:class:`WalletIssuer`, or any callable that asks
  a remote service) for a token naming the address. Jobs are signed EdDSA with
  the wallet and carry the token, which the worker checks with the issuer's key.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import jwt
import redis
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict

from worker import (
    ConfigurationError,
    SandrunError,
    is_redis,
    load_settings,
    redis_client,
    redis_url,
)

Clock = Callable[[], float]


def _connect(url: str) -> redis.Redis[bytes]:
    """A client of the token's Redis, with Sandrun's socket options."""
    client = redis_client(url)
    if client is None:
        raise ConfigurationError(f"token storage needs a Redis URL, not {url!r}: use "
                                 "redis://host:6379/0 or unix:///path/to/redis.sock")
    return client
WALLET_MESSAGE = "Authenticate with Sandrun at {millis}"
WALLET_PREFIX = "wallet:"
MIN_SECRET = 32  # bytes of an HS256 key, RFC 7518 section 3.2


class AuthenticationFailed(SandrunError):
    """A provider could not obtain a token (bad wallet signature, unknown address...)."""


class AuthToken(BaseModel):
    """A credential with an optional expiry (Unix seconds)."""

    model_config = ConfigDict(frozen=True)
    token: str
    key_id: str
    expires_at: float | None = None
    type: str = "bearer"


@dataclass(frozen=True, slots=True)
class SigningKey:
    """How jobs are signed: JWS algorithm, key, key id, and claims every job carries."""

    algorithm: str
    key: Any
    key_id: str
    claims: dict[str, Any]


class AuthProvider(Protocol):
    """Issues tokens and says how to sign with them."""

    def authenticate(self) -> AuthToken: ...

    def signing_key(self, token: AuthToken) -> SigningKey: ...


def b64url(data: bytes) -> str:
    """Unpadded base64url, as JOSE writes binary values."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def wallet_address(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The address of a wallet: its raw public key in base64url."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return b64url(public.public_bytes_raw())


def public_key_of(address: str) -> Ed25519PublicKey:
    """The Ed25519 public key an address names; ValueError if it names none."""
    raw = base64.urlsafe_b64decode(address + "=" * (-len(address) % 4))
    if len(raw) != 32:
        raise ValueError(f"a wallet address is 32 bytes of base64url, got {len(raw)} bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


class StaticTokenProvider:
    """A fixed shared secret under ``key_id``; the worker keyring holds the same pair."""

    def __init__(self, token: str, key_id: str = "static") -> None:
        if len(token) < MIN_SECRET:
            raise ConfigurationError("a static auth token needs at least 32 characters; "
                                     "generate one with `sandrun auth new-key`")
        self._token = AuthToken(token=token, key_id=key_id)

    def authenticate(self) -> AuthToken:
        return self._token

    def signing_key(self, token: AuthToken) -> SigningKey:
        return SigningKey("HS256", token.token.encode(), token.key_id, {})


class HMACProvider:
    """Short-lived HS256 session tokens from ``key_id`` + ``secret``."""

    def __init__(self, key_id: str, secret: str, ttl: float = 900,
                 clock: Clock = time.time) -> None:
        if len(secret) < MIN_SECRET:
            raise ConfigurationError(f"the HMAC secret of key {key_id!r} needs at least 32 "
                                     "characters; generate one with `sandrun auth new-key`")
        self.key_id, self._secret, self.ttl, self._clock = key_id, secret, ttl, clock

    def authenticate(self) -> AuthToken:
        now = self._clock()
        claims = {"sub": self.key_id, "iat": int(now), "exp": now + self.ttl}
        token = jwt.encode(claims, self._secret, algorithm="HS256",
                           headers={"kid": self.key_id})
        return AuthToken(token=token, key_id=self.key_id, expires_at=now + self.ttl)

    def signing_key(self, token: AuthToken) -> SigningKey:
        return SigningKey("HS256", self._secret.encode(), self.key_id, {})


class WalletIssuer:
    """Issues wallet tokens: checks the signed message and the address, signs HS256.

    Runs wherever the issuer key may live (a service, or the producer itself in a
    single-team setup); workers hold ``key_id``/``secret`` in their keyring."""

    def __init__(self, key_id: str, secret: str, *, ttl: float = 900,
                 addresses: set[str] | None = None, max_skew: float = 300,
                 clock: Clock = time.time) -> None:
        if len(secret) < MIN_SECRET:
            raise ConfigurationError(f"the secret of wallet issuer {key_id!r} needs at least 32 "
                                     "characters; generate one with `sandrun auth new-key`")
        self.key_id, self._secret, self.ttl = key_id, secret, ttl
        self.addresses, self.max_skew, self._clock = addresses, max_skew, clock

    def __call__(self, address: str, message: str, signature: bytes) -> AuthToken:
        now = self._clock()
        prefix = WALLET_MESSAGE.split("{", 1)[0]
        millis = message[len(prefix):] if message.startswith(prefix) else ""
        if not millis.isdigit() or abs(int(millis) / 1000 - now) > self.max_skew:
            raise AuthenticationFailed(f"wallet message {message!r} is not a current "
                                       f"{WALLET_MESSAGE!r}; check the producer's clock")
        if self.addresses is not None and address not in self.addresses:
            raise AuthenticationFailed(f"wallet {address} is not allowed by issuer "
                                       f"{self.key_id!r}; add it to the issuer's addresses")
        try:
            public_key_of(address).verify(signature, message.encode())
        except (InvalidSignature, ValueError) as exc:
            raise AuthenticationFailed(f"the wallet signature does not match address "
                                       f"{address}") from exc
        claims = {"sub": address, "iat": int(now), "exp": now + self.ttl}
        token = jwt.encode(claims, self._secret, algorithm="HS256", headers={"kid": self.key_id})
        return AuthToken(token=token, key_id=self.key_id, expires_at=now + self.ttl)


class WalletProvider:
    """Signs the login message with an Ed25519 wallet and exchanges it for a token."""

    def __init__(self, wallet: Ed25519PrivateKey,
                 issuer: Callable[[str, str, bytes], AuthToken],
                 clock: Clock = time.time) -> None:
        self.wallet, self.issuer, self._clock = wallet, issuer, clock
        self.address = wallet_address(wallet)

    def authenticate(self) -> AuthToken:
        message = WALLET_MESSAGE.format(millis=int(self._clock() * 1000))
        return self.issuer(self.address, message, self.wallet.sign(message.encode()))

    def signing_key(self, token: AuthToken) -> SigningKey:
        return SigningKey("EdDSA", self.wallet, WALLET_PREFIX + self.address,
                          {"tok": token.token})


class TokenStorage(Protocol):
    """Where the current token is kept between submits (and across restarts)."""

    def get_token(self) -> AuthToken | None: ...

    def store_token(self, token: AuthToken) -> None: ...

    def clear(self) -> None: ...


class MemoryTokenStorage:
    """This process only (the default)."""

    def __init__(self) -> None:
        self._token: AuthToken | None = None

    def get_token(self) -> AuthToken | None:
        return self._token

    def store_token(self, token: AuthToken) -> None:
        self._token = token

    def clear(self) -> None:
        self._token = None


class FileTokenStorage:
    """A JSON file readable by its owner only (mode 0600, replaced atomically)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def get_token(self) -> AuthToken | None:
        try:
            mode = self.path.stat().st_mode & 0o777
        except FileNotFoundError:
            return None
        if mode & 0o077:
            raise ConfigurationError(f"token file {self.path} has mode {mode:o}; others can "
                                     f"read it. Run: chmod 600 {self.path}")
        return AuthToken.model_validate_json(self.path.read_bytes())

    def store_token(self, token: AuthToken) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:  # mkstemp creates the file with mode 0600
            with os.fdopen(fd, "w") as fh:
                fh.write(token.model_dump_json())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


class RedisTokenStorage:
    """A Redis key, shared by the producers of one identity; expires with the token."""

    def __init__(self, client: redis.Redis[bytes] | str, key: str = "sandrun:auth:token",
                 clock: Clock = time.time) -> None:
        self._client = _connect(client) if isinstance(client, str) else client
        self.key, self._clock = key, clock

    def get_token(self) -> AuthToken | None:
        raw = self._client.get(self.key)
        return None if raw is None else AuthToken.model_validate(json.loads(raw))

    def store_token(self, token: AuthToken) -> None:
        ttl = None if token.expires_at is None else max(1, int(token.expires_at - self._clock()))
        self._client.set(self.key, token.model_dump_json(), ex=ttl)

    def clear(self) -> None:
        self._client.delete(self.key)


def token_storage_for(spec: str, clock: Clock) -> TokenStorage:
    """``memory``, ``file:<path>`` or ``redis`` (the broker's Redis)."""
    if spec == "memory":
        return MemoryTokenStorage()
    if spec.startswith("file:") and len(spec) > 5:
        return FileTokenStorage(spec[5:])
    if spec == "redis":
        url = load_settings().broker_url or ""
        if not is_redis(url):
            raise ConfigurationError("token_storage 'redis' needs SANDRUN_BROKER_URL to be a "
                                     "Redis URL; use 'memory' or 'file:<path>' otherwise")
        return RedisTokenStorage(redis_url(url), clock=clock)
    raise ConfigurationError(f"unknown token_storage {spec!r}; use 'memory', 'file:<path>' or "
                             "'redis'")
