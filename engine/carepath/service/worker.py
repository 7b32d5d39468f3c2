"""A worker process: one compiled Engine, jobs in over a pipe, replies out, strictly one at a time.

durable-rules is not thread-safe, so each worker owns its engine and runs a single thread.
Messages are pickled tuples framed as multiprocessing.connection frames them (a 4-byte length):
  in:  (job_id, kind, payload, deadline)   kind "eval": EvaluateRequest bytes; "batch": a list of them
  out: (job_id, status, payload, meta)      job_id 0 is the start-up report: "ready" or "failed";
                                           a batch's payload is [(status, payload, meta), ...] in order
"""

from __future__ import annotations

import gc
import json
import os
import pickle
import re
import signal
import socket
import struct
import sys
import time
import traceback
import uuid
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson
from google.protobuf.message import DecodeError

from carepath.case import LISTS, parse_json, too_many
from carepath.cds import respond as cds_respond
from carepath.errors import CaseError, FieldViolation, PathwayError, UnknownPathwayError
from carepath.evaluate import Engine
from carepath.fhir import FhirInputError
from carepath.service.convert import case_to_dict
from carepath.service.encode import ResponseEncoder
from carepath.settings import bundled_pathways
from carepath.site import Site
from carepath.validate import SourceSet, read_set
from carepath_client._proto.v1 import decision_service_pb2 as ds

# statuses a worker replies with (mapped to gRPC codes in carepath.service.status)
OK, CASE_ERROR, NOT_FOUND, DEADLINE, INTERNAL, READY, FAILED = "ok", "case_error", "not_found", "deadline", "internal", "ready", "failed"
BATCH = "batch"  # the reply to a batch job: its payload holds one (status, payload, meta) per case
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")  # what a caller's request_id must be (it is echoed and logged)
Meta = tuple[str, str | None, bool]  # (request id, patient id, whether the caller's request id was replaced)
LATE: tuple[str, Any, Meta] = (DEADLINE, "deadline exceeded before the case was evaluated", ("", None, False))


def clean_request_id(rid: str) -> tuple[str, bool]:
    """The request id to use and whether the caller's was replaced. Empty: one is made up. Anything
    but an id (REQUEST_ID: e.g. a name and a birth date, or 10,000 characters) is replaced by a made-up
    one, never echoed or logged; the response carries the one used."""
    if rid and REQUEST_ID.fullmatch(rid):
        return rid, False
    return uuid.uuid4().hex[:16], bool(rid)


_second = (0, "")  # the last whole second formatted by utc_now, kept: a log line costs one format a second


def utc_now(t: float | None = None) -> str:
    """Now (or time.time() ``t``) in UTC, ISO 8601 to the millisecond (2026-12-07T05:55:00.123Z):
    every log line's "ts"."""
    global _second
    if t is None:
        t = time.time()
    whole = int(t)
    if whole != _second[0]:
        _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{_second[1]}.{int((t - whole) * 1000):03d}Z"


