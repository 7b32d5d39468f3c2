"""The worker pool behind the gRPC front end: generations of worker processes, one per pathway set.

A generation is N worker processes that compiled the same pathway set. A reload builds a new
generation beside the serving one and swaps it in only when every worker came up with the same,
valid set; the old generation finishes what it holds, then exits. A worker that dies is replaced
from the set its generation compiled, kept in memory (validate.SourceSet: the text of every file as
the generation read it), never from the files on disk, which may have changed or broken since; the
pool keeps trying (with backoff, RESTORE_BACKOFF) for as long as the generation serves. The jobs a
dead worker held are retried once on another worker, else fail with Unavailable. Nothing waits
without a bound. Pool.on_change is called whenever the number of live serving workers changes (the
front end's health follows it).

The hot path is lean: each worker's socket is an asyncio.Protocol that unpickles the replies as
they arrive and resolves the job's future directly (no reader task, no StreamReader); a job's
deadline is one loop timer (no wait_for/shield); jobs submitted in the same loop iteration go to
the worker in one write. A stream's cases travel as batches (one job, one reply, per-case results).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import multiprocessing
import os
import pickle
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.context import BaseContext
from typing import Any, cast

from carepath.service import worker as worker_mod
from carepath.site import Site
from carepath.validate import SourceSet

log = logging.getLogger("carepath.service")
START_TIMEOUT = 120.0
RESTORE_BACKOFF = (0.5, 30.0)  # seconds before the first retry to restore a dead worker, doubling up to the second
REAP_WAIT = 10.0  # seconds to wait for a dead worker's exit status (forkserver children are reaped by the forkserver)
PACK = 4  # cases a worker may hold before the next one gets work (Generation.pick)
_HEADER, _BIG = worker_mod.HEADER, worker_mod.BIG  # the worker's framing, read here
_PICKLE = pickle.HIGHEST_PROTOCOL


class PoolError(Exception):
    """A job could not be done by any worker."""


class Unavailable(PoolError):
    pass


class DeadlineExceeded(PoolError):
    pass


class LoadFailed(Exception):
    """A pathway set was refused: its diagnostics (or start-up errors)."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("\n".join(errors))


@dataclass(slots=True)
class Reply:
    status: str
    payload: Any
    request_id: str
    patient_id: str | None
    pathway_set: int
    replaced: bool = False  # the caller's request id was not an id: request_id is made up


@dataclass(slots=True)
class _Job:
    job_id: int
    kind: str
    payload: Any
    deadline: float | None
    future: asyncio.Future[Any]
    attempts: int = 0
    size: int = 1  # cases: a batch counts for each of its cases when picking a worker


class _WorkerDied(Exception):
    pass


def _context() -> BaseContext:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["carepath.service.worker", "carepath.service.validator"])
    return ctx


class _Wire(asyncio.Protocol):
    """The front end's side of one worker's socket: length-prefixed pickles (multiprocessing's framing)."""

    def __init__(self, proc: _Proc) -> None:
        self.proc = proc
        self.transport: asyncio.Transport | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.buf = b""
        self.out: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio.Transport subclasses
        self.loop = asyncio.get_running_loop()

    def data_received(self, data: bytes) -> None:
        if self.buf:
            data = self.buf + data
        end = len(data)
        pos = 0
        view = memoryview(data)
        try:
            while end - pos >= 4:
                (n,) = _HEADER.unpack_from(data, pos)
                start = pos + 4
                if n == -1:
                    if end - start < 8:
                        break
                    (n,) = _BIG.unpack_from(data, start)
                    start += 8
                if end - start < n:
                    break
                pos = start + n
                self.proc.on_message(pickle.loads(view[start:pos]))
        finally:
            view.release()
        self.buf = data[pos:] if pos < end else b""

    def connection_lost(self, exc: Exception | None) -> None:
        self.proc.on_lost()

    def send(self, data: bytes) -> None:
        """Queue a frame; everything queued in one loop iteration goes out in one write."""
        if not self.out:
            (self.loop or asyncio.get_running_loop()).call_soon(self.flush)
        self.out.append(worker_mod.frame(data))

    def flush(self) -> None:
        out, self.out = self.out, []
        if self.transport is not None and not self.transport.is_closing() and out:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))


