"""Example certificates, keys, a JWKS and tokens: for trying TLS and token authentication
(scripts/dev-certs) and for the tests. Never for production: a hospital's CA and identity
provider issue the real ones.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
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
