"""`carepath serve` and `carepath call`: registered into carepath.cli's command table."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from carepath.cli import command, dumps, grace_seconds, iso_date, load_site_arg, read_case, seconds, site_arg, worker_count
from carepath.errors import CarepathError


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
    cds = p.add_argument_group("CDS Hooks 2.0 (HTTP, beside gRPC, on the same workers)")
    cds.add_argument("--cds-hooks", action="store_true", help="also serve CDS Hooks 2.0 over HTTP on --host (docs/cds-hooks.md)")
    cds.add_argument("--http-port", type=int, default=8080, help="the CDS Hooks HTTP port (default 8080; 0 picks a free one)")
    cds.add_argument(
        "--cds-setting",
        choices=("community", "hospital"),
        help="the setting of every CDS Hooks decision (default: CAREPATH_SETTING, else community)",
    )
    cds.add_argument(
        "--cds-as-of",
        type=iso_date,
        metavar="DATE",
        help="a fixed as_of for every CDS Hooks decision (replays; default: the request's, else today)",
    )
    cds.add_argument(
        "--cds-feedback-dir",
        metavar="DIR",
        default=".carepath/cds-feedback",
        help="where card feedback and the issued card ids are kept (SQLite; default .carepath/cds-feedback)",
    )
    cds.add_argument(
        "--cds-fetch-timeout", type=seconds, default=5.0, help="seconds to fetch what a prefetch lacks from fhirServer (default 5)"
    )
    cds.add_argument(
        "--cds-jwt-issuer",
        action="append",
        default=[],
        metavar="ISS=JWKS",
        help="trust CDS Hooks calls whose JWT this EHR (iss) signed with a key of JWKS (a file, or its https URL); repeatable",
    )
    cds.add_argument(
        "--cds-base-url",
        metavar="URL",
        help="the CDS Hooks base URL the EHRs call (a token's aud is it + the endpoint's path; default http://HOST:HTTP_PORT)",
    )
    cds.add_argument(
        "--cds-no-auth",
        action="store_true",
        help="serve CDS Hooks on a non-loopback --host without EHR tokens (e.g. a gateway that checks them does)",
    )
    tls = p.add_argument_group("transport (see the README's Deploying section)")
    tls.add_argument("--tls-cert", metavar="FILE", help="PEM certificate chain: serve TLS (re-read when the file changes)")
    tls.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")
    tls.add_argument("--tls-client-ca", metavar="FILE", help="PEM CA bundle: mutual TLS, a client certificate it signed is required")
    tls.add_argument("--insecure", action="store_true", help="allow plaintext on a non-loopback address (e.g. behind a TLS proxy)")
    tls.add_argument("--no-reflection", action="store_true", help="turn gRPC server reflection off")
    auth = p.add_argument_group("token authentication (JWT bearer tokens, RS256/ES256; see the README's Deploying section)")
    auth.add_argument("--jwks", metavar="FILE", help="JWKS file of the keys that sign the tokens (re-read when it changes)")
    auth.add_argument("--jwks-url", metavar="URL", help="or a JWKS URL (https; fetched at start, every 10 minutes and for an unknown kid)")
    auth.add_argument(
        "--jwt-issuer", action="append", default=[], metavar="ISS", help="an issuer (iss) whose tokens are accepted (repeatable)"
    )
    auth.add_argument("--jwt-audience", metavar="AUD", help="the exact aud a token must carry")
    audit = p.add_argument_group("audit trail (see the README's Deploying section)")
    audit.add_argument(
        "--audit",
        metavar="PATH|URL",
        help="a SQLite file, or a postgresql:// URL: one hash-chained record per call, committed before the response is sent",
    )
    audit.add_argument(
        "--audit-key", metavar="FILE", help="a file holding a secret (16+ bytes): patient ids are recorded as its keyed hash"
    )
    audit.add_argument(
        "--audit-fail-open", action="store_true", help="send responses without waiting for their record (a record not written is logged)"
    )


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
    if args.jwks or args.jwks_url or args.jwt_issuer or args.jwt_audience:
        from carepath.service.auth import ConfigError, Verifier

        if bool(args.jwks) == bool(args.jwks_url):
            why = "give --jwks or --jwks-url, not both" if args.jwks else "--jwt-issuer and --jwt-audience need --jwks or --jwks-url"
            print(f"carepath: {why} (the keys that sign the tokens)", file=sys.stderr)
            return 2
        try:
            verifier = Verifier(Path(args.jwks) if args.jwks else args.jwks_url, args.jwt_issuer, args.jwt_audience or "")
        except ConfigError as exc:
            print(f"carepath: {exc}", file=sys.stderr)
            return 2

    audit_log = None
    if args.audit_key and not args.audit:
        print("carepath: --audit-key needs --audit PATH", file=sys.stderr)
        return 2
    if args.audit:
        from carepath.service.audit import AuditError, AuditLog

        key = None
        if args.audit_key:
            try:
                with open(args.audit_key, "rb") as f:
                    key = f.read(4096).strip()
            except OSError as exc:
                print(f"carepath: --audit-key {args.audit_key}: cannot read it: {exc.strerror or exc}", file=sys.stderr)
                return 2
        try:
            audit_log = AuditLog(args.audit, key, args.audit_fail_open)
        except AuditError as exc:
            print(f"carepath: --audit {exc}", file=sys.stderr)
            return 2

    from carepath.service.server import CdsHooksOptions, serve

    cds: CdsHooksOptions | None = None
    if args.cds_hooks:
        from carepath.cds.app import CdsConfig
        from carepath.fhir import FhirInputError, default_setting

        try:
            setting, source = (args.cds_setting, "--cds-setting") if args.cds_setting else default_setting()
        except FhirInputError as exc:
            raise CarepathError(str(exc)) from None
        if not 0 <= args.http_port <= 65535:
            raise CarepathError(f"--http-port: expected 0-65535, got {args.http_port}")
        config = CdsConfig(setting=setting, setting_source=source, as_of=args.cds_as_of, fetch_deadline=args.cds_fetch_timeout)
        cds_auth = None
        if args.cds_jwt_issuer:
            from carepath.cds.auth import CdsAuth, parse_trusted
            from carepath.service.auth import ConfigError

            try:
                cds_auth = CdsAuth([parse_trusted(t) for t in args.cds_jwt_issuer], args.cds_base_url or "")
            except ConfigError as exc:
                print(f"carepath: {exc}", file=sys.stderr)
                return 2
        elif args.cds_base_url:
            print("carepath: --cds-base-url is the aud of EHR tokens: it needs --cds-jwt-issuer", file=sys.stderr)
            return 2
        else:
            from carepath.service.tls import is_loopback

            if not is_loopback(args.host) and not args.cds_no_auth:
                print(
                    f"carepath: refusing CDS Hooks on {args.host} without EHR authentication: give --cds-jwt-issuer ISS=JWKS "
                    "(CDS Hooks 2.0 'Trusting CDS Clients'), or --cds-no-auth if something in front checks the tokens",
                    file=sys.stderr,
                )
                return 2
        cds = CdsHooksOptions(host=args.host, port=args.http_port, feedback_dir=args.cds_feedback_dir, config=config, auth=cds_auth)

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
        cds_hooks=cds,
        tls=tls,
        insecure=args.insecure,
        reflection=not args.no_reflection,
        auth=verifier,
        audit=audit_log,
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


def _audit_setup(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    v = sub.add_parser("verify", help="check the hash chain; exit 1 at the first break, naming it")
    v.add_argument("path", metavar="PATH", help="the audit trail of serve --audit: its SQLite file or PostgreSQL URL")
    e = sub.add_parser("export", help="the records as JSON lines")
    e.add_argument("path", metavar="PATH", help="the audit trail of serve --audit: its SQLite file or PostgreSQL URL")
    e.add_argument("--since", type=_utc, metavar="TIME", help="from this UTC time (YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS])")
    e.add_argument("--until", type=_utc, metavar="TIME", help="before this UTC time")
    e.add_argument(
        "--format",
        choices=("jsonl", "fhir", "fhir-ndjson"),
        default="jsonl",
        help="jsonl: the records (default); fhir: a FHIR R4 Bundle of AuditEvent resources; fhir-ndjson: one AuditEvent a line",
    )
    r = sub.add_parser("prune", help="delete records older than the retention period, keeping the rest verifiable")
    r.add_argument("path", metavar="PATH", help="the audit trail of serve --audit: its SQLite file or PostgreSQL URL")
    when = r.add_mutually_exclusive_group()
    when.add_argument("--before", type=_utc, metavar="TIME", help="delete the records before this UTC time")
    when.add_argument(
        "--keep-days",
        type=_positive,
        metavar="DAYS",
        help="delete the records older than this many days (default 2192: six years, the retention default)",
    )


def _utc(text: str) -> str:
    """A UTC time as the audit trail stores it (2026-12-07T05:55:00.000Z), for comparing."""
    from datetime import UTC, datetime

    from carepath.service.audit import utc_text

    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a UTC time as YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS, got {text!r}") from None
    if t.tzinfo is not None:
        t = t.astimezone(UTC)
    return utc_text(t)


@command("audit", _audit_setup)
def _audit(args: argparse.Namespace) -> int:
    """Check or export the audit trail of `carepath serve --audit`."""
    import json

    from carepath.service.audit import RETENTION_DAYS, AuditError, export, prune, verify
    from carepath.service.auditdb import shown

    where = shown(args.path)  # a PostgreSQL URL without its password
    try:
        if args.audit_command == "prune":
            from datetime import UTC, datetime, timedelta

            before = args.before or _utc((datetime.now(UTC) - timedelta(days=args.keep_days or RETENTION_DAYS)).isoformat())
            done = prune(args.path, before)
            if not done.records:
                print(f"{where}: no record before {before}; nothing pruned")
                return 0
            print(
                f"{where}: pruned {done.records} records (through record {done.through}) and {done.feedback} feedback rows "
                f"before {before}; the chain continues from the anchor (record {done.through})"
            )
            return 0
        if args.audit_command == "verify":
            v = verify(args.path)
            if v.problem:
                print(f"{where}: BROKEN at {v.problem} ({v.records} records verified before it)", file=sys.stderr)
                return 1
            print(f"{where}: {v.records} records, chain intact; head: record {v.head_seq} hash {v.head_hash}")
            return 0
        out = sys.stdout
        records = export(args.path, args.since, args.until)
        if args.format == "jsonl":
            for rec in records:
                out.write(json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n")
            return 0
        from carepath.service.fhir_audit import audit_event, bundle

        if args.format == "fhir-ndjson":
            for rec in records:
                out.write(json.dumps(audit_event(rec), ensure_ascii=False, separators=(",", ":")) + "\n")
            return 0
        json.dump(bundle(records), out, ensure_ascii=False, indent=1)
        out.write("\n")
        return 0
    except AuditError as exc:
        print(f"carepath: {exc}", file=sys.stderr)
        return 2
