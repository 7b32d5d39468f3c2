"""ValidatePathway off the evaluation workers: each call is checked in a child process of its own,
at most MAX_RUNNING at a time with at most MAX_WAITING more queued (beyond that: RESOURCE_EXHAUSTED),
at a lower CPU priority than the workers (nice +NICE) and killed at its deadline (at most TIMEOUT s).

The source is bounded before it is sent (MAX_SOURCE bytes) and the YAML loader bounds nesting and
node count (carepath.load: MAX_DEPTH, MAX_NODES), so a hostile document is refused, never worked on
without limit; and since it runs in its own process, even a slow one only costs that process.
"""

from __future__ import annotations

import asyncio
import os
import time
import traceback
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from typing import Any

from carepath.validate import validate_source, vocabulary_text

MAX_SOURCE = 1 << 20  # UTF-8 bytes of ValidatePathwayRequest.source (the bundled pathways are 50-60 KB each)
MAX_RUNNING = 1  # validations at a time (each a process, below the workers' priority)
MAX_WAITING = 4  # calls queued for a turn; more are refused with RESOURCE_EXHAUSTED
TIMEOUT = 20.0  # seconds a validation may run at most (less if the caller's deadline is nearer)
NICE = 10


class Busy(Exception):
    """Too many validations running and waiting."""


class Failed(Exception):
    """The validation failed (a bug, or its process was killed): why, and the child's traceback if any."""

    def __init__(self, error: str, traceback: str) -> None:
        super().__init__(error)
        self.error, self.traceback = error, traceback


class TimedOut(Exception):
    """The validation did not finish by its deadline (its process was killed)."""


def check(source: str, file: str, dictionary: tuple[str, str]) -> dict[str, Any]:
    """Validate pathway text against a dictionary (name, text): the diagnostics and, when valid, the pathway."""
    checked, diags = validate_source(source, file, vocabulary_text(dictionary[1], dictionary[0]))
    info = None
    if checked is not None and not diags:
        info = checked.info(file)
    return {"diagnostics": [(d.file, d.line, d.col, d.path, d.message, str(d)) for d in diags], "pathway": info}


def _child(conn: Connection, source: str, file: str, dictionary: tuple[str, str]) -> None:
    os.nice(NICE)
    try:
        result: tuple[str, Any] = ("ok", check(source, file, dictionary))
    except Exception as exc:  # a bug: the front end logs it, with this traceback, under the caller's request id
        result = ("error", (f"{type(exc).__name__}: {exc}"[:1000], "".join(traceback.format_exception(exc))))
    conn.send(result)
    conn.close()


class Validator:
    def __init__(self, ctx: BaseContext) -> None:
        self.ctx = ctx
        self._turns = asyncio.Semaphore(MAX_RUNNING)
        self._waiting = 0

    async def validate(self, source: str, file: str, dictionary: tuple[str, str], deadline: float) -> dict[str, Any]:
        """check() in a child process; Busy when the queue is full, TimedOut past the deadline (or
        TIMEOUT), Failed if the child failed."""
        if self._waiting >= MAX_WAITING:
            raise Busy(f"{MAX_RUNNING + MAX_WAITING} ValidatePathway calls are running or waiting")
        deadline = min(deadline, time.monotonic() + TIMEOUT)
        self._waiting += 1
        try:
            left = deadline - time.monotonic()
            try:
                await asyncio.wait_for(self._turns.acquire(), max(left, 0.0))
            except TimeoutError:
                raise TimedOut("deadline exceeded waiting for a turn") from None
        finally:
            self._waiting -= 1
        try:
            return await self._run(source, file, dictionary, deadline)
        finally:
            self._turns.release()

    async def _run(self, source: str, file: str, dictionary: tuple[str, str], deadline: float) -> dict[str, Any]:
        parent, child = self.ctx.Pipe(duplex=False)
        args = (child, source, file, dictionary)
        proc = self.ctx.Process(target=_child, args=args, name="carepath-validate", daemon=True)  # type: ignore[attr-defined]
        try:
            proc.start()
        except OSError as exc:  # the child died while it was being handed its work (e.g. killed): a fault, not a bad pathway
            parent.close()
            child.close()
            raise Failed(f"the validation process could not be started: {type(exc).__name__}: {exc}", "") from None
        child.close()
        try:
            ready = await asyncio.to_thread(parent.poll, max(deadline - time.monotonic(), 0.0))
            if not ready:
                raise TimedOut("the validation did not finish by its deadline")
            try:
                status, payload = await asyncio.to_thread(parent.recv)
            except EOFError:
                await asyncio.to_thread(proc.join, 5.0)
                raise Failed(f"the validation process ended without a result (exit code {proc.exitcode})", "") from None
            if status != "ok":
                raise Failed(*payload)
            result: dict[str, Any] = payload
            return result
        finally:
            parent.close()
            if proc.is_alive():
                proc.kill()
            await asyncio.to_thread(proc.join, 5.0)
