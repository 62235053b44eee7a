"""Build script: compiles the Go core into the package as esper/_lib/libesper.so.

``pip install .`` and ``pip install -e .`` both run the custom ``build_ext``
below, which calls ``go build -buildmode=c-shared``. The library does not link
libpython, so the wheel is tagged ``py3-none-<platform>``: one wheel serves
every CPython 3 on that platform.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

try:
    from wheel.bdist_wheel import bdist_wheel
except ImportError:  # pragma: no cover - wheel is a build requirement
    bdist_wheel = None

ROOT = Path(__file__).resolve().parent
VERSION = (ROOT / "VERSION").read_text().strip()


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class GoExtension(Extension):
    """A shared library built by the Go toolchain from a package main."""

    def __init__(self, name: str, package: str) -> None:
        super().__init__(name, sources=[])
        self.package = package


class BuildGo(build_ext):
    """build_ext that runs `go build -buildmode=c-shared` for GoExtensions."""

    def build_extension(self, ext: Extension) -> None:
        if not isinstance(ext, GoExtension):
            return super().build_extension(ext)
        go = shutil.which("go")
        if go is None:
            raise RuntimeError("building esper needs the Go toolchain (>= 1.26) on PATH: https://go.dev/dl/")
        out = Path(self.get_ext_fullpath(ext.name)).with_name("libesper.so")
        out.parent.mkdir(parents=True, exist_ok=True)
        ldflags = (
            f"-s -w -X main.version={VERSION} -X main.commit={_commit()} "
            f"-extldflags -Wl,--version-script={ROOT / 'capi' / 'exports.map'}"
        )
        env = dict(os.environ, CGO_ENABLED="1")
        cmd = [go, "build", "-buildmode=c-shared", "-trimpath", "-ldflags", ldflags, "-o", str(out), ext.package]
        self.announce(" ".join(cmd), level=2)
        subprocess.run(cmd, cwd=ROOT, env=env, check=True)
        # cgo writes a generated header beside the library: a build output we do not ship.
        out.with_suffix(".h").unlink(missing_ok=True)

    def get_ext_filename(self, fullname: str) -> str:
        return os.path.join(*fullname.split(".")) + ".so"

    def copy_extensions_to_source(self) -> None:
        # Editable installs copy the library into the source tree, where a fresh
        # clone has no python/esper/_lib folder yet (git keeps no empty folders).
        build_py = self.get_finalized_command("build_py")
        for ext in self.extensions:
            package = ".".join(ext.name.split(".")[:-1])
            Path(build_py.get_package_dir(package)).mkdir(parents=True, exist_ok=True)
        super().copy_extensions_to_source()


cmdclass = {"build_ext": BuildGo}

if bdist_wheel is not None:

    class BdistWheelPy3None(bdist_wheel):
        """Tags the wheel py3-none-<platform>: ctypes needs no CPython ABI."""

        def finalize_options(self) -> None:
            super().finalize_options()
            self.root_is_pure = False

        def get_tag(self) -> tuple[str, str, str]:
            _, _, plat = super().get_tag()
            return "py3", "none", plat

    cmdclass["bdist_wheel"] = BdistWheelPy3None


(ROOT / "python" / "esper" / "version.py").write_text(
    '"""The package version, read from the repository\'s VERSION file at build time."""\n\n'
    f'__version__ = "{VERSION}"\n'
)

setup(
    version=VERSION,
    ext_modules=[GoExtension("esper._lib.libesper", "./capi")],
    cmdclass=cmdclass,
)
