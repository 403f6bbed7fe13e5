"""Regenerate the protobuf code of the gRPC service from its .proto (needs grpcio-tools, in [dev]).

    python scripts/generate_protos.py            # rewrite inference_pb2.py and .pyi
    python scripts/generate_protos.py --check    # exit 1 if they are out of date

Only message code is generated: the service is registered by hand (protocols/grpc_v2.py), so
no `_pb2_grpc.py` pins the grpcio version. The descriptors go into a pool of their own, not
protobuf's default one, so another copy of the `inference` package in the same process
(tritonclient's, in the tests) does not collide with ours.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent.parent / "src" / "shipyard" / "serve" / "protocols" / "proto"
PROTO = "inference.proto"
OUTPUTS = ("inference_pb2.py", "inference_pb2.pyi")
_DEFAULT_POOL = "_descriptor_pool.Default()"
_OWN_POOL = "_descriptor_pool.DescriptorPool()"


def generate(out_dir: Path) -> dict[str, str]:
    """The generated files' text by name, written under `out_dir` first."""
    from grpc_tools import protoc

    code = protoc.main(
        [
            "protoc",
            f"-I{PROTO_DIR}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            str(PROTO_DIR / PROTO),
        ]
    )
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")
    texts = {name: (out_dir / name).read_text() for name in OUTPUTS}
    module = texts["inference_pb2.py"]
    if module.count(_DEFAULT_POOL) != 1:
        raise SystemExit(f"expected one {_DEFAULT_POOL} in the generated code; has protoc's output changed?")
    texts["inference_pb2.py"] = module.replace(_DEFAULT_POOL, _OWN_POOL)
    return texts


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        texts = generate(Path(tmp))
    stale = [name for name, text in texts.items() if (PROTO_DIR / name).read_text() != text]
    if "--check" in argv:
        for name in stale:
            print(f"{PROTO_DIR / name} is out of date: run python scripts/generate_protos.py")
        return 1 if stale else 0
    for name, text in texts.items():
        (PROTO_DIR / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
