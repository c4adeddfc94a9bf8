"""build-libvmaf orchestration on a tiny meson project laid out like libvmaf (tests/fixtures/fake-libvmaf).

meson + ninja really configure, compile and install it; the installed `vmaf` really scores two frames.
The CUDA checks use the fixture's stand-in CUDA path (see its README): a build that uses its "device"
passes, one that claims CUDA but ignores it is caught.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kit.core.errors import BadInput, WorkFailed
from kit.env import libvmaf_build

FAKE_SOURCE = Path(__file__).parent / "fixtures" / "fake-libvmaf"


def _toolchain_or_skip() -> None:
    try:
        libvmaf_build.meson_command()
        libvmaf_build.ninja_env()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"meson/ninja not available ({exc}): pip install meson ninja")
    if not (shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")):
        pytest.skip("no C compiler (cc/gcc/clang) to build the fixture project")


@pytest.fixture(scope="module")
def cpu_build(tmp_path_factory) -> libvmaf_build.BuiltVmaf:
    _toolchain_or_skip()
    dest = tmp_path_factory.mktemp("binaries") / "linux-cpu-x86_64"
    return libvmaf_build.build_libvmaf(FAKE_SOURCE, backend="cpu", dest=dest)


def test_cpu_build_installs_a_vmaf_that_scores(cpu_build):
    assert cpu_build.path.name == "vmaf" and cpu_build.path.parent.name == "bin"
    assert cpu_build.version == "3.0.0"
    assert cpu_build.evidence.startswith("scored 2 frames")
    log = cpu_build.path.parents[1] / ".build" / "libvmaf-cpu.log"
    assert "meson" in log.read_text() and "-Denable_tests=false" in log.read_text()


def test_rebuild_reuses_the_build_dir(cpu_build):
    again = libvmaf_build.build_libvmaf(FAKE_SOURCE, backend="cpu", dest=cpu_build.path.parents[1])
    assert again.path == cpu_build.path
    assert "--reconfigure" in (cpu_build.path.parents[1] / ".build" / "libvmaf-cpu.log").read_text()


def test_cuda_build_is_verified_by_a_run_that_uses_the_device(tmp_path: Path):
    _toolchain_or_skip()
    built = libvmaf_build.build_libvmaf(FAKE_SOURCE, backend="cuda", dest=tmp_path / "b")
    assert "runs on the GPU" in built.evidence


def test_cuda_build_that_ignores_cuda_is_rejected(tmp_path: Path):
    _toolchain_or_skip()
    with pytest.raises(WorkFailed, match="does not use CUDA"):
        libvmaf_build.build_libvmaf(FAKE_SOURCE, backend="cuda", dest=tmp_path / "b",
                                    meson_args=["-Dfake_cuda_ignored=true"])


def test_a_broken_source_fails_with_the_log(tmp_path: Path):
    _toolchain_or_skip()
    src = tmp_path / "src"
    shutil.copytree(FAKE_SOURCE, src)
    (src / "libvmaf" / "tools" / "vmaf.c").write_text("int main(void) { return syntax error; }\n")
    with pytest.raises(WorkFailed, match="meson compile failed") as err:
        libvmaf_build.build_libvmaf(src, dest=tmp_path / "b")
    assert "full log" in str(err.value)


def test_bad_source_and_backend(tmp_path: Path):
    with pytest.raises(BadInput, match="no meson.build"):
        libvmaf_build.build_libvmaf(tmp_path)
    with pytest.raises(BadInput, match="not a directory"):
        libvmaf_build.build_libvmaf(tmp_path / "nope")
    with pytest.raises(BadInput, match="--backend"):
        libvmaf_build.build_libvmaf(FAKE_SOURCE, backend="rocm")
