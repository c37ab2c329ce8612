"""Build hook: generates the protobuf and gRPC modules of the cachelock protocol.

The generated code is never committed: it is made from proto/ (a link to the
repository's proto/ directory) each time the package is built, so the library
always speaks exactly the protocol of the tree it was built from. protoc's Python
output imports `from cachelock.cache.v1 import cache_pb2`, so the modules are
written into the `cachelock` package itself (cachelock/cache/v1/cache_pb2.py, ...).
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
PROTO_ROOT = HERE / "proto"


def generate(out_dir: Path) -> None:
    """Runs protoc (from grpcio-tools) over proto/cachelock/*/v1/*.proto into out_dir."""
    # Imported here: grpcio-tools is a build requirement, not a runtime one.
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.glob("cachelock/*/v1/*.proto"))
    if not protos:
        raise RuntimeError(f"no .proto files under {PROTO_ROOT}/cachelock: is the proto link intact?")
    # grpcio-tools ships the well-known types (google/protobuf/duration.proto, ...).
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{well_known}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            *protos,
        ]
    )
    if status != 0:
        raise RuntimeError(f"protoc failed with status {status}")
    # Regular packages (not namespace ones), so that every tool finds the modules.
    for proto in protos:
        for package in Path(proto).parents:
            if package != Path(".") and package != Path("cachelock"):
                (out_dir / package / "__init__.py").touch()


class BuildPyWithProtos(build_py):
    """build_py that first generates the protocol's modules into the build tree."""

    def run(self) -> None:
        super().run()
        generate(Path(self.build_lib))


setup(cmdclass={"build_py": BuildPyWithProtos})
