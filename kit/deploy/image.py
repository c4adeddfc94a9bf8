"""`ensemble-kit image build`: OCI images of the kit, built from the locks with no daemon, reproducibly.

The route (every step a daemonless tool, run through kit.core.proc):
1. rootfs: `mmdebstrap` writes a Debian bookworm tarball (python3, plus the flavour's packages) with a
   fixed SOURCE_DATE_EPOCH. It is reproducible for one mirror state only (snapshot.debian.org pins time
   where it is reachable), so it is a cached input named by its sha256 (`--rebuild-rootfs` makes a new one).
2. wheelhouse: the kit's wheel from `git archive HEAD` (SOURCE_DATE_EPOCH = the commit time) plus every
   wheel of the hash-pinned lock and the CPU torch wheel, all hash-checked (`--require-hashes`).
3. `buildah` (vfs storage, chroot isolation, its own storage folder): a base layer from the rootfs, a
   venv layer installed offline from the wheelhouse with byte code that embeds no mtimes, the config,
   and `commit --timestamp <commit time> --omit-history --identity-label=false` into an OCI layout;
   `skopeo` copies it to a docker-archive when asked.
Same inputs -> same manifest digest (the tests build twice). An image cannot contain its own digest, so
it carries the digest of its inputs ($ENSEMBLE_KIT_IMAGE_INPUTS, and image-inputs.json inside) and the
launcher sets $ENSEMBLE_KIT_IMAGE_DIGEST (`cluster k8s` does); both go into the fingerprint's `host` part.

Flavours: cpu; nvidia = the cpu image plus the NVIDIA container runtime's variables (the static ffmpeg
dlopens the driver's NVENC libraries; no CUDA base image); intel = VA-API driver + oneVPL runtime inside.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tarfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kit import __version__
from kit.core import proc
from kit.core.console import warn
from kit.core.errors import BadInput, PrereqError
from kit.core.fsio import canonical_json, read_json, sha256_file, write_json, write_text
from kit.core.ids import sha256_hex
from kit.corpus.ffmpeg import cache_dir
from kit.env import lockfiles
from kit.env.fingerprint import IMAGE_ENV_ENV, IMAGE_INPUTS_ENV

IMAGE_RECIPE_VERSION = 1  # bump when the build changes in a way the inputs below do not show
SUITE = "bookworm"  # Debian 12: CPython 3.11, glibc 2.36
GLIBC = (2, 36)
PYTHON = "3.11"
ROOTFS_EPOCH = 1735689600  # 2025-01-01T00:00:00Z: fixed, so base layers are shared between kit versions
MIRRORS = ("http://deb.debian.org/debian {suite} {components}",
           "http://deb.debian.org/debian {suite}-updates {components}",
           "http://deb.debian.org/debian-security {suite}-security {components}")
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
VENV = "/opt/venv"
PROVENANCE = f"{VENV}/share/ensemble-kit"  # requirements, Debian packages and image-inputs.json, inside
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
STEP_TIMEOUT_S = 3600.0


@dataclass(frozen=True)
class Flavour:
    name: str
    about: str
    components: tuple[str, ...] = ("main",)
    packages: tuple[str, ...] = ()  # Debian packages beyond BASE_PACKAGES
    env: dict[str, str] = field(default_factory=dict)


def _nvidia_env() -> dict[str, str]:
    """The legacy NVIDIA hook mounts the driver's libraries per capability (its default, utility+compute,
    has no NVENC: `video` adds libnvidia-encode/libnvcuvid) and refuses drivers below the NVENC floor of
    the locked ffmpeg (kit/locks/ffmpeg.json). CDI mounts the whole driver and ignores both; the kit's
    own prerequisite check enforces the floor either way. NVIDIA_VISIBLE_DEVICES is left to the launcher."""
    locked = lockfiles.locked_ffmpeg("linux-64")
    floor = locked.nvenc_min_driver if locked and locked.nvenc_min_driver else None
    env = {"NVIDIA_DRIVER_CAPABILITIES": "compute,utility,video"}
    if floor:
        env["NVIDIA_REQUIRE_NVENC"] = f"driver>={floor.split('.')[0]}"
    return env


def flavours() -> dict[str, Flavour]:
    return {
        "cpu": Flavour("cpu", "CPU encoders (libx264, libx265, libsvtav1) and CPU training"),
        "nvidia": Flavour("nvidia", "the cpu image plus what the NVIDIA container runtime needs for NVENC "
                          "(run with --gpus all / CDI / the k8s device plugin)", env=_nvidia_env()),
        # bookworm's newest: media driver 23.1 and oneVPL runtime 22.6 (Gen9-Alder Lake/Arc A; not Meteor Lake+).
        # libva-x11/libX11: ffmpeg's VA-API shims fall back to X11 and abort without them.
        "intel": Flavour("intel", "VA-API media driver + oneVPL runtime for QSV/VA-API (run with /dev/dri and the "
                         "host's render group)", components=("main", "non-free"),
                         packages=("libva2", "libva-drm2", "libva-x11-2", "libx11-6", "libxext6", "libdrm2",
                                   "intel-media-va-driver-non-free", "libmfx-gen1.2"),
                         env={"LIBVA_DRIVER_NAME": "iHD"}),
    }


# ---- tools ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tool:
    command: str
    apt: str  # the Debian/Ubuntu package that has it
    why: str


TOOLS: tuple[Tool, ...] = (
    Tool("mmdebstrap", "mmdebstrap", "the Debian root filesystem"),
    Tool("buildah", "buildah", "the image layers, without a daemon"),
    Tool("skopeo", "skopeo", "--format docker-archive"),
    Tool("newuidmap", "uidmap", "building as a non-root user"),
)


def needed_tools(fmt: str, *, root: bool) -> list[Tool]:
    return [t for t in TOOLS if (t.command != "skopeo" or fmt == "docker-archive") and (t.command != "newuidmap" or not root)]


def require_tools(fmt: str, *, root: bool | None = None) -> None:
    """PrereqError (exit 3) naming every missing tool and the one apt line that installs them."""
    root = os.geteuid() == 0 if root is None else root
    missing = [t for t in needed_tools(fmt, root=root) if shutil.which(t.command) is None]
    if missing:
        raise PrereqError("image build needs " + ", ".join(f"{t.command} ({t.why})" for t in missing) + ": not found",
                          hint=f"apt-get install {' '.join(t.apt for t in missing)}")


def _tool_version(argv: Sequence[str]) -> str:
    return proc.run(argv, stage="tool version", timeout=60).stdout.strip().splitlines()[0]


# ---- 1. rootfs ------------------------------------------------------------------------------------


def mmdebstrap_argv(flavour: Flavour, out: Path) -> list[str]:
    """Reproducible for one mirror state: fixed epoch, no docs/man/locale, no logs, caches, machine-id or /dev."""
    components = " ".join(flavour.components)
    return [
        "mmdebstrap", "--variant=apt", "--include=" + ",".join((*BASE_PACKAGES, *flavour.packages)),
        f"--components={','.join(flavour.components)}",
        "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",  # without it apt pulls in usrmerge and perl
        "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-include=/usr/share/doc/*/copyright", "--dpkgopt=path-exclude=/usr/share/locale/*",
        "--dpkgopt=path-exclude=/usr/share/info/*",
        # fixed files instead of missing ones: `buildah run` would create them as mount points in a layer
        '--customize-hook=printf "127.0.0.1\\tlocalhost\\n::1\\tlocalhost ip6-localhost ip6-loopback\\n" > "$1"/etc/hosts',
        '--customize-hook=: > "$1"/etc/resolv.conf; : > "$1"/etc/hostname',
        '--customize-hook=rm -rf "$1"/var/cache/apt/* "$1"/var/cache/debconf/*-old "$1"/var/lib/apt/lists/* '
        '"$1"/var/log/* "$1"/var/lib/dpkg/*-old',
        '--customize-hook=truncate -s0 "$1"/etc/machine-id',
        "--skip=output/dev",  # no device nodes: root and unshare modes give the same tarball
        SUITE, str(out), *(m.format(suite=SUITE, components=components) for m in MIRRORS),
    ]


def rootfs_path(flavour: Flavour) -> Path:
    """The cached rootfs of a flavour, named by what makes it (the mmdebstrap command and epoch)."""
    key = sha256_hex(canonical_json({"argv": mmdebstrap_argv(flavour, Path("OUT")), "epoch": ROOTFS_EPOCH}))[:16]
    return cache_dir() / "images" / f"rootfs-{SUITE}-{flavour.name}-{key}.tar"


def debian_packages(rootfs: Path) -> list[str]:
    """`name=version` of every package in the rootfs (from its dpkg status): the mirror state, written down."""
    with tarfile.open(rootfs) as tar:
        member = tar.extractfile("./var/lib/dpkg/status")
        text = member.read().decode("utf-8", "replace") if member else ""
    found, name = [], None
    for line in text.splitlines():
        if line.startswith("Package: "):
            name = line.split(": ", 1)[1]
        elif line.startswith("Version: ") and name:
            found.append(f"{name}={line.split(': ', 1)[1]}")
    return sorted(found)


def build_rootfs(flavour: Flavour, *, rebuild: bool = False) -> Path:
    target = rootfs_path(flavour)
    if target.is_file() and not rebuild:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.stem}.partial.tar")  # mmdebstrap picks its output format by the suffix
    if tmp.is_dir():  # left by an interrupted run
        shutil.rmtree(tmp)
    tmp.unlink(missing_ok=True)
    try:
        proc.run(mmdebstrap_argv(flavour, tmp), stage="mmdebstrap", timeout=STEP_TIMEOUT_S, stdout=False,
                 env={**os.environ, "SOURCE_DATE_EPOCH": str(ROOTFS_EPOCH)})
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


# ---- 2. wheelhouse --------------------------------------------------------------------------------


def kit_checkout(source: Path | None) -> Path:
    """The git checkout the image is built from (default: the one this kit runs from)."""
    where = Path(source) if source else Path(__file__).resolve().parents[2]
    try:
        top = proc.run(["git", "-C", str(where), "rev-parse", "--show-toplevel"], stage="git", timeout=30).stdout.strip()
    except proc.ToolFailed:
        top = ""
    if not top or not (Path(top) / "kit").is_dir():
        raise BadInput(f"--source {where} is not a git checkout of ensemble-kit",
                       hint="pass --source with a clone of the kit (the image is built from its HEAD)")
    return Path(top)


def _git(source: Path, *args: str) -> str:
    return proc.run(["git", "-c", "safe.directory=*", "-C", str(source), *args], stage="git", timeout=120).stdout.strip()


def lock_files(source: Path) -> tuple[str, str | None]:
    """(the checkout's hash-pinned linux-64 CPU runtime lock without its index options, the torch pin when
    the lock leaves torch out). Index options go: the wheels come from `_torch_source()` and PyPI here,
    and the image installs offline."""
    lock = next((p for p in (source / "kit" / "locks" / "linux-64-cpu.txt", source / "environments" / "linux-cpu.txt")
                 if p.is_file() and not p.read_text().lstrip("#\n ").startswith("-r")), None)
    if lock is None:
        raise BadInput(f"--source {source} has no linux-64 CPU lock (kit/locks/linux-64-cpu.txt)",
                       hint="build from a checkout of the kit at a commit that has its locks")
    lines = [line for line in lock.read_text().splitlines() if not line.startswith("-")]
    if any(line.startswith("torch==") for line in lines):
        return "\n".join(lines) + "\n", None
    torch_file = source / "environments" / "torch-cpu.txt"  # older checkouts: torch pinned apart, unhashed
    pins = [line.split()[0] for line in (torch_file.read_text().splitlines() if torch_file.is_file() else [])
            if line.startswith("torch==")]
    if not pins:
        raise BadInput(f"--source {source}: {lock.name} does not pin torch and there is no environments/torch-cpu.txt",
                       hint="build from a checkout of the kit at a commit that has its locks")
    return "\n".join(lines) + "\n", pins[0]


def _platform_args() -> list[str]:
    """pip does not widen --platform to older manylinux tags: list every tag the image's glibc accepts."""
    tags = ["manylinux2014_x86_64", *(f"manylinux_2_{m}_x86_64" for m in range(17, GLIBC[1] + 1))]
    return ["--only-binary=:all:", "--python-version", PYTHON, "--implementation", "cp", "--abi",
            f"cp{PYTHON.replace('.', '')}", "--abi", "abi3", "--abi", "none", *(a for t in tags for a in ("--platform", t))]


