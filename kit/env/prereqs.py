"""`ensemble-kit prereqs`: everything a run needs on this box, checked for real, one row each.

Each row is PASS, WARN or FAIL with one line of detail and one line saying what to do. Checks run the
real tools (a 2-frame libvmaf score, a test encode per encoder) because listings lie: ffmpeg lists
NVENC on boxes without an NVIDIA GPU, and a libvmaf filter can be present yet fail to score.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from kit.core import proc
from kit.core.errors import BadInput, KitError, PrereqError
from kit.core.fsio import owner_tag, temp_dir
from kit.core.schema import LIBVMAF_KEYS
from kit.corpus import encoders as encoder_table
from kit.corpus import ffmpeg as tools
from kit.env import lockfiles, locks
from kit.env import platform as host_platform
from kit.env.fingerprint import RESULT_DISTRIBUTIONS

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
NVENC_MIN_FREE_MIB = 512  # an NVENC session plus upload surfaces at 1080p needs a few hundred MiB
DISK_HEADROOM = 256 << 20  # run.json, cells, corpus, models, report
DEMO_REFERENCE_BYTES = 64 << 20
FIX_LOCK = {"pixi": "pixi install --locked (or `pixi run -e <env> ...`, which installs from the lock)",
            "pip": "pip install --require-hashes --no-deps -r environments/<lock>.txt (see environments/README.md)"}


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # PASS | WARN | FAIL
    detail: str
    hint: str = ""


@dataclass(frozen=True)
class PrereqReport:
    checks: tuple[Check, ...]
    strict: bool
    encoders: tuple[str, ...]  # the encoders a run would use

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == FAIL]

    def to_json(self) -> dict[str, Any]:
        return {"ok": not self.failed, "strict": self.strict, "encoders": list(self.encoders),
                "checks": [asdict(c) for c in self.checks]}


# ---- individual checks -----------------------------------------------------------------------


def check_ffmpeg(explicit: str | None) -> tuple[Check, Any | None]:
    try:
        ff = tools.find_ffmpeg(explicit, require_libvmaf=False)
    except KitError as exc:
        return Check("ffmpeg", FAIL, exc.message, exc.hint or "pip install imageio-ffmpeg, or pass --ffmpeg"), None
    return Check("ffmpeg", PASS, f"{ff.version} ({ff.origin}: {ff.path})"), ff


def check_ffmpeg_lock(ff: Any | None) -> Check:
    """The binary against the locked build's sha256 (kit/locks/ffmpeg.json): damaged is a FAIL, another one a WARN."""
    if ff is None:
        return Check("ffmpeg lock", FAIL, "no ffmpeg to check", "fix the ffmpeg row first")
    check = lockfiles.check_ffmpeg(ff.path, ff.origin)
    if check.status == lockfiles.LOCKED:
        return Check("ffmpeg lock", PASS, check.detail)
    if check.status == lockfiles.TAMPERED:
        return Check("ffmpeg lock", FAIL, check.detail, lockfiles.reinstall_hint())
    return Check("ffmpeg lock", WARN, check.detail,
                 "drop --ffmpeg / ENSEMBLE_KIT_FFMPEG (or the PATH/binaries/ ffmpeg) to use the locked one, "
                 "if results must match other boxes")


