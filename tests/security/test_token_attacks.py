"""Attacks on the token policy in HS256 (shared secret) mode: the tamper and forgery set of
RFC 8725 and jwt_tool, claim type confusion, and hostile Authorization header shapes.

Every rejected case is a 401 problem+json with an exact `code` and a `WWW-Authenticate:
Bearer ...` header, answered in under two seconds, after which no task and no revocation
exists and no outbound connection was attempted (the `nothing_written` and `outbound`
guards). Each attack is sent twice: as `POST /api/v1/tasks` (it would plant a task) and as
`GET /api/v1/auth/me` (it would reveal who the server took the caller to be).

Cases `tests/test_token_policy.py` already covers (alg none without a signature in four
spellings, HS384, RS256, `crit: [exp]`, `b64`+`crit`, `zip: DEF`, `enc`, arrays nested
100 000 deep in the payload, a 0xFF 0xFE payload, string/bool/null/list/dict time claims,
the `sub` shapes, `?jwt=`/`?access_token=` and the `access_token_cookie` cookie) are not
repeated here.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import threading
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt as pyjwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from tests.conftest import SECRET
from tests.support.attacks import (
    assert_problem,
    b64,
    claims,
    hs256,
    js,
    rows,
    timed,
    unb64,
    valid_token,
)
from tests.support.clock import now

pytestmark = pytest.mark.usefixtures("nothing_written", "outbound")

B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
HS256_HEADER = b'{"alg":"HS256","typ":"JWT"}'
PLANT = {"title": "planted by an attacker"}


def rejected(client, authorization: str | None, code: str = "invalid_token", **request) -> None:
    """The Authorization header value is refused with 401 `code` on a write and on /me."""
    headers = dict(request.pop("headers", {}))
    if authorization is not None:
        headers["Authorization"] = authorization
    for method, url, extra in (("POST", "/api/v1/tasks", {"json": PLANT}), ("GET", "/api/v1/auth/me", {})):
        response = timed(client, method, url, headers=headers, **extra, **request)
        assert_problem(response, 401, code)


def rejected_token(client, token: str, code: str = "invalid_token") -> None:
    rejected(client, f"Bearer {token}", code)


def refused_read_only(client, token: str, code: str = "invalid_token") -> None:
    """For the known-bug tests: the token is refused on reads (nothing is written, so a
    still-present bug shows up as one failure, not also as a planted task)."""
    for url in ("/api/v1/auth/me", "/api/v1/tasks"):
        assert_problem(timed(client, "GET", url, headers={"Authorization": f"Bearer {token}"}), 401, code)


def accepted_as(client, authorization: str, user_id: str = "alice") -> dict:
    """Read-only requests with this header value succeed as `user_id` (nothing is written)."""
    me = timed(client, "GET", "/api/v1/auth/me", headers={"Authorization": authorization})
    assert me.status_code == 200, me.get_data()[:300]
    assert me.mimetype == "application/json"
    assert me.get_json()["user_id"] == user_id
    listed = timed(client, "GET", "/api/v1/tasks", headers={"Authorization": authorization})
    assert listed.status_code == 200 and listed.get_json() == []
    return me.get_json()


def split(token: str) -> tuple[str, str, str]:
    header, payload, signature = token.split(".")
    return header, payload, signature


def flip_char(segment: str, index: int) -> str:
    """Replace one base64url character by the one 32 places on: its top (always used) bit flips."""
    index %= len(segment)
    replacement = B64URL[(B64URL.index(segment[index]) + 32) % 64]
    return segment[:index] + replacement + segment[index + 1:]


def flip_bit(segment: str, byte: int, bit: int) -> str:
    raw = bytearray(unb64(segment))
    raw[byte] ^= 1 << bit
    return b64(bytes(raw))


# --- tampering: flipped bytes, truncated and replaced signatures, spliced tokens ----------


@pytest.mark.parametrize("segment", [0, 1, 2], ids=["header", "payload", "signature"])
@pytest.mark.parametrize("index", [0, 1, 7, -2, -1])
def test_a_flipped_character_in_any_segment(client, segment, index):
    parts = list(split(valid_token()))
    parts[segment] = flip_char(parts[segment], index)
    rejected_token(client, ".".join(parts))


@pytest.mark.parametrize("byte", [0, 13, 31])
@pytest.mark.parametrize("bit", [0, 7])
def test_a_flipped_bit_in_the_signature_bytes(client, byte, bit):
    header, payload, signature = split(valid_token())
    rejected_token(client, f"{header}.{payload}.{flip_bit(signature, byte, bit)}")


@pytest.mark.parametrize("byte", [0, 5, -3, -1])
def test_a_flipped_bit_in_the_decoded_header_or_payload(client, byte):
    header, payload, signature = split(valid_token())
    rejected_token(client, f"{flip_bit(header, byte % 27, 1)}.{payload}.{signature}")
    raw = unb64(payload)
    rejected_token(client, f"{header}.{flip_bit(payload, byte % len(raw), 1)}.{signature}")


TRUNCATIONS = {
    "empty": lambda s: "",
    "one_char": lambda s: s[:1],
    "half": lambda s: s[:22],
    "minus_one_char": lambda s: s[:-1],
    "minus_four_chars": lambda s: s[:-4],
    "16_bytes": lambda s: b64(unb64(s)[:16]),
    "31_bytes": lambda s: b64(unb64(s)[:31]),
    "one_extra_byte": lambda s: b64(unb64(s) + b"\x00"),
    "doubled": lambda s: s + s,
    "extra_char": lambda s: s + "A",
    "padded_twice": lambda s: s + "==",
    "inner_junk": lambda s: s[:20] + "!!!!" + s[20:],
    "standard_alphabet_char": lambda s: s[:20] + "+" + s[20:],
    "standard_alphabet": lambda s: s.replace("-", "+").replace("_", "/"),
    "standard_base64_padded": lambda s: base64.b64encode(unb64(s)).decode(),
}


def token_with_urlsafe_signature() -> str:
    """A valid token whose signature holds a '-' or '_', so the standard alphabet differs."""
    for n in range(1000):
        token = valid_token(nonce=n)
        if {"-", "_"} & set(split(token)[2]):
            return token
    raise AssertionError("no signature with '-' or '_' in 1000 tries")


@pytest.mark.parametrize("change", TRUNCATIONS.values(), ids=TRUNCATIONS.keys())
def test_truncated_extended_or_re_encoded_signatures(client, change):
    """PyJWT 2.15 refuses non-canonical base64url (GHSA-hxm8-2xgr-2p9m) except one or two
    trailing '=', which the revocation tests cover (a padded copy cannot escape a logout)."""
    header, payload, signature = split(token_with_urlsafe_signature())
    changed = change(signature)
    assert changed != signature
    rejected_token(client, f"{header}.{payload}.{changed}")


EMPTY_SIGNATURES = ["", "null", "AA", "AAAA", "=", "====", "0", b64(b"\x00" * 32), b64(b"\x00"), "undefined"]


@pytest.mark.parametrize("signature", EMPTY_SIGNATURES)
def test_null_and_empty_signatures(client, signature):
    header, payload, _ = split(valid_token())
    rejected_token(client, f"{header}.{payload}.{signature}")


def test_spliced_tokens(client):
    alice, bob = split(valid_token("alice")), split(valid_token("bob"))
    for token in (
        f"{alice[0]}.{bob[1]}.{alice[2]}",  # bob's claims under alice's signature
        f"{alice[0]}.{alice[1]}.{bob[2]}",  # alice's claims under bob's signature
        f"{alice[1]}.{alice[0]}.{alice[2]}",  # header and payload swapped
        f"{alice[0]}=.{alice[1]}.{alice[2]}",  # padding changes the signed bytes
        f"{alice[0]}.{alice[1]}=.{alice[2]}",
        f"{alice[0]}.{alice[1]}.{alice[2]}".replace("-", "+").replace("_", "/"),
    ):
        if token != ".".join(alice):
            rejected_token(client, token)


# --- alg: none, unknown spellings, and algorithms outside the configuration ---------------

NONE_SPELLINGS = sorted({"".join(chars) for chars in itertools.product(*zip("none", "NONE", strict=True))})
COVERED_ELSEWHERE = {("none", "empty"), ("None", "empty"), ("NONE", "empty"), ("nOnE", "empty")}


def _none_cases() -> Iterator:
    for alg in NONE_SPELLINGS:
        for signature in ("empty", "junk", "hmac_over_none_header", "original_hs256_signature"):
            if (alg, signature) not in COVERED_ELSEWHERE:
                yield pytest.param(alg, signature, id=f"{alg}-{signature}")


@pytest.mark.parametrize("alg,signature", list(_none_cases()))
def test_alg_none_in_every_spelling_with_and_without_a_signature(client, alg, signature):
    payload = js(claims())
    header = js({"alg": alg, "typ": "JWT"})
    signing_input = f"{b64(header)}.{b64(payload)}"
    signatures = {
        "empty": "",
        "junk": b64(b"\x01" * 32),
        "hmac_over_none_header": split(hs256(header, payload))[2],
        "original_hs256_signature": split(hs256(HS256_HEADER, payload))[2],
    }
    rejected_token(client, f"{signing_input}.{signatures[signature]}")
    if signature == "empty":
        rejected_token(client, signing_input)  # the two-segment form too


ALG_SPELLINGS = {
    "lowercase": '"hs256"', "mixed_case": '"Hs256"', "trailing_space": '"HS256 "', "leading_space": '" HS256"',
    "nul_suffix": '"HS256\\u0000"', "hmac_name": '"HMAC-SHA256"', "hs512": '"HS512"', "array": '["HS256"]',
    "null": "null", "number": "256", "object": '{"name":"HS256"}', "empty": '""', "missing": None,
    "unicode_lookalike": '"H\\u0405256"',
}


@pytest.mark.parametrize("literal", ALG_SPELLINGS.values(), ids=ALG_SPELLINGS.keys())
def test_alg_spellings_outside_the_configuration_even_with_the_right_hmac(client, literal):
    header = b'{"typ":"JWT"}' if literal is None else b'{"alg":%s,"typ":"JWT"}' % literal.encode()
    rejected_token(client, hs256(header, js(claims())))


@pytest.fixture(scope="module")
def keys() -> dict:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return {
        "rsa": rsa_key,
        "ec256": ec.generate_private_key(ec.SECP256R1()),
        "ec521": ec.generate_private_key(ec.SECP521R1()),
        "ed25519": ed25519.Ed25519PrivateKey.generate(),
        "cert": _self_signed(rsa_key),
    }


def _self_signed(key) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "attacker.example")])
    start = datetime.now(UTC) - timedelta(days=1)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start)
            .not_valid_after(start + timedelta(days=30)).sign(key, hashes.SHA256()))


def _public_encodings(keys: dict) -> dict[str, bytes]:
    pem, der = serialization.Encoding.PEM, serialization.Encoding.DER
    spki, pkcs1 = serialization.PublicFormat.SubjectPublicKeyInfo, serialization.PublicFormat.PKCS1
    ssh = (serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    rsa_pub, ec_pub, ed_pub = keys["rsa"].public_key(), keys["ec256"].public_key(), keys["ed25519"].public_key()
    rsa_pem = rsa_pub.public_bytes(pem, spki)
    return {
        "rsa_pem_spki": rsa_pem,
        "rsa_pem_spki_no_trailing_newline": rsa_pem.rstrip(b"\n"),
        "rsa_pem_spki_crlf": rsa_pem.replace(b"\n", b"\r\n"),
        "rsa_pem_pkcs1": rsa_pub.public_bytes(pem, pkcs1),
        "rsa_der_spki": rsa_pub.public_bytes(der, spki),
        "rsa_der_pkcs1": rsa_pub.public_bytes(der, pkcs1),
        "rsa_openssh": rsa_pub.public_bytes(*ssh),
        "rsa_jwk_json": RSAAlgorithm.to_jwk(rsa_pub).encode(),
        "rsa_jwks_json": json.dumps({"keys": [json.loads(RSAAlgorithm.to_jwk(rsa_pub))]}).encode(),
        "rsa_x509_pem": keys["cert"].public_bytes(pem),
        "rsa_x509_der": keys["cert"].public_bytes(der),
        "ec_pem_spki": ec_pub.public_bytes(pem, spki),
        "ec_der_spki": ec_pub.public_bytes(der, spki),
        "ec_uncompressed_point": ec_pub.public_bytes(serialization.Encoding.X962,
                                                     serialization.PublicFormat.UncompressedPoint),
        "ec_jwk_json": ECAlgorithm.to_jwk(ec_pub).encode(),
        "ec_openssh": ec_pub.public_bytes(*ssh),
        "ed25519_pem": ed_pub.public_bytes(pem, spki),
        "ed25519_raw": ed_pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw),
        "ed25519_jwk_json": OKPAlgorithm.to_jwk(ed_pub).encode(),
    }


ENCODING_NAMES = [
    "rsa_pem_spki", "rsa_pem_spki_no_trailing_newline", "rsa_pem_spki_crlf", "rsa_pem_pkcs1", "rsa_der_spki",
    "rsa_der_pkcs1", "rsa_openssh", "rsa_jwk_json", "rsa_jwks_json", "rsa_x509_pem", "rsa_x509_der",
    "ec_pem_spki", "ec_der_spki", "ec_uncompressed_point", "ec_jwk_json", "ec_openssh", "ed25519_pem",
    "ed25519_raw", "ed25519_jwk_json",
]


@pytest.mark.parametrize("encoding", ENCODING_NAMES)
def test_algorithm_confusion_hs256_signed_with_a_public_key(client, keys, encoding):
    """The classic RS256 -> HS256 confusion: the HMAC key is a public key's bytes. With no
    JWKS configured there is no public key the server could mistake for the secret, and it
    must still fail (as it must, configured or not)."""
    public = _public_encodings(keys)[encoding]
    payload = js(claims())
    rejected_token(client, hs256(HS256_HEADER, payload, public))
    rejected_token(client, hs256(b'{"alg":"HS256","typ":"JWT","kid":"attacker"}', payload, public))


@pytest.mark.parametrize("alg,key", [("PS256", "rsa"), ("ES256", "ec256"), ("ES512", "ec521"),
                                     ("EdDSA", "ed25519")])
def test_real_asymmetric_signatures_are_refused_without_jwks(client, keys, alg, key):
    rejected_token(client, pyjwt.encode(claims(), keys[key], algorithm=alg, headers={"kid": "k1"}))


ZERO_SIGNATURES = {
    "raw_r0_s0": b"\x00" * 64,
    "der_r0_s0": bytes.fromhex("3006020100020100"),
    "raw_r0_s1": b"\x00" * 63 + b"\x01",
    "one_byte": b"\x00",
}


@pytest.mark.parametrize("signature", ZERO_SIGNATURES.values(), ids=ZERO_SIGNATURES.keys())
@pytest.mark.parametrize("kid", [None, "k1"])
def test_es256_psychic_signatures(client, signature, kid):
    """CVE-2022-21449: r = s = 0 verified under any key on some JVMs. ES256 is not
    configured in secret mode, so these fail before any curve arithmetic."""
    header = {"alg": "ES256", "typ": "JWT", **({"kid": kid} if kid else {})}
    rejected_token(client, f"{b64(js(header))}.{b64(js(claims()))}.{b64(signature)}")


# --- keys the token carries or points at: jwk, jku, x5u, x5c -------------------------------


class KeyServer:
    """A JWKS/x509 server on 127.0.0.1 publishing the attacker's key; it records every request."""

    def __init__(self, body: bytes) -> None:
        self.requests: list[str] = []
        requests = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                requests.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = self.server.server_address[:2]
        self.url = f"http://127.0.0.1:{self.address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def key_server(keys, outbound) -> Iterator[KeyServer]:
    public_jwk = json.loads(RSAAlgorithm.to_jwk(keys["rsa"].public_key()))
    server = KeyServer(json.dumps({"keys": [{**public_jwk, "kid": "attacker", "alg": "RS256", "use": "sig"}]}).encode())
    outbound.allowed.add(server.address)
    # The server answers: a fetch by the app would have been seen (and would have found the key).
    with urllib.request.urlopen(f"{server.url}/probe", timeout=2) as response:  # noqa: S310
        assert json.loads(response.read())["keys"][0]["kid"] == "attacker"
    server.requests.clear()
    outbound.attempts.clear()
    yield server
    server.close()