def _torch_source() -> list[str]:
    """Where the +cpu torch wheel comes from: $TORCH_FIND_LINKS, /opt/wheels, else PyTorch's CPU index
    (the same order as environments/regenerate.sh)."""
    if os.environ.get("TORCH_FIND_LINKS"):
        return ["--find-links", os.environ["TORCH_FIND_LINKS"]]
    if Path("/opt/wheels").is_dir():
        return ["--find-links", "/opt/wheels"]
    return ["--extra-index-url", "https://download.pytorch.org/whl/cpu"]


def _wheel_requirement(wheel: Path) -> str:
    name, version = wheel.name.split("-")[:2]
    return f"{name.replace('_', '-').lower()}=={version} --hash=sha256:{sha256_file(wheel)}"


def build_wheelhouse(source: Path, commit: str, epoch: int, work: Path) -> Path:
    """Every wheel the venv layer installs, hash-checked, into `work/wheels`; -> its requirements.txt."""
    wheels, src = work / "wheels", work / "src"
    for d in (wheels, src):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    lock_text, torch_pin = lock_files(source)
    lock = work / "lock.txt"
    write_text(lock, lock_text)
    archive = work / "src.tar"
    _git(source, "archive", "--format=tar", "-o", str(archive), commit)
    with tarfile.open(archive) as tar:
        tar.extractall(src, filter="data")
    archive.unlink()
    write_json(src / "kit" / "_build.json", {"commit": commit, "dirty": False})  # git archive: committed content only
    constraints = work / "build-constraints.txt"  # the build backend from the index, pinned to the lock's setuptools
    write_text(constraints, "".join(f"{line.split()[0]}\n" for line in lock_text.splitlines()
                                    if line.startswith("setuptools==")))
    if importlib.util.find_spec("pip") is None:
        raise PrereqError(f"image build needs pip in this environment ({sys.executable})",
                          hint=f"{sys.executable} -m ensurepip, or install python3-pip")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    build_env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch), "PIP_CONSTRAINT": str(constraints)}
    proc.run([*pip, "wheel", "-q", "--no-deps", "-w", str(wheels), str(src)], stage="kit wheel", timeout=STEP_TIMEOUT_S,
             env=build_env)
    shutil.rmtree(src)
    proc.run([*pip, "download", "-q", "--require-hashes", "--no-deps", *_platform_args(), *_torch_source(),
              "-r", str(lock), "-d", str(wheels)], stage="locked wheels", timeout=STEP_TIMEOUT_S)
    if torch_pin:
        proc.run([*pip, "download", "-q", "--no-deps", *_platform_args(), *_torch_source(), torch_pin, "-d", str(wheels)],
                 stage="torch wheel", timeout=STEP_TIMEOUT_S)
    added = ("ensemble_kit-", "torch-") if torch_pin else ("ensemble_kit-",)  # what the lock does not hash itself
    extra = [_wheel_requirement(w) for w in sorted(wheels.glob("*.whl")) if w.name.startswith(added)]
    requirements = wheels / "requirements.txt"
    write_text(requirements, lock_text + "\n".join(extra) + "\n")
    lock.unlink()
    return requirements


