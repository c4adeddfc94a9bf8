"""`ensemble-kit image build` (kit.deploy.image) and the image's identity in the fingerprint.

The slow test builds the cpu image twice with the real tools (mmdebstrap, buildah, skopeo; no daemon),
checks the digests match, runs `pipeline --demo` inside it as a non-root user and compares the bundle
with a host run: REPRODUCED. It skips, saying which tool is missing, where the tools are not installed
(CI installs none of them): `apt-get install mmdebstrap buildah skopeo`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from kit.cli import main
from kit.core.errors import ExitCode
from kit.deploy import image
from kit.env import fingerprint, lockfiles

ROOT = Path(__file__).resolve().parents[1]


def test_missing_tools_are_named_with_their_apt_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no tool at all
    r = CliRunner().invoke(main, ["image", "build", "--format", "docker-archive", "--out", str(tmp_path / "o")])
    assert r.exit_code == ExitCode.PREREQS, r.output
    assert "mmdebstrap" in r.output and "buildah" in r.output and "skopeo" in r.output
    assert "apt-get install mmdebstrap buildah skopeo" in r.output and "Traceback" not in r.output
    tools = {t.command for t in image.needed_tools("oci", root=True)}
    assert tools == {"mmdebstrap", "buildah"}  # skopeo only for docker-archive, uidmap only without root
    assert "newuidmap" in {t.command for t in image.needed_tools("oci", root=False)}


def test_flavours_carry_the_runtime_contract():
    table = image.flavours()
    floor = lockfiles.locked_ffmpeg("linux-64").nvenc_min_driver
    nvidia = table["nvidia"].env
    assert nvidia["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility,video"  # without video: no libnvidia-encode
    assert nvidia["NVIDIA_REQUIRE_NVENC"] == f"driver>={floor.split('.')[0]}"
    assert "NVIDIA_VISIBLE_DEVICES" not in nvidia  # the launcher picks the GPUs
    intel = table["intel"]
    assert {"intel-media-va-driver-non-free", "libmfx-gen1.2", "libva-x11-2", "libx11-6"} <= set(intel.packages)
    assert "non-free" in intel.components and intel.env["LIBVA_DRIVER_NAME"] == "iHD"
    assert table["cpu"].packages == () and table["nvidia"].packages == ()  # nvidia: cpu layers + config
    # the Containerfile states the same driver floor (it cannot read kit/locks/ffmpeg.json)
    assert f'NVIDIA_REQUIRE_NVENC="driver>={floor.split(".")[0]}"' in (ROOT / "Containerfile").read_text()
    paths = {name: image.rootfs_path(f) for name, f in table.items()}
    assert len(set(paths.values())) == 3 and all(p.suffix == ".tar" for p in paths.values())


def test_rootfs_command_is_the_reproducible_one():
    argv = image.mmdebstrap_argv(image.flavours()["intel"], Path("/x/rootfs.tar"))
    assert argv[0] == "mmdebstrap" and "--skip=output/dev" in argv and "--variant=apt" in argv
    assert "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr" in argv
    assert "--components=main,non-free" in argv and any("intel-media-va-driver-non-free" in a for a in argv)
    assert argv.index("bookworm") + 1 == argv.index("/x/rootfs.tar")
    assert all(m.endswith("main non-free") for m in argv[argv.index("/x/rootfs.tar") + 1:])


def test_image_identity_goes_to_the_host_part_only(monkeypatch):
    for var in (fingerprint.IMAGE_ENV_ENV, fingerprint.IMAGE_INPUTS_ENV, fingerprint.IMAGE_DIGEST_ENV):
        monkeypatch.delenv(var, raising=False)
    outside = fingerprint.fingerprint(find_ffmpeg=lambda: None, lock={"kind": "none"})
    assert outside["host"]["image_env"] is None and outside["host"]["image_digest"] is None
    monkeypatch.setenv(fingerprint.IMAGE_ENV_ENV, "cpu")
    monkeypatch.setenv(fingerprint.IMAGE_INPUTS_ENV, "sha256:" + "1" * 64)
    monkeypatch.setenv(fingerprint.IMAGE_DIGEST_ENV, "sha256:" + "2" * 64)
    inside = fingerprint.fingerprint(find_ffmpeg=lambda: None, lock={"kind": "none"})
    assert inside["host"]["image_env"] == "cpu" and inside["host"]["image_inputs"] == "sha256:" + "1" * 64
    assert inside["host"]["image_digest"] == "sha256:" + "2" * 64
    assert fingerprint.fingerprint_id(inside) == fingerprint.fingerprint_id(outside)  # recorded, never compared
    assert any(label == "image" and "cpu image" in value for label, value in fingerprint.describe(inside))


# ---- the real build (slow) ----------------------------------------------------------------------------


def _skip_without_tools() -> None:
    missing = [t.command for t in image.needed_tools("docker-archive", root=os.geteuid() == 0) if not shutil.which(t.command)]
    if missing:
        pytest.skip(f"image build needs {', '.join(missing)} (apt-get install mmdebstrap buildah skopeo uidmap)")
    if not (ROOT / ".git").exists():
        pytest.skip("image build needs the kit's git checkout")


class Container:
    """`buildah from oci:…` + `buildah run` (chroot isolation): no daemon and no runtime binary needed."""

    def __init__(self, layout: Path, storage: Path) -> None:
        self.storage = storage
        self.driver = "overlay"
        try:  # overlay imports the 1.9 GB image in ~30 s; vfs (works everywhere) copies it per container
            self.ctr = self._buildah("from", "--pull-never", f"oci:{layout}:cpu").stdout.strip()
        except subprocess.CalledProcessError:
            self.driver = "vfs"
            self.ctr = self._buildah("from", "--pull-never", f"oci:{layout}:cpu").stdout.strip()

    def _buildah(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["buildah", "--root", str(self.storage / "root"), "--runroot", str(self.storage / "run"),
                               "--storage-driver", self.driver, *args], capture_output=True, text=True, check=check)

    def run(self, *argv: str, mounts: dict[Path, str], env: dict[str, str], user: str) -> subprocess.CompletedProcess:
        opts = [a for host, inside in mounts.items() for a in ("-v", f"{host}:{inside}")]
        opts += [a for k, v in env.items() for a in ("--env", f"{k}={v}")]
        return self._buildah("run", "--isolation", "chroot", "--user", user, *opts, self.ctr, "--", *argv, check=False)

    def remove(self) -> None:
        self._buildah("rm", "--all", check=False)
        self._buildah("rmi", "--all", "--force", check=False)
        shutil.rmtree(self.storage, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(3600)  # two builds (mmdebstrap twice) and two demo pipelines: 15-25 min on 2 busy cores
def test_cpu_image_builds_reproducibly_and_reproduces_the_host_run(tmp_path, monkeypatch):
    _skip_without_tools()
    monkeypatch.setenv("ENSEMBLE_KIT_CACHE", str(tmp_path / "cache"))  # a private rootfs cache: mmdebstrap runs
    builds = {}
    for name, extra in (("a", ["--format", "oci"]), ("b", ["--format", "docker-archive", "--rebuild-rootfs"])):
        t0 = time.perf_counter()
        r = CliRunner().invoke(main, ["image", "build", "--out", str(tmp_path / name), "--json", *extra])
        assert r.exit_code == 0, r.output
        builds[name] = json.loads(r.stdout)
        print(f"\nbuild {name}: {time.perf_counter() - t0:.0f} s wall, steps {builds[name]['seconds']}, "
              f"sizes {builds[name]['sizes']}, manifest {builds[name]['manifest_digest']}")
    a, b = builds["a"], builds["b"]
    # same inputs (a freshly made rootfs included) -> the same image, whatever the output format
    assert a["rootfs_sha256"] == b["rootfs_sha256"] and a["inputs_digest"] == b["inputs_digest"]
    assert a["manifest_digest"] == b["manifest_digest"] and a["config_digest"] == b["config_digest"]
    layout = Path(a["outputs"]["oci"])
    config = image.inspect_oci(layout)
    env = dict(e.split("=", 1) for e in config["Env"])
    assert env["ENSEMBLE_KIT_IMAGE_INPUTS"] == a["inputs_digest"] and env["ENSEMBLE_KIT_IMAGE_ENV"] == "cpu"
    assert config["Entrypoint"] == ["ensemble-kit"] and config["Labels"]["io.ensemble-kit.inputs"] == a["inputs_digest"]
    assert Path(b["outputs"]["docker-archive"]).stat().st_size > 1e9
    shutil.rmtree(tmp_path / "b")

    host = tmp_path / "host"
    r = CliRunner().invoke(main, ["pipeline", "--demo", "--out-dir", str(host), "--quiet"])
    assert r.exit_code == 0, r.output

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # the container runs as nobody
    box = Container(layout, tmp_path / "storage")
    try:
        t0 = time.perf_counter()
        done = box.run("ensemble-kit", "pipeline", "--demo", "--out-dir", "/shared/demo", "--quiet",
                       mounts={shared: "/shared"}, env={"ENSEMBLE_KIT_IMAGE_DIGEST": a["manifest_digest"]},
                       user="65534:65534")
        print(f"pipeline --demo in the image ({box.driver} storage, uid 65534): {time.perf_counter() - t0:.0f} s")
        assert done.returncode == 0, done.stderr[-3000:]
        unwritable = box.run("ensemble-kit", "corpus", "--demo", "--encoders", "libx264", "--out-dir", "/shared/x",
                             mounts={shared: "/shared"}, env={"XDG_CACHE_HOME": "/usr/share/ekit-cache"}, user="65534:65534")
        assert unwritable.returncode in (ExitCode.BAD_INPUT, ExitCode.PREREQS), unwritable.stderr[-2000:]
        assert "/usr/share/ekit-cache" in unwritable.stderr and "Traceback" not in unwritable.stderr
        assert "internal error" not in unwritable.stderr
    finally:
        box.remove()
    run = json.loads((shared / "demo" / "run.json").read_text())
    assert run["fingerprint"]["host"]["image_digest"] == a["manifest_digest"]
    assert run["fingerprint"]["host"]["image_inputs"] == a["inputs_digest"] and run["fingerprint"]["host"]["image_env"] == "cpu"
    (bundle,) = (shared / "demo").glob("ensemble-results-*.tar.gz")
    compared = CliRunner().invoke(main, ["compare", str(host), str(bundle)])
    assert compared.exit_code == 0 and re.search(r"^REPRODUCED", compared.output, re.M), compared.output
