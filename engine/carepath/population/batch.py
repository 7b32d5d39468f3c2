"""Streaming batch evaluation of a JSONL cohort across worker processes (local) or a Dask cluster.

Shape of a run: the main process reads lines (size-limited), groups them into chunks, and keeps at
most ``workers * INFLIGHT_PER_WORKER`` chunks in flight; each worker process holds its own compiled
Engine (durable-rules is not thread-safe: one engine per process) and returns the chunk's output as
ready-made JSONL bytes; the main process writes chunks strictly in input order. Memory is flat in
N; the output is byte-identical for the same input, whatever the backend, worker count or chunking.

One output line per non-blank input line: the decision, or an error record
``{"line": n, "patient_id": ..., "error": "case", "violations": [{"field", "message"}]}``.
"""

from __future__ import annotations

import gc
import hashlib
import itertools
import os
import signal
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

import orjson

from ..case import MAX_CASE_BYTES, parse_json
from ..errors import CarepathError, CaseError, PathwayError, raise_terminated
from ..evaluate import Engine
from ..settings import bundled_pathways
from ..site import Site

Line = tuple[int, bytes | None]  # (1-based line number, raw bytes; None = over the size limit)
ChunkResult = tuple[bytes, int, int]  # (JSONL output, decisions, error records)
PathwaySource = tuple[tuple[str, bytes], ...]  # (file name, content): a pathway directory, shippable

CHUNK_LINES = 256
INFLIGHT_PER_WORKER = 4


def dumps_line(obj: Any) -> bytes:
    """The JSONL rendering of a decision or error record: compact UTF-8, deterministic.

    orjson, not the json module: a decision is 5-7 KB and the stdlib encoder took ~65 µs of it.
    """
    return orjson.dumps(obj)


# ---------------------------------------------------------------- evaluation (runs in the workers)
def _error_record(lineno: int, data: Any, kind: str, violations: list[dict[str, str]]) -> bytes:
    rec: dict[str, Any] = {"line": lineno}
    pid = data.get("patient_id") if isinstance(data, dict) else None
    if isinstance(pid, str) and len(pid) <= 128:
        rec["patient_id"] = pid
    rec["error"] = kind
    rec["violations"] = violations
    return dumps_line(rec)


def evaluate_lines(engine: Engine, lines: Iterable[Line]) -> ChunkResult:
    """Evaluate raw JSONL lines; every line gives one output line (decision or error record)."""
    out: list[bytes] = []
    ok = bad = 0
    for lineno, raw in lines:
        data: Any = None
        try:
            if raw is None:
                raise CaseError([])
            data = parse_json(raw)
            out.append(dumps_line(engine.evaluate(data)))
            ok += 1
            continue
        except CaseError as exc:
            if raw is None:
                viol = [{"field": "", "message": f"line is longer than the case limit of {MAX_CASE_BYTES} bytes (1 MiB)"}]
            else:
                viol = [{"field": v.field, "message": v.message} for v in exc.violations]
            out.append(_error_record(lineno, data, "case", viol))
        except Exception as exc:  # a bug must not sink a city-wide run: record it, go on
            out.append(_error_record(lineno, data, "internal", [{"field": "", "message": f"{type(exc).__name__}: {exc}"}]))
        bad += 1
    return (b"\n".join(out) + b"\n") if out else b"", ok, bad


_ENGINE: Engine | None = None
_SHIPPED: dict[str, tuple[tempfile.TemporaryDirectory[str], Engine]] = {}
_LOCK = threading.Lock()  # a Dask worker may run tasks on several threads: never two in one engine


def _init_local_worker(pathways: str | None, site: Site | None, parent: int) -> None:
    global _ENGINE
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C and SIGTERM are the main process's business:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # it finishes or cancels the chunks and ends the pool
    die_with_parent(parent)
    _ENGINE = Engine.from_directory(pathways, site)
    gc.freeze()  # the compiled engine lives as long as the process: keep it out of every collection


