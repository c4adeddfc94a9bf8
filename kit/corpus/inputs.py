"""What a corpus run is made of, resolved in one place for `ensemble-kit corpus` and `ensemble-kit pipeline`.

The references (a folder, or the demo clips with the demo's settings), the encoders (as asked, else
this box's family encoders that pass a real test encode) and the cqs (as asked, else the defaults, or
the demo's). Both commands call `CorpusRequest.check` before probing anything and `resolve` after
finding ffmpeg, so `corpus --demo` builds exactly the pipeline's demo corpus.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kit.core.console import warn
from kit.core.errors import BadInput, PrereqError
from kit.corpus import demo
from kit.corpus import encoders as enc_table
from kit.corpus.ffmpeg import FFmpeg, default_encoders
from kit.corpus.grid import check_encodable
from kit.corpus.sources import Source, discover


@dataclass(frozen=True)
class CorpusRequest:
    """What the user asked for; None means "this box's default"."""

    ref_dir: Path | None = None  # None: the demo clips
    encoders: tuple[str, ...] | None = None  # None: the family's encoders that pass a test encode
    cqs: tuple[int, ...] | None = None  # None: encoders.DEFAULT_CQS (demo.DEMO_CQS for the demo)
    demo_size: tuple[int, int] = demo.DEMO_SIZE
    demo_frames: int = demo.DEMO_FRAMES
    raw_geometry: dict[str, Any] = field(default_factory=dict)  # --width/--height/--pix-fmt/--fps for .yuv files

    @property
    def demo(self) -> bool:
        return self.ref_dir is None

    def check(self) -> None:
        """Mistakes in what the user typed are bad input (exit 2), found before any probing or work."""
        if self.ref_dir is not None and not Path(self.ref_dir).is_dir():
            raise BadInput(f"--ref-dir {self.ref_dir} is not a directory", hint="pass the folder holding your reference clips")
        for name in self.encoders or ():
            encoder = enc_table.get(name)  # an unknown name is bad input, not a missing prerequisite
            for cq in self.cqs or ():
                encoder.check_cq(cq)


@dataclass(frozen=True)
class ResolvedCorpus:
    ref_dir: Path
    sources: list[Source]
    encoders: tuple[str, ...]
    cqs: tuple[int, ...]
    demo_clips: dict[str, Any] | None  # size, frames and clip names of the demo; None for a --ref-dir

    @property
    def n_cells(self) -> int:
        return len(self.sources) * len(self.encoders) * len(self.cqs)

    def describe(self) -> str:
        return (f"{len(self.sources)} sources x {len(self.encoders)} encoders ({', '.join(self.encoders)}) x "
                f"{len(self.cqs)} cqs = {self.n_cells} cells")


def resolve(request: CorpusRequest, ff: FFmpeg, *, default_encoders: Callable[[], Sequence[str]]) -> ResolvedCorpus:
    """Fill in this box's defaults and find the sources. `default_encoders()` is asked only without --encoders."""
    encoders = tuple(request.encoders) if request.encoders else tuple(default_encoders())
    if not encoders:
        raise PrereqError("no encoder passes a test encode on this box",
                          hint="run `ensemble-kit prereqs` to see why each one failed")
    if request.cqs:
        cqs = tuple(sorted(set(request.cqs)))
    else:
        cqs = demo.DEMO_CQS if request.demo else tuple(enc_table.DEFAULT_CQS)
    for name in encoders:
        for cq in cqs:
            enc_table.get(name).check_cq(cq)
    if request.demo:
        ref_dir = demo.demo_sources(ff, request.demo_size, request.demo_frames)
        clips: dict[str, Any] | None = {"size": list(request.demo_size), "frames": request.demo_frames,
                                        "names": list(demo.demo_clip_names())}
    else:
        ref_dir = Path(request.ref_dir)  # type: ignore[arg-type]
        if not ref_dir.exists():
            raise BadInput(f"--ref-dir {ref_dir} does not exist", hint="pass the folder holding your reference clips")
        clips = None
    sources = discover(ref_dir, ff=ff, **request.raw_geometry)
    check_encodable(sources, encoders)  # before any encode (and before the pipeline's run directory)
    return ResolvedCorpus(ref_dir=ref_dir, sources=sources, encoders=encoders, cqs=cqs, demo_clips=clips)


def box_encoders(ff: FFmpeg) -> tuple[str, ...]:
    """This box's default encoders (its family's that pass a real test encode), warning about the rest."""
    choice = default_encoders(ffmpeg=ff)
    for line in choice.warnings:
        warn(line)
    return choice.encoders