def check_libvmaf(ff: Any | None) -> Check:
    """Score 2 real frames (a clip against a blurred copy) and check every feature the corpus needs."""
    if ff is None:
        return Check("libvmaf", FAIL, "no ffmpeg to score with", "fix the ffmpeg row first")
    if not ff.has_libvmaf:
        return Check("libvmaf", FAIL, f"{ff.path} has no libvmaf filter",
                     "use the bundled ffmpeg (pip install imageio-ffmpeg) or one built with --enable-libvmaf")
    with temp_dir("prereq-vmaf") as tmp:
        src = "testsrc2=size=160x90:rate=25:duration=0.08"
        argv = [str(ff.path), "-nostdin", "-hide_banner", "-v", "error", "-f", "lavfi", "-i", src,
                "-f", "lavfi", "-i", src, "-lavfi", "[0:v]gblur=sigma=1.5[d];[d][1:v]libvmaf=log_fmt=json:log_path=s.json",
                "-f", "null", "-"]
        try:
            done = proc.run(argv, stage="libvmaf check", timeout=60, cwd=Path(tmp), check=False, stdout=False)
        except proc.ToolFailed as exc:
            return Check("libvmaf", FAIL, f"a 2-frame score did not run: {exc.reason}", "pass another --ffmpeg")
        try:
            frames = json.loads((Path(tmp) / "s.json").read_text())["frames"]
        except (OSError, ValueError, KeyError):
            reason = proc.last_line(done.stderr, "no score written")
            return Check("libvmaf", FAIL, f"a 2-frame score failed: {reason}",
                         "reinstall imageio-ffmpeg or pass another --ffmpeg")
    missing = sorted({key for f in frames for key in LIBVMAF_KEYS.values() if key not in f["metrics"]}
                     | (set(LIBVMAF_KEYS.values()) if not frames else set()))
    if len(frames) != 2 or missing:
        return Check("libvmaf", FAIL, f"scored {len(frames)} frame(s); missing features: {', '.join(missing) or '-'}",
                     "use an ffmpeg whose libvmaf computes the vmaf_v0.6.1 features")
    vmaf = frames[0]["metrics"]["vmaf"]
    return Check("libvmaf", PASS, f"libvmaf {ff.libvmaf_version}: 2-frame score ok (vmaf {vmaf:.1f})")


def check_encoders(host: host_platform.HostPlatform, requested: Sequence[str] | None,
                   probe: Callable[[str], Any]) -> tuple[list[Check], tuple[str, ...]]:
    """One row per encoder: requested ones must encode; without a request, the family's defaults."""
    rows: list[Check] = []
    if requested:
        for name in requested:
            encoder_table.get(name)  # unknown name: BadInput naming --encoders
            result = probe(name)
            if result.ok:
                rows.append(Check(f"encoder {name}", PASS, "test encode ok"))
            else:
                rows.append(Check(f"encoder {name}", FAIL, tools.explain_failure(host, name, result.reason),
                                  "drop it from --encoders, or run `ensemble-kit prereqs` without --encoders "
                                  "to see what this box can run"))
        return rows, tuple(n for n, r in zip(requested, rows, strict=True) if r.status == PASS)
    choice = tools.default_encoders(host, probe=probe)
    for name in choice.encoders:
        rows.append(Check(f"encoder {name}", PASS, f"test encode ok (default for {host.family})"))
    for name, why in choice.rejected.items():
        status = WARN if choice.encoders else FAIL
        rows.append(Check(f"encoder {name}", status, why,
                          f"runs use {', '.join(choice.encoders)} instead" if choice.encoders
                          else "no encoder works: check the ffmpeg row"))
    if choice.encoders and choice.encoders[0] == encoder_table.FALLBACK_ENCODER and \
            encoder_table.FALLBACK_ENCODER not in encoder_table.FAMILY_ENCODERS[host.family]:
        rows.append(Check("encoders", WARN, f"none of the {host.family} encoders works; falling back to libx264",
                          "the rows above say why; results will not cover this box's hardware encoders"))
    return rows, choice.encoders


