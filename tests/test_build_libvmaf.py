"""build-libvmaf orchestration on a stand-in libvmaf tree (tests/fixtures/fake-libvmaf, see its README).

meson + ninja really configure, compile and install it; the installed `vmaf` really scores (its numbers
are ffmpeg's libvmaf filter's), so the proof against the filter, the staging and the record are tested
for real. The CUDA paths use the stand-in's device file and a stand-in CUDA toolchain on PATH (the tree
needs no CUDA to compile): a build that uses its device is staged; one on a box with no device, and one
that never starts CUDA, are not. The real fork is built in tests/test_libvmaf_real.py (slow).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import copy_fake_libvmaf, libvmaf_toolchain_or_skip

from kit.cli import main
from kit.core.errors import BadInput, ExitCode, PrereqError, WorkFailed
from kit.core.fsio import sha256_file
from kit.corpus import vmaf_cli
from kit.env import libvmaf_build, libvmaf_prereqs


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    libvmaf_toolchain_or_skip()
    return copy_fake_libvmaf(tmp_path_factory.mktemp("fake_tree") / "vmaf")


@pytest.fixture(scope="module")
def cli_build(tree, tmp_path_factory, fake_vmaf_env) -> tuple[Path, dict]:
    """`ensemble-kit build-libvmaf --json` on the stand-in tree: (dest, its JSON)."""
    dest = tmp_path_factory.mktemp("binaries") / "linux-cpu-x86_64"
    r = CliRunner().invoke(main, ["build-libvmaf", "--source", str(tree), "--dest", str(dest), "--json"])
    assert r.exit_code == 0, r.output
    return dest, json.loads(r.stdout)


def test_cpu_build_is_proved_staged_and_recorded(cli_build, tree):
    dest, doc = cli_build
    staged = dest / "bin" / "vmaf"
    assert doc["vmaf"] == str(staged) and doc["sha256"] == sha256_file(staged)
    assert doc["version"] == "3.0.0"  # from stderr, as the real CLI prints it
    assert "agree with ffmpeg's libvmaf filter within 0.0001" in doc["proof"]
    assert doc["size_bytes"] == staged.stat().st_size and doc["build_seconds"] > 0
    # only the options the tree declares: the stand-in has no enable_dnn (a fork-only option), and meson
    # would have rejected it
    assert "-Denable_tests=false" in doc["meson_options"] and "-Denable_dnn=disabled" not in doc["meson_options"]
    assert (tree / "libvmaf" / "build-ekit-linux-cpu-x86_64-cpu" / "build.ninja").is_file()  # inside the tree
    record = json.loads((dest / "bin" / "vmaf.json").read_text())
    assert record["sha256"] == doc["sha256"] and record["backend"] == "cpu" and record["run_flags"] == []
    assert record["proof"]["max_abs_delta"]["cpu"]["motion2"] <= 1e-4
    loaded = vmaf_cli.load(staged)
    assert loaded.recorded and loaded.version == "3.0.0" and loaded.backend == "cpu"
    assert "meson" in (dest / ".build" / "libvmaf-cpu.log").read_text()


def test_rebuild_reuses_the_build_dir_and_new_options_start_afresh(cli_build, tree, kit_ffmpeg):
    dest, _ = cli_build
    libvmaf_build.build_libvmaf(tree, dest=dest, ffmpeg=kit_ffmpeg)
    assert "--reconfigure" in (dest / ".build" / "libvmaf-cpu.log").read_text()
    with pytest.raises(WorkFailed, match="without built-in models"):  # and meson would keep old options on a reconfigure
        libvmaf_build.build_libvmaf(tree, dest=dest, meson_args=["-Dbuilt_in_models=false"], ffmpeg=kit_ffmpeg)
    assert "--wipe" in (dest / ".build" / "libvmaf-cpu.log").read_text()
    assert vmaf_cli.load(dest / "bin" / "vmaf").recorded  # the staged scorer is untouched


def test_a_build_that_disagrees_with_the_filter_leaves_the_staged_scorer_alone(cli_build, tree, monkeypatch,
                                                                              kit_ffmpeg):
    dest, doc = cli_build
    monkeypatch.setenv("FAKE_VMAF_SKEW", "1")  # the stand-in now blurs what it scores
    with pytest.raises(WorkFailed, match="disagrees with ffmpeg's libvmaf filter: .* differs by .*not staged"):
        libvmaf_build.build_libvmaf(tree, dest=dest, ffmpeg=kit_ffmpeg)
    assert sha256_file(dest / "bin" / "vmaf") == doc["sha256"] and vmaf_cli.load(dest / "bin" / "vmaf").recorded


@pytest.fixture
def cuda_toolchain(tmp_path, monkeypatch) -> Path:
    """Stand-ins for nvcc 13.0, bin2c and new-enough nv-codec-headers, found the way real ones are; -> the
    stand-in GPU's device file (not created: no GPU until a test sets FAKE_GPU_DEVICE)."""
    bindir, inc = tmp_path / "cuda" / "bin", tmp_path / "cuda" / "include" / "ffnvcodec"
    bindir.mkdir(parents=True)
    inc.mkdir(parents=True)
    (bindir / "nvcc").write_text("#!/bin/sh\necho 'Cuda compilation tools, release 13.0, V13.0.48'\n")
    (bindir / "bin2c").write_text("#!/bin/sh\n")
    for tool in bindir.iterdir():
        tool.chmod(0o755)
    (inc / "dynlink_loader.h").write_text("/* cuMemHostAlloc cuStreamWaitEvent */\n")
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("CPATH", str(inc.parent))
    monkeypatch.delenv("FAKE_GPU_DEVICE", raising=False)
    return tmp_path / "gpu0"