def _embedded_key_tokens(keys, server: KeyServer) -> dict[str, str]:
    rsa_key = keys["rsa"]
    public_jwk = json.loads(RSAAlgorithm.to_jwk(rsa_key.public_key()))
    attacker_secret = b"attacker-chosen-secret-attacker-chosen-secret"
    oct_jwk = {"kty": "oct", "k": b64(attacker_secret), "kid": "attacker"}
    cert_der = keys["cert"].public_bytes(serialization.Encoding.DER)
    payload = claims()

    def rs256(header: dict) -> str:
        return pyjwt.encode(payload, rsa_key, algorithm="RS256", headers=header)

    def hs_attacker(header: dict) -> str:
        return hs256(js({"alg": "HS256", "typ": "JWT", **header}), js(payload), attacker_secret)

    return {
        "jwk_rsa_rs256": rs256({"jwk": public_jwk}),
        "jwk_oct_hs256": hs_attacker({"jwk": oct_jwk}),
        "jku_rs256": rs256({"jku": f"{server.url}/jwks.json", "kid": "attacker"}),
        "jku_hs256": hs_attacker({"jku": f"{server.url}/jwks.json", "kid": "attacker"}),
        "jku_metadata_ip": rs256({"jku": "http://169.254.169.254/latest/meta-data/", "kid": "attacker"}),
        "x5u_rs256": rs256({"x5u": f"{server.url}/cert.pem"}),
        "x5u_hs256": hs_attacker({"x5u": f"{server.url}/cert.pem"}),
        "x5c_rs256": rs256({"x5c": [base64.b64encode(cert_der).decode()]}),
        "x5c_hs256_keyed_by_cert": hs256(js({"alg": "HS256", "x5c": [base64.b64encode(cert_der).decode()]}),
                                         js(payload), keys["cert"].public_bytes(serialization.Encoding.PEM)),
        "all_at_once": rs256({"jwk": public_jwk, "jku": f"{server.url}/a", "x5u": f"{server.url}/b",
                              "x5c": [base64.b64encode(cert_der).decode()], "kid": "attacker"}),
    }


