"""python -m carepath: the same as the carepath command."""

from carepath.cli import main

raise SystemExit(main())