# ---- 3. buildah -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Buildah:
    """buildah with its own vfs storage under the build's work folder (never the user's images)."""

    storage: Path

    def argv(self, *args: str) -> list[str]:
        return ["buildah", "--root", str(self.storage / "root"), "--runroot", str(self.storage / "run"),
                "--storage-driver", "vfs", *args]

    def __call__(self, *args: str, stage: str) -> str:
        return proc.run(self.argv(*args), stage=stage, timeout=STEP_TIMEOUT_S).stdout.strip()

    def remove(self) -> None:
        """Drop the storage (as non-root its files belong to sub-uids: removed inside `buildah unshare`)."""
        if not self.storage.exists():
            return
        if os.geteuid() == 0:
            shutil.rmtree(self.storage, ignore_errors=True)
            return
        try:
            proc.run(["buildah", "unshare", "rm", "-rf", str(self.storage)], stage="buildah cleanup", timeout=600)
        except proc.ToolFailed as exc:
            warn(f"could not remove the build storage {self.storage}: {exc.reason}")


VENV_SCRIPT = f"""
set -eu
python3 -m venv --without-pip {VENV}
set -- /usr/share/python-wheels/pip-*.whl   # Debian's pip wheel runs from the zip: no pip left in the venv
{VENV}/bin/python "$1/pip" install --no-index --find-links /mnt --require-hashes --no-deps --only-binary=:all: \\
    --no-compile --no-cache-dir --disable-pip-version-check -q -r /mnt/requirements.txt
# byte code without source mtimes (pip would embed install times); torch ships py3.12-only test files
# that do not compile on 3.11 (pip skips those too)
{VENV}/bin/python -m compileall -qq -j0 --invalidation-mode unchecked-hash {VENV}/lib || true
mkdir -p {PROVENANCE}
cp /mnt/requirements.txt /mnt/debian-packages.txt {PROVENANCE}/
{VENV}/bin/ensemble-kit --version
"""