EMBEDDED = ["jwk_rsa_rs256", "jwk_oct_hs256", "jku_rs256", "jku_hs256", "jku_metadata_ip", "x5u_rs256",
            "x5u_hs256", "x5c_rs256", "x5c_hs256_keyed_by_cert", "all_at_once"]


@pytest.mark.parametrize("case", EMBEDDED)
def test_keys_embedded_in_or_pointed_at_by_the_token_are_never_used_or_fetched(client, keys, key_server,
                                                                               outbound, case):
    rejected_token(client, _embedded_key_tokens(keys, key_server)[case])
    assert key_server.requests == []
    assert outbound.attempts == []


@pytest.mark.parametrize("header", ["jku", "x5u"])
def test_a_genuine_token_carrying_jku_or_x5u_is_accepted_without_fetching_anything(client, key_server,
                                                                                   outbound, header):
    """Documented: in secret mode these header parameters are ignored (the secret alone
    verifies); what matters is that nothing is fetched."""
    token = hs256(js({"alg": "HS256", "typ": "JWT", header: f"{key_server.url}/jwks.json"}), js(claims()))
    accepted_as(client, f"Bearer {token}")
    assert key_server.requests == []
    assert outbound.attempts == []


# --- kid injection ------------------------------------------------------------------------

KIDS = {
    "traversal_dev_null": "../../../../../../../../dev/null",
    "absolute_dev_null": "/dev/null",
    "traversal_passwd": "../../../../etc/passwd",
    "traversal_encoded": "..%2f..%2f..%2fdev%2fnull",
    "traversal_windows": "..\\..\\..\\windows\\win.ini",
    "proc_self_environ": "/proc/self/environ",
    "sql_tautology": "' OR '1'='1",
    "sql_union": "x' UNION SELECT 'attacker-chosen-secret' --",
    "sql_stacked": "1; DROP TABLE tasks; --",
    "shell_subst": "$(touch {marker})",
    "shell_backticks": "`touch {marker}`",
    "shell_pipe": "| touch {marker}",
    "shell_semicolon": "; touch {marker}",
    "nul_byte": "key\u0000",
    "crlf": "k1\r\nX-Injected: 1",
    "very_long": "k" * 10_000,
    "empty": "",
}
KID_SIGNING_KEYS = {"empty": b"", "nul": b"\x00", "word_secret": b"secret", "null_text": b"null",
                    "the_kid_itself": None, "attacker": b"attacker-chosen-secret"}


