"""CLI commands for population runs: synth, batch, report."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
from datetime import date
from html import escape
from pathlib import Path
from typing import IO

from ..cli import command, iso_date, load_site_arg, site_arg, worker_count
from ..errors import CarepathError, PathwayError, Terminated, raise_terminated

MAX_SEED = 2**63 - 1  # patient ids carry the seed: a 130-digit seed made every id longer than the contract's 128


def _seed(text: str) -> int:
    """argparse type for --seed: an integer from 0 to 2**63-1."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= n <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be from 0 to {MAX_SEED}, got {text}")
    return n


def _synth_date(text: str) -> date:
    """argparse type for synth --as-of: a date from 1900 on (histories reach years back from it)."""
    d = iso_date(text)
    if d.year < 1900:
        raise argparse.ArgumentTypeError(f"expected a date from 1900-01-01 on, got {text!r}")
    return d


def _synth_setup(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, default=1000, help="number of cases (default 1000)")
    p.add_argument("--seed", type=_seed, default=0, help="random seed, 0 to 2**63-1 (default 0); same seed, same bytes")
    p.add_argument("--as-of", type=_synth_date, default=None, metavar="DATE", help="decision date, from 1900-01-01 (default 2026-11-24)")
    p.add_argument("--out", metavar="FILE", help="write here instead of stdout")
    p.add_argument(
        "--pathways",
        metavar="DIR",
        default=None,
        help="the pathway set the cohort is for: pathway-local codes it does not define are left out (default: bundled)",
    )


@command("synth", _synth_setup)
def _synth(args: argparse.Namespace) -> int:
    """Write a synthetic Luohu-like cohort as JSONL (deterministic by seed)."""
    from ..settings import bundled_pathways
    from ..validate import validate_paths
    from .synth import DEFAULT_AS_OF, exams_known, synth_lines

    if args.n < 0:
        raise CarepathError("--n must be >= 0")
    checked, diags = validate_paths([args.pathways or bundled_pathways()], bundled_pathways())
    if diags:
        raise PathwayError(diags)
    exams = exams_known({code for p in checked for code in p.vocab.observations})
    signal.signal(signal.SIGTERM, raise_terminated)  # SIGTERM stops as Ctrl-C does: no .partial left (exit 143)
    with OutputFile(args.out) as out:
        buf: list[str] = []
        for line in synth_lines(args.n, args.seed, args.as_of or DEFAULT_AS_OF, exams):
            buf.append(line)
            if len(buf) >= 512:
                out.write("".join(buf).encode())
                buf.clear()
        out.write("".join(buf).encode())
    return 0


class OutputFile:
    """Where a command's output goes, as a context manager: stdout (no path), or a file written
    beside its target and moved over it when the block ends without an error, so a run that fails
    (pathways that do not load, a scheduler out of reach) leaves an earlier file of the same name as
    it was. ``keep_on_interrupt``: Ctrl-C also moves what was written into place, if anything was
    (an interrupt before the first byte leaves the earlier file too; ``committed`` says which
    happened). A target that is not a regular file (/dev/stdout, a pipe) is written directly."""

    def __init__(self, path: str | None, keep_on_interrupt: bool = False) -> None:
        self.keep_on_interrupt = keep_on_interrupt
        self.committed = False
        self.temp: Path | None = None
        self.target = Path(path) if path else None
        if self.target is None:
            self.stream: IO[bytes] = sys.stdout.buffer
            return
        try:
            if self.target.exists() and not self.target.is_file():
                if self.target.is_dir():
                    raise CarepathError(f"cannot write {path}: it is a directory")
                self.stream = open(self.target, "wb")
                return
            fd, temp = tempfile.mkstemp(prefix=f".{self.target.name}.", suffix=".partial", dir=self.target.parent)
        except OSError as exc:
            raise CarepathError(f"cannot write {path}: {exc.strerror or exc}") from None
        mask = os.umask(0)
        os.umask(mask)
        os.fchmod(fd, 0o666 & ~mask)  # the permissions open() would have given it
        self.temp = Path(temp)
        self.stream = os.fdopen(fd, "wb")

    def __enter__(self) -> IO[bytes]:
        return self.stream

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if kind is None or (self.keep_on_interrupt and issubclass(kind, KeyboardInterrupt) and self._written()):
            self._commit()
        else:
            self._discard()

    def _written(self) -> bool:
        if self.temp is None:
            return True
        try:
            return self.stream.tell() > 0
        except (OSError, ValueError):
            return True

    def _commit(self) -> None:
        self.committed = True
        if self.target is None:
            self.stream.flush()
            return
        self.stream.close()
        if self.temp is not None:
            try:
                os.replace(self.temp, self.target)
            except OSError as exc:
                raise CarepathError(f"cannot write {self.target}: {exc.strerror or exc}; the output is in {self.temp}") from None

    def _discard(self) -> None:
        if self.target is None:
            return
        self.stream.close()
        if self.temp is not None:
            self.temp.unlink(missing_ok=True)


