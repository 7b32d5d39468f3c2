"""The worker pool behind the gRPC front end: generations of worker processes, one per pathway set.

A generation is N worker processes that compiled the same pathway set. A reload builds a new
generation beside the serving one and swaps it in only when every worker came up with the same,
valid set; the old generation finishes what it holds, then exits. A worker that dies is replaced;
the jobs it held are retried once on another worker, else fail with Unavailable. Nothing waits
without a bound.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import multiprocessing
import os
import pickle
import socket
import struct
import time
from dataclasses import dataclass, field
from multiprocessing.context import BaseContext
from typing import Any

from carepath.service import worker as worker_mod

log = logging.getLogger("carepath.service")
START_TIMEOUT = 120.0
_HEADER = struct.Struct("!i")


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


@dataclass
class Reply:
    status: str
    payload: Any
    request_id: str
    patient_id: str | None
    pathway_set: int


@dataclass
class _Job:
    job_id: int
    kind: str
    payload: Any
    deadline: float | None
    future: asyncio.Future[Reply]
    attempts: int = 0


class _WorkerDied(Exception):
    pass


def _context() -> BaseContext:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["carepath.service.worker"])
    return ctx


@dataclass
class _Proc:
    gen: Generation
    index: int
    proc: Any = None
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    pending: dict[int, _Job] = field(default_factory=dict)
    alive: bool = False
    reader_task: asyncio.Task[None] | None = None

    async def start(self, ctx: BaseContext) -> list[dict[str, str]]:
        parent, child = multiprocessing.Pipe(duplex=True)
        self.proc = ctx.Process(  # type: ignore[attr-defined]
            target=worker_mod.main, args=(child, self.gen.pathways), name=f"carepath-worker-{self.gen.number}.{self.index}", daemon=True
        )
        self.proc.start()
        child.close()
        sock = socket.socket(fileno=os.dup(parent.fileno()))
        parent.close()
        sock.setblocking(False)
        self.reader, self.writer = await asyncio.open_connection(sock=sock)
        _, status, payload, _ = await asyncio.wait_for(self._read(), START_TIMEOUT)
        if status != worker_mod.READY:
            await self.stop()
            raise LoadFailed(list(payload))
        self.alive = True
        self.reader_task = asyncio.create_task(self._read_loop())
        log.info(json.dumps({"event": "worker_started", "pathway_set": self.gen.number, "worker": self.index, "pid": self.proc.pid}))
        return list(payload)

    async def _read(self) -> tuple[int, str, Any, Any]:
        assert self.reader is not None
        (n,) = _HEADER.unpack(await self.reader.readexactly(4))
        if n == -1:
            (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
        msg: tuple[int, str, Any, Any] = pickle.loads(await self.reader.readexactly(n))
        return msg

    async def _read_loop(self) -> None:
        try:
            while True:  # ends at EOF: the worker exited or died
                job_id, status, payload, meta = await self._read()
                job = self.pending.pop(job_id, None)
                if job is not None and not job.future.done():
                    rid, patient = meta
                    job.future.set_result(Reply(status, payload, rid, patient, self.gen.number))
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            return
        self._died()

    def _died(self) -> None:
        if not self.alive:
            return
        self.alive = False
        jobs, self.pending = list(self.pending.values()), {}
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(_WorkerDied())
        self.gen.on_death(self)

    def submit(self, job: _Job) -> None:
        assert self.writer is not None
        data = pickle.dumps((job.job_id, job.kind, job.payload, job.deadline), protocol=pickle.HIGHEST_PROTOCOL)
        self.pending[job.job_id] = job
        self.writer.write(_HEADER.pack(len(data)) + data)

    async def stop(self, timeout: float = 5.0) -> None:
        """Close the pipe (the worker exits at EOF); kill it if it does not."""
        self.alive = False
        if self.writer is not None:
            self.writer.close()
        if self.reader_task is not None:
            self.reader_task.cancel()
        if self.proc is not None:
            proc = self.proc
            await asyncio.to_thread(proc.join, timeout)
            if proc.is_alive():
                proc.kill()
                await asyncio.to_thread(proc.join, 2.0)

    def exitcode(self) -> int | None:
        code: int | None = None if self.proc is None else self.proc.exitcode
        return code


class Generation:
    """N workers that compiled one pathway set."""

    def __init__(self, pool: Pool, number: int, pathways: str | None, size: int) -> None:
        self.pool = pool
        self.number = number
        self.pathways = pathways
        self.size = size
        self.workers: list[_Proc] = []
        self.info: list[dict[str, str]] = []
        self.retired = False
        self.ready = asyncio.Event()
        self._index = itertools.count()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def fingerprint(self) -> list[tuple[str, str, str]]:
        return [(p["id"], p["version"], p["sha256"]) for p in self.info]

    async def start(self) -> None:
        procs = [_Proc(self, next(self._index)) for _ in range(self.size)]
        results = await asyncio.gather(*(p.start(self.pool.ctx) for p in procs), return_exceptions=True)
        errors: list[str] = []
        sets = set()
        for r in results:
            if isinstance(r, LoadFailed):
                errors = r.errors
            elif isinstance(r, BaseException):
                errors = errors or [f"worker failed to start: {type(r).__name__}: {r}"]
            else:
                sets.add(tuple((i["id"], i["version"], i["sha256"]) for i in r))
                self.info = r
        if not errors and len(sets) > 1:
            errors = ["the pathway files changed while the workers were loading them; try again"]
        if errors:
            await asyncio.gather(*(p.stop() for p in procs))
            raise LoadFailed(errors)
        self.workers = procs
        self.ready.set()

    def pick(self) -> _Proc | None:
        live = [w for w in self.workers if w.alive]
        if not live:
            return None
        return min(live, key=lambda w: len(w.pending))

    def pending(self) -> int:
        return sum(len(w.pending) for w in self.workers)

    def on_death(self, proc: _Proc) -> None:
        if proc in self.workers:
            self.workers.remove(proc)
        if not any(w.alive for w in self.workers):
            self.ready.clear()
        code = proc.exitcode()
        log.warning(json.dumps({"event": "worker_died", "pathway_set": self.number, "worker": proc.index, "exitcode": code}))
        if not self.retired and not self.pool.closing:
            task = asyncio.create_task(self._replace(proc))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _replace(self, dead: _Proc) -> None:
        await dead.stop(timeout=1.0)
        for attempt in range(5):  # bounded: a set that no longer loads is left to the next reload
            if self.retired or self.pool.closing:
                return
            p = _Proc(self, next(self._index))
            try:
                info = await p.start(self.pool.ctx)
            except (TimeoutError, LoadFailed, OSError) as exc:
                log.error(json.dumps({"event": "worker_replace_failed", "pathway_set": self.number, "attempt": attempt, "error": str(exc)}))
                await asyncio.sleep(1.0 + attempt)
                continue
            if [(i["id"], i["version"], i["sha256"]) for i in info] != self.fingerprint:
                await p.stop()
                log.error(
                    json.dumps({"event": "worker_replace_refused", "pathway_set": self.number, "error": "pathway files changed; reloading"})
                )
                self.pool.request_reload("pathway files changed on disk")
                return
            if self.retired or self.pool.closing:
                await p.stop()
                return
            self.workers.append(p)
            self.ready.set()
            log.warning(json.dumps({"event": "worker_replaced", "pathway_set": self.number, "worker": p.index}))
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
    def __init__(self, pathways: str | None, size: int) -> None:
        self.pathways = pathways
        self.size = max(1, size)
        self.ctx = _context()
        self.current: Generation | None = None
        self.closing = False
        self._numbers = itertools.count(1)
        self._jobs = itertools.count(1)
        self._reload_lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
        self.reload_requests: asyncio.Queue[str] = asyncio.Queue()

    async def start(self) -> Generation:
        gen = Generation(self, next(self._numbers), self.pathways, self.size)
        await gen.start()
        self.current = gen
        return gen

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
            if old is not None:
                task = asyncio.create_task(old.retire())
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)
            return gen

    async def call(self, kind: str, payload: Any, deadline: float | None) -> Reply:
        """Run a job on a worker: retried once if its worker dies; bounded by the deadline."""
        loop = asyncio.get_running_loop()
        job = _Job(next(self._jobs), kind, payload, deadline, loop.create_future())
        while True:  # at most two attempts
            gen = self.current
            if gen is None or self.closing:
                raise Unavailable("the service is not serving")
            proc = gen.pick()
            if proc is None:
                try:
                    await asyncio.wait_for(gen.ready.wait(), self._remaining(deadline, cap=5.0))
                except TimeoutError:
                    raise Unavailable("no worker is available") from None
                proc = gen.pick()
                if proc is None:
                    raise Unavailable("no worker is available")
            job.attempts += 1
            proc.submit(job)
            try:
                return await asyncio.wait_for(asyncio.shield(job.future), self._remaining(deadline))
            except TimeoutError:
                proc.pending.pop(job.job_id, None)
                raise DeadlineExceeded("deadline exceeded") from None
            except _WorkerDied:
                if job.attempts >= 2:
                    raise Unavailable("the worker evaluating the case died, twice") from None
                job.future = loop.create_future()

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
