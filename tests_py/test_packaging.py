"""The wheel: built for real (pip, the Go build) and tagged manylinux for the glibc its library needs.

The glibc a library needs is read here with binutils' readelf (its undefined dynamic symbols and
their versions), independently of setup.py's own ELF reader, and cross-checked with auditwheel.
"""

from __future__ import annotations

import platform
import re
import runpy
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# What a source checkout holds besides the sources: build outputs, caches, the built library.
_NOT_SOURCES = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                      ".ruff_cache", "demo_out", "libesper.so", "libesper.h")


def _glibc_needed(library: Path) -> tuple[int, int]:
    """The newest GLIBC_x.y version among the library's undefined dynamic symbols (readelf)."""
    out = subprocess.run(["readelf", "--dyn-syms", "--wide", str(library)], capture_output=True, text=True,
                         check=True).stdout
    versions = {(int(a), int(b)) for a, b in re.findall(r" UND \S+@GLIBC_(\d+)\.(\d+)", out)}
    assert versions, f"{library.name}: no GLIBC-versioned symbol in readelf's output:\n{out[:2000]}"
    return max(versions)


def _check_wheel(wheel: Path, scratch: Path) -> str:
    """Asserts that the wheel's platform tag is manylinux_x_y_<this machine> and that every shared
    library in it needs glibc x.y at most; returns the tag."""
    tag = wheel.name.removesuffix(".whl").split("-", 2)[2]
    match = re.fullmatch(r"py3-none-manylinux_(\d+)_(\d+)_(\w+)", tag)
    assert match, f"{wheel.name}: not a py3-none-manylinux wheel"
    glibc = (int(match[1]), int(match[2]))
    assert match[3] == platform.machine()
    with zipfile.ZipFile(wheel) as zf:
        wheel_file = next(n for n in zf.namelist() if n.endswith(".dist-info/WHEEL"))
        assert re.findall(r"^Tag: (.+)$", zf.read(wheel_file).decode(), re.M) == [tag]
        libraries = [Path(zf.extract(n, scratch)) for n in zf.namelist() if re.search(r"\.so(\.\d+)*$", n)]
    assert libraries, f"{wheel.name} holds no shared library"
    for library in libraries:
        needed = _glibc_needed(library)
        assert needed <= glibc, f"{library.name} needs GLIBC_{needed[0]}.{needed[1]}, the tag promises {glibc}"
    return tag


def _retagged(wheel: Path, plat: str, folder: Path) -> Path:
    """A copy of the wheel under another platform tag (file name and WHEEL's Tag line)."""
    old = wheel.name.removesuffix(".whl").rsplit("-", 1)[1]
    folder.mkdir()
    copy = folder / wheel.name.replace(f"-{old}.whl", f"-{plat}.whl")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(copy, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith(".dist-info/WHEEL"):
                data = data.replace(f"-{old}\n".encode(), f"-{plat}\n".encode())
            dst.writestr(item, data)
    return copy


def _auditwheel_constraint(wheel: Path) -> str:
    """The platform tag auditwheel says the wheel's external symbol versions constrain it to."""
    proc = subprocess.run([sys.executable, "-m", "auditwheel", "show", str(wheel)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = " ".join(proc.stdout.split())
    match = re.search(r'constrains the platform tag to "([^"]+)"', text)
    assert match, proc.stdout
    return match[1]


@pytest.mark.slow
def test_wheel_is_tagged_manylinux_for_the_glibc_its_library_needs(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=_NOT_SOURCES)
    out = tmp_path / "wheels"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(out),
                           str(src)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (wheel,) = out.glob("*.whl")

    # The tag follows the library's measured needs (glibc 2.5 at least on x86_64, 2.17 elsewhere: PEP 600).
    with zipfile.ZipFile(wheel) as zf:
        library = Path(zf.extract("esper/_lib/libesper.so", tmp_path / "lib"))
    floor = (2, 5) if platform.machine() in ("x86_64", "i686") else (2, 17)
    major, minor = max(_glibc_needed(library), floor)
    expected = f"py3-none-manylinux_{major}_{minor}_{platform.machine()}"
    assert wheel.name.endswith(f"-{expected}.whl"), wheel.name
    assert _check_wheel(wheel, tmp_path / "check") == expected
    # auditwheel agrees: the tightest tag the symbols allow, no lower and no higher.
    assert _auditwheel_constraint(wheel) == expected.removeprefix("py3-none-")

    # Negative control: the same wheel tagged for an older glibc than its library needs is caught by
    # both checks.
    lower = f"manylinux_{major}_{minor - 1}_{platform.machine()}"
    bad = _retagged(wheel, lower, tmp_path / "lower")
    with pytest.raises(AssertionError, match="needs GLIBC_"):
        _check_wheel(bad, tmp_path / "check_lower")
    assert _auditwheel_constraint(bad) != lower


def _setup_module() -> dict:
    """setup.py's functions, loaded without building (it builds only when run as __main__)."""
    return runpy.run_path(str(REPO / "setup.py"), run_name="esper_setup")


def test_platform_tag_falls_back_to_the_plain_one_where_manylinux_does_not_hold(tmp_path: Path) -> None:
    setup = _setup_module()
    manylinux_tag, elf_needs = setup["manylinux_tag"], setup["elf_needs"]
    arch = platform.machine()
    library = REPO / "python" / "esper" / "_lib" / "libesper.so"
    assert library.is_file(), "build the library first: make lib"
    # setup.py's reader finds what readelf finds.
    needed, versions = elf_needs(library)
    assert needed == ["libc.so.6"]
    newest = max(tuple(int(p) for p in v.removeprefix("GLIBC_").split(".")[:2]) for v in versions
                 if v.startswith("GLIBC_"))
    assert newest == _glibc_needed(library)
    assert manylinux_tag(f"linux_{arch}", [library])[0] == f"manylinux_{newest[0]}_{newest[1]}_{arch}"
    # Not Linux: unchanged.
    assert manylinux_tag("macosx_11_0_arm64", [library])[0] == "macosx_11_0_arm64"
    # A library that needs another shared library than glibc's: PyTorch's (OpenMP, its own libraries).
    import torch

    shm = Path(torch.__file__).parent / "lib" / "libshm.so"
    readelf = subprocess.run(["readelf", "--dynamic", "--wide", str(shm)], capture_output=True, text=True,
                             check=True).stdout
    assert elf_needs(shm)[0] == re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", readelf)
    plat, reason = manylinux_tag(f"linux_{arch}", [library, shm])
    assert plat == f"linux_{arch}" and "libtorch_cpu.so" in reason and "outside glibc" in reason
    # An ELF file with no glibc symbol version (Go's statically linked toolchain binary), and a
    # file that is not ELF at all.
    go = shutil.which("go")
    assert go is not None, "the Go toolchain builds the library: put it on PATH"
    static = Path(go).resolve()
    assert elf_needs(static) == ([], [])
    text = tmp_path / "notes.so"
    text.write_text("not a library")
    assert elf_needs(text) is None
    assert manylinux_tag(f"linux_{arch}", [static, text])[0] == f"linux_{arch}"