def _batch_setup(p: argparse.ArgumentParser) -> None:
    p.add_argument("cohort", metavar="COHORT", help="JSONL file of cases, or - for stdin")
    p.add_argument("--out", metavar="FILE", help="decisions JSONL (default stdout)")
    p.add_argument("--workers", type=worker_count, default=None, help="worker processes (default: one per core)")
    p.add_argument("--pathways", metavar="DIR", help="pathway directory (default: the bundled pathways/)")
    site_arg(p)
    p.add_argument("--backend", choices=["local", "dask"], default="local", help="local processes (default) or a Dask cluster")
    p.add_argument("--scheduler", metavar="ADDR", help="Dask scheduler address (default: a local cluster)")
    p.add_argument("--chunk", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--quiet", action="store_true", help="no summary line on stderr")


@command("batch", _batch_setup)
def _batch(args: argparse.Namespace) -> int:
    """Evaluate a cohort (JSONL) into decisions (JSONL), in parallel, in input order."""
    from .batch import Progress, run_batch

    signal.signal(signal.SIGTERM, raise_terminated)  # SIGTERM stops batch as Ctrl-C does (exit 143)
    if args.cohort == "-":
        src: IO[bytes] = sys.stdin.buffer
        total = None
    else:
        try:
            src = open(args.cohort, "rb")
        except OSError as exc:
            raise CarepathError(f"cannot read {args.cohort}: {exc.strerror}") from None
        total = os.fstat(src.fileno()).st_size
        if args.out and _same_file(args.cohort, args.out):
            src.close()
            raise CarepathError(f"--out {args.out} is the cohort being read: write the decisions to another file")
    progress = Progress(sys.stderr, total, sys.stderr.isatty())
    output = None
    try:
        # Ctrl-C outside batch's own handling of it (a second one): keep what was written, as batch does
        output = OutputFile(args.out, keep_on_interrupt=True)
        with output as out:
            stats = run_batch(
                src,
                out,
                workers=args.workers,
                pathways=args.pathways,
                backend=args.backend,
                scheduler=args.scheduler,
                chunk_lines=args.chunk,
                progress=progress,
                site=load_site_arg(args.site),
            )
            if stats.interrupted and stats.lines_done == 0:  # nothing was done: no output, an earlier file stays
                raise Terminated() if stats.signum == signal.SIGTERM else KeyboardInterrupt()
    except KeyboardInterrupt:
        if output is not None and not output.committed:
            where = f": {args.out} left as it was" if args.out else ""
            print(f"interrupted before any case was done{where}", file=sys.stderr)
        raise
    finally:
        if src is not sys.stdin.buffer:
            src.close()
    if not args.quiet:
        msg = f"{stats.cases:,} cases ({stats.errors:,} error records) in {stats.seconds:.1f}s, {stats.rate:,.0f} cases/s"
        msg += f", {stats.workers} worker{'s' if stats.workers != 1 else ''}"
        if stats.interrupted:
            msg = f"interrupted: output holds input lines 1-{stats.lines_done}: " + msg
        print(msg, file=sys.stderr)
    return (143 if stats.signum == signal.SIGTERM else 130) if stats.interrupted else 0


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # the output does not exist yet
        return False


HTML_SUFFIXES = (".html", ".htm")  # a page with charts; the other suffixes, and stdout, get Markdown
REPORT_SUFFIXES = (*HTML_SUFFIXES, ".md", ".markdown")


def _report_setup(p: argparse.ArgumentParser) -> None:
    p.add_argument("decisions", metavar="DECISIONS", nargs="?", help="decisions JSONL from `carepath batch`, or - for stdin")
    p.add_argument("--out", metavar="FILE", help="report.html or report.md (default: Markdown on stdout)")
    p.add_argument("--title", default="carepath population report")
    p.add_argument(
        "--feedback",
        metavar="AUDIT_DB",
        help="the audit file of `carepath serve --audit`: add per-rule firing, acceptance and override rates and the top override reasons",
    )


@command("report", _report_setup)
def _report(args: argparse.Namespace) -> int:
    """Summarise batch decisions: rates by pathway and kind, tests, medications, referrals, charts."""
    from .report import aggregate, render_html, render_markdown

    if args.out and Path(args.out).suffix.lower() not in REPORT_SUFFIXES:
        raise CarepathError(f"--out {args.out}: a report is .html (a page with charts) or .md (Markdown)")
    if args.decisions is None and not args.feedback:
        print("carepath report: give DECISIONS (from `carepath batch`), --feedback AUDIT_DB, or both", file=sys.stderr)
        return 2
    html_out = bool(args.out) and Path(args.out).suffix.lower() in HTML_SUFFIXES
    feedback = _feedback_section(args.feedback, html_out) if args.feedback else ""
    if args.decisions is None:
        text = (
            f"<!doctype html><title>{escape(args.title)}</title>\n<h1>{escape(args.title)}</h1>\n{feedback}"
            if html_out
            else f"# {args.title}\n\n{feedback}"
        )
        with OutputFile(args.out) as out:
            out.write(text.encode())
        return 0
    if args.decisions == "-":
        summary = aggregate(sys.stdin.buffer)
    else:
        try:
            with open(args.decisions, "rb") as fh:
                summary = aggregate(fh)
        except OSError as exc:
            raise CarepathError(f"cannot read {args.decisions}: {exc.strerror}") from None
    if summary.foreign and not summary.decisions:
        first = ", ".join(map(str, summary.foreign_lines[:5]))
        raise CarepathError(
            f"{args.decisions} holds no carepath decisions (not one: line(s) {first}; a decision has pathways, "
            "recommendations and trace): give it what `carepath batch` wrote, not the cohort"
        )
    if html_out:
        text = render_html(summary, args.title)
        if feedback:
            text = text.replace("</body>", feedback + "</body>", 1) if "</body>" in text else text + feedback
    else:
        text = render_markdown(summary, args.title) + ("\n" + feedback if feedback else "")
    with OutputFile(args.out) as out:
        out.write(text.encode())
    return 0


def _feedback_section(path: str, html_out: bool) -> str:
    from carepath.service.audit import AuditError
    from carepath.service.feedback import render_feedback_html, render_feedback_markdown, summarise

    try:
        summary = summarise(path)
    except AuditError as exc:
        raise CarepathError(f"--feedback {exc}") from None
    return render_feedback_html(summary) if html_out else render_feedback_markdown(summary)


def _diff_setup(p: argparse.ArgumentParser) -> None:
    p.add_argument("old", metavar="OLD", help="the pathways before: a directory, or a git revision (REV or REV:DIR; default DIR pathways)")
    p.add_argument("new", metavar="NEW", help="the pathways after: a directory or a git revision, likewise")
    p.add_argument("--cohort", metavar="COHORT", required=True, help="cases JSONL (e.g. from carepath synth), or - for stdin")
    p.add_argument("--out", metavar="FILE", help="diff.html or diff.md (default: Markdown on stdout)")
    p.add_argument("--title", default="carepath diff: what the edit changes")


@command("diff", _diff_setup)
def _diff(args: argparse.Namespace) -> int:
    """Evaluate a cohort with two pathway sets; report per rule and recommendation who gains or loses what."""
    from ..evaluate import Engine
    from .diff import pathway_source, render, run

    if args.out and Path(args.out).suffix.lower() not in REPORT_SUFFIXES:
        raise CarepathError(f"--out {args.out}: a diff report is .html or .md (Markdown)")
    with pathway_source(args.old) as old_dir, pathway_source(args.new) as new_dir:
        old, new = Engine.from_directory(old_dir), Engine.from_directory(new_dir)
    if args.cohort == "-":
        diff = run(old, new, sys.stdin.buffer, args.old, args.new)
    else:
        try:
            with open(args.cohort, "rb") as fh:
                diff = run(old, new, fh, args.old, args.new)
        except OSError as exc:
            raise CarepathError(f"cannot read {args.cohort}: {exc.strerror}") from None
    text = render(diff, args.title, html=bool(args.out) and Path(args.out).suffix.lower() in HTML_SUFFIXES)
    with OutputFile(args.out) as out:
        out.write(text.encode())
    return 0
