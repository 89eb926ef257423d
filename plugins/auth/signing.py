"""Job signatures of the ``auth`` plugin: JWS (PyJWT signs; HS256 is checked here) over a
canonical message.

A producer signs each message it publishes; the header ``sandrun_auth`` holds a
compact JWS whose protected header names the key (``kid``) and whose claims are::

    iat, exp, jti (a random nonce), task, jid (task id), queue,
    eta (ISO time or null), body (SHA-256 of the canonical JSON of args and kwargs),
    ctx (SHA-256 of the canonical JSON of the job-context headers present: correlation
    id, tenant, baggage; null when there are none)

plus ``tok`` for wallet keys (the issuer's token naming the wallet address).
Canonical JSON: sorted keys, no spaces, UTF-8, exactly as the worker receives
the body after decoding. A worker checks, in this order: a signature is there, the
key id is in its keyring, the signature is valid, it has not expired, the message
matches the claims (task, id, queue, body, context headers), it does not run before
its signed ETA,
and (wallet keys) the token was valid when the job was signed. The nonce check
lives with the plugin, which has the storage.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import jwt

from plugins.auth.tokens import MIN_SECRET, WALLET_PREFIX, SigningKey, b64url, public_key_of
from worker import (
    CONTEXT_HEADERS,
    ConfigurationError,
    Publication,
)

AUTH_HEADER = "sandrun_auth"
CHECKED = ("task", "jid", "queue", "body", "ctx")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


class AuthFailure(Exception):
    """Why a message failed verification: a short ``reason`` (a metric label) and detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def body_digest(args: list[Any], kwargs: dict[str, Any]) -> str:
    """SHA-256 (base64url) of the canonical JSON of a task's arguments."""
    canonical = json.dumps({"args": list(args), "kwargs": dict(kwargs)}, sort_keys=True,
                           separators=(",", ":"), ensure_ascii=False)
    return b64url(hashlib.sha256(canonical.encode()).digest())


def context_digest(headers: Mapping[str, Any]) -> str | None:
    """SHA-256 (base64url) of the canonical JSON of the job-context headers a message
    carries (``worker.CONTEXT_HEADERS``), or None when it carries none: a signature
    made before these headers existed still verifies a message without them."""
    present = {name: headers[name] for name in CONTEXT_HEADERS if headers.get(name) is not None}
    if not present:
        return None
    canonical = json.dumps(present, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                           default=str)
    return b64url(hashlib.sha256(canonical.encode()).digest())


def sign(publication: Publication, key: SigningKey, *, now: float, ttl: float) -> str:
    """The JWS for ``publication``; valid for ``ttl`` seconds after its ETA (or now)."""
    start = max(now, publication.eta.timestamp()) if publication.eta else now
    claims = {**key.claims, "iat": int(now), "exp": start + ttl, "jti": secrets.token_urlsafe(16),
              "task": publication.task, "jid": publication.task_id, "queue": publication.queue,
              "eta": publication.eta.isoformat() if publication.eta else None,
              "body": body_digest(publication.args, publication.kwargs),
              "ctx": context_digest(publication.headers)}
    return jwt.encode(claims, key.key, algorithm=key.algorithm, headers={"kid": key.key_id})


@dataclass(frozen=True, slots=True)
class Message:
    """What a worker received, as the verifier compares it with the claims."""

    task: str
    task_id: str
    queue: str | None
    args: list[Any]
    kwargs: dict[str, Any]
    headers: Mapping[str, Any] = field(default_factory=dict)


class Keyring:
    """HMAC keys by key id: from configuration, and from a JSON file re-read when it
    changes (add a key, move producers to it, then remove the old one: rotation)."""

    def __init__(self, keys: dict[str, str], path: Path | None = None) -> None:
        short = sorted(kid for kid, secret in keys.items() if len(secret) < MIN_SECRET)
        if short:
            raise ConfigurationError(f"auth keys {', '.join(short)} are shorter than {MIN_SECRET} "
                                     "characters; generate keys with `sandrun auth new-key`")
        self._static = {kid: secret.encode() for kid, secret in keys.items()}
        self.path = path
        self._loaded: tuple[float, dict[str, bytes]] = (-1.0, {})

    def _from_file(self) -> dict[str, bytes]:
        if self.path is None:
            return {}
        mtime = self.path.stat().st_mtime
        if mtime != self._loaded[0]:
            try:
                raw = json.loads(self.path.read_text())
            except json.JSONDecodeError as exc:
                raise ConfigurationError(f"auth keys file {self.path} is not JSON ({exc}); "
                                         'write {"key-id": "secret", ...}') from exc
            if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
                raise ConfigurationError(f'auth keys file {self.path} must hold {{"key-id": '
                                         '"secret", ...}')
            self._loaded = (mtime, {str(k): v.encode() for k, v in raw.items()})
        return self._loaded[1]

    def get(self, key_id: str) -> bytes | None:
        """The secret of ``key_id``, or None when it is not (or no longer) active."""
        return {**self._static, **self._from_file()}.get(key_id)

    def key_ids(self) -> list[str]:
        """Every active key id."""
        return sorted({**self._static, **self._from_file()})


