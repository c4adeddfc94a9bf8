"""The built-in demo: distinct, deterministic clips from ffmpeg's lavfi generators, and the demo's settings.

They let `ensemble-kit corpus --demo` and `ensemble-kit pipeline` (the same settings for both, through
`kit.corpus.inputs.resolve`) run with no data. Each generator is seeded, so the same ffmpeg writes
byte-identical clips on every box; the content types differ on purpose (synthetic graphics, fractal
zoom, cellular texture, film grain, a moving zone plate, scrolling bars) so leave-one-source-out folds
see different kinds of picture. These settings define the published demo hashes: change them and the
demo's corpus, folds and models change.
"""

from __future__ import annotations

from pathlib import Path

from kit.core import proc
from kit.core.errors import BadInput, PrereqError
from kit.core.fsio import atomic_path, writable_dir
from kit.corpus.ffmpeg import CACHE_ENV, FFmpeg, cache_dir

# name -> lavfi graph; {s} = WxH, {r} = frame rate. Every random generator has a fixed seed (`gradients`
# is left out: it differs run to run even with a seed).
DEMO_CLIPS: dict[str, str] = {
    "demo_testsrc2": "testsrc2=s={s}:r={r}",
    "demo_mandelbrot": "mandelbrot=s={s}:r={r}:end_scale=0.1",
    "demo_life": "life=s={s}:r={r}:seed=7:ratio=0.25:mold=6:life_color=#e0f080:death_color=#103050:mold_color=#406020",
    "demo_grain": "color=c=0x707880:s={s}:r={r},noise=alls=28:allf=t:all_seed=11,drawbox=x='mod(t*80\\,iw)':y=ih/3:w=iw/5:h=ih/3:c=0xd0a040:t=fill",
    "demo_zoneplate": "zoneplate=s={s}:r={r}:ku=64:kv=64:kt2=4:kx2=128:ky2=128",
    "demo_bars": "smptehdbars=s={s}:r={r},scroll=h=0.004:v=0.002",
}

# The demo's settings: small clips so the whole pipeline runs in well under 3 minutes on 2 cores.
DEMO_SIZE: tuple[int, int] = (192, 108)
DEMO_FPS = 25
DEMO_FRAMES = 30
DEMO_CQS: tuple[int, ...] = (22, 30, 38)
DEMO_TRAIN: dict[str, int] = {"epochs": 100}  # training overrides for the demo (shown in --help)
# All clips except the zone plate. Its features lie far outside the other sources', so a model trained
# on five synthetic clips cannot predict it (held-out PLCC 0.1-0.7) and the demo would always HOLD,
# never showing an export. Measured with these settings: PROMOTE, mean PLCC ~0.987, seed spread ~0.002.
DEMO_EXCLUDE: tuple[str, ...] = ("demo_zoneplate",)


def demo_clip_names() -> tuple[str, ...]:
    return tuple(n for n in DEMO_CLIPS if n not in DEMO_EXCLUDE)


def make_demo_sources(dest_dir: Path, ff: FFmpeg, *, width: int = DEMO_SIZE[0], height: int = DEMO_SIZE[1],
                      fps: int = DEMO_FPS, frames: int = DEMO_FRAMES, names: tuple[str, ...] | None = None) -> Path:
    """Write the demo clips (`names`, default: every generator) as .y4m into `dest_dir` (kept if already
    there) and return `dest_dir`."""
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    for name in names or tuple(DEMO_CLIPS):
        target = dest_dir / f"{name}.y4m"
        if target.is_file() and target.stat().st_size > 0:
            continue  # written atomically, so an existing file is whole
        graph = DEMO_CLIPS[name].format(s=f"{width}x{height}", r=fps)
        with atomic_path(target) as tmp:
            try:
                proc.run([str(ff.path), "-nostdin", "-hide_banner", "-v", "error", "-f", "lavfi", "-i", graph,
                          "-frames:v", str(frames), "-pix_fmt", "yuv420p", "-f", "yuv4mpegpipe", "-y", str(tmp)],
                         stage=f"demo clip {name}", stdout=False)
            except proc.ToolFailed as exc:
                why = proc.stderr_reason(exc.stderr_tail) if exc.kind == "exit" else exc.reason
                raise PrereqError(f"ffmpeg ({ff.path}) cannot generate demo clip {name}: {why}",
                                  hint="use an ffmpeg with the lavfi generators (the bundled imageio-ffmpeg one has them)") from None
    return dest_dir


def demo_sources(ff: FFmpeg, size: tuple[int, int] = DEMO_SIZE, frames: int = DEMO_FRAMES) -> Path:
    """The demo's clips in the tool cache. They are inputs, not results: byte-identical on every box and
    never in a run directory, so they are never bundled and `--fresh` does not have to move them."""
    w, h = size
    names = demo_clip_names()
    dest = cache_dir() / "demo-refs" / f"{w}x{h}-{frames}f-{len(names)}clips"
    if not all((dest / f"{n}.y4m").is_file() for n in names):
        try:
            writable_dir(dest, "the demo clips' cache folder")
        except BadInput as exc:
            raise BadInput(exc.message, hint=f"set {CACHE_ENV} to a writable folder, e.g. {CACHE_ENV}=/tmp/ekit-cache") from None
    return make_demo_sources(dest, ff, width=w, height=h, frames=frames, names=names)
