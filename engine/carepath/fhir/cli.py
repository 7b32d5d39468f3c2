"""``carepath fhir-to-case`` (FHIR R4 → the case and its mapping report), and FHIR input for ``carepath evaluate``."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from typing import TYPE_CHECKING, Any

from ..cli import command, dumps, iso_date, read_case
from ..errors import CarepathError
from .mapper import FhirInputError, Mapped, is_fhir_input, to_case

if TYPE_CHECKING:
    from ..evaluate import Engine


def map_bundle(data: Any, engine: Engine, as_of: date | None, setting: str | None) -> Mapped:
    """Map FHIR input for the engine's dictionary; bad FHIR input is a CarepathError (exit 2)."""
    try:
        return to_case(data, vocab=engine.vocab, as_of=as_of, setting=setting)
    except FhirInputError as exc:
        raise CarepathError(f"FHIR input: {exc}") from None


def map_for_cli(data: Any, engine: Engine, as_of: date | None, setting: str | None) -> dict[str, Any]:
    """``carepath evaluate`` on a Bundle: the mapped case; the report's header and warnings go to stderr."""
    mapped = map_bundle(data, engine, as_of, setting)
    for line in mapped.report.lines():
        print(line, file=sys.stderr)
    return mapped.case


def _setup(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pathways", metavar="DIR", help="pathway directory whose dictionary the case is for (default: the bundled pathways/)")
    p.add_argument("--as-of", type=iso_date, metavar="DATE", help="the case's as_of (default: today)")
    p.add_argument("--setting", choices=["community", "hospital"], help="the case's setting (default: CAREPATH_SETTING or community)")
    p.add_argument("--info", action="store_true", help="list the routine exclusions too (resolved conditions, stopped drugs, unread tests)")
    p.add_argument("--json", action="store_true", help='print {"case": ..., "report": ...} as one JSON object instead')
    p.add_argument(
        "bundle", metavar="BUNDLE_FILE", help="FHIR R4 JSON: a Bundle, a list of resources or a CDS Hooks prefetch object; - for stdin"
    )


@command("fhir-to-case", _setup)
def _fhir_to_case(args: argparse.Namespace) -> int:
    """Map a FHIR R4 Bundle to a case: the case JSON on stdout, the mapping report on stderr (or both with --json)."""
    from ..evaluate import Engine

    engine = Engine.from_directory(args.pathways)
    data = read_case(args.bundle, fhir=True)
    if not is_fhir_input(data):
        raise CarepathError("FHIR input: expected a FHIR Bundle or resource (resourceType), a list of them, or a CDS Hooks prefetch object")
    mapped = map_bundle(data, engine, args.as_of, args.setting)
    if args.json:
        sys.stdout.write(dumps({"case": mapped.case, "report": mapped.report.to_json()}))
    else:
        sys.stdout.write(json.dumps(mapped.case, ensure_ascii=False, indent=2) + "\n")
        for line in mapped.report.lines(info=args.info):
            print(line, file=sys.stderr)
    return 0