def check_packages(drift: locks.DriftReport | None) -> Check:
    """The fingerprinted packages import, at the versions the lock pins."""
    broken, versions = [], []
    for dist, module in RESULT_DISTRIBUTIONS.items():
        try:
            importlib.import_module(module)
            versions.append(f"{dist} {metadata.version(dist)}")
        except Exception as exc:  # noqa: BLE001 - an import can fail in many ways; report each by name
            broken.append(f"{dist} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
    if broken:
        return Check("python packages", FAIL, "cannot import " + "; ".join(broken),
                     "reinstall the environment from its lock (see the lock drift row)")
    off = [d for d in (drift.differences if drift else ()) if d.name in RESULT_DISTRIBUTIONS or d.name == "pytorch"]
    if off:
        return Check("python packages", WARN, "not at the locked versions: " + "; ".join(str(d) for d in off),
                     FIX_LOCK.get(drift.kind if drift else "", "reinstall from the lock"))
    return Check("python packages", PASS, ", ".join(versions))


def check_drift() -> tuple[Check, locks.DriftReport | None]:
    try:
        report = locks.check_drift()
    except KitError as exc:
        return Check("lock drift", WARN, f"cannot compare with the lock: {exc.message}", exc.hint or ""), None
    if report.kind == "none":
        return Check("lock drift", WARN, "no lock for this platform/environment; results cannot be tied to a lock",
                     "use the pixi environments (docs/environments.md)"), report
    if report.differences:
        return Check("lock drift", WARN, report.summary(), FIX_LOCK[report.kind]), report
    return Check("lock drift", PASS, report.summary()), report


def check_gpu(host: host_platform.HostPlatform, encoders_in_use: Sequence[str],
              pixi_env: str | None = None) -> Check:
    """A GPU is checked only where something runs on it: the hardware encoders a run will use."""
    hw = {encoder_table.ENCODERS[e].hw for e in encoders_in_use if e in encoder_table.ENCODERS} - {None}
    needs = set(hw) & {"cuda", "qsv", "vaapi"}
    env_vendor = host_platform.PIXI_ENV_GPU.get(pixi_env or "")
    nvidia = [g for g in host.gpus if g.vendor == "nvidia"]
    intel = [g for g in host.gpus if g.vendor == "intel"]
    if env_vendor == "nvidia" and not nvidia:
        return Check("gpu", FAIL, f"this is the pixi '{pixi_env}' environment but no NVIDIA GPU is visible (nvidia-smi)",
                     "install the NVIDIA driver, or use the default (CPU) environment: pixi run pipeline")
    if env_vendor == "intel" and not intel:
        return Check("gpu", FAIL, f"this is the pixi '{pixi_env}' environment but no Intel render node is visible",
                     "check /dev/dri permissions (video/render group), or use the default (CPU) environment")
    if "cuda" in needs:
        low = [g for g in nvidia if g.memory_free_mib is not None and g.memory_free_mib < NVENC_MIN_FREE_MIB]
        desc = "; ".join(f"{g.name} driver {g.driver}, {g.memory_free_mib} MiB free" for g in nvidia)
        if low:
            return Check("gpu", WARN, f"{desc}: under {NVENC_MIN_FREE_MIB} MiB free for NVENC",
                         "close other GPU jobs or lower --jobs")
        return Check("gpu", PASS, desc)
    if needs & {"qsv", "vaapi"}:
        return Check("gpu", PASS, "; ".join(f"{g.name} ({g.driver}) at {g.device}" for g in intel) or "render node ok")
    return Check("gpu", PASS, "none needed: software encoders, and training runs on the CPU")


def _driver_tuple(version: str | None) -> tuple[int, ...] | None:
    """'610.43.02' -> (610, 43, 2); None when it is not a dotted number."""
    try:
        return tuple(int(part) for part in str(version).split(".")) if version else None
    except ValueError:
        return None


def check_nvidia_driver(host: host_platform.HostPlatform, ff: Any | None, requested: Sequence[str] | None,
                        pixi_env: str | None = None) -> Check | None:
    """The driver against the NVENC floor of THIS ffmpeg (kit/locks/ffmpeg.json, by the binary's sha256).

    Below it NVENC cannot open a session and runs fall back to the software encoders: a different corpus.
    That is a FAIL where NVENC is the point (the `cuda` environment, or NVENC encoders asked for), else a
    WARN. No row without an NVIDIA GPU; a data-centre GPU has no NVENC at any driver.
    """
    nvidia = [g for g in host.gpus if g.vendor == "nvidia"]
    if not nvidia:
        return None
    software = ", ".join(encoder_table.FAMILY_ENCODERS["linux-cpu"])
    if all(encoder_table.NO_NVENC_GPUS.search(g.name) for g in nvidia):
        return Check("nvidia driver", WARN, f"{nvidia[0].name} has no NVENC encoder (data-centre GPUs like "
                     f"A100/H100/H200 have none): runs use the software encoders {software}",
                     "nothing to install; for NVENC encodes use a GeForce/RTX, T4, L4 or L40 box")
    locked = lockfiles.ffmpeg_by_sha256(lockfiles.binary_sha256(ff.path)) if ff is not None else None
    driver = nvidia[0].driver
    if locked is None or not locked.nvenc_min_driver:
        return Check("nvidia driver", WARN, f"driver {driver}; the NVENC driver floor of this ffmpeg is not known "
                     "(not a locked imageio-ffmpeg build)", "use the locked ffmpeg to have it checked")
    have, need = _driver_tuple(driver), _driver_tuple(locked.nvenc_min_driver)
    what = f"NVENC in this ffmpeg ({locked.version}, imageio-ffmpeg {locked.imageio_ffmpeg})"
    if have is not None and need is not None and have >= need:
        return Check("nvidia driver", PASS, f"driver {driver} >= {locked.nvenc_min_driver}, what {what} needs")
    nvenc_wanted = pixi_env == "cuda" or any("nvenc" in e for e in (requested or ()))
    major = locked.nvenc_min_driver.split(".")[0]
    return Check("nvidia driver", FAIL if nvenc_wanted else WARN,
                 f"{what} needs NVIDIA driver >= {locked.nvenc_min_driver}; this box has {driver}",
                 f"install an NVIDIA driver of the R{major} branch or newer; until then NVENC cannot start and "
                 f"runs fall back to the software encoders {software} (another corpus, another result_env)")


RENDER_GROUP_HINT = "add yourself to the render node's group: sudo usermod -aG {group} $USER, then log in again"


def _can_open(node: Path) -> bool:
    return os.access(node, os.R_OK | os.W_OK)


def check_intel_media(host: host_platform.HostPlatform, encoders_in_use: Sequence[str], pixi_env: str | None,
                      environ: dict[str, str] | None = None,
                      can_open: Callable[[Path], bool] = _can_open) -> Check | None:
    """Intel QSV/VA-API: the render node is usable by this user, and in the intel-media environment its own
    libva, iHD and oneVPL runtime are there for ffmpeg (EKIT_FFMPEG_LIBRARY_PATH, LIBVA_DRIVERS_PATH)."""
    env = os.environ if environ is None else environ
    intel = [g for g in host.gpus if g.vendor == "intel"]
    in_env = pixi_env == host_platform.PIXI_ENVS["linux-sycl"]
    uses = any(encoder_table.ENCODERS[e].hw in ("qsv", "vaapi") for e in encoders_in_use if e in encoder_table.ENCODERS)
    if not (in_env or uses) or not intel:
        return None
    for gpu in intel:
        node = Path(gpu.device or "")
        if gpu.device and not can_open(node):
            try:
                import grp  # POSIX only, like the render nodes themselves

                group = grp.getgrgid(node.stat().st_gid).gr_name
            except (OSError, KeyError):
                group = "render"
            return Check("intel media", FAIL, f"{node} exists but this user cannot open it (group {group})",
                         RENDER_GROUP_HINT.format(group=group))
    if not in_env:
        return Check("intel media", WARN, "QSV/VA-API load the host's libva and iHD driver: their versions are host "
                     "facts that can change the encodes", "use the intel-media pixi environment, which brings its own")
    lib = Path(env.get("EKIT_FFMPEG_LIBRARY_PATH", ""))
    dri = Path(env.get("LIBVA_DRIVERS_PATH", ""))
    wanted = {lib / "libva.so.2", lib / "libva-drm.so.2", lib / "libmfx-gen.so.1.2", dri / "iHD_drv_video.so"}
    missing = sorted(str(p) for p in wanted if not str(p).startswith("/") or not p.exists())
    if missing or env.get("ONEVPL_PRIORITY_PATH") != str(lib):
        return Check("intel media", FAIL, "this environment's VA/oneVPL runtime is incomplete: "
                     + (", ".join(missing) or "ONEVPL_PRIORITY_PATH is not its lib/"),
                     "reinstall it: pixi install --locked -e intel-media (and run through `pixi run -e intel-media`)")
    return Check("intel media", PASS, f"libva, iHD and the oneVPL runtime from this environment ({lib}), loaded "
                 f"by ffmpeg first; render node(s) {', '.join(g.device or '?' for g in intel)} usable")


def estimate_bytes(ref_dir: Path | None, jobs: int) -> int:
    """Rough peak disk use of a run: headroom + one temporary encode per parallel job (<= its reference).

    Encodes are compressed and deleted once scored, so a reference's own size bounds each job's file.
    """
    if ref_dir is None:
        return DISK_HEADROOM + DEMO_REFERENCE_BYTES
    sizes = sorted((p.stat().st_size for p in ref_dir.rglob("*") if p.is_file()), reverse=True)
    return DISK_HEADROOM + sum(sizes[:max(1, jobs)])


def _existing_ancestor(path: Path) -> Path:
    path = path.resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(out_dir: Path, ref_dir: Path | None, jobs: int) -> Check:
    need = estimate_bytes(ref_dir, jobs)
    where = _existing_ancestor(out_dir)
    free = shutil.disk_usage(where).free
    detail = f"{free / 2**30:.1f} GiB free at {where}; a run needs about {need / 2**30:.2f} GiB"
    if free < need:
        return Check("disk", FAIL, detail, "free space or pass another --out-dir")
    if free < 2 * need:
        return Check("disk", WARN, detail, "little room to spare: free space or pass another --out-dir")
    return Check("disk", PASS, detail)


def check_writable(out_dir: Path) -> Check:
    """Really create (and remove) a file where the run directory will be."""
    where = out_dir if out_dir.is_dir() else _existing_ancestor(out_dir)
    if where.exists() and not where.is_dir():
        return Check("write permission", FAIL, f"{where} is a file, not a directory", "pass another --out-dir")
    try:
        fd, name = tempfile.mkstemp(prefix=f".ekit-write-test.{owner_tag()}.", suffix=".tmp", dir=where)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        return Check("write permission", FAIL, f"cannot write in {where}: {exc.strerror}",
                     "pass an --out-dir you can write to")
    return Check("write permission", PASS, f"can write in {where}")


# ---- the whole table -------------------------------------------------------------------------


def run_prereqs(*, encoders: Sequence[str] | None = None, out_dir: Path = Path("runs"), ref_dir: Path | None = None,
                strict: bool = False, ffmpeg: str | None = None, host: host_platform.HostPlatform | None = None,
                probe: Callable[[str], Any] | None = None, jobs: int | None = None) -> PrereqReport:
    """Every check, in the order a user fixes them. `probe`/`host` are injectable for tests."""
    if ref_dir is not None and not ref_dir.is_dir():
        raise BadInput(f"--ref-dir: {ref_dir} is not a directory", hint="pass the folder with the reference clips")
    host = host or host_platform.detect()
    rows: list[Check] = []
    ff_row, ff = check_ffmpeg(ffmpeg)
    rows += [ff_row, check_ffmpeg_lock(ff), check_libvmaf(ff)]
    if probe is None and ff is not None:
        def probe(name: str) -> Any:
            return tools.probe_encoder(ff, name)
    in_use: tuple[str, ...] = ()
    if probe is not None:
        enc_rows, in_use = check_encoders(host, encoders, probe)
        rows += enc_rows
    else:
        rows.append(Check("encoders", FAIL, "cannot test any encoder without ffmpeg", "fix the ffmpeg row first"))
    drift_row, drift = check_drift()
    rows += [check_packages(drift), drift_row]
    pixi_env = os.environ.get("PIXI_ENVIRONMENT_NAME")
    rows.append(check_gpu(host, in_use, pixi_env))
    rows += [row for row in (check_nvidia_driver(host, ff, encoders, pixi_env),
                             check_intel_media(host, in_use, pixi_env)) if row is not None]
    rows.append(check_disk(out_dir, ref_dir, jobs or host_platform.cpu_count()))
    rows.append(check_writable(out_dir))
    if strict:
        rows = [Check(r.name, FAIL, r.detail, r.hint) if r.status == WARN else r for r in rows]
    return PrereqReport(tuple(rows), strict, in_use)


def require(report: PrereqReport) -> None:
    """Raise PrereqError (exit 3) naming every failed row."""
    if report.failed:
        names = ", ".join(c.name for c in report.failed)
        raise PrereqError(f"{len(report.failed)} prerequisite(s) failed: {names}",
                          hint="each FAIL row says what to do")
