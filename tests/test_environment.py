"""The environment fingerprint: canonical, stable across calls on one box, and sensitive to what matters."""

from __future__ import annotations

import json
import subprocess
import sys

from kit.core.fsio import canonical_json
from kit.env import fingerprint as environment
from kit.env import platform
from kit.env.platform import GPU, HostPlatform

GPU_A = GPU("nvidia", "NVIDIA GeForce RTX 4090", "560.35.03", 24564, memory_free_mib=20000)
HOST = HostPlatform("linux-cuda", "x86_64", (GPU_A,))
LOCK = {"kind": "pixi", "name": "cuda", "sha256": "ab" * 32, "in_sync": True}


class FakeFF:  # the FFmpeg fields the fingerprint reads
    version = "n9.0.2"
    configure_sha256 = "cd" * 32
    libvmaf_version = "3.0.0"
    origin = "imageio"


def fp(**kw):
    args = {"host": HOST, "lock": LOCK, "ffmpeg": FakeFF()} | kw
    return environment.fingerprint(args.pop("ffmpeg"), **args)


def test_fingerprint_has_every_field_the_issue_names():
    got = fp()
    assert {"platform", "os", "arch", "cpu_model", "gpus", "python", "packages", "ffmpeg", "libvmaf_version",
            "vmaf_model", "kit_version", "lock"} <= set(got)
    assert set(got["packages"]) == {"torch", "numpy", "pandas", "pyarrow", "onnx", "onnxruntime", "click"}
    assert got["gpus"] == [{"vendor": "nvidia", "name": "NVIDIA GeForce RTX 4090", "driver": "560.35.03",
                            "memory_total_mib": 24564}]
    assert got["ffmpeg"] == {"version": "n9.0.2", "configure_sha256": "cd" * 32, "libvmaf_version": "3.0.0"}
    json.loads(canonical_json(got))  # JSON-serialisable


def test_run_to_run_noise_does_not_change_the_id():
    """Free GPU memory, where ffmpeg was found, the clock: none of it may move the id."""
    busy = HostPlatform("linux-cuda", "x86_64", (GPU("nvidia", GPU_A.name, GPU_A.driver, 24564, 5),))
    ff = FakeFF()
    ff.origin = "binaries"
    assert environment.fingerprint_id(fp()) == environment.fingerprint_id(fp(host=busy, ffmpeg=ff))
    assert len(environment.fingerprint_id(fp())) == 16


def test_what_changes_results_changes_the_id():
    base = environment.fingerprint_id(fp())
    newer_driver = HostPlatform("linux-cuda", "x86_64", (GPU("nvidia", GPU_A.name, "570.1", 24564),))
    other_ff = FakeFF()
    other_ff.configure_sha256 = "ef" * 32
    for changed in (fp(host=newer_driver), fp(ffmpeg=other_ff), fp(vmaf_model="vmaf_v0.6.1neg"),
                    fp(lock={**LOCK, "sha256": "00" * 32}), fp(lock={**LOCK, "in_sync": False})):
        assert environment.fingerprint_id(changed) != base


def test_real_fingerprint_is_identical_in_a_fresh_process():
    """The real thing (this box's ffmpeg, packages, lock), computed twice in separate interpreters."""
    code = "from kit.env import fingerprint as e; print(e.fingerprint_id(e.fingerprint()))"
    ids = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
           for _ in range(2)}
    assert len(ids) == 1 and len(ids.pop()) == 16
    real = environment.fingerprint()
    assert real["platform"] == platform.detect().tag
    assert real["ffmpeg"] is not None and real["libvmaf_version"]
    assert real["lock"]["kind"] in ("pip", "pixi", "none")


def test_describe_rows():
    labels = [label for label, _ in environment.describe(fp())]
    assert labels[0] == "fingerprint" and "lock" in labels and "ffmpeg" in labels
