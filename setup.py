"""Build script: compiles the Go core into the package as esper/_lib/libesper.so.

``pip install .`` and ``pip install -e .`` both run the custom ``build_ext``
below, which calls ``go build -buildmode=c-shared``. The library does not link
libpython, so the wheel is tagged ``py3-none-<platform>``: one wheel serves
every CPython 3 on that platform. On glibc Linux the platform is the
``manylinux_<x>_<y>_<arch>`` tag of the newest glibc symbol version the wheel's
shared libraries need (read from their ELF version-needs sections), so that
package indexes accept the wheel and pip installs it on any Linux with that
glibc or newer. Elsewhere (macOS, a musl build, a library that needs other
shared libraries than glibc's) the wheel keeps the plain platform tag.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # setuptools < 70.1 has none: the wheel package's, a build requirement
    try:
        from wheel.bdist_wheel import bdist_wheel
    except ImportError:
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

# The shared libraries of glibc itself: a manylinux wheel may need these and no others (PEP 600).
_GLIBC_LIBRARIES = re.compile(r"^(libc|libm|libdl|librt|libpthread|libutil|libresolv|ld-linux[-\w.]*)\.so(\.\d+)*$")
_SHT_DYNAMIC, _SHT_GNU_VERNEED, _DT_NEEDED = 6, 0x6FFFFFFE, 1


def elf_needs(path: Path) -> tuple[list[str], list[str]] | None:
    """The shared libraries an ELF file needs (DT_NEEDED) and the symbol versions it needs from
    them (its .gnu.version_r entries, e.g. ``GLIBC_2.34``), or None for a file that is not ELF."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF":
        return None
    wide, order = data[4] == 2, "<" if data[5] == 1 else ">"
    if wide:
        shoff, shentsize, shnum = struct.unpack_from(order + "Q10xHH", data, 0x28)
        section = order + "IIQQQQIIQQ"
    else:
        shoff, shentsize, shnum = struct.unpack_from(order + "I10xHH", data, 0x20)
        section = order + "IIIIIIIIII"
    sections = [struct.unpack_from(section, data, shoff + i * shentsize) for i in range(shnum)]

    def string(table: int, offset: int) -> str:
        start = sections[table][4] + offset
        return data[start:data.index(b"\0", start)].decode()

    needed: list[str] = []
    versions: list[str] = []
    for _, kind, _, _, offset, size, link, info, _, entsize in sections:
        if kind == _SHT_DYNAMIC:
            entry = order + ("qQ" if wide else "iI")
            for at in range(offset, offset + size, entsize or struct.calcsize(entry)):
                tag, value = struct.unpack_from(entry, data, at)
                if tag == _DT_NEEDED:
                    needed.append(string(link, value))
        elif kind == _SHT_GNU_VERNEED:
            at = offset
            for _ in range(info):  # Elf_Verneed: version, cnt, file, aux, next
                _, count, _, aux, following = struct.unpack_from(order + "HHIII", data, at)
                entry = at + aux
                for _ in range(count):  # Elf_Vernaux: hash, flags, other, name, next
                    _, _, _, name, step = struct.unpack_from(order + "IHHII", data, entry)
                    versions.append(string(link, name))
                    entry += step
                at += following
    return needed, versions


def manylinux_tag(plat: str, libraries: list[Path]) -> tuple[str, str]:
    """The platform tag for a wheel holding these shared libraries, and why.

    ``linux_<arch>`` becomes ``manylinux_<x>_<y>_<arch>`` with x.y the newest ``GLIBC_x.y``
    version the libraries need (at least glibc 2.5 on x86_64 and i686, 2.17 elsewhere: the oldest
    pip accepts, PEP 600); any other platform, a library that needs no glibc version (musl, or a
    static build), or one that needs another shared library than glibc's keeps ``plat``.
    """
    arch = plat[len("linux_"):] if plat.startswith("linux_") else None
    if arch is None:
        return plat, f"{plat} is not a Linux platform"
    newest: tuple[int, ...] = ()
    for path in libraries:
        needs = elf_needs(path)
        if needs is None:
            continue
        needed, versions = needs
        others = [lib for lib in needed if not _GLIBC_LIBRARIES.match(lib)]
        if others:
            return plat, f"{path.name} needs {', '.join(others)}, outside glibc"
        for version in versions:
            match = re.fullmatch(r"GLIBC_(\d+)\.(\d+)(?:\.\d+)?", version)
            if match:
                newest = max(newest, (int(match[1]), int(match[2])))
    if not newest:
        return plat, "the libraries need no glibc symbol version (not a glibc build)"
    floor = (2, 5) if arch in ("x86_64", "i686") else (2, 17)
    major, minor = max(newest, floor)
    return f"manylinux_{major}_{minor}_{arch}", f"the newest glibc symbol version needed is {newest[0]}.{newest[1]}"


if bdist_wheel is not None:

    class BdistWheelPy3None(bdist_wheel):
        """Tags the wheel py3-none-<platform>: ctypes needs no CPython ABI; on glibc Linux the
        platform is the manylinux tag of the glibc the bundled libraries need."""

        def finalize_options(self) -> None:
            super().finalize_options()
            self.root_is_pure = False

        def get_tag(self) -> tuple[str, str, str]:
            _, _, plat = super().get_tag()
            if not self.plat_name_supplied:  # --plat-name wins
                # Called after the install into bdist_dir: the libraries that ship.
                libraries = sorted(Path(self.bdist_dir).rglob("*.so*"))
                plat, reason = manylinux_tag(plat, [p for p in libraries if p.is_file()])
                self.announce(f"platform tag {plat}: {reason}", level=logging.INFO)
            return "py3", "none", plat

    cmdclass["bdist_wheel"] = BdistWheelPy3None


# Every build front end (pip, build, `python setup.py`) runs this file as __main__; tests load
# its functions under another name without building.
if __name__ == "__main__":
    (ROOT / "python" / "esper" / "version.py").write_text(
        '"""The package version, read from the repository\'s VERSION file at build time."""\n\n'
        f'__version__ = "{VERSION}"\n'
    )

    setup(
        version=VERSION,
        ext_modules=[GoExtension("esper._lib.libesper", "./capi")],
        cmdclass=cmdclass,
    )
