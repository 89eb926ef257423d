"""The HS256 check of :mod:`plugins.auth.signing`, against tokens PyJWT writes."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import jwt
import pytest

from plugins.auth.signing import AuthFailure, _decode
from plugins.auth.tokens import b64url

KEY = b"hs256-test-secret-0123456789abcdef"
CLAIMS = {"iat": 1, "exp": 2, "jti": "n"}


def token(claims: dict[str, Any] = CLAIMS, key: bytes = KEY, algorithm: str = "HS256",
          **headers: Any) -> str:
    return jwt.encode(claims, key, algorithm=algorithm, headers=headers or None)


def reason(text: str, key: bytes = KEY) -> str:
    with pytest.raises(AuthFailure) as failure:
        _decode(text, key, "HS256")
    return failure.value.reason


def test_a_token_pyjwt_signed_gives_its_claims() -> None:
    assert _decode(token(kid="k1", typ="JWT"), KEY, "HS256") == CLAIMS


def test_another_key_is_a_bad_signature() -> None:
    assert reason(token(key=b"another-secret-0123456789abcdefgh")) == "bad_signature"


@pytest.mark.parametrize("algorithm", ["HS512", "HS384"])
def test_another_algorithm_is_refused_even_with_the_right_key(algorithm: str) -> None:
    assert reason(token(algorithm=algorithm)) == "malformed"


def test_an_unsigned_token_is_refused() -> None:
    head = b64url(b'{"alg":"none","typ":"JWT"}')
    body = token().split(".")[1]
    assert reason(f"{head}.{body}.") == "malformed"


def test_a_critical_extension_is_refused() -> None:
    assert reason(token(crit=["exp"])) == "malformed"


def test_the_claims_must_say_when() -> None:
    assert reason(token({"jti": "n", "exp": 2})) == "malformed"
    head = b64url(b'{"alg":"HS256"}')
    body = b64url(b'["not","an","object"]')
    signature = b64url(hmac.new(KEY, f"{head}.{body}".encode(), hashlib.sha256).digest())
    assert reason(f"{head}.{body}.{signature}") == "malformed"


@pytest.mark.parametrize("spoil", [
    lambda s: s + "=",  # padding PyJWT never writes
    lambda s: s[:-2] + ("AA" if s[-2:] != "AA" else "BA"),  # another MAC
    lambda s: s + "!",
    lambda s: s[:-1],  # one character short
])
def test_a_signature_spelt_otherwise_is_refused(spoil: Any) -> None:
    head, body, signature = token().split(".")
    assert reason(".".join((head, body, spoil(signature)))) in {"malformed", "bad_signature"}


def test_a_signature_with_stray_bits_is_not_canonical() -> None:
    """43 characters carry 258 bits for 256: two spellings of one MAC are not both valid."""
    head, body, signature = token().split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(signature[-1])
    twin = signature[:-1] + alphabet[last ^ 1]  # same 256 bits, another low bit
    assert reason(".".join((head, body, twin))) == "malformed"


@pytest.mark.parametrize("text", ["", "a.b", "a.b.c.d", "é.e30.x"])
def test_not_three_base64url_segments(text: str) -> None:
    assert reason(text) == "malformed"
