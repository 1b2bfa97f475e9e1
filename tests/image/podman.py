"""The images tests/image/build.sh builds, and the private podman that holds them.

The build runs once per session (its stamp fast path makes a second call cost a hash of the sources). Without
root or podman the image tests skip and say why, unless AWE_REQUIRE_IMAGE=1 (CI), where they fail: a broken
build must not turn into a silent skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "tests" / "image" / "build.sh"
REQUIRE_ENV = "AWE_REQUIRE_IMAGE"
BUILD_SECONDS = 1800  # a cold build (Debian base + pip) takes minutes; a cached one a fraction of a second


@dataclass(frozen=True)
class Images:
    image: str  # the chart's default image name, e.g. ghcr.io/...:0.1.0
    archive: Path  # docker-archive of `image`
    pause_image: str
    pause_archive: Path
    base_image: str
    podman_env: dict[str, str]  # the private podman's CONTAINERS_* variables

    def podman(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["podman", *args], env={**os.environ, **self.podman_env}, capture_output=True,
                              text=True, timeout=timeout, check=check)


def unavailable(why: str) -> None:
    if os.environ.get(REQUIRE_ENV):
        pytest.fail(f"{REQUIRE_ENV} is set but the image cannot be built: {why}")
    pytest.skip(f"{why} ({REQUIRE_ENV}=1 makes this fail)")


def _env_file(text: str) -> dict[str, str]:
    pairs = (line.removeprefix("export ").split("=", 1) for line in text.splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def build_images() -> Images:
    """Run tests/image/build.sh (cached after the first time) and describe what it built."""
    if os.geteuid() != 0:
        unavailable("building the image needs root (mmdebstrap --mode=root, podman's overlay storage)")
    if shutil.which("podman") is None and shutil.which("apt-get") is None:
        unavailable("podman is not installed and there is no apt-get to install it")
    try:
        done = subprocess.run([str(BUILD)], capture_output=True, text=True, timeout=BUILD_SECONDS)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{BUILD} took more than {BUILD_SECONDS} s")
    if done.returncode == 2:
        unavailable(done.stderr.strip() or "tests/image/build.sh: prerequisite missing")
    if done.returncode != 0:
        pytest.fail(f"{BUILD} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    env = subprocess.run([str(BUILD), "--env"], capture_output=True, text=True, timeout=60, check=True)
    cache = Path(os.environ.get("AWE_CACHE") or Path.home() / ".cache" / "admission-webhook-exporter")
    built = _env_file((cache / "images" / "images.env").read_text())
    return Images(image=built["AWE_IMAGE"], archive=Path(built["AWE_IMAGE_ARCHIVE"]),
                  pause_image=built["AWE_PAUSE_IMAGE"], pause_archive=Path(built["AWE_PAUSE_ARCHIVE"]),
                  base_image=built["AWE_BASE_IMAGE"], podman_env=_env_file(env.stdout))
