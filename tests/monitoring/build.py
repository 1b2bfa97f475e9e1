"""What tests/monitoring/install.sh built: binaries, CRDs and images, read from its ``monitoring.env``.

The tests never build (a cold build takes minutes and belongs to scripts/test.sh); a missing or stale build is
``MonitoringUnavailable``, which the fixtures turn into a skip, or a failure under ``AWE_REQUIRE_MONITORING=1``.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.controlplane.harness import cache_dir

REQUIRE_ENV = "AWE_REQUIRE_MONITORING"
INSTALLER = "tests/monitoring/install.sh"


class MonitoringUnavailable(RuntimeError):
    """The monitoring machinery is not built here; ``reason`` is meant for ``pytest.skip``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class MonitoringBuild:
    """The images (names as the fixtures use them), the archive holding them, the CRDs and the host binaries."""

    archive: Path
    operator_version: str
    operator_image: str
    reloader_image: str
    prometheus_image: str
    prometheus_version: str
    alertmanager_image: str
    alertmanager_version: str
    receiver_image: str
    crds_dir: Path
    operator_bin: Path
    reloader_bin: Path

    @classmethod
    def load(cls, cache: Path | None = None) -> MonitoringBuild:
        env_file = (cache or cache_dir()) / "images" / "monitoring.env"
        if not env_file.is_file():
            raise MonitoringUnavailable(f"{env_file} not found: run {INSTALLER}")
        values = dict(line.split("=", 1) for line in env_file.read_text().splitlines()
                      if re.match(r"^AWE_\w+=", line))
        try:
            build = cls(
                archive=Path(values["AWE_MONITORING_ARCHIVE"]),
                operator_version=values["AWE_OPERATOR_VERSION"],
                operator_image=values["AWE_OPERATOR_IMAGE"],
                reloader_image=values["AWE_RELOADER_IMAGE"],
                prometheus_image=values["AWE_PROMETHEUS_IMAGE"],
                prometheus_version=values["AWE_PROMETHEUS_VERSION"],
                alertmanager_image=values["AWE_ALERTMANAGER_IMAGE"],
                alertmanager_version=values["AWE_ALERTMANAGER_VERSION"],
                receiver_image=values["AWE_RECEIVER_IMAGE"],
                crds_dir=Path(values["AWE_CRDS_DIR"]),
                operator_bin=Path(values["AWE_OPERATOR_BIN"]),
                reloader_bin=Path(values["AWE_RELOADER_BIN"]),
            )
        except KeyError as e:
            raise MonitoringUnavailable(f"{env_file} lacks {e.args[0]}: run {INSTALLER} again") from e
        missing = [p for p in (build.archive, build.operator_bin, build.reloader_bin) if not p.is_file()]
        if missing or not sorted(build.crds_dir.glob("monitoring.coreos.com_*.yaml")):
            raise MonitoringUnavailable(f"{missing or build.crds_dir} missing: run {INSTALLER} again")
        return build

    def crd_files(self) -> list[Path]:
        return sorted(self.crds_dir.glob("monitoring.coreos.com_*.yaml"))

    def operator_reported_version(self) -> str:
        """What the built operator says it is (``prometheus-operator --version``), for reports."""
        out = subprocess.run([str(self.operator_bin), "--version"], capture_output=True, text=True, timeout=30,
                             check=False, env={k: v for k, v in os.environ.items() if "proxy" not in k.lower()})
        match = re.search(r"version (\S+)", out.stdout + out.stderr)
        return match.group(1) if match else "unknown"
