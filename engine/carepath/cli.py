"""The `carepath` command line: validate, evaluate, schema, and the service and tooling commands."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import yaml

from .errors import CarepathError, CaseError, PathwayError, Terminated
from .output import dumps as dumps  # re-exported: carepath.cli.dumps keeps working
from .settings import NEAR

Handler = Callable[[argparse.Namespace], int]
_COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Handler]] = {}


def command(name: str, setup: Callable[[argparse.ArgumentParser], None]) -> Callable[[Handler], Handler]:
    """Register a sub-command (other modules add theirs, e.g. serve, call, check, batch)."""

    def deco(fn: Handler) -> Handler:
        _COMMANDS[name] = (setup, fn)
        return fn

    return deco


def max_workers() -> int:
    """The most worker processes --workers may ask for: 4 per core (more only thrash the machine)."""
    return 4 * (os.cpu_count() or 1)


def worker_count(text: str) -> int:
    """argparse type for --workers: a whole number of processes, at least 1 and at most max_workers()."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of processes, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    if n > max_workers():
        raise argparse.ArgumentTypeError(f"must be at most {max_workers()} (4 per core on this machine), got {n}")
    return n


def count_arg(text: str) -> int:
    """argparse type for a count (--near): a whole number, 0 or more."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {n}")
    return n


def iso_date(text: str) -> date:
    """argparse type for a date option (--as-of): YYYY-MM-DD, and a day the calendar has."""
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        why = f" ({exc})" if "range" in str(exc) else ""
        raise argparse.ArgumentTypeError(f"expected a date as YYYY-MM-DD, got {text!r}{why}") from None


def seconds(text: str) -> float:
    """argparse type for a deadline (--timeout): a finite number of seconds, more than 0."""
    return _seconds(text, zero=False)


def grace_seconds(text: str) -> float:
    """argparse type for --grace: a finite number of seconds, 0 (stop at once) or more."""
    return _seconds(text, zero=True)


def _seconds(text: str, zero: bool) -> float:
    try:
        n = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(n):
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds, got {text}")
    if n < 0 or (n == 0 and not zero):
        raise argparse.ArgumentTypeError(f"must be {'0 seconds or more' if zero else 'more than 0 seconds'}, got {text}")
    return n


def read_case(source: str, fhir: bool = False) -> Any:
    """Read a case from a file or '-' (stdin); JSON or YAML; size-limited before parsing.

    With ``fhir``, the input may instead be FHIR JSON (a Bundle: carepath.fhir maps it), which may be
    larger than a case, up to carepath.fhir.MAX_FHIR_BYTES; the caller tells them apart (``is_fhir_input``).
    """
    from .case import MAX_CASE_BYTES, parse_json
    from .errors import FieldViolation

    limit = MAX_CASE_BYTES
    if fhir and not source.endswith((".yaml", ".yml")):
        from .fhir import MAX_FHIR_BYTES

        limit = MAX_FHIR_BYTES
    # the limit and a final line break ("\r\n") are read, and a byte more to tell a larger file
    raw = sys.stdin.buffer.read(limit + 3) if source == "-" else _read_limited(Path(source), limit + 3)
    if limit > MAX_CASE_BYTES and len(raw.rstrip(b"\r\n")) > MAX_CASE_BYTES:  # too large for a case: FHIR or nothing
        from .fhir import read_fhir_json

        return read_fhir_json(raw)
    if len(raw) > MAX_CASE_BYTES + 2 or len(raw.rstrip(b"\r\n")) > MAX_CASE_BYTES:  # say so, not a made-up size
        raise CaseError([FieldViolation("", f"case is larger than {MAX_CASE_BYTES} bytes (1 MiB), the limit")])
    if not raw.strip():
        raise CaseError([FieldViolation("", "the case is empty")])
    if source.endswith((".yaml", ".yml")):
        from .load import safe_load

        try:  # bounded as a pathway is: nesting, alias expansion, unreadable scalars
            return safe_load(raw.decode("utf-8-sig"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise CaseError([FieldViolation("", f"case is not valid YAML: {exc}")]) from None
    return parse_json(raw)


def _read_limited(path: Path, limit: int) -> bytes:
    try:
        with path.open("rb") as fh:
            return fh.read(limit)
    except OSError as exc:
        raise CarepathError(f"cannot read {path}: {exc.strerror}") from None


def _pathways_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pathways", metavar="DIR", help="pathway directory (default: the bundled pathways/)")


def _validate_setup(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="*", metavar="PATH", help="pathway files or directories (default: bundled pathways/)")
    p.add_argument("--strict", action="store_true", help="readability warnings are errors (exit 1)")


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'s' if n != 1 else ''}"


@command("validate", _validate_setup)
def _validate(args: argparse.Namespace) -> int:
    """Validate pathway files; exit 0 when clean (warnings allowed unless --strict), 1 with errors."""
    from .validate import validate_pathways

    checked, found = validate_pathways(args.paths, strict=args.strict)  # errors, and readability warnings
    diags = [d for d in found if d.severity == "error"]
    warned = [d for d in found if d.severity != "error"]
    for d in found:
        print(d, file=sys.stderr)
    if diags or warned:
        counts = [_count(len(diags), "error")] if diags else []
        counts += [_count(len(warned), "warning")] if warned else []
        print(", ".join(counts), file=sys.stderr)
    if diags:
        return 1
    for cp in checked:
        print(f"ok  {cp.file}: {cp.id} {cp.version}, {len(cp.rules)} rules, sha256 {cp.sha256[:12]}")
    return 0


def _evaluate_setup(p: argparse.ArgumentParser) -> None:
    _pathways_arg(p)
    p.add_argument("--explain", action="store_true", help="explain the decision for a person instead of JSON")
    p.add_argument(
        "--near",
        type=count_arg,
        default=NEAR,
        metavar="N",
        help="with --explain: list the N rules that came closest to firing (default 5; 0: only how many)",
    )
    p.add_argument("--pathway", action="append", dest="pathway_ids", metavar="ID", help="only these pathways (repeatable)")
    p.add_argument("--backend", choices=["durable", "reference"], default="durable", help=argparse.SUPPRESS)
    site_arg(p)
    p.add_argument("--as-of", type=iso_date, metavar="DATE", help="FHIR input only: the decision's date (default: today)")
    p.add_argument("--setting", choices=["community", "hospital"], help="FHIR input only: where the caller sits (default: community)")
    p.add_argument("case", metavar="CASE_FILE", help="case JSON or YAML file, a FHIR R4 Bundle (JSON), or - for stdin")


def site_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--site",
        metavar="FILE",
        help="site profile YAML (what this site can do: site_has() in conditions); default: a site with no optional capability",
    )


def load_site_arg(path: str | None) -> Any:
    """The --site profile (carepath.site.Site), or None for the default."""
    if path is None:
        return None
    from .site import load_site

    return load_site(path)


@command("evaluate", _evaluate_setup)
def _evaluate(args: argparse.Namespace) -> int:
    """Evaluate a case; print the decision JSON (or --explain)."""
    from .evaluate import Engine

    engine = Engine.from_directory(args.pathways, load_site_arg(args.site), backend=args.backend)
    case = read_case(args.case, fhir=True)
    from .fhir import is_fhir_input

    if is_fhir_input(case):  # a FHIR Bundle (or resources): mapped to a case, the mapping's warnings on stderr
        from .fhir.cli import map_for_cli

        case = map_for_cli(case, engine, args.as_of, args.setting)
    elif args.as_of is not None or args.setting is not None:
        raise CarepathError("--as-of and --setting are for FHIR input; a case carries its own as_of and setting")
    if args.explain:
        sys.stdout.write(engine.explain(case, args.pathway_ids, near=args.near))
    else:
        sys.stdout.write(dumps(engine.evaluate(case, args.pathway_ids)))
    return 0


def _schema_setup(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group()
    which.add_argument("--case", action="store_true", help="print the case schema instead")
    which.add_argument("--decision", action="store_true", help="print the decision schema instead (what evaluate and the service return)")


@command("schema", _schema_setup)
def _schema(args: argparse.Namespace) -> int:
    """Print the JSON Schema of the pathway format (or --case, --decision)."""
    from pydantic import TypeAdapter

    from .case import Case
    from .contract import Decision
    from .model import Pathway

    if args.decision:
        schema, title = TypeAdapter(Decision).json_schema(), "carepath decision"
    elif args.case:
        schema, title = Case.model_json_schema(), "carepath case"
    else:
        schema, title = Pathway.model_json_schema(), "carepath pathway"
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = title
    sys.stdout.write(json.dumps(schema, indent=2, ensure_ascii=False) + "\n")
    return 0


# Commands that live in other modules, imported only when asked for (grpc is slow to import).
PLUGINS = {
    "docs": "carepath.docs_cli",
    "serve": "carepath.service.cli",
    "call": "carepath.service.cli",
    "audit": "carepath.service.cli",
    "check": "carepath.testing.cli",
    "mutate": "carepath.testing.cli",
    "synth": "carepath.population.cli",
    "batch": "carepath.population.cli",
    "report": "carepath.population.cli",
    "diff": "carepath.population.cli",
    "fhir-to-case": "carepath.fhir.cli",
    "cds-request": "carepath.cds.cli",
}
# What an optional extra brings (pyproject.toml), for the message when a command needs it.
_EXTRAS = {"hypothesis": "testing"}


def _load_plugins(argv: Sequence[str]) -> None:
    """Import the module of the command asked for (all of them for --help); a missing one is skipped."""
    import importlib

    wanted = next((a for a in argv if not a.startswith("-")), None)
    mods = [PLUGINS[wanted]] if wanted in PLUGINS else ([] if wanted in _COMMANDS else sorted(set(PLUGINS.values())))
    for mod in mods:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name is not None and mod.startswith(exc.name):
                continue  # that part of carepath is not installed
            extra = _EXTRAS.get((exc.name or "").partition(".")[0])
            if extra:
                names = ", ".join(name for name, m in PLUGINS.items() if m == mod)
                print(f"carepath: {names} need the optional extra {extra!r}: pip install 'carepath[{extra}]'", file=sys.stderr)
                continue
            print(f"carepath: the {mod} commands are unavailable: {exc}", file=sys.stderr)
        except ImportError as exc:
            print(f"carepath: the {mod} commands are unavailable: {exc}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _load_plugins(argv)
    parser = argparse.ArgumentParser(prog="carepath", description="Clinical-pathway decision support on durable-rules.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (setup, fn) in _COMMANDS.items():
        doc = (fn.__doc__ or "").strip().splitlines()
        sp = sub.add_parser(name, help=doc[0] if doc else None)
        setup(sp)
        sp.set_defaults(func=fn)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except PathwayError as exc:
        for d in exc.diagnostics:
            print(d, file=sys.stderr)
        return 1
    except CaseError as exc:
        for v in exc.violations:
            print(f"case error: {v}", file=sys.stderr)
        return 2
    except CarepathError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Terminated:
        return 143
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except OSError as exc:  # reading or writing failed (a full disk, a device error): not a bug
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: input/output failed{where}: {exc.strerror or exc}", file=sys.stderr)
        return 74
    except Exception as exc:  # a bug: one line for the user; CAREPATH_DEBUG=1 shows the traceback
        from .settings import current

        if current().debug:
            raise
        print(f"carepath: internal error ({type(exc).__name__}: {exc}); rerun with CAREPATH_DEBUG=1 for details", file=sys.stderr)
        return 70


if __name__ == "__main__":  # python -m carepath.cli: commands register into carepath.cli, not __main__
    from carepath.cli import main as _main

    raise SystemExit(_main())
