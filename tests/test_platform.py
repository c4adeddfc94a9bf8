"""Platform detection for every family (injected machine probes) and default encoders from probes.

The linux-cpu family is also exercised for real: this box's own detection and real libx264/x265/svtav1
test encodes with the bundled ffmpeg. Hardware families use injected probes because this box has no
GPU; the injected probe results are faults ("test encode failed") the kit must explain.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from kit.core.errors import BadInput
from kit.corpus import ffmpeg
from kit.corpus.encoders import FAMILY_ENCODERS
from kit.env import platform
from kit.env.platform import GPU, HostPlatform, Probes

RTX = GPU("nvidia", "NVIDIA GeForce RTX 4090", "560.35.03", 24564, 20000)
T4 = GPU("nvidia", "Tesla T4", "550.54.15", 15360, 15000)
H100 = GPU("nvidia", "NVIDIA H100 80GB HBM3", "550.90.07", 81559, 81000)
ARC = GPU("intel", "Intel GPU 0x56a0", "i915", device="/dev/dri/renderD128")


def probes(system="linux", machine="x86_64", nvidia=(), intel=()) -> Probes:
    return Probes(system=lambda: system, machine=lambda: machine,
                  nvidia_gpus=lambda: list(nvidia), intel_gpus=lambda: list(intel))


@pytest.fixture(autouse=True)
def _no_forced_family(monkeypatch):
    monkeypatch.delenv("ENSEMBLE_KIT_FAMILY", raising=False)


@pytest.mark.parametrize(
    ("p", "family", "arch"),
    [
        (probes(nvidia=[RTX]), "linux-cuda", "x86_64"),
        (probes(machine="aarch64", nvidia=[H100]), "linux-cuda", "aarch64"),
        (probes(intel=[ARC]), "linux-sycl", "x86_64"),
        (probes(nvidia=[T4], intel=[ARC]), "linux-cuda", "x86_64"),  # NVIDIA wins unless forced
        (probes(), "linux-cpu", "x86_64"),
        (probes(machine="AMD64"), "linux-cpu", "x86_64"),
        (probes(machine="aarch64"), "linux-cpu", "aarch64"),
        (probes(system="darwin", machine="arm64"), "darwin", "arm64"),
        (probes(system="darwin", machine="x86_64"), "darwin", "x86_64"),
    ],
)
def test_every_family_with_its_real_arch(p, family, arch):
    host = platform.detect(p)
    assert (host.family, host.arch) == (family, arch)
    assert host.tag == f"{family}-{arch}"
    assert FAMILY_ENCODERS[host.family] and host.family in platform.PIXI_ENVS  # what it tries, which env
    assert set(FAMILY_ENCODERS) == set(platform.FAMILIES) == set(platform.PIXI_ENVS)


def test_forced_family_and_a_bad_one(monkeypatch):
    monkeypatch.setenv("ENSEMBLE_KIT_FAMILY", "linux-sycl")
    assert platform.detect(probes(nvidia=[T4], intel=[ARC])).family == "linux-sycl"
    monkeypatch.setenv("ENSEMBLE_KIT_FAMILY", "windows")
    with pytest.raises(BadInput, match="ENSEMBLE_KIT_FAMILY"):
        platform.detect(probes())


def test_parse_nvidia_smi_rows():
    text = "NVIDIA H100 80GB HBM3, 550.90.07, 81559, 81000\nTesla T4, 550.54.15, 15360, [N/A]\n\n"
    gpus = platform.parse_nvidia_smi(text)
    assert [g.name for g in gpus] == ["NVIDIA H100 80GB HBM3", "Tesla T4"]
    assert gpus[0].driver == "550.90.07" and gpus[0].memory_total_mib == 81559
    assert gpus[1].memory_free_mib is None
    assert "memory_free_mib" not in gpus[0].identity()  # varies run to run: never fingerprinted


def test_intel_render_nodes_from_sysfs(tmp_path: Path):
    for node, vendor in (("renderD128", "0x10de"), ("renderD129", "0x8086")):
        dev = tmp_path / node / "device"
        dev.mkdir(parents=True)
        (dev / "vendor").write_text(vendor + "\n")
        (dev / "device").write_text("0x56a0\n")
    gpus = platform._intel_render_gpus(tmp_path)
    assert [(g.vendor, g.device) for g in gpus] == [("intel", "/dev/dri/renderD129")]


@dataclass
class FakeProbe:
    encoder: str
    ok: bool
    reason: str = "ok"


def prober(working: set[str], reason: str = "Cannot load libnvidia-encode.so.1"):
    calls: list[str] = []

    def probe(name: str) -> FakeProbe:
        calls.append(name)
        return FakeProbe(name, name in working, "ok" if name in working else reason)

    probe.calls = calls  # type: ignore[attr-defined]
    return probe


def test_cuda_defaults_drop_av1_on_a_gpu_that_cannot():
    host = platform.detect(probes(nvidia=[T4]))
    choice = ffmpeg.default_encoders(host, probe=prober({"h264_nvenc", "hevc_nvenc"}, "No capable devices found"))
    assert choice.encoders == ("h264_nvenc", "hevc_nvenc")
    assert "av1_nvenc" in choice.rejected and "Ada Lovelace" in choice.rejected["av1_nvenc"]


def test_h100_has_no_nvenc_says_so_and_falls_back_to_libx264():
    host = platform.detect(probes(nvidia=[H100]))
    choice = ffmpeg.default_encoders(host, probe=prober({"libx264"}, "OpenEncodeSessionEx failed: unsupported device (2)"))
    assert choice.encoders == ("libx264",)
    assert all("has no NVENC encoder" in choice.rejected[e] and "H100" in choice.rejected[e]
               for e in ("h264_nvenc", "hevc_nvenc", "av1_nvenc"))
    assert any("falling back to libx264" in w for w in choice.warnings)


def test_sycl_without_working_render_node_falls_back():
    host = platform.detect(probes(intel=[ARC]))
    choice = ffmpeg.default_encoders(host, probe=prober({"h264_vaapi", "libx264"}, "Failed to initialise VAAPI"))
    assert choice.encoders == ("h264_vaapi",)
    assert set(choice.rejected) == {"h264_qsv", "hevc_qsv", "av1_qsv", "hevc_vaapi"}


def test_darwin_videotoolbox_defaults():
    host = platform.detect(probes(system="darwin", machine="arm64"))
    probe = prober({"h264_videotoolbox", "hevc_videotoolbox"})
    assert ffmpeg.default_encoders(host, probe=probe).encoders == ("h264_videotoolbox", "hevc_videotoolbox")
    assert probe.calls == ["h264_videotoolbox", "hevc_videotoolbox"]


def test_nothing_works_gives_no_encoders_and_says_why():
    host = platform.detect(probes())
    choice = ffmpeg.default_encoders(host, probe=prober(set(), "Unknown encoder"))
    assert choice.encoders == ()
    assert "libx264" in choice.rejected and "Unknown encoder" in choice.rejected["libx264"]


def test_this_box_is_linux_cpu_and_software_encoders_really_encode():
    """Real detection (no GPU here) and real 3-frame test encodes with the bundled ffmpeg."""
    host = platform.detect()
    if host.family != "linux-cpu":
        pytest.skip(f"this box is {host.family}, not a CPU-only box")
    choice = ffmpeg.default_encoders(host)
    assert "libx264" in choice.encoders
    assert set(choice.encoders) <= {"libx264", "libx265", "libsvtav1"}


def test_nvenc_really_fails_here_and_the_kit_explains_it():
    """A real NVENC probe on this GPU-less box: listed by ffmpeg, fails the test encode, explained."""
    host = platform.detect()
    if any(g.vendor == "nvidia" for g in host.gpus):
        pytest.skip("this box has an NVIDIA GPU")
    ff = ffmpeg.find_ffmpeg(require_libvmaf=False)
    result = ffmpeg.probe_encoder(ff, "h264_nvenc")
    assert not result.ok
    assert "no NVIDIA GPU visible" in ffmpeg.explain_failure(host, "h264_nvenc", result.reason)


def test_host_platform_equality_ignores_gpu_details():
    assert HostPlatform("linux-cuda", "x86_64", (RTX,)) == HostPlatform("linux-cuda", "x86_64", (T4,))
    assert platform.box_id() == platform.box_id() and len(platform.box_id()) == 12
