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
