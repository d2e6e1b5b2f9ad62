"""The sandboxes' Python "image": one interpreter given to the emulator, seen by every sandbox as its own copy.

Each sandbox gets a tiny virtual environment over the image (a `pyvenv.cfg`, links to the interpreter, and a
`.pth` that adds the image's site directories). It imports whatever the image has; whatever it installs
(`pip install ...`) lands in its own environment and is gone with the sandbox, as in a real sandbox, which
starts from a fresh copy of its image. `python3`, `python`, `pip3` and `pip` are on its PATH, also for login
shells (`~/.profile`), since `bash -l` resets PATH from /etc/profile.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from dataclasses import dataclass

_PROBE = """
import json, os, site, sys
print(json.dumps({
    "executable": getattr(sys, "_base_executable", None) or sys.executable,
    "version": "%d.%d.%d" % sys.version_info[:3],
    "site": [p for p in site.getsitepackages() if os.path.isdir(p)],
}))
"""


@dataclass(frozen=True)
class Image:
    executable: str  # the base interpreter (for a venv: the one it was made from)
    version: str  # "3.11.7"
    site_dirs: tuple[str, ...]  # the image's packages

    @classmethod
    def probe(cls, python: str) -> Image:
        """What `python` (an interpreter or a venv's) offers."""
        found = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, check=True, timeout=60)
        data = json.loads(found.stdout)
        return cls(os.path.realpath(data["executable"]), data["version"], tuple(data["site"]))

    def install(self, root: str) -> str:
        """Lay a sandbox's environment out at `root` (a new directory); return its bin directory."""
        short = ".".join(self.version.split(".")[:2])
        bin_dir = os.path.join(root, "bin")
        site = os.path.join(root, "lib", f"python{short}", "site-packages")
        os.makedirs(bin_dir)
        os.makedirs(site)
        with open(os.path.join(root, "pyvenv.cfg"), "w", encoding="utf-8") as config:
            config.write(
                f"home = {os.path.dirname(self.executable)}\n"
                f"include-system-site-packages = false\nversion = {self.version}\n"
            )
        for name in ("python", "python3", f"python{short}"):
            os.symlink(self.executable, os.path.join(bin_dir, name))
        with open(os.path.join(site, "_emulator_image.pth"), "w", encoding="utf-8") as pth:
            pth.write(f"import site; list(map(site.addsitedir, {list(self.site_dirs)!r}))\n")
        for name in ("pip", "pip3"):
            path = os.path.join(bin_dir, name)
            with open(path, "w", encoding="utf-8") as shim:
                shim.write(f'#!/bin/sh\nexec {shlex.quote(os.path.join(bin_dir, "python"))} -m pip "$@"\n')
            os.chmod(path, 0o755)
        return bin_dir


def login_profile(home: str, bin_dir: str) -> None:
    """The image's login PATH: `bash -l` resets PATH from /etc/profile, then reads ~/.profile."""
    with open(os.path.join(home, ".profile"), "w", encoding="utf-8") as profile:
        profile.write(f'PATH={shlex.quote(bin_dir)}:"$PATH"\nexport PATH\n')
