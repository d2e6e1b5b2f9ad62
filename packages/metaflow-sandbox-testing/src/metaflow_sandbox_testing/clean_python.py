"""A Python environment like a stock image's: no metaflow, only what the datastore client needs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

#: What a sandbox's Python needs for the S3 datastore (metaflow imports requests; its S3 client is boto3).
IMAGE_PACKAGES = ("boto3", "requests")


def make_clean_python(
    venv: Path | str, packages: tuple[str, ...] = IMAGE_PACKAGES, *, with_pip: bool = False
) -> str:
    """Create a venv at `venv` with only `packages` (byte-compiled, as images ship them); return its python.
    `with_pip`: also pip, as in stock Python images (clients that install packages in the sandbox need it).

    Raises if metaflow can be imported from it: metaflow must reach a sandbox through the code package.
    """
    uv = shutil.which("uv", path=os.path.dirname(sys.executable)) or shutil.which("uv")
    if uv is None:
        raise RuntimeError("uv is needed to build a clean Python environment: pip install uv")
    venv = Path(venv)
    seed = ["--seed"] if with_pip else []
    subprocess.run(
        [uv, "venv", "--quiet", *seed, "--python", sys.executable, str(venv)], check=True, timeout=300
    )
    python = str(venv / "bin" / "python")
    if packages:
        subprocess.run(
            [uv, "pip", "install", "--quiet", "--compile-bytecode", "--python", python, *packages],
            check=True,
            timeout=600,
        )
    if subprocess.run([python, "-c", "import metaflow"], capture_output=True).returncode == 0:
        raise RuntimeError(f"{python} can import metaflow; a clean environment must not")
    return python
