"""Read a docker-archive (what `podman save --format docker-archive` writes) layer by layer, without podman."""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class LayerFile:
    layer: str  # the layer's file name in the archive
    path: str  # normalised: no leading "./" or "/"
    size: int
    sha256: str


def manifest(archive: Path) -> tuple[list[str], list[str], dict[str, Any]]:
    """(RepoTags, layer file names bottom-up, image config) of a single-image docker-archive."""
    with tarfile.open(archive) as outer:
        entries = json.load(_member(outer, "manifest.json"))
        if len(entries) != 1:
            raise ValueError(f"{archive}: {len(entries)} images in the archive, expected 1")
        config = json.load(_member(outer, entries[0]["Config"]))
        return list(entries[0].get("RepoTags") or []), list(entries[0]["Layers"]), config


def _member(tar: tarfile.TarFile, name: str) -> Any:
    f = tar.extractfile(name)
    if f is None:
        raise ValueError(f"{name} is not a regular file in the archive")
    return f


def _norm(name: str) -> str:
    return name.removeprefix("./").lstrip("/")


def files(archive: Path) -> Iterator[LayerFile]:
    """Every regular file of every layer, with its content hash (whiteouts and links are not content)."""
    _, layers, _ = manifest(archive)
    with tarfile.open(archive) as outer:
        for layer in layers:
            with tarfile.open(fileobj=_member(outer, layer), mode="r|*") as inner:
                for m in inner:
                    if not m.isreg():
                        continue
                    digest = hashlib.sha256()
                    src = inner.extractfile(m)
                    assert src is not None
                    while chunk := src.read(1 << 20):
                        digest.update(chunk)
                    yield LayerFile(layer, _norm(m.name), m.size, digest.hexdigest())


def read_files(archive: Path, wanted: set[str]) -> dict[str, bytes]:
    """The content of `wanted` paths as the image sees them (a later layer's copy replaces an earlier one)."""
    _, layers, _ = manifest(archive)
    found: dict[str, bytes] = {}
    with tarfile.open(archive) as outer:
        for layer in layers:
            with tarfile.open(fileobj=_member(outer, layer), mode="r|*") as inner:
                for m in inner:
                    path = _norm(m.name)
                    head, _, base = path.rpartition("/")
                    if base.startswith(".wh."):  # a whiteout: this layer deletes the file below it
                        found.pop(f"{head}/{base.removeprefix('.wh.')}".lstrip("/"), None)
                    elif m.isreg() and (path in wanted or any(path.startswith(w.rstrip("*")) for w in wanted
                                                            if w.endswith("*"))):
                        src = inner.extractfile(m)
                        assert src is not None
                        found[path] = src.read()
    return found
