"""The checked-in generated code matches the protos (regenerated into a temporary directory).

What is compared is what the protos define, not which protoc made the files: the serialized
FileDescriptorProto inside each ``*_pb2.py`` (messages, fields, services, options), and the rest
of the text with the version stamps masked (grpcio-tools writes its own version into
``*_pb2_grpc.py`` and protobuf's into ``*_pb2.py``; a newer grpcio-tools changes only those).
The stamps themselves are checked against the client's floors (clients/python/pyproject.toml: the
generated code ships in carepath-client, and the engine gets grpcio and protobuf through it): an installed grpcio or
protobuf older than the stamp refuses to import the generated code.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from conftest import ROOT

CLIENT = ROOT / "clients" / "python"
CHECKED_IN = CLIENT / "carepath_client" / "_proto"
_STAMPS = (
    re.compile(r"^GRPC_GENERATED_VERSION = '[^']*'$", re.M),
    re.compile(r"^# Protobuf Python Version: .*$", re.M),
    re.compile(r"ValidateProtobufRuntimeVersion\([^)]*\)", re.S),
)


def _descriptor(text: str) -> bytes | None:
    """The serialized FileDescriptorProto a ``*_pb2.py`` registers, or None for other files."""
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "AddSerializedFile":
            arg = node.args[0]
            assert isinstance(arg, ast.Constant) and isinstance(arg.value, bytes)
            return arg.value
    return None


def _unstamped(text: str) -> str:
    for stamp in _STAMPS:
        text = stamp.sub("<stamp>", text)
    return text


def _files(root: Path) -> dict[Path, str]:
    return {p.relative_to(root): p.read_text() for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def test_generated_code_has_not_drifted(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen-protos"), "--out", str(tmp_path)], check=True, capture_output=True)
    fresh, ours = _files(tmp_path), _files(CHECKED_IN)
    assert sorted(fresh) == sorted(ours), "file list differs: run scripts/gen-protos"
    defined = {k: _descriptor(v) for k, v in ours.items() if k.suffix == ".py"}
    assert sum(d is not None for d in defined.values()) == 4, "expected one descriptor per proto file"
    drifted = [str(k) for k in fresh if _descriptor(fresh[k]) != _descriptor(ours[k])]
    assert not drifted, f"the protos define something else than the checked-in code, run scripts/gen-protos: {drifted}"
    drifted = [str(k) for k in fresh if _unstamped(fresh[k]) != _unstamped(ours[k])]
    assert not drifted, f"generated code is stale, run scripts/gen-protos: {drifted}"


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split("."))


def _floor(requirement_prefix: str) -> tuple[int, ...]:
    deps = tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]["dependencies"]
    (spec,) = [d for d in deps if re.match(rf"{requirement_prefix}\s*>=", d)]
    m = re.search(r">=\s*([\d.]+)", spec)
    assert m, spec
    return _version(m.group(1))


def test_dependency_floors_admit_only_runtimes_the_generated_code_accepts() -> None:
    texts = _files(CHECKED_IN)
    grpc_stamps = {_version(m) for t in texts.values() for m in re.findall(r"^GRPC_GENERATED_VERSION = '([^']*)'$", t, re.M)}
    pb_stamps = {_version(m) for t in texts.values() for m in re.findall(r"^# Protobuf Python Version: (\S+)$", t, re.M)}
    assert len(grpc_stamps) == 1 and len(pb_stamps) == 1, (grpc_stamps, pb_stamps)
    assert _floor("grpcio") >= max(grpc_stamps), "the client's grpcio floor is below the version the stubs need"
    assert _floor("protobuf") >= max(pb_stamps), "the client's protobuf floor is below the version the messages need"


def test_the_lock_pins_the_grpcio_tools_that_made_the_code() -> None:
    stamp = re.search(r"^GRPC_GENERATED_VERSION = '([^']*)'$", (CHECKED_IN / "v1" / "case_pb2_grpc.py").read_text(), re.M)
    assert stamp
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    pins = dict(line.split("==") for line in lines if "==" in line and not line.startswith("#"))
    assert pins["grpcio-tools"] == stamp.group(1), "constraints.txt pins another grpcio-tools: run scripts/gen-protos after scripts/lock"