def die_with_parent(parent: int) -> None:
    """End this (forked worker) process when `parent` dies, even by SIGKILL: Linux's
    PR_SET_PDEATHSIG; then, for a parent already gone before that took effect, a pid check."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:
        os._exit(1)


def _local_task(lines: list[Line]) -> ChunkResult:
    assert _ENGINE is not None, "worker not initialised"
    return evaluate_lines(_ENGINE, lines)


def read_source(pathways: str | Path | None) -> PathwaySource:
    """A pathway directory as shippable bytes (with the dictionary it resolves), for remote workers."""
    root = Path(pathways) if pathways else bundled_pathways()
    files = sorted(p for p in root.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    names = {p.name for p in files}
    out = [(p.name, p.read_bytes()) for p in files]
    if "dictionary.yaml" not in names:
        out.append(("dictionary.yaml", (bundled_pathways() / "dictionary.yaml").read_bytes()))
    return tuple(sorted(out))


def engine_for_source(source: PathwaySource, site: Site | None = None) -> Engine:
    """This process's engine for shipped pathways: built once per process, pathway set and site."""
    key = hashlib.sha256(repr((source, site)).encode()).hexdigest()
    hit = _SHIPPED.get(key)
    if hit is None:
        tmp = tempfile.TemporaryDirectory(prefix="carepath-pathways-")
        for name, content in source:
            Path(tmp.name, name).write_bytes(content)
        hit = (tmp, Engine.from_directory(tmp.name, site))
        _SHIPPED[key] = hit
    return hit[1]


def shipped_task(source: PathwaySource, site: Site | None, lines: list[Line]) -> ChunkResult:
    """The Dask task: same evaluation as the local backend, engine built from shipped pathways."""
    with _LOCK:
        return evaluate_lines(engine_for_source(source, site), lines)


# ---------------------------------------------------------------- reading
def read_lines(stream: IO[bytes]) -> Iterator[Line]:
    """Non-blank lines with their 1-based numbers; a line over the case limit is not kept in memory."""
    lineno = 0
    limit = MAX_CASE_BYTES + 2
    while True:
        raw = stream.readline(limit)
        if not raw:
            return
        lineno += 1
        if len(raw) >= limit and not raw.endswith(b"\n"):
            while True:  # drain the rest of the oversized line in bounded pieces
                more = stream.readline(1 << 20)
                if not more or more.endswith(b"\n"):
                    break
            yield lineno, None
            continue
        if raw.isspace():
            continue
        yield lineno, raw


def chunked(lines: Iterator[Line], size: int) -> Iterator[list[Line]]:
    buf: list[Line] = []
    for item in lines:
        buf.append(item)
        if len(buf) >= size:
            yield buf
            buf = []
    if buf:
        yield buf