@dataclass(eq=False)
class _Proc:
    gen: Generation
    index: int
    proc: Any = None
    wire: _Wire | None = None
    pending: dict[int, _Job] = field(default_factory=dict)
    load: int = 0  # cases held (a batch counts each case)
    alive: bool = False
    started: asyncio.Future[tuple[str, Any]] | None = None

    async def start(self, ctx: BaseContext, source: str | SourceSet | None) -> tuple[list[dict[str, str]], SourceSet]:
        """Start the worker on a pathway directory, or on a set in memory; its pathways and the set it compiled."""
        loop = asyncio.get_running_loop()
        parent, child = multiprocessing.Pipe(duplex=True)
        self.proc = ctx.Process(  # type: ignore[attr-defined]
            target=worker_mod.main,
            args=(child, source, self.gen.pool.site, self.gen.pool.warm_fhir),
            name=f"carepath-worker-{self.gen.number}.{self.index}",
            daemon=True,
        )
        self.proc.start()
        child.close()
        sock = socket.socket(fileno=os.dup(parent.fileno()))
        parent.close()
        sock.setblocking(False)
        self.started = loop.create_future()
        wire = self.wire = _Wire(self)
        await loop.create_connection(lambda: wire, sock=sock)
        try:
            status, payload = await asyncio.wait_for(asyncio.shield(self.started), START_TIMEOUT)
        except BaseException:
            await self.stop()
            raise
        if status != worker_mod.READY:
            await self.stop()
            raise LoadFailed(list(payload))
        self.alive = True
        origin = "memory" if isinstance(source, SourceSet) else "files"
        event = {"event": "worker_started", "pathway_set": self.gen.number, "worker": self.index, "pid": self.proc.pid, "from": origin}
        log.info(json.dumps(event))
        info, sources = payload
        return list(info), sources

    def on_message(self, msg: tuple[int, str, Any, Any]) -> None:
        job_id, status, payload, meta = msg
        if job_id == 0:  # the start-up report
            if self.started is not None and not self.started.done():
                self.started.set_result((status, payload))
            return
        job = self.pending.pop(job_id, None)
        if job is None:
            return
        self.load -= job.size
        if job.future.done():
            return
        number = self.gen.number
        if job.kind == "batch":
            if status == worker_mod.BATCH:
                job.future.set_result([Reply(s, p, m[0], m[1], number, m[2]) for s, p, m in payload])
            else:  # the batch failed as a whole (an internal error): every case gets that reply
                job.future.set_result([Reply(status, payload, "", None, number) for _ in job.payload])
        else:
            job.future.set_result(Reply(status, payload, meta[0], meta[1], number, meta[2]))

    def on_lost(self) -> None:
        if self.started is not None and not self.started.done():
            self.started.set_result((worker_mod.FAILED, ["the worker exited while starting"]))
        self._died()

    def _died(self) -> None:
        if not self.alive:
            return
        self.alive = False
        jobs, self.pending, self.load = list(self.pending.values()), {}, 0
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(_WorkerDied())
        self.gen.on_death(self)

    def submit(self, job: _Job) -> None:
        assert self.wire is not None
        self.pending[job.job_id] = job
        self.load += job.size
        self.wire.send(pickle.dumps((job.job_id, job.kind, job.payload, job.deadline), protocol=_PICKLE))

    def forget(self, job: _Job) -> None:
        if self.pending.pop(job.job_id, None) is not None:
            self.load -= job.size

    async def stop(self, timeout: float = 5.0) -> None:
        """Close the pipe (the worker exits at EOF); kill it if it does not."""
        self.alive = False
        if self.wire is not None and self.wire.transport is not None:
            self.wire.flush()
            self.wire.transport.close()
        jobs, self.pending, self.load = list(self.pending.values()), {}, 0
        for job in jobs:  # jobs still held (a retired set past its grace): retried on the serving set
            if not job.future.done():
                job.future.set_exception(_WorkerDied())
        if self.proc is not None:
            proc = self.proc
            await asyncio.to_thread(proc.join, timeout)
            if proc.is_alive():
                proc.kill()
                await asyncio.to_thread(proc.join, 2.0)

    def exit_status(self) -> dict[str, Any]:
        """How the (reaped) process ended: its exit code, or the signal that killed it."""
        code: int | None = None if self.proc is None else self.proc.exitcode
        if code is None:
            return {"exitcode": None}
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = str(-code)
            return {"exitcode": code, "signal": name}
        return {"exitcode": code}


