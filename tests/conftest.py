"""Shared fixtures: real ffmpeg (imageio-ffmpeg's, which has libvmaf) and tiny lavfi clips."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"


@pytest.fixture(scope="session")
def shared_media() -> Path:
    if not SHARED_MEDIA.is_dir():
        pytest.skip("../shared/media is absent (a user's clone): real-footage tests need the shared samples")
    return SHARED_MEDIA


# ---- synthetic finished run directories (pipeline issue: bundle/compare/verify unit tests) -------------

def fake_fingerprint(*, torch: str = "2.13.0", ffmpeg: str = "n9", host_platform: str = "linux-cpu-x86_64") -> dict:
    """A fingerprint in kit.env.fingerprint's two-part layout (result_env compared, host recorded)."""
    return {"fingerprint_version": 2,
            "result_env": {"platform": "linux-64", "packages": {"torch": {"version": torch, "digest": "d" * 64}},
                           "ffmpeg": {"version": ffmpeg, "sha256": "f" * 64}},
            "host": {"platform": host_platform, "cpu_model": "test cpu"}}


def _write_fake_run(root: Path, *, seeds=(0, 1), plcc=0.97, verdict="PROMOTE", n_sources=3,
                    encoders=("libx264",), fingerprint=None, config=None, src_names=None, models=False) -> Path:
    """A finished run with made-up fold PLCCs and everything else written by the kit's own code: the LOSO
    files (write_loso), the decision (decide + write_decision: verdict.json and loso/PROMOTE|HOLD.json),
    and with `models=True` a real export (a few epochs on the tiny corpus). So its files agree with each
    other exactly as a real run's do. For bundle/compare tests (no LOSO training)."""
    from datetime import UTC, datetime

    import pandas as pd

    from kit.core.fsio import read_json, sha256_bytes, write_json
    from kit.core.rundir import RunDir
    from kit.core.schema import CORPUS_COLUMNS
    from kit.corpus.table import corpus_summary
    from kit.results import export, provenance
    from kit.results.gate import decide, write_decision
    from kit.results.thresholds import Thresholds
    from kit.train.config import TrainConfig
    from kit.train.data import load_corpus
    from kit.train.loso_files import PREDICTION_COLUMNS, LosoResult, write_loso

    rd = RunDir(root)
    root.mkdir(parents=True, exist_ok=True)
    names = list(src_names or [f"src{s}.y4m" for s in range(n_sources)])
    rows = []
    for s, name in enumerate(names):
        for enc in encoders:
            for cq in (20, 30):
                for f in range(3):
                    row = {c: 0 for c in CORPUS_COLUMNS}
                    row.update(src=name, src_sha256=sha256_bytes(f"src{s}".encode()), width=64, height=48,
                               pix_fmt="yuv420p", fps=25.0, encoder=enc, cq=cq, quality_arg=f"-crf {cq}",
                               preset="medium", frame_index=f, vmaf=90.0 - cq + f + s, adm2=0.9 - cq / 100 + s / 10,
                               platform="linux-cpu-x86_64", box_id="box0", ffmpeg_version="n9", libvmaf_version="3",
                               vmaf_model="vmaf_v0.6.1", env_fingerprint="fp", cell_id=f"c{s}{enc}{cq}")
                    rows.append(row)
    df = pd.DataFrame(rows).astype(CORPUS_COLUMNS).sort_values(["src_sha256", "encoder", "cq", "frame_index"])
    df.to_parquet(rd.corpus, index=False)
    corpus = corpus_summary(load_corpus(rd.corpus))
    srcs = [(s["src_sha256"], s["src"]) for s in corpus["sources"]]
    fp = fingerprint or fake_fingerprint()
    train = config or TrainConfig(epochs=3 if models else TrainConfig.epochs)
    # PROMOTE with the default thresholds; a HOLD run asks for more than its numbers give
    thresholds = Thresholds() if verdict == "PROMOTE" else Thresholds(mean_plcc=0.999)
    folds = pd.DataFrame([{"seed": s, "fold_src": name, "fold_src_sha256": sha, "plcc": plcc + 0.001 * i,
                           "srocc": plcc, "krocc": plcc, "rmse": 1.0 + i, "n_frames": 6 * len(encoders),
                           "n_encodes": 2 * len(encoders), "n_train": 6 * len(encoders) * (len(srcs) - 1)}
                          for s in seeds for i, (sha, name) in enumerate(srcs)])
    loso = LosoResult(seeds=tuple(seeds), config=train, folds=folds,
                      predictions=pd.DataFrame({c: pd.Series(dtype="float64") for c in PREDICTION_COLUMNS}),
                      corpus=corpus, fingerprint=fp, fingerprint_id="fp0123456789abcd", wall_time_s=1.0)
    write_loso(loso, rd)
    decided = decide(loso, thresholds)
    assert decided.verdict == verdict, "fake_run: these numbers do not give that verdict"
    write_decision(rd, decided, loso, now=datetime(2026, 11, 25, 10, 15, tzinfo=UTC))
    write_json(rd.run_json, {"started_at_utc": "2026-11-25T10:00:00Z", "platform": "linux-cpu-x86_64",
                             "box_id": "0123456789ab", "fingerprint": fp,
                             "options": {"seeds": list(seeds), "train": train.to_dict(), "gate": vars(thresholds)}})
    rd.report_dir.mkdir(exist_ok=True)
    rd.report_image("fold_plcc.png").write_bytes(b"\x89PNG fake")
    rd.report_index.write_text('<html><body><img src="fold_plcc.png"><a href="https://x.org">x</a></body></html>')
    if models:
        export.export_run(root, environment=(fp, "fp0123456789abcd"))
    provenance.write_report_inputs(rd, read_json(rd.verdict))  # the report shows this verdict
    return root