# ---------------------------------------------------------------- progress
class Progress:
    """The batch's progress bar on stderr, drawn by tqdm: input bytes read out of the file's size
    (bar, percentage, ETA) when the size is known, else a count of cases with their rate; the cases
    done and their rate ride along as a postfix. Silent when ``enabled`` is false (stderr is not a
    terminal: tests, CI and pipes get no bar), and then tqdm is not even imported."""

    def __init__(self, stream: IO[str], total_bytes: int | None, enabled: bool) -> None:
        self.stream = stream
        self.total = total_bytes or None
        self.enabled = enabled
        self.start = time.monotonic()
        self._bar: Any = None
        if not enabled:
            return
        from tqdm import tqdm

        class _Bar(tqdm):  # type: ignore[type-arg]
            monitor_interval = 0  # no monitor thread: the run forks its worker processes after this

        common: dict[str, Any] = {"file": stream, "dynamic_ncols": True, "mininterval": 0.25, "leave": True}
        if self.total:
            self._bar = _Bar(total=self.total, unit="B", unit_scale=True, **common)
        else:
            self._bar = _Bar(total=None, unit=" cases", **common)

    def update(self, cases: int, done_bytes: int | None, force: bool = False) -> None:
        bar = self._bar
        if bar is None:
            return
        rate = cases / max(time.monotonic() - self.start, 1e-9)
        if self.total:
            bar.set_postfix_str(f"{cases:,} cases, {rate:,.0f} cases/s", refresh=False)
            done = min(done_bytes, self.total) if done_bytes is not None else bar.n
            bar.update(done - bar.n)  # tqdm redraws at most every mininterval
        else:
            bar.update(cases - bar.n)
        if force:
            bar.refresh()

    def close(self) -> None:
        """Leave the last state of the bar on its line and end the line (also on Ctrl-C and SIGTERM:
        the run's finally calls this); a second close does nothing."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


# ---------------------------------------------------------------- the run
class _Future(Protocol):
    def result(self) -> ChunkResult: ...
    def done(self) -> bool: ...
    def cancel(self) -> bool: ...


@dataclass
class BatchStats:
    cases: int = 0
    errors: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    signum: int = 0  # what interrupted the run: SIGINT (Ctrl-C) or SIGTERM
    lines_done: int = 0
    workers: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.cases / self.seconds if self.seconds else 0.0


class _ReadInterrupted(Exception):
    """Ctrl-C or SIGTERM while the run waited for input (see _Interrupt.reading)."""


class _Interrupt:
    """Ctrl-C or SIGTERM sets a flag that the run checks between steps (never an exception at an
    arbitrary point); a second one aborts at once. While the run waits for input (``reading``: an
    open, idle stdin) the signal also ends the wait, which would otherwise last until the next line."""

    def __init__(self) -> None:
        self.flag = False
        self.reading = False
        self.signum = 0  # the first signal: SIGINT or SIGTERM
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> _Interrupt:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.flag = True
        self.signum = self.signum or signum
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, raise_terminated)
        if self.reading:
            raise _ReadInterrupted

    def next_chunk(self, chunks: Iterator[list[Line]]) -> list[Line] | None:
        """The next chunk; None at the end of the input or when interrupted while reading it (the
        lines of a chunk not yet sent are not evaluated: the run stops there)."""
        try:
            self.reading = True
            try:
                return next(chunks, None)
            finally:
                self.reading = False
        except _ReadInterrupted:
            return None

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self.previous.items():
            signal.signal(sig, previous)


def _drive(
    submit: Callable[[list[Line]], _Future],
    chunks: Iterator[list[Line]],
    out: IO[bytes],
    inflight: int,
    progress: Progress,
    position: Callable[[], int | None],
) -> BatchStats:
    """Keep at most `inflight` chunks in flight; write results in input order; on Ctrl-C write what is done."""
    stats = BatchStats()
    t0 = time.perf_counter()
    pending: deque[tuple[int, _Future]] = deque()

    def wait_oldest(stop: _Interrupt) -> bool:
        """Write the oldest chunk once done; False if interrupted while waiting."""
        last_line, fut = pending[0]
        while not fut.done():
            if stop.flag:
                return False
            time.sleep(0.002)
        data, ok, bad = fut.result()
        pending.popleft()
        out.write(data)
        stats.cases += ok + bad
        stats.errors += bad
        stats.lines_done = last_line
        progress.update(stats.cases, position())
        return True

    with _Interrupt() as stop:
        try:
            while (chunk := stop.next_chunk(chunks)) is not None:
                if stop.flag:
                    break
                pending.append((chunk[-1][0], submit(chunk)))
                while (len(pending) >= inflight or (pending and pending[0][1].done())) and wait_oldest(stop):
                    pass
            while pending and not stop.flag and wait_oldest(stop):
                pass
            if stop.flag:  # finish the chunks already running, in order, up to the first cancelled one
                stats.interrupted = True
                stats.signum = stop.signum
                for _, fut in pending:
                    fut.cancel()
                while pending:
                    try:
                        stop.flag = False
                        wait_oldest(stop)
                    except Exception:  # cancelled: nothing after it is written
                        break
        finally:
            out.flush()
            stats.seconds = time.perf_counter() - t0
            progress.update(stats.cases, position(), force=True)
            progress.close()
    return stats


def run_batch(
    source: IO[bytes],
    out: IO[bytes],
    *,
    workers: int | None = None,
    pathways: str | None = None,
    backend: str = "local",
    scheduler: str | None = None,
    chunk_lines: int | None = None,
    progress: Progress | None = None,
    total_bytes: int | None = None,
    site: Site | None = None,
) -> BatchStats:
    """Evaluate every line of `source` into `out`; see the module docstring. ``site``: the site
    profile every worker's engine uses (carepath.site; None: the default)."""
    workers = max(1, workers or os.cpu_count() or 1)
    _check_pathways(pathways, site)
    site = site.portable() if site is not None else None
    progress = progress or Progress(sys.stderr, None, False)
    tell = _tell(source)
    if backend not in ("local", "dask"):
        raise ValueError(f"unknown backend {backend!r} (local or dask)")
    chunk = chunk_lines or (CHUNK_LINES if backend == "local" else 4 * CHUNK_LINES)
    chunks, workers = _fill(chunked(read_lines(source), chunk), workers)
    if backend == "local":
        stats = _run_local(chunks, out, workers, pathways, site, progress, tell)
    else:
        stats = _run_dask(chunks, out, workers, pathways, site, scheduler, progress, tell)
    stats.workers = workers
    return stats