class Generation:
    """N workers that compiled one pathway set."""

    def __init__(self, pool: Pool, number: int, pathways: str | None, size: int) -> None:
        self.pool = pool
        self.number = number
        self.pathways = pathways
        self.size = size
        self.workers: list[_Proc] = []
        self.info: list[dict[str, str]] = []
        self.sources: SourceSet | None = None  # the set its workers compiled: what a replacement compiles
        self.retired = False
        self.ready = asyncio.Event()
        self._index = itertools.count()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def fingerprint(self) -> list[tuple[str, str, str]]:
        return [(p["id"], p["version"], p["sha256"]) for p in self.info]

    async def start(self) -> None:
        procs = [_Proc(self, next(self._index)) for _ in range(self.size)]
        results = await asyncio.gather(*(p.start(self.pool.ctx, self.pathways) for p in procs), return_exceptions=True)
        errors: list[str] = []
        sets = set()
        for r in results:
            if isinstance(r, LoadFailed):
                errors = r.errors
            elif isinstance(r, BaseException):
                errors = errors or [f"worker failed to start: {type(r).__name__}: {r}"]
            else:
                info, sources = r
                sets.add(tuple((i["id"], i["version"], i["sha256"]) for i in info))
                self.info, self.sources = info, sources
        if not errors and len(sets) > 1:
            errors = ["the pathway files changed while the workers were loading them; try again"]
        if errors:
            await asyncio.gather(*(p.stop() for p in procs))
            raise LoadFailed(errors)
        self.workers = procs
        self.ready.set()

    def pick(self) -> _Proc | None:
        """The first worker holding fewer than PACK cases, else the least loaded.

        Packing, not spreading: a job sent to a worker that is already busy waits in its socket
        and is read without waking it, where spreading woke an idle worker for nearly every call
        (the wake-up, paid in the front end's send(), was its largest single cost in py-spy)."""
        best: _Proc | None = None
        for w in self.workers:
            if w.alive:
                if w.load < PACK:
                    return w
                if best is None or w.load < best.load:
                    best = w
        return best

    def pending(self) -> int:
        return sum(len(w.pending) for w in self.workers)

    def alive(self) -> int:
        return sum(1 for w in self.workers if w.alive)

    def on_death(self, proc: _Proc) -> None:
        if proc in self.workers:
            self.workers.remove(proc)
        if not self.alive():
            self.ready.clear()
        self.pool.changed(self)
        task = asyncio.create_task(self._replace(proc))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _replace(self, dead: _Proc) -> None:
        """Reap the dead worker (its exit status is only known then), log how it ended, and start
        another on the generation's set in memory, retrying with backoff for as long as the
        generation serves (a worker that cannot start now, e.g. for want of memory, may later)."""
        await dead.stop(timeout=1.0)
        if dead.proc is not None and dead.proc.exitcode is None:
            # The process is gone (its pipe closed) but a forkserver child's status arrives only once
            # the forkserver has reaped it, which on a loaded machine can take longer than a second.
            await asyncio.to_thread(dead.proc.join, REAP_WAIT)
        log.warning(json.dumps({"event": "worker_died", "pathway_set": self.number, "worker": dead.index, **dead.exit_status()}))
        delay = RESTORE_BACKOFF[0]
        for attempt in itertools.count(1):  # until a worker is back, or the generation is retired or closed
            if self.retired or self.pool.closing or self.sources is None:
                return
            p = _Proc(self, next(self._index))
            try:
                info, _ = await p.start(self.pool.ctx, self.sources)
                if [(i["id"], i["version"], i["sha256"]) for i in info] != self.fingerprint:
                    await p.stop()
                    raise LoadFailed(["the replacement compiled a different pathway set"])
            except (TimeoutError, LoadFailed, OSError) as exc:
                failed = {"event": "worker_replace_failed", "pathway_set": self.number, "attempt": attempt, "retry_s": delay}
                log.error(json.dumps({**failed, "error": str(exc)[:1000]}))
                await asyncio.sleep(delay)
                delay = min(delay * 2, RESTORE_BACKOFF[1])
                continue
            if self.retired or self.pool.closing:
                await p.stop()
                return
            self.workers.append(p)
            self.ready.set()
            log.warning(json.dumps({"event": "worker_replaced", "pathway_set": self.number, "worker": p.index, "attempts": attempt}))
            self.pool.changed(self)
            return

    async def retire(self, timeout: float = 60.0) -> None:
        """Let in-flight jobs finish (bounded), then stop the workers."""
        self.retired = True
        end = time.monotonic() + timeout
        while self.pending() and time.monotonic() < end:
            await asyncio.sleep(0.02)
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*(w.stop() for w in self.workers))


