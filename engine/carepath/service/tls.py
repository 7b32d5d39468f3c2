"""TLS for `carepath serve`: server credentials that rotate without a restart, and the rule that a
plaintext listener is only for loopback.

The certificate, key and (for mutual TLS) client CA are files. grpc core asks ``_Rotating.fetch``
for the configuration at each new TLS handshake; it compares the files' (mtime, size) with the last
read and re-reads them only when they changed, so new connections get a renewed certificate and the
open ones carry on with the one they negotiated. A half-written or mismatched pair (a key that is not
the certificate's) is logged and the last good configuration keeps serving.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

log = logging.getLogger("carepath.service")

MAX_PEM = 1024 * 1024  # a certificate chain, key or CA bundle larger than this is not one


class TlsError(Exception):
    """A certificate, key or CA file that cannot be used; the message names the file and why."""


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    client_ca: Path | None = None  # mutual TLS: a client certificate signed by this CA is required


def _read(path: Path, what: str) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_PEM + 1)
    except OSError as exc:
        raise TlsError(f"{what} {path}: cannot read it: {exc.strerror or exc}") from None
    if len(data) > MAX_PEM:
        raise TlsError(f"{what} {path}: larger than {MAX_PEM} bytes: not a PEM file")
    if b"-----BEGIN " not in data:
        raise TlsError(f"{what} {path}: not PEM (no '-----BEGIN' line)")
    return data


def load_pem(files: TlsFiles) -> tuple[bytes, bytes, bytes | None]:
    """(certificate chain, private key, client CA) read and checked: the certificates parse, the
    key parses and is the first certificate's, and the CA bundle holds at least one certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    chain = _read(files.cert, "--tls-cert")
    key = _read(files.key, "--tls-key")
    ca = _read(files.client_ca, "--tls-client-ca") if files.client_ca else None
    try:
        certs = x509.load_pem_x509_certificates(chain)
    except ValueError as exc:
        raise TlsError(f"--tls-cert {files.cert}: not a PEM certificate ({exc})") from None
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError) as exc:
        raise TlsError(f"--tls-key {files.key}: not an unencrypted PEM private key ({exc})") from None
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if private.public_key().public_bytes(der, pub) != certs[0].public_key().public_bytes(der, pub):
        raise TlsError(f"--tls-key {files.key} is not the key of the certificate in --tls-cert {files.cert}")
    if ca is not None:
        try:
            x509.load_pem_x509_certificates(ca)
        except ValueError as exc:
            raise TlsError(f"--tls-client-ca {files.client_ca}: not a PEM certificate bundle ({exc})") from None
    return chain, key, ca


def _stamp(files: TlsFiles) -> tuple[tuple[int, int], ...]:
    out = []
    for p in (files.cert, files.key, files.client_ca):
        if p is None:
            continue
        try:
            st = p.stat()
        except OSError:
            out.append((-1, -1))
        else:
            out.append((st.st_mtime_ns, st.st_size))
    return tuple(out)


class _Rotating:
    """The certificate configuration fetcher: a new configuration when the files changed, else None."""

    def __init__(self, files: TlsFiles, first: tuple[bytes, bytes, bytes | None]) -> None:
        self.files = files
        self.stamp = _stamp(files)
        self.current = first
        self.lock = threading.Lock()  # grpc core may call from more than one thread

    @staticmethod
    def config(pem: tuple[bytes, bytes, bytes | None]) -> grpc.ServerCertificateConfiguration:
        chain, key, ca = pem
        return grpc.ssl_server_certificate_configuration([(key, chain)], root_certificates=ca)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        with self.lock:
            stamp = _stamp(self.files)
            if stamp == self.stamp:
                return None
            self.stamp = stamp  # a bad set is reported once, not at every handshake
            try:
                pem = load_pem(self.files)
            except TlsError as exc:
                log.error(json.dumps({"event": "tls_reload_refused", "error": str(exc)}))
                return None
            if pem == self.current:
                return None
            self.current = pem
            log.warning(json.dumps({"event": "tls_reloaded", "cert": self.files.cert.name}))
            return self.config(pem)


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """TLS credentials (mutual TLS with a client CA: a client certificate it signed is required),
    re-read from the files when they change (at the next handshake). Raises TlsError."""
    first = load_pem(files)
    rotating = _Rotating(files, first)
    fetch: Any = rotating.fetch  # returns None for "no change" (grpc's documented contract; the stubs say otherwise)
    return grpc.dynamic_ssl_server_credentials(rotating.config(first), fetch, require_client_authentication=files.client_ca is not None)


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback address (127.0.0.0/8, ::1, localhost)."""
    name = host.strip("[]")
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        pass
    if name == "localhost":
        return True
    try:
        infos = socket.getaddrinfo(name, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(i[4][0]).split("%")[0]).is_loopback for i in infos)


def plaintext_refusal(host: str) -> str:
    """Why a plaintext listener on ``host`` is refused ("" when it is loopback)."""
    if is_loopback(host):
        return ""
    return (
        f"refusing to listen on {host} without TLS: callers on the network would send patient data and tokens in the clear. "
        "Give --tls-cert and --tls-key (and --tls-client-ca for mutual TLS), or --insecure if something else encrypts the traffic "
        "(e.g. a TLS-terminating proxy on the same host)"
    )
