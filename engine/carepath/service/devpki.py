"""Example certificates, keys, a JWKS and tokens: for trying TLS and token authentication
(scripts/dev-certs) and for the tests. Never for production: a hospital's CA and identity
provider issue the real ones.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Issued:
    cert: x509.Certificate
    key: PrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return key_pem(self.key)


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "carepath example"), x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn: str = "carepath example CA", days: int = 30) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


def issue(ca: Issued, cn: str, hosts: tuple[str, ...] = (), client: bool = False, days: int = 30) -> Issued:
    """A leaf certificate signed by ``ca``: a server's (its DNS names and IP addresses in ``hosts``)
    or, with ``client``, a client's (its identity in the subject's common name)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    )
    if hosts:
        sans: list[x509.GeneralName] = []
        for h in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                sans.append(x509.DNSName(h))
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return Issued(b.sign(ca.key, hashes.SHA256()), key)


# ------------------------------------------------------------------------------------------ tokens
def signing_key(alg: str = "RS256") -> PrivateKey:
    return rsa.generate_private_key(65537, 2048) if alg == "RS256" else ec.generate_private_key(ec.SECP256R1())


def jwk(key: PrivateKey, kid: str, alg: str) -> dict[str, Any]:
    """The public JWK of ``key`` (RSA for RS256, P-256 for ES256)."""
    from jwt.algorithms import ECAlgorithm, RSAAlgorithm

    pub = key.public_key()
    text = RSAAlgorithm.to_jwk(pub) if isinstance(pub, rsa.RSAPublicKey) else ECAlgorithm.to_jwk(pub)
    out: dict[str, Any] = json.loads(text)
    out.update(kid=kid, alg=alg, use="sig")
    return out


def jwks(*keys: dict[str, Any]) -> str:
    return json.dumps({"keys": list(keys)}, indent=2) + "\n"


def token(
    key: PrivateKey | bytes,
    kid: str,
    *,
    alg: str = "RS256",
    issuer: str = "https://idp.example.org",
    audience: str = "carepath",
    subject: str = "ehr-gateway",
    scope: str = "carepath.evaluate carepath.read",
    lifetime: int = 300,
    now: float | None = None,
    jti: str | None = "",
    **claims: Any,
) -> str:
    """A signed JWT with the claims carepath requires, a new jti unless given (None drops a claim)."""
    import jwt

    t = int(time.time() if now is None else now)
    body: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "sub": subject,
        "scope": scope,
        "iat": t,
        "exp": t + lifetime,
        "jti": uuid.uuid4().hex if jti == "" else jti,
        **claims,
    }
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid})


def write(path: Path, data: bytes | str, private: bool = False) -> None:
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    if private:
        path.chmod(0o600)


# ------------------------------------------------------------------------------------ scripts/dev-certs
ISSUER = "https://idp.example.org"
AUDIENCE = "carepath"
ALL_SCOPES = "carepath.evaluate carepath.read carepath.validate carepath.feedback"


def write_example(directory: Path, hosts: tuple[str, ...] = ("localhost", "127.0.0.1")) -> list[str]:
    """The example set in ``directory``: the files' names, for the listing."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = make_ca()
    server = issue(ca, "carepath server", hosts)
    client_ca = make_ca("carepath example client CA")
    client = issue(client_ca, "ehr-gateway", client=True)
    idp = signing_key("ES256")
    files: list[tuple[str, bytes | str, bool]] = [
        ("ca.pem", ca.cert_pem, False),
        ("server.pem", server.cert_pem, False),
        ("server.key", server.key_pem, True),
        ("client-ca.pem", client_ca.cert_pem, False),
        ("client.pem", client.cert_pem, False),
        ("client.key", client.key_pem, True),
        ("jwks.json", jwks(jwk(idp, "example-1", "ES256")), False),
        ("idp.key", key_pem(idp), True),
        ("audit.key", os.urandom(32).hex() + "\n", True),
    ]
    for name, data, private in files:
        write(directory / name, data, private)
    return [name for name, _, _ in files]


def example_token(directory: Path, scope: str = ALL_SCOPES, lifetime: int = 300, subject: str = "ehr-gateway") -> str:
    """A fresh token from the example identity provider's key (idp.key); each is good for one call."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key((directory / "idp.key").read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return token(key, "example-1", alg="ES256", issuer=ISSUER, audience=AUDIENCE, subject=subject, scope=scope, lifetime=lifetime)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    ap = argparse.ArgumentParser(
        prog="scripts/dev-certs",
        description="Example CA, server and client certificates, a JWKS with its signing key and an audit key, for trying "
        "TLS, tokens and the audit trail (README: Deploying). Not for production.",
    )
    ap.add_argument("dir", nargs="?", default="dev-certs", help="where to write them (default dev-certs)")
    ap.add_argument("--token", action="store_true", help="print a fresh token signed with DIR/idp.key instead (good for one call)")
    ap.add_argument("--scope", default=ALL_SCOPES, help=f"the token's scopes (default {ALL_SCOPES!r})")
    ap.add_argument("--lifetime", type=int, default=300, help="seconds the token is valid (default 300)")
    ap.add_argument("--host", action="append", default=[], help="a name or address for the server certificate (repeatable)")
    args = ap.parse_args(argv)
    d = Path(args.dir)
    if args.token:
        if not (d / "idp.key").is_file():
            print(f"dev-certs: no {d / 'idp.key'}: run scripts/dev-certs {d} first", file=sys.stderr)
            return 2
        print(example_token(d, args.scope, args.lifetime))
        return 0
    names = write_example(d, ("localhost", "127.0.0.1", *args.host))
    print(f"dev-certs: wrote {', '.join(names)} in {d} (issuer {ISSUER}, audience {AUDIENCE})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
