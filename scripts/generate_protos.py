"""Regenerate the protobuf code from the .proto files (needs grpcio-tools, in [dev]): the gRPC
service's messages, and the subset of Triton's model configuration that `shipyard import triton` reads.

    python scripts/generate_protos.py            # rewrite every *_pb2.py and .pyi
    python scripts/generate_protos.py --check    # exit 1 if any is out of date

Only message code is generated: the service is registered by hand (protocols/grpc_v2.py), so
no `_pb2_grpc.py` pins the grpcio version. The descriptors go into a pool of their own, not
protobuf's default one, so another copy of the `inference` package in the same process
(tritonclient's, in the tests) does not collide with ours.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "shipyard"
PROTOS = (
    SRC / "serve" / "protocols" / "proto" / "inference.proto",
    SRC / "importers" / "proto" / "triton_model_config.proto",
)
_DEFAULT_POOL = "_descriptor_pool.Default()"
_OWN_POOL = "_descriptor_pool.DescriptorPool()"


def generate(proto: Path, out_dir: Path) -> dict[Path, str]:
    """The generated files' text by the path they belong at, written under `out_dir` first."""
    from grpc_tools import protoc

    code = protoc.main(
        [
            "protoc",
            f"-I{proto.parent}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            str(proto),
        ]
    )
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")
    module, stub = f"{proto.stem}_pb2.py", f"{proto.stem}_pb2.pyi"
    texts = {proto.parent / name: (out_dir / name).read_text() for name in (module, stub)}
    code_text = texts[proto.parent / module]
    if code_text.count(_DEFAULT_POOL) != 1:
        raise SystemExit(f"expected one {_DEFAULT_POOL} in the generated code; has protoc's output changed?")
    texts[proto.parent / module] = code_text.replace(_DEFAULT_POOL, _OWN_POOL)
    return texts


def main(argv: list[str]) -> int:
    texts: dict[Path, str] = {}
    for proto in PROTOS:
        with tempfile.TemporaryDirectory() as tmp:
            texts.update(generate(proto, Path(tmp)))
    stale = [path for path, text in texts.items() if not path.exists() or path.read_text() != text]
    if "--check" in argv:
        for path in stale:
            print(f"{path} is out of date: run python scripts/generate_protos.py")
        return 1 if stale else 0
    for path, text in texts.items():
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
