"""Protobuf classes generated from proto/ with grpc_tools.protoc at first use.

The generated modules go into a fresh temporary directory per process, so they always
match the .proto files in the work tree (no stale cache to invalidate).
"""

from __future__ import annotations

import atexit
import functools
import importlib
import shutil
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

from . import PROTO_DIR


def _wkt_include() -> str:
    # grpc_tools ships google/protobuf/*.proto (Timestamp, Duration, …) in its _proto dir.
    import grpc_tools

    path = Path(grpc_tools.__file__).resolve().parent / "_proto"
    if not (path / "google" / "protobuf" / "timestamp.proto").is_file():
        raise RuntimeError(f"grpc_tools well-known protos not found under {path}")
    return str(path)


@functools.lru_cache(maxsize=None)
def load() -> SimpleNamespace:
    """Compile proto/hrx/v1/*.proto and return the generated hrx.v1 modules."""
    from grpc_tools import protoc

    out = tempfile.mkdtemp(prefix="hrx-ref-pb2-")
    atexit.register(shutil.rmtree, out, True)
    files = sorted(str(p.relative_to(PROTO_DIR)) for p in (PROTO_DIR / "hrx" / "v1").glob("*.proto"))
    if not files:
        raise RuntimeError(f"no .proto files under {PROTO_DIR / 'hrx' / 'v1'}")
    args = ["grpc_tools.protoc", f"-I{PROTO_DIR}", f"-I{_wkt_include()}", f"--python_out={out}", *files]
    rc = protoc.main(args)
    if rc != 0:
        raise RuntimeError(f"protoc failed with exit code {rc}: {' '.join(args)}")
    sys.path.insert(0, out)
    importlib.invalidate_caches()
    common = importlib.import_module("hrx.v1.common_pb2")
    envelope = importlib.import_module("hrx.v1.envelope_pb2")
    events = importlib.import_module("hrx.v1.events_pb2")
    from google.protobuf import duration_pb2, timestamp_pb2

    return SimpleNamespace(
        common=common,
        envelope=envelope,
        events=events,
        Timestamp=timestamp_pb2.Timestamp,
        Duration=duration_pb2.Duration,
        out_dir=out,
    )