@pytest.mark.parametrize("kid_name", KIDS.keys())
def test_kid_injection_with_guessable_keys(client, tmp_path, kid_name):
    marker = tmp_path / "pwned"
    kid = KIDS[kid_name].format(marker=marker)
    header = js({"alg": "HS256", "typ": "JWT", "kid": kid})
    payload = js(claims())
    for key in KID_SIGNING_KEYS.values():
        rejected_token(client, hs256(header, payload, kid.encode() if key is None else key))
    assert not marker.exists()
    assert rows(client.application, "tasks") == 0


@pytest.mark.parametrize("kid_name", ["traversal_dev_null", "sql_union", "shell_subst", "very_long"])
def test_a_genuine_token_with_a_hostile_kid_string_is_accepted(client, tmp_path, kid_name):
    """Documented: in secret mode `kid` names nothing and is never used; a token signed with
    the real secret is valid whatever its kid says."""
    marker = tmp_path / "pwned"
    token = hs256(js({"alg": "HS256", "typ": "JWT", "kid": KIDS[kid_name].format(marker=marker)}), js(claims()))
    accepted_as(client, f"Bearer {token}")
    assert not marker.exists()


@pytest.mark.parametrize("kid", ["null", "1", "true", "[]", '["k1"]', '{"$ne":null}'])
def test_a_non_string_kid_is_refused_even_with_the_right_secret(client, kid):
    rejected_token(client, hs256(b'{"alg":"HS256","typ":"JWT","kid":%s}' % kid.encode(), js(claims())))


# --- header parameters the policy refuses; JWE shapes -------------------------------------

FORBIDDEN_SHAPES = {
    "crit_unknown_extension": {"crit": ["x-custom"], "x-custom": True},
    "crit_empty": {"crit": []},
    "crit_string": {"crit": "exp"},
    "crit_null": {"crit": None},
    "crit_registered_names": {"crit": ["alg", "typ"]},
    "b64_false_without_crit": {"b64": False},
    "b64_true": {"b64": True},
    "b64_false_crit_unknown": {"b64": False, "crit": ["b64", "x-other"]},
    "zip_gzip": {"zip": "GZIP"},
    "zip_null": {"zip": None},
    "zip_empty": {"zip": ""},
    "enc_null": {"enc": None},
    "enc_dir": {"enc": "A128CBC-HS256"},
}