def test_cuda_build_is_staged_only_after_it_ran_on_the_device(tmp_path, cuda_toolchain, monkeypatch, kit_ffmpeg,
                                                              fake_vmaf_env):
    src, dest = copy_fake_libvmaf(tmp_path / "src"), tmp_path / "b"
    # no device on this box: built, its CPU path proved, but the GPU run fell back -> prerequisite, not staged
    with pytest.raises(PrereqError, match=r"cuda backend cannot run on this box .*using CPU.*not staged"):
        libvmaf_build.build_libvmaf(src, backend="cuda", dest=dest, ffmpeg=kit_ffmpeg)
    assert not (dest / "bin" / "vmaf").exists()
    monkeypatch.setenv("FAKE_GPU_DEVICE", str(cuda_toolchain))  # now a "GPU" is there
    monkeypatch.setenv("FAKE_CUDA_IGNORED", "1")  # but the build never starts CUDA: the control run gives it away
    with pytest.raises(WorkFailed, match="printed no fallback line: it never starts cuda"):
        libvmaf_build.build_libvmaf(src, backend="cuda", dest=dest, ffmpeg=kit_ffmpeg)
    assert not (dest / "bin" / "vmaf").exists()
    monkeypatch.delenv("FAKE_CUDA_IGNORED")
    built = libvmaf_build.build_libvmaf(src, backend="cuda", dest=dest, ffmpeg=kit_ffmpeg)
    assert built.cli.backend == "cuda" and built.cli.run_flags == ("--backend", "cuda")  # read from the usage text
    assert "ran without falling back" in built.evidence and "CUDA_VISIBLE_DEVICES=''" in built.evidence
    assert "cuda" in cuda_toolchain.read_text()  # the device was really used
    monkeypatch.setenv("ENSEMBLE_KIT_VMAF", str(built.cli.path))
    assert vmaf_cli.choose_scorer("auto") == built.cli  # a GPU build is preferred over the filter


