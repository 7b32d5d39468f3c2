"""`carepath serve` and `carepath call`: registered into carepath.cli's command table."""

from __future__ import annotations

import argparse
import os
import sys

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


@command("serve", _serve_setup)
def _serve(args: argparse.Namespace) -> int:
    """Serve decisions over gRPC (carepath.v1): health, reflection, SIGHUP reload, SIGTERM drain."""
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
        cds = CdsHooksOptions(host=args.host, port=args.http_port, feedback_dir=args.cds_feedback_dir, config=config)

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
    )


def _call_setup(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default="127.0.0.1:50051", help="HOST:PORT of a carepath server (default 127.0.0.1:50051)")
    p.add_argument("--pathway", action="append", dest="pathway_ids", metavar="ID", help="only these pathways (repeatable)")
    p.add_argument("--timeout", type=seconds, default=10.0, help="deadline in seconds (default 10)")
    p.add_argument("case", metavar="CASE_FILE", help="case JSON or YAML file, or - for stdin")


@command("call", _call_setup)
def _call(args: argparse.Namespace) -> int:
    """Evaluate a case on a carepath server; prints the same JSON as `carepath evaluate`."""
    from carepath.client import CarepathClient

    case = read_case(args.case)
    with CarepathClient(args.target, timeout=args.timeout) as client:
        decision = client.evaluate(case, pathway_ids=args.pathway_ids)
    sys.stdout.write(dumps(decision))
    return 0
