from __future__ import annotations

import pytest

from tests.image.podman import Images, build_images


@pytest.fixture(scope="session")
def images() -> Images:
    """The images tests/image/build.sh builds (built here if the sources changed since its last run)."""
    return build_images()