@pytest.fixture
def fake_run():
    """Factory: fake_run(path, **kw) -> a finished run directory with synthetic artefacts."""
    return _write_fake_run


# ---- real ffmpeg and tiny lavfi reference clips (corpus issue) ------------------------------------------

@pytest.fixture(scope="session")
def kit_ffmpeg():
    """The ffmpeg the kit would pick here (imageio-ffmpeg's static build, with libvmaf)."""
    from kit.corpus import ffmpeg

    return ffmpeg.find_ffmpeg()


def lavfi_clip(ff, graph: str, out: Path, *, frames: int, pix_fmt: str = "yuv420p", extra: tuple[str, ...] = ()) -> Path:
    """Write `frames` frames of a lavfi graph to `out` (.y4m / .yuv / a container via `extra` codec args)."""
    import subprocess

    fmt = {".y4m": ["-f", "yuv4mpegpipe"], ".yuv": ["-f", "rawvideo"]}.get(out.suffix, [])
    subprocess.run([str(ff.path), "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", graph, "-frames:v", str(frames),
                    "-pix_fmt", pix_fmt, *extra, *fmt, str(out)], check=True)
    return out


@pytest.fixture(scope="session")
def tiny_refs(tmp_path_factory, kit_ffmpeg) -> Path:
    """Two tiny distinct references (64x48, 8 frames): a .y4m and a raw .yuv with geometry in its name."""
    d = tmp_path_factory.mktemp("tiny_refs")
    lavfi_clip(kit_ffmpeg, "testsrc2=s=64x48:r=25", d / "tsrc.y4m", frames=8)
    lavfi_clip(kit_ffmpeg, "mandelbrot=s=64x48:r=25", d / "mandel_64x48_25fps.yuv", frames=8)
    return d


# Tiny but real pipeline settings (pipeline issue): 5 lavfi clips of 96x64x8 frames, libx264 at 2 cqs,
# 2 seeds x 5 folds, 20 epochs; the gate loosened so the run PROMOTEs and the export step runs too.
TINY_PIPELINE_ARGS = ("--demo-size", "96x64", "--demo-frames", "8", "--encoders", "libx264", "--cqs", "22,34",
                      "--seeds", "0,1", "--epochs", "20", "--gate-mean-plcc", "0.5", "--gate-per-seed-min", "0.5",
                      "--gate-plcc-spread-max", "1")


@pytest.fixture(scope="session")
def tiny_pipeline_args() -> list[str]:
    return list(TINY_PIPELINE_ARGS)


@pytest.fixture(scope="session")
def promote_snapshot():
    """make(seeds) -> the gate snapshot export takes, of a real PROMOTE decision (kit.results.gate.decide)."""
    from kit.results.gate import decide

    def make(seeds=(0, 1, 2)) -> dict:
        verdict = decide({s: 0.97 - 0.001 * s for s in seeds})
        return {"verdict": verdict.verdict, "gate": verdict.gate, "recommendation": verdict.recommendation}

    return make


# ---- the stand-in libvmaf tree (tests/fixtures/fake-libvmaf): a vmaf CLI whose scores are ffmpeg's ------

FAKE_LIBVMAF = Path(__file__).parent / "fixtures" / "fake-libvmaf"


def libvmaf_toolchain_or_skip() -> None:
    """Building the stand-in tree needs meson, ninja, a C compiler and xxd (as a real libvmaf tree does)."""
    import shutil

    from kit.core.errors import PrereqError
    from kit.env import libvmaf_prereqs

    try:
        libvmaf_prereqs.meson_command()
        libvmaf_prereqs.ninja_env()
    except PrereqError as exc:
        pytest.skip(f"meson/ninja not available ({exc})")
    if not (shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")):
        pytest.skip("no C compiler (cc/gcc/clang) to build tests/fixtures/fake-libvmaf: apt-get install build-essential")
    if not shutil.which("xxd"):
        pytest.skip("no xxd (libvmaf's built-in models need it): apt-get install xxd")


@pytest.fixture(scope="session")
def fake_vmaf_env(kit_ffmpeg):
    """The stand-in vmaf delegates its scoring to this ffmpeg's libvmaf filter."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FAKE_VMAF_FFMPEG", str(kit_ffmpeg.path))
        yield


def copy_fake_libvmaf(dest: Path) -> Path:
    """A writable copy of the stand-in tree (the kit builds inside the tree, as libvmaf's CUDA build needs)."""
    import shutil

    shutil.copytree(FAKE_LIBVMAF, dest)
    return dest


@pytest.fixture(scope="session")
def fake_vmaf(tmp_path_factory, fake_vmaf_env, kit_ffmpeg):
    """The stand-in vmaf CLI built, proved and staged by the kit itself (CPU backend)."""
    from kit.env import libvmaf_build

    libvmaf_toolchain_or_skip()
    root = tmp_path_factory.mktemp("fake_vmaf")
    built = libvmaf_build.build_libvmaf(copy_fake_libvmaf(root / "src"), dest=root / "binaries" / "linux-cpu-x86_64",
                                        ffmpeg=kit_ffmpeg)
    return built.cli
