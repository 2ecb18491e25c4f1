"""The pgfleet.v1 Python stubs, generated from proto/ at run time (with
grpcio-tools), so that the examples cannot drift from the binaries they talk to."""

from __future__ import annotations

import hashlib
import shutil
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parents[3] / "proto"

_generated: str | None = None


def generate(proto_dir: Path = PROTO_DIR) -> None:
    """Compiles every pgfleet/v1 .proto, once per version of the protos, into
    a directory under the system's temporary directory (named by a hash of
    them, so that runs share it and none is left behind), and puts it on
    sys.path: then ``from pgfleet.v1 import query_pb2``."""
    global _generated
    if _generated is not None:
        return
    from grpc_tools import protoc
    import grpc_tools

    protos = sorted((proto_dir / "pgfleet" / "v1").glob("*.proto"))
    digest = hashlib.sha256(grpc_tools.__file__.encode())
    for p in protos:
        digest.update(p.name.encode() + b"\0" + p.read_bytes())
    out = Path(tempfile.gettempdir()) / f"pgfleet-stubs-{digest.hexdigest()[:16]}"
    if not (out / "pgfleet" / "v1").is_dir():
        # Made beside, then renamed: a process that finds the directory finds it whole.
        work = Path(tempfile.mkdtemp(prefix="pgfleet-stubs-", dir=out.parent))
        include = Path(grpc_tools.__file__).parent / "_proto"
        status = protoc.main([
            "grpc_tools.protoc",
            f"-I{proto_dir}",
            f"-I{include}",
            f"--python_out={work}",
            f"--grpc_python_out={work}",
            *(str(p.relative_to(proto_dir)) for p in protos),
        ])
        if status != 0:
            shutil.rmtree(work, ignore_errors=True)
            raise RuntimeError(f"protoc could not compile the pgfleet protos in {proto_dir}")
        try:
            work.rename(out)
        except OSError:
            # Another process made it first.
            shutil.rmtree(work, ignore_errors=True)
    sys.path.insert(0, str(out))
    _generated = str(out)