def _fill(chunks: Iterator[list[Line]], workers: int) -> tuple[Iterator[list[Line]], int]:
    """Read ahead up to `workers` chunks so that no more workers start than there are chunks for
    (a 40-line cohort needs one process, however many --workers asked for)."""
    first = list(itertools.islice(chunks, workers))
    return itertools.chain(first, chunks), max(1, min(workers, len(first)))


def _check_pathways(pathways: str | None, site: Site | None = None) -> None:
    """Fail fast, in the main process, with the pathway (and site profile) diagnostics, not a broken worker pool."""
    from .. import lang
    from ..validate import validate_paths

    checked, diags = validate_paths([pathways or bundled_pathways()], bundled_pathways())
    if diags:
        raise PathwayError(diags)
    if site is not None:
        site.check(lang.Vocabulary({}, frozenset(), capabilities={k: v for cp in checked for k, v in cp.vocab.capabilities.items()}))


def _tell(source: IO[bytes]) -> Callable[[], int | None]:
    try:
        source.tell()
    except (OSError, ValueError):
        return lambda: None
    return source.tell


def _run_local(
    chunks: Iterator[list[Line]],
    out: IO[bytes],
    workers: int,
    pathways: str | None,
    site: Site | None,
    progress: Progress,
    tell: Callable[[], int | None],
) -> BatchStats:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_local_worker, initargs=(pathways, site, os.getpid()))
    try:
        stats = _drive(lambda c: pool.submit(_local_task, c), chunks, out, workers * INFLIGHT_PER_WORKER, progress, tell)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return stats


def _run_dask(
    chunks: Iterator[list[Line]],
    out: IO[bytes],
    workers: int,
    pathways: str | None,
    site: Site | None,
    scheduler: str | None,
    progress: Progress,
    tell: Callable[[], int | None],
) -> BatchStats:
    import importlib
    import logging

    try:  # typed as Any: distributed ships no complete annotations
        dist: Any = importlib.import_module("distributed")
    except ImportError:
        raise CarepathError("the dask backend needs the optional extra: pip install 'carepath[dask]'") from None
    Client, LocalCluster = dist.Client, dist.LocalCluster

    shipped = read_source(pathways)
    cluster = None
    if scheduler:
        try:
            client = Client(scheduler)
        except (OSError, ValueError, TypeError) as exc:  # unreachable, or not a scheduler address
            raise CarepathError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
    else:  # one single-threaded worker process per core: one engine per process, no threads inside it
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.ERROR)
        client = Client(cluster)
    try:
        nworkers = max(1, len(client.scheduler_info().get("workers", {})) or workers)
        src = client.scatter([shipped], broadcast=True)[0]
        return _drive(
            lambda c: client.submit(shipped_task, src, site, c, pure=False),
            chunks,
            out,
            nworkers * INFLIGHT_PER_WORKER,
            progress,
            tell,
        )
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