def _base_image(b: Buildah, rootfs: Path, rootfs_sha: str) -> str:
    name = f"localhost/ensemble-kit-base:{rootfs_sha[:16]}"
    ctr = b("from", "--pull-never", "scratch", stage="buildah from scratch")
    b("add", "-q", ctr, str(rootfs), "/", stage="buildah add rootfs")  # a local tar is extracted, mtimes kept
    b("config", "--env", f"PATH={SYSTEM_PATH}", "--env", "LANG=C.UTF-8", ctr, stage="buildah config")
    b("commit", "--timestamp", str(ROOTFS_EPOCH), "--omit-history", "--identity-label=false", "--rm", "-q", ctr, name,
      stage="buildah commit base")
    return name


def image_config(flavour: Flavour, inputs_digest: str | None) -> dict[str, str]:
    """The image's environment (what `docker inspect` shows under Env)."""
    env = {"PATH": f"{VENV}/bin:{SYSTEM_PATH}", "LANG": "C.UTF-8", "VIRTUAL_ENV": VENV, "PYTHONDONTWRITEBYTECODE": "1",
           # a writable cache for a read-only root or an arbitrary uid (mount a volume there to keep it)
           "XDG_CACHE_HOME": "/tmp/cache", "MPLCONFIGDIR": "/tmp/matplotlib",
           IMAGE_ENV_ENV: flavour.name, **flavour.env}
    if inputs_digest:
        env[IMAGE_INPUTS_ENV] = inputs_digest
    return env


