"""`carepath docs`: the committee review pages (carepath.docs) from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

from .cli import command
from .errors import CarepathError


def _setup(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pathways", metavar="DIR", help="pathway directory (default: the bundled pathways/)")
    p.add_argument("--out", metavar="DIR", default="docs/pathways", help="where to write the pages (default: docs/pathways)")


@command("docs", _setup)
def _docs(args: argparse.Namespace) -> int:
    """Write a Markdown review page per pathway (rules in words, flowchart, changelog, sign-offs)."""
    from .docs import write_docs
    from .evaluate import Engine

    engine = Engine.from_directory(args.pathways)
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise CarepathError(f"cannot write the pages to {args.out}: it is a file, not a directory")
    try:
        written = write_docs(engine.pathways, args.out)
    except OSError as exc:  # a place that cannot be written
        raise CarepathError(f"cannot write the pages to {args.out}: {exc.strerror or exc}") from None
    for path in written:
        print(path)
    return 0
