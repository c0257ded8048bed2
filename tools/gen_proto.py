"""Generate Python code from proto/ with grpcio-tools (a build step; the output is git-ignored).

protoc writes absolute imports (`from imx.v1 import x_pb2`); they are rewritten to the package
the code lives in so nothing has to be added to sys.path.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "services" / "proto_gen"
PACKAGE = "services.proto_gen"


def main() -> int:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"-I{include}",
            f"--python_out={OUT_DIR}",
            f"--pyi_out={OUT_DIR}",
            f"--grpc_python_out={OUT_DIR}",
            *protos,
        ]
    )
    if code != 0:
        print("protoc failed", file=sys.stderr)
        return code
    for directory in [OUT_DIR, *[p for p in OUT_DIR.rglob("*") if p.is_dir()]]:
        (directory / "__init__.py").touch()
    pattern = re.compile(r"^from imx\.", re.MULTILINE)
    for generated in OUT_DIR.rglob("*.py*"):
        if generated.suffix not in (".py", ".pyi"):  # __pycache__'s .pyc once the modules were imported
            continue
        text = generated.read_text()
        fixed = pattern.sub(f"from {PACKAGE}.imx.", text)
        if fixed != text:
            generated.write_text(fixed)
    print(f"generated {len(protos)} proto files into {OUT_DIR.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