class Pool:
    def __init__(self, pathways: str | None, size: int, site: Site | None = None, warm_fhir: bool = False) -> None:
        self.pathways = pathways
        self.warm_fhir = warm_fhir  # workers load the FHIR models before reporting ready (CDS Hooks is served)
        self.site = site.portable() if site is not None else None  # every worker's engine uses it (--site)
        self.size = max(1, size)
        self.ctx = _context()
        self.current: Generation | None = None
        self.closing = False
        self._numbers = itertools.count(1)
        self._jobs = itertools.count(1)
        self._reload_lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
        self.reload_requests: asyncio.Queue[str] = asyncio.Queue()
        self.on_change: Callable[[], None] | None = None  # the number of live serving workers changed
        # The event loop, kept: on Python 3.11 every asyncio.get_running_loop() is a getpid() system
        # call, and the hot path needed three per request (~4% of the front end's time in py-spy).
        self.loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> Generation:
        self.loop = asyncio.get_running_loop()
        gen = Generation(self, next(self._numbers), self.pathways, self.size)
        await gen.start()
        self.current = gen
        self.changed(gen)
        return gen

    def changed(self, gen: Generation) -> None:
        if gen is self.current and self.on_change is not None:
            self.on_change()

    def serving(self) -> int:
        """Live workers of the serving set (0: no call can be served until one is restored)."""
        return 0 if self.current is None or self.closing else self.current.alive()

    def request_reload(self, why: str) -> None:
        self.reload_requests.put_nowait(why)

    async def reload(self) -> Generation:
        """Build a new generation; swap it in atomically, or raise LoadFailed and keep the old one."""
        async with self._reload_lock:
            gen = Generation(self, next(self._numbers), self.pathways, self.size)
            await gen.start()
            if self.closing:
                await gen.retire(0)
                raise LoadFailed(["shutting down"])
            old, self.current = self.current, gen
            self.changed(gen)
            if old is not None:
                task = asyncio.create_task(old.retire())
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)
            return gen

    async def call(self, kind: str, payload: Any, deadline: float | None) -> Reply:
        """Run a job on a worker: retried once if its worker dies; bounded by the deadline."""
        job = _Job(next(self._jobs), kind, payload, deadline, (self.loop or asyncio.get_running_loop()).create_future())
        reply: Reply = await self._run(job)
        return reply

    async def call_batch(self, raws: list[bytes], deadline: float | None) -> list[Reply | PoolError]:
        """Evaluate several EvaluateRequests in one round trip to one worker: a result per case, in order.

        If the worker dies, each case is retried once on its own (so a case that kills its worker
        fails alone, with Unavailable); a deadline or an unavailable pool fails every case."""
        loop = self.loop or asyncio.get_running_loop()
        job = _Job(next(self._jobs), "batch", raws, deadline, loop.create_future(), size=len(raws))
        try:
            replies: list[Reply] = await self._run(job, retry=False)
            return list(replies)
        except _WorkerDied:
            pass
        except PoolError as exc:
            return [exc] * len(raws)
        singles = [_Job(next(self._jobs), "eval", raw, deadline, loop.create_future(), attempts=1) for raw in raws]
        results = await asyncio.gather(*(self._run(j) for j in singles), return_exceptions=True)
        out: list[Reply | PoolError] = []
        for r in results:
            if isinstance(r, (Reply, PoolError)):
                out.append(r)
            else:
                raise r
        return out

    async def _run(self, job: _Job, retry: bool = True) -> Any:
        loop = job.future.get_loop()
        timer = None if job.deadline is None else loop.call_at(job.deadline, _expire, job)
        try:
            while True:  # at most two attempts
                gen = self.current
                if gen is None or self.closing:
                    raise Unavailable("the service is not serving")
                proc = gen.pick()
                if proc is None:
                    try:
                        await asyncio.wait_for(gen.ready.wait(), self._remaining(job.deadline, cap=5.0))
                    except TimeoutError:
                        raise Unavailable("no worker is available") from None
                    proc = gen.pick()
                    if proc is None:
                        raise Unavailable("no worker is available")
                if job.future.done():  # the deadline passed while waiting for a worker
                    return await job.future
                job.attempts += 1
                proc.submit(job)
                try:
                    return await job.future
                except DeadlineExceeded:
                    proc.forget(job)
                    raise
                except _WorkerDied:
                    if not retry:
                        raise
                    if job.attempts >= 2:
                        raise Unavailable("the worker evaluating the case died, twice") from None
                    job.future = loop.create_future()
        finally:
            if timer is not None:
                timer.cancel()

    @staticmethod
    def _remaining(deadline: float | None, cap: float | None = None) -> float | None:
        if deadline is None:
            return cap
        left = max(0.0, deadline - time.monotonic())
        return left if cap is None else min(left, cap)

    async def close(self) -> None:
        self.closing = True
        gens = [self.current] if self.current else []
        await asyncio.gather(*(g.retire(timeout=10.0) for g in gens), *list(self._retiring))


def _expire(job: _Job) -> None:
    """The job's deadline timer (asyncio's loop clock is time.monotonic, the deadlines' clock)."""
    if not job.future.done():
        job.future.set_exception(DeadlineExceeded("deadline exceeded"))