def test_missing_tools_are_named_with_their_install_lines(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH (meson/ninja still come from pip)
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.delenv("CXX", raising=False)
    project = libvmaf_prereqs.Project(tmp_path, frozenset({"enable_asm", "enable_avx512", "built_in_models",
                                                           "enable_cuda"}), frozenset({"c", "cpp"}))
    items = libvmaf_prereqs.missing(project, "cuda", [])
    names = " | ".join(m.what for m in items)
    for needed in ("a C compiler", "a C++ compiler", "xxd", "nvcc", "bin2c", "nv-codec-headers"):
        assert needed in names
    lines = libvmaf_prereqs.install_lines(items, darwin=False)
    assert lines[0].startswith("apt-get install build-essential") and "xxd" in lines[0]
    assert any("code.ffmpeg.org/FFmpeg/nv-codec-headers" in line for line in lines)
    assert libvmaf_prereqs.install_lines(items, darwin=True)[0].startswith("brew install")
    # asm turned off by the user: no nasm needed; models off: no xxd
    quiet = libvmaf_prereqs.missing(project, "cpu", ["-Denable_asm=false", "-Dbuilt_in_models=false"])
    assert not any(m.what.startswith(("nasm", "xxd")) for m in quiet)


def test_missing_tools_exit_3_with_one_line(tree, tmp_path, monkeypatch, fake_vmaf_env):
    monkeypatch.setenv("PATH", str(tmp_path))
    r = CliRunner().invoke(main, ["build-libvmaf", "--source", str(tree), "--dest", str(tmp_path / "b")])
    assert r.exit_code == ExitCode.PREREQS, r.output
    line = r.output.strip().splitlines()[-1]
    assert line.startswith("error: build-libvmaf --backend cpu needs") and "apt-get install" in line
    assert "Traceback" not in r.output


def test_old_nv_codec_headers_are_caught_before_the_build(tmp_path):
    inc = tmp_path / "inc" / "ffnvcodec"
    inc.mkdir(parents=True)
    (inc / "dynlink_loader.h").write_text("/* n13.0.19.0 */ cuStreamWaitEvent\n")
    project = libvmaf_prereqs.Project(tmp_path, frozenset({"enable_cuda"}), frozenset({"c"}))
    items = libvmaf_prereqs.missing(project, "cuda", [f"-Dc_args=-I{inc.parent}"])
    assert any("lack cuMemHostAlloc" in m.what and str(inc.parent) in m.what for m in items)


def test_a_broken_source_fails_with_the_log(tmp_path, kit_ffmpeg):
    libvmaf_toolchain_or_skip()
    src = copy_fake_libvmaf(tmp_path / "src")
    (src / "libvmaf" / "tools" / "vmaf.c").write_text("int main(void) { return syntax error; }\n")
    with pytest.raises(WorkFailed, match="meson compile failed") as err:
        libvmaf_build.build_libvmaf(src, dest=tmp_path / "b", ffmpeg=kit_ffmpeg)
    assert "full log" in str(err.value)


def test_bad_source_backend_and_undeclared_backend(tmp_path, kit_ffmpeg):
    with pytest.raises(BadInput, match="no meson.build"):
        libvmaf_build.build_libvmaf(tmp_path, ffmpeg=kit_ffmpeg)
    with pytest.raises(BadInput, match="not a directory"):
        libvmaf_build.build_libvmaf(tmp_path / "nope", ffmpeg=kit_ffmpeg)
    with pytest.raises(BadInput, match="--backend"):
        libvmaf_build.build_libvmaf(tmp_path, backend="rocm", ffmpeg=kit_ffmpeg)
    shutil.copytree(copy_fake_libvmaf(tmp_path / "src") / "libvmaf", tmp_path / "nosycl")
    opts = tmp_path / "nosycl" / "meson_options.txt"
    opts.write_text("".join(ln for ln in opts.read_text().splitlines(True) if "enable_sycl" not in ln))
    project = libvmaf_prereqs.read_project(tmp_path / "nosycl")
    with pytest.raises(BadInput, match="declares no enable_sycl option"):
        libvmaf_build.meson_options(project, "sycl", [])
    assert libvmaf_build.meson_options(project, "cuda", [])[-1] == "-Denable_cuda=true"