def _unverified_header(token: str, what: str) -> dict[str, Any]:
    """The JWS header of ``token``, read only to choose the key: ``_decode`` (PyJWT)
    checks the whole token, this header included, against that key. PyJWT's own
    reader would decode and check every segment a second time."""
    if not isinstance(token, str):  # a header is whatever the message's sender put there
        raise AuthFailure("malformed", f"{what} is not a JWS (a {type(token).__name__})")
    segment = token.split(".", 1)[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, binascii.Error) as exc:  # UnicodeDecodeError is a ValueError
        raise AuthFailure("malformed", f"{what} is not a JWS ({exc})") from exc
    if not isinstance(header, dict) or not isinstance(header.get("kid", ""), str):
        raise AuthFailure("malformed", f"{what} is not a JWS (its header is not an object "
                          "with a string kid)")
    return header


def _decode(token: str, key: Any, algorithm: str) -> dict[str, Any]:
    """The claims of ``token`` once its signature checks out with ``key``: HS256 (every
    key of the keyring) by :func:`_decode_hs256`, any other algorithm by PyJWT."""
    if algorithm == "HS256":
        return _decode_hs256(token, key)
    try:
        claims: dict[str, Any] = jwt.decode(
            token, key, algorithms=[algorithm],
            options={"verify_exp": False, "verify_iat": False, "verify_nbf": False,
                     "require": ["iat", "exp"]})
    except jwt.InvalidSignatureError as exc:
        raise AuthFailure("bad_signature", "the signature does not match the message "
                          "(forged, or signed with another key)") from exc
    except jwt.InvalidTokenError as exc:
        raise AuthFailure("malformed", f"the signature cannot be read ({exc})") from exc
    return claims


def _segment(text: str, name: str) -> bytes:
    """One segment of a compact JWS: canonical unpadded base64url (as PyJWT writes it),
    or AuthFailure("malformed")."""
    if len(text) % 4 == 1 or not _BASE64URL.fullmatch(text):
        raise AuthFailure("malformed", f"the signature cannot be read (its {name} is not "
                          "base64url)")
    decoded = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if b64url(decoded) != text:  # stray bits in the last character: one value, one spelling
        raise AuthFailure("malformed", f"the signature cannot be read (its {name} is not "
                          "canonical base64url)")
    return decoded


