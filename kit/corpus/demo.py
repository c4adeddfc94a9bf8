"""Built-in demo references: distinct, deterministic clips from ffmpeg's lavfi generators.

They let `ensemble-kit corpus --demo` (and the pipeline) run with no data. Each generator is seeded,
so the same ffmpeg writes byte-identical clips on every box; the content types differ on purpose
(synthetic graphics, fractal zoom, cellular texture, film grain, a moving zone plate, scrolling bars) so
leave-one-source-out folds see different kinds of picture.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from kit.core.errors import PrereqError
from kit.core.fsio import atomic_path
from kit.corpus.ffmpeg import FFmpeg, _stderr_reason

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
DEMO_SIZE = (256, 144)
DEMO_FPS = 25
DEMO_FRAMES = 50


def make_demo_sources(dest_dir: Path, ff: FFmpeg, *, width: int = DEMO_SIZE[0], height: int = DEMO_SIZE[1],
                      fps: int = DEMO_FPS, frames: int = DEMO_FRAMES, names: tuple[str, ...] | None = None) -> Path:
    """Write the demo clips as .y4m into `dest_dir` (kept if already there) and return `dest_dir`."""
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    for name in names or tuple(DEMO_CLIPS):
        target = dest_dir / f"{name}.y4m"
        if target.is_file() and target.stat().st_size > 0:
            continue  # written atomically, so an existing file is whole
        graph = DEMO_CLIPS[name].format(s=f"{width}x{height}", r=fps)
        with atomic_path(target) as tmp:
            proc = subprocess.run([str(ff.path), "-nostdin", "-hide_banner", "-v", "error", "-f", "lavfi", "-i", graph,
                                   "-frames:v", str(frames), "-pix_fmt", "yuv420p", "-f", "yuv4mpegpipe", "-y", str(tmp)],
                                  capture_output=True, text=True, errors="replace", stdin=subprocess.DEVNULL)
            if proc.returncode != 0:
                raise PrereqError(f"ffmpeg ({ff.path}) cannot generate demo clip {name}: {_stderr_reason(proc.stderr)}",
                                  hint="use an ffmpeg with the lavfi generators (the bundled imageio-ffmpeg one has them)")
    return dest_dir
