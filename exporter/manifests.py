"""Read Kubernetes objects from files and folders (`--manifests`).

A file that cannot be read or parsed is fatal (`ManifestError`, one clear line, exit status 2): the operator
pointed us at it and must know. A well-formed file holding one bad object is not: that object becomes an
`InvalidObject` and the rest are probed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from .inventory import SourcedObject
from .model import InvalidObject
from .parse import flatten_lists

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


class ManifestError(Exception):
    """A manifest path that cannot be used at all."""


def _manifest_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in MANIFEST_SUFFIXES)
    if path.is_file():
        return [path]
    raise ManifestError(f"{path}: no such file or directory")


def _documents(path: Path) -> list[Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ManifestError(f"{path}: cannot read: {err}") from err
    try:
        if path.suffix.lower() == ".json":
            return [json.loads(text)]
        # CSafeLoader when libyaml is there: large `kubectl get -o yaml` dumps load several times faster.
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        return [doc for doc in yaml.load_all(text, Loader=loader) if doc is not None]
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        detail = " ".join(str(err).split())
        raise ManifestError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {detail}") from err


def load_manifests(paths: Iterable[str | Path]) -> tuple[list[SourcedObject], list[InvalidObject]]:
    """Every object in the given files and folders, and the documents that are not objects at all."""
    objects: list[SourcedObject] = []
    invalid: list[InvalidObject] = []
    for given in paths:
        for file in _manifest_files(Path(given)):
            for doc in flatten_lists(_documents(file)):
                if isinstance(doc, dict):
                    objects.append(SourcedObject(source=str(file), raw=doc))
                else:
                    invalid.append(InvalidObject(source=str(file), kind="", name="",
                                                 reason=f"document is a {type(doc).__name__}, not an object"))
    return objects, invalid
