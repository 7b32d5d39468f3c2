#!/usr/bin/env python3
"""Coverage-guided fuzzing (atheris, libFuzzer) of the case parser and the EvaluateRequest decoder:
the checks of tests/fuzz/targets.py with carepath instrumented.

    python tests/fuzz/fuzz_targets.py case|request [libFuzzer options] [CORPUS_DIR ...]

e.g. ``python tests/fuzz/fuzz_targets.py request /tmp/new tests/fuzz/corpus/request -max_total_time=600``
(libFuzzer writes new inputs to the first directory; the committed corpus is
tests/fuzz/corpus/<target>/: copy the new ones there after a long run, minimised with -merge=1). A
crash is written as crash-<sha1> (``-artifact_prefix=DIR/``): put it in tests/fuzz/regressions/<target>/,
fix the bug, and tests/unit/test_fuzz.py replays it from then on.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))

with atheris.instrument_imports(include=["carepath", "carepath_client"]):
    import targets


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in targets.TARGETS:
        print(f"usage: fuzz_targets.py {'|'.join(targets.TARGETS)} [libFuzzer options] [CORPUS_DIR ...]", file=sys.stderr)
        return 2
    atheris.Setup([sys.argv[0], *sys.argv[2:]], targets.TARGETS[sys.argv[1]])
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