@pytest.mark.parametrize("extra", FORBIDDEN_SHAPES.values(), ids=FORBIDDEN_SHAPES.keys())
def test_forbidden_header_parameters_even_with_the_right_secret(client, extra):
    rejected_token(client, hs256(js({"alg": "HS256", "typ": "JWT", **extra}), js(claims())))


def test_an_unencoded_payload_b64_false_token(client):
    """RFC 7797: the signature covers the raw payload; refused as a header parameter."""
    header = js({"alg": "HS256", "b64": False, "crit": ["b64"]})
    payload = js(claims()).decode()
    signing_input = f"{b64(header)}.{payload}"
    signature = b64(hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest())
    rejected_token(client, f"{signing_input}.{signature}")
    rejected_token(client, f"{b64(header)}..{signature}")  # the detached form


JWE_HEADERS = {
    "dir_a256gcm": {"alg": "dir", "enc": "A256GCM"},
    "rsa_oaep": {"alg": "RSA-OAEP-256", "enc": "A128CBC-HS256", "zip": "DEF"},
    "hs256_with_enc": {"alg": "HS256", "enc": "A256GCM"},
    "hs256_plain": {"alg": "HS256", "typ": "JWT"},
    "pbes2": {"alg": "PBES2-HS256+A128KW", "enc": "A128GCM", "p2c": 2_000_000_000, "p2s": "AAAA"},
}


@pytest.mark.parametrize("header", JWE_HEADERS.values(), ids=JWE_HEADERS.keys())
def test_jwe_shaped_five_segment_tokens(client, header):
    payload = js(claims())
    encrypted_key, iv, ciphertext, tag = b64(b"\x00" * 32), b64(b"\x01" * 12), b64(payload), b64(b"\x02" * 16)
    rejected_token(client, f"{b64(js(header))}.{encrypted_key}.{iv}.{ciphertext}.{tag}")
    rejected_token(client, f"{b64(js(header))}..{iv}.{ciphertext}.{tag}")  # "dir" has an empty key


@pytest.mark.parametrize("shape", ["1", "2", "4", "5", "6", "trailing_dot", "leading_dot", "empty_payload",
                                   "empty_header", "dots_only"])
def test_wrong_segment_counts(client, shape):
    header, payload, signature = split(valid_token())
    token = {
        "1": header,
        "2": f"{header}.{payload}",
        "4": f"{header}.{payload}.{signature}.{signature}",
        "5": f"{header}.{payload}.{signature}.{payload}.{signature}",
        "6": f"{header}.{payload}.{signature}.{header}.{payload}.{signature}",
        "trailing_dot": f"{header}.{payload}.{signature}.",
        "leading_dot": f".{header}.{payload}.{signature}",
        "empty_payload": f"{header}..{signature}",
        "empty_header": f".{payload}.{signature}",
        "dots_only": "..",
    }[shape]
    rejected_token(client, token)


# --- claim type confusion -----------------------------------------------------------------

LITERALS = {
    "true": "true", "false": "false", "null": "null", "empty_array": "[]", "array": "[1700000000]",
    "empty_object": "{}", "operator_object": '{"$gt":0}', "huge_float": "1e308", "negative_huge_float": "-1e308",
    "int_10_pow_400": "1" + "0" * 400, "float_overflowing_to_inf": "1e400", "nan": "NaN", "infinity": "Infinity",
    "negative_infinity": "-Infinity", "numeric_string": '"1700000000"', "empty_string": '""', "zero": "0",
    "negative": "-1", "int_past_year_9999": "253402300800",
}
TIME_INVALID = {"true", "false", "null", "empty_array", "array", "empty_object", "operator_object", "int_10_pow_400",
                "float_overflowing_to_inf", "nan", "infinity", "negative_infinity", "numeric_string", "empty_string",
                "negative", "negative_huge_float"}  # a date is from 1970 to year 9999
ID_INVALID = TIME_INVALID - {"null", "numeric_string"} | {"huge_float", "negative_huge_float", "zero", "negative",
                                                        "int_past_year_9999"}
COVERED = {("exp", "true"), ("exp", "null"), ("iat", "true"), ("iat", "null"), ("nbf", "true"), ("nbf", "null"),
           ("sub", "true"), ("sub", "null"), ("sub", "empty_string")}


def expected_outcome(claim: str, literal: str) -> str:
    """'accept', or the 401 code. Documented choices:
    - an `exp` past year 9999 is left to test_an_exp_beyond_year_9999_is_never_a_500;
    - `nbf` in the distant past is harmless; `sid: null` means "no sid" (PyJWT refuses `jti: null`);
    - a numeric *string* is a valid `sub`/`jti`/`sid` (a string);
    - `iss`/`aud` are ignored while JWT_ISSUER/JWT_AUDIENCE are empty (TestIssuerAudienceTypes
      covers them configured)."""
    if claim in ("iss", "aud"):
        return "accept"
    if claim == "sub":
        return "accept" if literal == "numeric_string" else "invalid_token"
    if claim == "jti" and literal == "null":
        return "invalid_token"  # PyJWT 2.10+ requires a present jti to be a string
    if claim in ("jti", "sid"):
        return "invalid_token" if literal in ID_INVALID else "accept"
    if literal in TIME_INVALID:
        return "invalid_token"
    if claim == "exp":
        return "token_expired"
    if claim == "iat":
        return "invalid_token" if literal in ("huge_float", "int_past_year_9999") else "token_expired"
    return "invalid_token" if literal in ("huge_float", "int_past_year_9999") else "accept"  # nbf


def payload_with(**fragments: str | None) -> bytes:
    t = now()
    parts: dict[str, str | None] = {"sub": '"alice"', "iat": str(t), "exp": str(t + 900), "jti": '"jti-matrix"'}
    parts.update(fragments)
    return ("{" + ",".join(f'"{name}":{value}' for name, value in parts.items() if value is not None) + "}").encode()