# ---- the build --------------------------------------------------------------------------------------


@dataclass
class ImageBuild:
    env: str
    manifest_digest: str
    config_digest: str
    inputs_digest: str
    rootfs_sha256: str
    outputs: dict[str, str]  # format -> path
    sizes: dict[str, int]  # format -> bytes
    seconds: dict[str, float]
    record: Path  # <out>/ensemble-kit-<env>.json

    def to_json(self) -> dict[str, Any]:
        return {"env": self.env, "manifest_digest": self.manifest_digest, "config_digest": self.config_digest,
                "inputs_digest": self.inputs_digest, "rootfs_sha256": self.rootfs_sha256, "outputs": self.outputs,
                "sizes": self.sizes, "seconds": {k: round(v, 1) for k, v in self.seconds.items()},
                "record": str(self.record)}


def oci_digests(layout: Path) -> tuple[str, str]:
    """(manifest digest, config digest) of the one image in an OCI layout folder."""
    index = read_json(layout / "index.json", what="OCI index.json")
    manifest_digest = index["manifests"][0]["digest"]
    manifest = read_json(layout / "blobs" / "sha256" / manifest_digest.split(":", 1)[1], what="OCI manifest")
    return manifest_digest, manifest["config"]["digest"]


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


FORMATS = ("oci", "docker-archive")


def output_paths(out: Path, env: str) -> dict[str, Path]:
    return {"oci": out / f"ensemble-kit-{env}.oci", "docker-archive": out / f"ensemble-kit-{env}.tar"}


