"""The pgfleet.v1 Python stubs, generated from proto/ at run time (with
grpcio-tools), so that the examples cannot drift from the binaries they talk to."""

from __future__ import annotations

import atexit
import shutil
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parents[3] / "proto"

_generated: str | None = None


def generate(proto_dir: Path = PROTO_DIR) -> None:
    """Compiles every pgfleet/v1 .proto into a temporary directory, once per
    process, and puts it on sys.path: then ``from pgfleet.v1 import query_pb2``."""
    global _generated
    if _generated is not None:
        return
    from grpc_tools import protoc
    import grpc_tools

    out = tempfile.mkdtemp(prefix="pgfleet-stubs-")
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    include = Path(grpc_tools.__file__).parent / "_proto"
    protos = sorted(str(p.relative_to(proto_dir)) for p in (proto_dir / "pgfleet" / "v1").glob("*.proto"))
    status = protoc.main([
        "grpc_tools.protoc",
        f"-I{proto_dir}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        *protos,
    ])
    if status != 0:
        raise RuntimeError(f"protoc could not compile the pgfleet protos in {proto_dir}")
    sys.path.insert(0, out)
    _generated = out