def _claim_cases() -> Iterator:
    for claim in ("iss", "sub", "aud", "exp", "nbf", "iat", "jti", "sid"):
        for name in LITERALS:
            if (claim, name) in COVERED:
                continue
            if claim == "exp" and name in ("huge_float", "int_past_year_9999"):
                continue  # test_an_exp_beyond_year_9999_is_never_a_500 (a known bug)
            yield pytest.param(claim, name, id=f"{claim}-{name}")


@pytest.mark.parametrize("claim,literal", list(_claim_cases()))
def test_claim_type_confusion(client, claim, literal):
    token = hs256(HS256_HEADER, payload_with(**{claim: LITERALS[literal]}))
    outcome = expected_outcome(claim, literal)
    if outcome == "accept":
        accepted_as(client, f"Bearer {token}", "1700000000" if claim == "sub" else "alice")
    else:
        rejected_token(client, token, outcome)


@pytest.mark.parametrize("literal", ["1e308", "253402300800", "1e20", "100000000000000000000"])
def test_an_exp_beyond_year_9999_is_never_a_500(client, literal):
    """A far `exp` is harmless (the 7-day max age caps every token), but /me formats it as a
    date-time. Either fix passes: refuse such a token (401 invalid_token) or answer 200."""
    token = hs256(HS256_HEADER, payload_with(exp=literal))
    for url in ("/api/v1/tasks", "/api/v1/auth/me"):
        response = timed(client, "GET", url, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code in (200, 401), (url, response.status_code)
        if response.status_code == 401:
            assert_problem(response, 401, "invalid_token")


class TestIssuerAudienceTypes:
    ISSUER = "https://auth.example.com"

    @pytest.fixture
    def settings_overrides(self):
        return {"JWT_ISSUER": self.ISSUER, "JWT_AUDIENCE": self.ISSUER}

    @pytest.mark.parametrize("claim", ["iss", "aud"])
    @pytest.mark.parametrize("literal", [*LITERALS.values(), '"https://auth.example"', '"HTTPS://AUTH.EXAMPLE.COM"',
                                         '"https://auth.example.com/"', '["https://auth.example.com"]',
                                         '{"https://auth.example.com":1}', '[["https://auth.example.com"]]'])
    def test_configured_iss_and_aud_refuse_every_other_type_and_value(self, client, claim, literal):
        other = {"iss": "aud", "aud": "iss"}[claim]
        payload = payload_with(**{claim: literal, other: json.dumps(self.ISSUER)})
        if claim == "aud" and literal == '["https://auth.example.com"]':
            accepted_as(client, f"Bearer {hs256(HS256_HEADER, payload)}")  # RFC 7519: aud may be an array
        else:
            rejected_token(client, hs256(HS256_HEADER, payload))


# --- duplicate keys -----------------------------------------------------------------------


@pytest.mark.writes
def test_duplicate_sub_acts_as_the_last_one_consistently(client, as_user):
    """Decision (RFC 7519 §4 allows it): the lexically last duplicate wins, and every reader
    of the token (the claim checks, the signature check, the principal, the revocation
    digest) parses the same bytes the same way. The task lands with that user only."""
    t = now()
    token = hs256(HS256_HEADER, b'{"sub":"alice","iat":%d,"exp":%d,"jti":"dup-1","sub":"bob"}' % (t, t + 900))
    me = timed(client, "GET", "/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200 and me.get_json()["user_id"] == "bob"
    created = timed(client, "POST", "/api/v1/tasks", json=PLANT, headers={"Authorization": f"Bearer {token}"})
    assert created.status_code == 201 and created.get_json()["user_id"] == "bob"
    assert timed(client, "GET", "/api/alice/tasks", headers={"Authorization": f"Bearer {token}"}).status_code == 403
    assert client.get("/api/v1/tasks", headers=as_user("alice")).get_json() == []
    assert [t["id"] for t in client.get("/api/v1/tasks", headers=as_user("bob")).get_json()] == [
        created.get_json()["id"]]
    # Logging that token out revokes it by its (last) jti.
    assert client.post("/api/v1/auth/logout", headers={"Authorization": f"Bearer {token}"}).status_code == 204
    rejected_token(client, token, "token_revoked")


@pytest.mark.parametrize("payload,outcome", [
    (b'{"sub":"alice","iat":%(t)d,"exp":"9999999999","exp":%(e)d}', "accept"),
    (b'{"sub":"alice","iat":%(t)d,"exp":%(e)d,"exp":"9999999999"}', "invalid_token"),
    (b'{"sub":"alice","iat":%(t)d,"exp":%(e)d,"exp":%(old)d}', "token_expired"),
    (b'{"sub":"alice","iat":%(t)d,"exp":%(e)d,"iat":%(old)d}', "token_expired"),
    (b'{"sub":"alice","iat":%(t)d,"exp":%(e)d,"sub":null}', "invalid_token"),
    (b'{"sub":"alice","iat":%(t)d,"exp":%(e)d,"sub":["alice"]}', "invalid_token"),
], ids=["string_then_number", "number_then_string", "valid_then_past_exp", "valid_then_old_iat",
        "sub_then_null", "sub_then_array"])
def test_duplicate_claims_are_judged_by_the_last_value(client, payload, outcome):
    t = now()
    token = hs256(HS256_HEADER, payload % {b"t": t, b"e": t + 900, b"old": t - 30 * 86400})
    if outcome == "accept":
        accepted_as(client, f"Bearer {token}")
    else:
        rejected_token(client, token, outcome)


@pytest.mark.parametrize("role,is_admin", [(b'"role":"admin","role":"user"', False),
                                           (b'"role":"user","role":"admin"', True)])
def test_duplicate_role_is_judged_by_the_last_value(client, role, is_admin):
    t = now()
    token = hs256(HS256_HEADER, b'{"sub":"alice","iat":%d,"exp":%d,%s}' % (t, t + 900, role))
    assert accepted_as(client, f"Bearer {token}")["is_admin"] is is_admin


def test_duplicate_alg_is_judged_by_the_last_value(client):
    payload = js(claims())
    rejected_token(client, hs256(b'{"alg":"HS256","alg":"none"}', payload))
    rejected_token(client, hs256(b'{"alg":"HS256","alg":"RS256"}', payload))
    accepted_as(client, "Bearer " + hs256(b'{"alg":"none","alg":"HS256"}', payload))


# --- bytes that are not UTF-8 JSON; nesting; size -----------------------------------------


@pytest.mark.parametrize("header", [b'{"alg":"HS256","typ":"\xff\xfe"}', b'{"alg":"HS\xc0\xb256"}',
                                    b"\xff" + HS256_HEADER, b'{"alg":"HS256"', b"", b"null", b'"HS256"',
                                    b'["HS256"]', b"{'alg':'HS256'}"])
def test_a_header_that_is_not_a_utf8_json_object(client, header):
    rejected_token(client, hs256(header, js(claims())))


@pytest.mark.parametrize("payload", [
    b'{"sub":"al\xe9","iat":%(t)d,"exp":%(e)d}',  # latin-1
    b'{"sub":"al\xc0\xafx","iat":%(t)d,"exp":%(e)d}',  # overlong "/"
    b'{"sub":"\xf4\x90\x80\x80","iat":%(t)d,"exp":%(e)d}',  # above U+10FFFF
    b'{"sub":"alice","iat":%(t)d,"exp":%(e)d',  # truncated
    b'["alice",%(t)d,%(e)d]', b'"alice"', b"null", b"%(t)d",
    b'{"sub":"alice","iat":%(t)d,"exp":%(e)d}garbage',
], ids=["latin1", "overlong", "above_max_code_point", "truncated", "array", "string", "null", "number",
        "trailing_garbage"])
def test_a_payload_that_is_not_a_utf8_json_object(client, payload):
    t = now()
    rejected_token(client, hs256(HS256_HEADER, payload % {b"t": t, b"e": t + 900}))




@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32", "utf-8-sig"])
def test_claims_in_another_unicode_encoding_are_refused(client, encoding):
    refused_read_only(client, hs256(HS256_HEADER, json.dumps(claims()).encode(encoding)))


def test_a_header_in_utf16_is_refused(client):
    refused_read_only(client, hs256(HS256_HEADER.decode().encode("utf-16"), js(claims())))




@pytest.mark.parametrize("claim", ["name", "email", "role"])
@pytest.mark.parametrize("raw", [b'"Ann \\ud83d"', b'"\\udc00"', b'"\xed\xa0\x80"'], ids=["escaped_high", "escaped_low",
                                                                                         "cesu8_bytes"])
def test_a_lone_surrogate_in_a_string_claim_is_never_a_500(client, claim, raw):
    t = now()
    token = hs256(HS256_HEADER, b'{"sub":"alice","iat":%d,"exp":%d,"jti":"j-s","%s":%s}' % (t, t + 900,
                                                                                         claim.encode(), raw))
    response = timed(client, "GET", "/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
    # Either fix is fine: refuse the token, or answer with the claim replaced/omitted.
    assert response.status_code in (200, 401), response.status_code
    if response.status_code == 401:
        assert_problem(response, 401, "invalid_token")


ODD_CLAIMS = {"lone_surrogate_name": b'"name":"Ann \\ud83d"', "integer_past_64_bits": b'"n":1' + b"0" * 30,
              "nested_300_deep": b'"x":' + b"[" * 300 + b"]" * 300}


@pytest.mark.writes
@pytest.mark.parametrize("how", ["logout", "admin_revokes_the_token"])
@pytest.mark.parametrize("odd", ODD_CLAIMS.keys())
def test_every_token_the_api_accepts_can_be_revoked(client, as_user, how, odd):
    t = now()
    token = hs256(HS256_HEADER, b'{"sub":"alice","iat":%d,"exp":%d,"jti":"j-odd",%s}' % (t, t + 900, ODD_CLAIMS[odd]))
    assert timed(client, "GET", "/api/v1/tasks", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    if how == "logout":
        response = timed(client, "POST", "/api/v1/auth/logout", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 204, response.get_data()[:200]
    else:
        response = timed(client, "POST", "/api/v1/admin/tokens/revoke", json={"token": token},
                         headers=as_user("root", role="admin"))
        assert response.status_code == 200, response.get_data()[:200]
    refused_read_only(client, token, "token_revoked")


@pytest.mark.parametrize("where", ["header_arrays", "header_objects", "payload_objects", "both"])
def test_deeply_nested_json_in_header_and_payload(client, where):
    depth = 100_000
    arrays = b"[" * depth + b"]" * depth
    objects = b'{"a":' * depth + b"1" + b"}" * depth
    header = {"header_arrays": b'{"alg":"HS256","x":%s}' % arrays,
              "header_objects": b'{"alg":"HS256","x":%s}' % objects,
              "both": b'{"alg":"HS256","x":%s}' % arrays}.get(where, HS256_HEADER)
    payload = js(claims())
    if where in ("payload_objects", "both"):
        payload = payload[:-1] + b',"x":%s}' % objects
    rejected_token(client, hs256(header, payload))


@pytest.mark.parametrize("size", [50 * 1024, 1024 * 1024], ids=["50KiB", "1MiB"])
def test_an_oversize_authorization_header(client, size):
    """Through the app (test client) an oversize token is an ordinary invalid token. Under
    gunicorn, a header line over `limit_request_field_size` (8190 bytes by default) is
    refused with 400 before the app runs."""
    header = b64(HS256_HEADER)
    filler = b64(b'{"sub":"alice","x":"' + b"A" * size + b'"}')
    rejected(client, f"Bearer {header}.{filler[:size]}.{b64(b'x' * 32)}")
    rejected(client, "Bearer " + "A" * size)


# --- the Authorization header's shape, and places a token must never be read from ---------


@pytest.mark.parametrize("shape", ["Bearer  {t}", "Bearer\t{t}", "Bearer {t},", ", Bearer {t}", "Bearer {t}, Basic abc",
                                   "  Bearer {t}  ", "bearer {t}", "BEARER {t}", "bEaReR {t}"])
def test_harmless_header_shapes_that_carry_one_genuine_token(client, shape):
    """Documented: the scheme is case-insensitive (RFC 9110 §11.1), and extra whitespace and
    other comma-separated credentials around one Bearer credential are tolerated; the token
    is still verified."""
    accepted_as(client, shape.format(t=valid_token()))


@pytest.mark.parametrize("shape,code", [
    ("bearer {t}, BEARER {bob}", "missing_token"),  # two credentials, whatever their case
    ("Token {t}", "missing_token"),
    ("JWT {t}", "missing_token"),
    ("{t}", "missing_token"),
    ("Bearer {t}, Bearer {t}", "missing_token"),  # two credentials: never pick one
    ("Bearer {t}, Bearer {bob}", "missing_token"),
    ("Bearer {bob}, Bearer {t}", "missing_token"),
    ("Bearer {t} {t}", "invalid_token"),
    ("Bearer {t} extra", "invalid_token"),
    ("Bearer {t};", "invalid_token"),
    ("Bearer,{t}", "invalid_token"),
    ('Bearer "{t}"', "invalid_token"),
    ("Bearer <{t}>", "invalid_token"),
    ("Bearer {spaced}", "invalid_token"),
    ("Bearer", "invalid_token"),
    ("Bearer {t}\x00", "invalid_token"),
])
def test_header_shapes_that_are_refused(client, shape, code):
    token, bob = valid_token("alice"), valid_token("bob")
    head, payload, signature = split(token)
    rejected(client, shape.format(t=token, bob=bob, spaced=f"{head}. {payload}.{signature}"), code)


@pytest.mark.parametrize("values", [("alice", "bob"), ("alice", "alice"), ("garbage", "alice")])
def test_multiple_authorization_headers_are_never_resolved_to_one(client, values):
    tokens = {"alice": valid_token("alice"), "bob": valid_token("bob"), "garbage": "x.y.z"}
    headers = [("Authorization", f"Bearer {tokens[v]}") for v in values]
    for method, url, extra in (("POST", "/api/v1/tasks", {"json": PLANT}), ("GET", "/api/v1/auth/me", {})):
        assert_problem(timed(client, method, url, headers=headers, **extra), 401, "missing_token")


@pytest.mark.parametrize("carrier", ["query_token", "query_authorization", "query_bearer", "form_access_token",
                                     "cookie_token", "cookie_jwt", "cookie_authorization", "cookie_better_auth",
                                     "x_access_token", "x_auth_token", "proxy_authorization",
                                     "x_forwarded_authorization", "x_original_authorization"])
def test_a_token_anywhere_but_the_authorization_header_is_ignored(client, carrier):
    token = valid_token()
    query, headers, data, cookie = "", {}, None, None
    if carrier.startswith("query_"):
        query = {"query_token": f"?token={token}", "query_authorization": f"?authorization=Bearer%20{token}",
                 "query_bearer": f"?bearer={token}&id_token={token}"}[carrier]
    elif carrier == "form_access_token":
        data = f"access_token={token}"  # RFC 6750 §2.2
    elif carrier.startswith("cookie_"):
        cookie = {"cookie_token": "token", "cookie_jwt": "jwt", "cookie_authorization": "Authorization",
                  "cookie_better_auth": "better-auth.session_token"}[carrier]
    else:
        name = {"x_access_token": "X-Access-Token", "x_auth_token": "X-Auth-Token",
                "proxy_authorization": "Proxy-Authorization", "x_forwarded_authorization": "X-Forwarded-Authorization",
                "x_original_authorization": "X-Original-Authorization"}[carrier]
        headers[name] = token if name.startswith("X-") else f"Bearer {token}"
    if cookie:
        client.set_cookie(cookie, token)
    post = {"data": data, "content_type": "application/x-www-form-urlencoded"} if data else {"json": PLANT}
    for method, url in (("POST", "/api/v1/tasks"), ("GET", "/api/v1/auth/me"), ("GET", "/api/v1/tasks")):
        kwargs = post if method == "POST" else {}
        assert_problem(timed(client, method, url + query, headers=headers, **kwargs), 401, "missing_token")


# --- forged tokens handed to the admin token revocation ------------------------------------


@pytest.mark.parametrize("forgery", ["alg_none", "wrong_key", "public_key_hmac", "flipped_payload", "jwe"])
def test_an_admin_cannot_be_made_to_record_a_forged_token(client, as_user, keys, forgery):
    token = valid_token("victim")
    header, payload, signature = split(token)
    forged = {
        "alg_none": b64(b'{"alg":"none"}') + f".{payload}.",
        "wrong_key": hs256(HS256_HEADER, js(claims("victim")), b"another-secret-another-secret-xx"),
        "public_key_hmac": hs256(HS256_HEADER, js(claims("victim")), _public_encodings(keys)["rsa_pem_spki"]),
        "flipped_payload": f"{header}.{flip_char(payload, 5)}.{signature}",
        "jwe": f"{b64(js(JWE_HEADERS['dir_a256gcm']))}..{b64(b'iv')}.{payload}.{b64(b'tag')}",
    }[forgery]
    response = timed(client, "POST", "/api/v1/admin/tokens/revoke", json={"token": forged},
                     headers=as_user("root", role="admin"))
    body = assert_problem(response, 422, "validation_error")
    assert body["errors"][0]["field"] == "token"