def build_image(env: str, out: Path, *, fmt: str = "oci", source: Path | None = None, rootfs: Path | None = None,
                rebuild_rootfs: bool = False, say: Callable[[str], None] = lambda _: None) -> ImageBuild:
    """Build the `env` image into `out` (see the module doc); -> its digests, sizes and step times."""
    table = flavours()
    if env not in table:
        raise BadInput(f"--env {env!r} is not an image flavour", hint=f"choose {', '.join(table)}")
    if fmt not in FORMATS:
        raise BadInput(f"--format {fmt!r} is not supported", hint=f"choose {', '.join(FORMATS)}")
    flavour = table[env]
    require_tools(fmt)
    checkout = kit_checkout(source)
    commit = _git(checkout, "rev-parse", "HEAD")
    epoch = int(_git(checkout, "log", "-1", "--format=%ct", commit))
    if _git(checkout, "status", "--porcelain", "--", "kit", "pyproject.toml", "environments"):
        warn(f"{checkout} has uncommitted changes: the image is built from HEAD {commit[:12]} without them")
    out = Path(out).resolve()
    targets = output_paths(out, env)
    wanted = {fmt: targets[fmt]}
    for path in wanted.values():
        if path.exists():
            raise BadInput(f"{path} already exists", hint="remove it (or pass another --out): a build never overwrites an image")
    out.mkdir(parents=True, exist_ok=True)
    work = out / f".build-{env}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    b = Buildah(work / "storage")
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()

    def step(name: str) -> None:
        seconds[name] = time.perf_counter() - t0 - sum(seconds.values())

    try:
        say(f"rootfs: Debian {SUITE} ({', '.join(flavour.packages) or 'python3 only'})")
        fs = Path(rootfs) if rootfs else build_rootfs(flavour, rebuild=rebuild_rootfs)
        rootfs_sha = sha256_file(fs)
        packages = debian_packages(fs)
        step("rootfs")
        say(f"rootfs sha256 {rootfs_sha} ({len(packages)} packages); wheelhouse from {commit[:12]}")
        requirements = build_wheelhouse(checkout, commit, epoch, work)
        write_text(requirements.parent / "debian-packages.txt", "\n".join(packages) + "\n")
        step("wheelhouse")
        inputs = {"recipe": IMAGE_RECIPE_VERSION, "env": env, "rootfs_sha256": rootfs_sha, "debian_suite": SUITE,
                  "requirements_sha256": sha256_file(requirements), "kit": {"version": __version__, "commit": commit},
                  "image_epoch": epoch, "config": image_config(flavour, None),
                  "buildah": _tool_version(["buildah", "--version"])}
        inputs_digest = "sha256:" + sha256_hex(canonical_json(inputs))
        write_json(requirements.parent / "image-inputs.json", inputs)
        say("base layer and venv layer (buildah, no daemon)")
        base = _base_image(b, fs, rootfs_sha)
        ctr = b("from", "--pull-never", base, stage="buildah from base")
        b("run", "--isolation", "chroot", "-v", f"{requirements.parent}:/mnt:ro", "--env", "PYTHONDONTWRITEBYTECODE=1",
          ctr, "--", "sh", "-c", VENV_SCRIPT, stage="venv layer")
        b("copy", ctr, str(requirements.parent / "image-inputs.json"), f"{PROVENANCE}/image-inputs.json", stage="buildah copy")
        config = [a for k, v in image_config(flavour, inputs_digest).items() for a in ("--env", f"{k}={v}")]
        labels = {"org.opencontainers.image.title": "ensemble-kit", "org.opencontainers.image.version": __version__,
                  "org.opencontainers.image.revision": commit, "io.ensemble-kit.env": env,
                  "io.ensemble-kit.inputs": inputs_digest, "io.ensemble-kit.rootfs.sha256": rootfs_sha}
        config += [a for k, v in labels.items() for a in ("--label", f"{k}={v}")]
        b("config", *config, "--workingdir", "/work", "--entrypoint", '["ensemble-kit"]', "--cmd", "[]", ctr,
          stage="buildah config")
        step("layers")
        layout = targets["oci"] if fmt == "oci" else work / "image.oci"
        say(f"commit -> {layout}")
        b("commit", "--timestamp", str(epoch), "--omit-history", "--identity-label=false", "--rm", "-q", ctr,
          f"oci:{layout}:{env}", stage="buildah commit")
        manifest_digest, config_digest = oci_digests(layout)
        step("commit")
        if fmt == "docker-archive":
            proc.run(["skopeo", "copy", "-q", f"oci:{layout}:{env}", f"docker-archive:{wanted[fmt]}:localhost/ensemble-kit:{env}"],
                     stage="skopeo copy", timeout=STEP_TIMEOUT_S)
            step("archive")
        record = out / f"ensemble-kit-{env}.json"
        result = ImageBuild(env=env, manifest_digest=manifest_digest, config_digest=config_digest,
                            inputs_digest=inputs_digest, rootfs_sha256=rootfs_sha,
                            outputs={k: str(v) for k, v in wanted.items()}, sizes={k: _size(v) for k, v in wanted.items()},
                            seconds=seconds, record=record)
        seconds["total"] = time.perf_counter() - t0
        write_json(record, {**result.to_json(), "inputs": inputs, "debian_packages": packages,
                            "requirements": requirements.read_text().splitlines()})
        return result
    finally:
        b.remove()
        shutil.rmtree(work, ignore_errors=True)


def inspect_oci(layout: Path) -> dict[str, Any]:
    """The config of an OCI layout's image (Env, Labels, Entrypoint), for tests and `image build --json`."""
    _, config_digest = oci_digests(layout)
    config = read_json(layout / "blobs" / "sha256" / config_digest.split(":", 1)[1], what="OCI config")
    return config.get("config", {})