def _json_object(raw: bytes, name: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError as exc:  # UnicodeDecodeError is a ValueError
        raise AuthFailure("malformed", f"the signature cannot be read (its {name} is not "
                          f"JSON: {exc})") from None
    if not isinstance(value, dict):
        raise AuthFailure("malformed", f"the signature cannot be read (its {name} is not "
                          "a JSON object)")
    return value


def _decode_hs256(token: str, key: bytes) -> dict[str, Any]:
    """What ``jwt.decode(token, key, algorithms=["HS256"])`` checks, and no less: three
    base64url segments, a header that names HS256 (and no ``crit`` extension, which this
    verifier would not understand), an HMAC-SHA256 that matches in constant time, and
    claims that are an object with ``iat`` and ``exp``. PyJWT's own path costs about 70 us
    a job here, mostly vetting that the key is not an asymmetric key in disguise (these
    are the keyring's HMAC secrets) and checking segments a character at a time."""
    parts = token.split(".")
    if len(parts) != 3:
        raise AuthFailure("malformed", "the signature cannot be read (a compact JWS has "
                          f"three segments, not {len(parts)})")
    head, body, _ = parts
    raw_header, payload, mac = (_segment(text, name) for text, name in
                                zip(parts, ("header", "payload", "signature"), strict=True))
    header = _json_object(raw_header, "header")
    if header.get("alg") != "HS256" or "crit" in header:
        raise AuthFailure("malformed", f"the signature cannot be read (algorithm "
                          f"{header.get('alg')!r} with {sorted(header)}; HS256 expected)")
    expected = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(expected, mac):
        raise AuthFailure("bad_signature", "the signature does not match the message "
                          "(forged, or signed with another key)")
    claims = _json_object(payload, "payload")
    missing = [name for name in ("iat", "exp") if name not in claims]
    if missing:
        raise AuthFailure("malformed", f"the signature cannot be read (claims "
                          f"{', '.join(missing)} missing)")
    return claims


def _verification_key(header: dict[str, Any], keyring: Keyring) -> tuple[Any, str]:
    kid = str(header.get("kid") or "")
    if kid.startswith(WALLET_PREFIX):
        try:
            return public_key_of(kid[len(WALLET_PREFIX):]), "EdDSA"
        except ValueError as exc:
            raise AuthFailure("unknown_key", f"key id {kid!r} is not a wallet address") from exc
    secret = keyring.get(kid)
    if secret is None:
        raise AuthFailure("unknown_key", f"key id {kid!r} is not in this worker's keyring "
                          f"(active: {', '.join(keyring.key_ids()) or 'none'})")
    return secret, "HS256"


def _check_wallet_token(claims: dict[str, Any], kid: str, keyring: Keyring, *, now: float,
                        leeway: float) -> None:
    """The wallet's issuer token names this wallet, is valid now, and covered the signing."""
    token = claims.get("tok")
    if not isinstance(token, str):
        raise AuthFailure("bad_token", "a wallet signature must carry its issuer's token")
    try:
        header = _unverified_header(token, "the wallet token")
    except AuthFailure as exc:
        raise AuthFailure("bad_token", f"the wallet token cannot be read ({exc.detail})") from exc
    issuer_key = keyring.get(str(header.get("kid") or ""))
    if issuer_key is None:
        raise AuthFailure("unknown_key", f"wallet token issuer {header.get('kid')!r} is not "
                          "in this worker's keyring")
    granted = _decode(token, issuer_key, "HS256")
    if f"{WALLET_PREFIX}{granted.get('sub')}" != kid:
        raise AuthFailure("bad_token", "the wallet token was issued to another address")
    if now > float(granted["exp"]) + leeway:
        raise AuthFailure("expired", f"the wallet token expired {now - float(granted['exp']):.0f}s "
                          "ago; the wallet must exchange a new one with its issuer")
    if float(granted["iat"]) > now + leeway:
        raise AuthFailure("bad_token", "the wallet token was issued in the future")
    if not granted["iat"] - leeway <= claims["iat"] <= granted["exp"]:
        raise AuthFailure("bad_token", "the job was signed outside its wallet token's lifetime")


def _check_times(claims: dict[str, Any], *, now: float, leeway: float, max_ttl: float) -> None:
    """Signed in the past, not expired, and valid no longer than this worker allows after
    its start (its ETA, or when it was signed): a producer cannot mint a signature that
    lasts for years."""
    iat, exp = float(claims["iat"]), float(claims["exp"])
    if iat > now + leeway:
        raise AuthFailure("not_yet_valid", f"the signature was made {iat - now:.0f}s in the "
                          "future; check the producer's clock")
    if now > exp + leeway:
        raise AuthFailure("expired", f"the signature expired {now - exp:.0f}s ago; sign closer "
                          "to the run or raise signature_ttl")
    eta = claims.get("eta")
    start = max(iat, datetime.fromisoformat(eta).timestamp()) if eta else iat
    if exp - start > max_ttl + leeway:
        raise AuthFailure("overlong", f"the signature is valid {exp - start:.0f}s after its "
                          f"start; this worker accepts at most {max_ttl:g}s (signature_ttl)")


def verify(token: str | None, message: Message, keyring: Keyring, *, now: float,
           leeway: float, max_ttl: float) -> dict[str, Any]:
    """The claims of a valid signature for ``message``; AuthFailure otherwise."""
    if not token:
        raise AuthFailure("unsigned", f"the message has no {AUTH_HEADER} header; submit "
                          "through a client that loads the auth plugin")
    header = _unverified_header(token, f"the {AUTH_HEADER} header")
    key, algorithm = _verification_key(header, keyring)
    claims = _decode(token, key, algorithm)
    if not isinstance(claims.get("jti"), str) or not claims["jti"]:
        raise AuthFailure("malformed", "the signature carries no nonce (jti)")
    _check_times(claims, now=now, leeway=leeway, max_ttl=max_ttl)
    actual = {"task": message.task, "jid": message.task_id, "queue": message.queue,
              "body": body_digest(message.args, message.kwargs),
              "ctx": context_digest(message.headers)}
    changed = [name for name in CHECKED if claims.get(name) != actual[name]]
    if changed:
        raise AuthFailure("tampered", f"the message differs from what was signed in: "
                          f"{', '.join(changed)}")
    eta = claims.get("eta")
    if eta and now + leeway < datetime.fromisoformat(eta).timestamp():
        raise AuthFailure("tampered", f"the job was signed to run at {eta}, not before")
    if algorithm == "EdDSA":
        _check_wallet_token(claims, str(header["kid"]), keyring, now=now, leeway=leeway)
    return claims
