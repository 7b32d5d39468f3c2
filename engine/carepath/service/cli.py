"""`carepath serve` and `carepath call`: registered into carepath.cli's command table."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from carepath.cli import command, dumps, grace_seconds, load_site_arg, read_case, seconds, site_arg, worker_count


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def _serve_setup(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=50051, help="port (default 50051; 0 picks a free one)")
    p.add_argument("--pathways", metavar="DIR", help="pathway directory (default: the bundled pathways/)")
    p.add_argument(
        "--workers",
        type=worker_count,
        default=os.cpu_count() or 1,
        help="worker processes, each with its own engine (default: one per core)",
    )
    p.add_argument("--watch", action="store_true", help="reload when a pathway file changes (SIGHUP always reloads)")
    site_arg(p)
    p.add_argument("--grace", type=grace_seconds, default=30.0, help="seconds to drain in-flight requests on SIGTERM (default 30)")
    p.add_argument(
        "--max-calls-per-peer",
        type=_positive,
        default=64,
        metavar="N",
        help="DecisionService calls (a stream counts once) in flight per caller address; more get RESOURCE_EXHAUSTED (default 64)",
    )
    tls = p.add_argument_group("transport (see the README's Deploying section)")
    tls.add_argument("--tls-cert", metavar="FILE", help="PEM certificate chain: serve TLS (re-read when the file changes)")
    tls.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")
    tls.add_argument("--tls-client-ca", metavar="FILE", help="PEM CA bundle: mutual TLS, a client certificate it signed is required")
    tls.add_argument("--insecure", action="store_true", help="allow plaintext on a non-loopback address (e.g. behind a TLS proxy)")
    tls.add_argument("--no-reflection", action="store_true", help="turn gRPC server reflection off")
    auth = p.add_argument_group("token authentication (JWT bearer tokens, RS256/ES256; see the README's Deploying section)")
    auth.add_argument("--jwks", metavar="FILE", help="JWKS file of the keys that sign the tokens (re-read when it changes)")
    auth.add_argument(
        "--jwt-issuer", action="append", default=[], metavar="ISS", help="an issuer (iss) whose tokens are accepted (repeatable)"
    )
    auth.add_argument("--jwt-audience", metavar="AUD", help="the exact aud a token must carry")


@command("serve", _serve_setup)
def _serve(args: argparse.Namespace) -> int:
    """Serve decisions over gRPC (carepath.v1): health, reflection, SIGHUP reload, SIGTERM drain."""
    from carepath.service.tls import TlsFiles

    if bool(args.tls_cert) != bool(args.tls_key):
        print("carepath: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    if args.tls_client_ca and not args.tls_cert:
        print("carepath: --tls-client-ca needs --tls-cert and --tls-key (mutual TLS is TLS first)", file=sys.stderr)
        return 2
    tls = (
        TlsFiles(Path(args.tls_cert), Path(args.tls_key), Path(args.tls_client_ca) if args.tls_client_ca else None)
        if args.tls_cert
        else None
    )

    verifier = None
    if args.jwks or args.jwt_issuer or args.jwt_audience:
        from carepath.service.auth import ConfigError, Verifier

        if not args.jwks:
            print("carepath: --jwt-issuer and --jwt-audience need --jwks (the keys that sign the tokens)", file=sys.stderr)
            return 2
        try:
            verifier = Verifier(Path(args.jwks), args.jwt_issuer, args.jwt_audience or "")
        except ConfigError as exc:
            print(f"carepath: {exc}", file=sys.stderr)
            return 2

    from carepath.service.server import serve

    def announce(line: str) -> None:
        print(line, flush=True)

    return serve(
        host=args.host,
        port=args.port,
        pathways=args.pathways,
        workers=args.workers,
        watch=args.watch,
        grace=args.grace,
        announce=announce,
        max_per_peer=args.max_calls_per_peer,
        site=load_site_arg(args.site),
        tls=tls,
        insecure=args.insecure,
        reflection=not args.no_reflection,
        auth=verifier,
    )


def _call_setup(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default="127.0.0.1:50051", help="HOST:PORT of a carepath server (default 127.0.0.1:50051)")
    p.add_argument("--pathway", action="append", dest="pathway_ids", metavar="ID", help="only these pathways (repeatable)")
    p.add_argument("--timeout", type=seconds, default=10.0, help="deadline in seconds (default 10)")
    p.add_argument("--tls-ca", metavar="FILE", help="PEM root CA to verify the server with: call over TLS")
    p.add_argument("--tls-cert", metavar="FILE", help="PEM client certificate (mutual TLS; with --tls-key)")
    p.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")
    p.add_argument("--token-file", metavar="FILE", help="a file holding the bearer token (JWT) to send")
    p.add_argument("case", metavar="CASE_FILE", help="case JSON or YAML file, or - for stdin")


@command("call", _call_setup)
def _call(args: argparse.Namespace) -> int:
    """Evaluate a case on a carepath server; prints the same JSON as `carepath evaluate`."""
    from carepath.client import CarepathClient

    if bool(args.tls_cert) != bool(args.tls_key):
        print("carepath: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    if args.tls_cert and not args.tls_ca:
        print("carepath: --tls-cert needs --tls-ca (a client certificate is sent over TLS only)", file=sys.stderr)
        return 2
    token = None
    if args.token_file:
        try:
            with open(args.token_file, encoding="ascii") as f:
                token = f.read(16 * 1024).strip()
        except (OSError, UnicodeDecodeError) as exc:
            print(f"carepath: --token-file {args.token_file}: cannot read it: {exc}", file=sys.stderr)
            return 2
        if not token:
            print(f"carepath: --token-file {args.token_file} is empty", file=sys.stderr)
            return 2
    case = read_case(args.case)
    tls = {"tls_ca": args.tls_ca, "tls_cert": args.tls_cert, "tls_key": args.tls_key}
    with CarepathClient(args.target, timeout=args.timeout, token=token, **tls) as client:
        decision = client.evaluate(case, pathway_ids=args.pathway_ids)
    sys.stdout.write(dumps(decision))
    return 0