def _late(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() > deadline


def internal_error_line(method: str, request_id: str, exc: BaseException, **more: Any) -> str:
    """A bug met while serving, as one JSON log line: the request id the caller got in its INTERNAL
    status, and the traceback as a field (the front end and the workers both write these)."""
    fields = {"ts": utc_now(), "event": "internal_error", "method": method, "request_id": request_id, **more}
    fields["error"] = f"{type(exc).__name__}: {exc}"[:1000]
    fields["traceback"] = "".join(traceback.format_exception(exc))
    return json.dumps(fields)


def log_internal(request_id: str, method: str, **more: Any) -> None:
    """The exception being handled in this worker, on stderr (the service's log)."""
    exc = sys.exc_info()[1]
    assert exc is not None, "log_internal is called from an except block"
    print(internal_error_line(method, request_id, exc, **more, pid=os.getpid()), file=sys.stderr, flush=True)


def pathway_info(engine: Engine) -> list[dict[str, str]]:
    """What PathwayService tells callers about the serving set: "file" is the file's name in the
    pathway directory, never the server's path to it."""
    return [p.info(source=True) for p in engine.pathways]


class Worker:
    def __init__(self, engine: Engine, sources: SourceSet) -> None:
        self.engine = engine
        self.sources = sources
        self.encoder = ResponseEncoder()  # the response bytes of the engine's decisions, with what it keeps of them

    def handle(self, kind: str, payload: Any, deadline: float | None) -> tuple[str, Any, Meta]:
        if kind == "batch":
            return BATCH, [self.one(raw, deadline) for raw in payload], ("", None, False)
        if _late(deadline):
            return LATE
        if kind == "eval":
            return self.evaluate(payload, "Evaluate")
        if kind == "cds":
            return self.cds(payload)
        if kind == "cds_discovery":
            return OK, orjson.dumps(cds_respond.discovery(self.engine)), ("", None, False)
        raise ValueError(f"unknown job kind {kind!r}")

    def one(self, raw: bytes, deadline: float | None) -> tuple[str, Any, Meta]:
        """One case of a batch: its own deadline check and its own error result."""
        if _late(deadline):
            return LATE
        return self.evaluate(raw, "EvaluateStream")

    def evaluate(self, payload: bytes, method: str) -> tuple[str, Any, Meta]:
        try:
            req = ds.EvaluateRequest.FromString(payload)
        except DecodeError:
            return CASE_ERROR, [("", "the request is not a valid carepath.v1.EvaluateRequest")], ("", None, False)
        rid, replaced = clean_request_id(req.request_id)  # made up here if need be: the front end reports this one
        which = req.WhichOneof("input")
        patient: str | None = None
        try:
            if which == "case":
                long = too_many((k, len(getattr(req.case, k))) for k in LISTS)  # before converting any item
                if long:
                    raise CaseError(long)
                data: Any = case_to_dict(req.case)
            elif which == "case_json":
                data = parse_json(req.case_json)
            else:
                raise CaseError([FieldViolation("case", "required field is missing (set case or case_json)")])
            if isinstance(data, dict) and isinstance(data.get("patient_id"), str):
                patient = data["patient_id"][:128]
            decision = self.engine.evaluate(data, list(req.pathway_ids) or None)
            return OK, self.encoder.encode(rid, decision), (rid, patient, replaced)
        except CaseError as exc:
            return CASE_ERROR, [(v.field, v.message) for v in exc.violations], (rid, patient, replaced)
        except UnknownPathwayError as exc:
            return NOT_FOUND, str(exc), (rid, patient, replaced)
        except Exception:  # a bug: logged with the request id the caller gets in the INTERNAL status
            log_internal(rid, method)
            return INTERNAL, "internal error", (rid, patient, replaced)

    def cds(self, job: dict[str, Any]) -> tuple[str, Any, Meta]:
        """A CDS Hooks call (carepath.cds.respond): the response JSON as bytes, or why the data make no case."""
        rid = str(job.get("request_id", ""))
        try:
            response = cds_respond.respond(self.engine, job)
            ids = [c["uuid"] for c in response["cards"]]
            return OK, (orjson.dumps(response), ids), (rid, job.get("patient_id"), False)
        except CaseError as exc:
            return CASE_ERROR, [(v.field, v.message) for v in exc.violations], (rid, job.get("patient_id"), False)
        except FhirInputError as exc:
            return CASE_ERROR, [("prefetch", str(exc))], (rid, job.get("patient_id"), False)
        except Exception:  # a bug: logged with the request id the caller gets
            log_internal(rid, "cds")
            return INTERNAL, "internal error", (rid, job.get("patient_id"), False)


def load(pathways: str | SourceSet | None, site: Site | None = None) -> tuple[Engine, SourceSet]:
    """The engine of a pathway directory (read into memory first: the engine is compiled from exactly
    the text the worker reports back) or of a set already in memory (a replacement worker's: no file
    is read, so what is on disk now cannot stop it)."""
    if isinstance(pathways, SourceSet):
        return Engine.from_sources(pathways, site), pathways
    directory = Path(pathways) if pathways else bundled_pathways()
    sources, diags = read_set([directory], bundled_pathways())
    if sources is None or diags:
        raise PathwayError(diags)
    return Engine.from_sources(sources, site), sources


def main(conn: Connection, pathways: str | SourceSet | None, site: Site | None = None, warm_fhir: bool = False) -> None:
    """The worker's entry point (a forkserver/spawn child)."""
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    try:
        engine, sources = load(pathways, site)
    except PathwayError as exc:
        conn.send_bytes(pickle.dumps((0, FAILED, [str(d) for d in exc.diagnostics], None)))
        return
    except Exception as exc:
        conn.send_bytes(pickle.dumps((0, FAILED, [f"{type(exc).__name__}: {exc}"], None)))
        return
    if warm_fhir:  # CDS Hooks is served: fhir.resources' models loaded before ready, not in the first call
        try:
            cds_respond.warm(engine)
        except Exception:
            log_internal("", "warm")
    conn.send_bytes(pickle.dumps((0, READY, (pathway_info(engine), sources), None)))
    worker = Worker(engine, sources)
    gc.freeze()  # the compiled engine lives as long as the process: keep it out of every collection
    # Buffered reads: jobs that arrived together come in with one read; one write per reply.
    sock = socket.socket(fileno=os.dup(conn.fileno()))
    rfile = sock.makefile("rb", buffering=1 << 16)
    while True:  # ends when the front end closes the pipe
        try:
            raw = _recv(rfile)
        except (EOFError, OSError):
            return
        job_id, kind, payload, deadline = pickle.loads(raw)
        try:
            status, out, meta = worker.handle(kind, payload, deadline)
        except Exception:  # outside any one request (the requests log their own, with their ids)
            log_internal("", kind, job=job_id)
            status, out, meta = INTERNAL, "internal error", ("", None, False)
        try:
            sock.sendall(frame(pickle.dumps((job_id, status, out, meta), protocol=pickle.HIGHEST_PROTOCOL)))
        except OSError:
            return


# The framing of multiprocessing.connection, shared with the front end (carepath.service.pool):
# a 4-byte big-endian length, or -1 and an 8-byte length for a frame over 2 GiB.
HEADER = struct.Struct("!i")
BIG = struct.Struct("!Q")


def frame(data: bytes) -> bytes:
    n = len(data)
    if n > 0x7FFFFFFF:
        return HEADER.pack(-1) + BIG.pack(n) + data
    return HEADER.pack(n) + data


def _recv(rfile: Any) -> bytes:
    """One frame (multiprocessing.connection's framing); EOFError at the end of the pipe."""
    head = rfile.read(4)
    if len(head) < 4:
        raise EOFError
    (n,) = HEADER.unpack(head)
    if n == -1:
        big = rfile.read(8)
        if len(big) < 8:
            raise EOFError
        (n,) = BIG.unpack(big)
    data: bytes = rfile.read(n)
    if len(data) < n:
        raise EOFError
    return data
