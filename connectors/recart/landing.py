"""The Recart landing zone: where the app's change export drops files, and how to find them.

Layout: ``<root>/recart/<entity>/<account_id>/<name>.jsonl`` or ``.parquet`` (deeper folders under
the account directory, e.g. dates, are allowed). A file is immutable once it appears: writers write
to a hidden or ``.tmp`` name and rename, so readers never see half a file. Hidden files, ``_``-prefixed
markers (``_SUCCESS``) and ``*.tmp`` are in-progress or bookkeeping and are not landing files.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from connectors.recart.models import ENTITIES

SOURCE_DIR = "recart"
SUPPORTED_SUFFIXES = (".jsonl", ".parquet")
# Same rule as a Recart account id elsewhere in the integration (1-128 of letters, digits and ._:@-).
_ACCOUNT_ID = re.compile(r"[A-Za-z0-9._:@-]{1,128}")


def default_landing_root() -> Path:
    """``RECART_LANDING_PATH`` or ``.state/landing`` (read when called, never at import)."""
    return Path(os.environ.get("RECART_LANDING_PATH", ".state/landing"))


def valid_account_id(value: str) -> bool:
    """Whether a directory name can be a Recart account id."""
    return _ACCOUNT_ID.fullmatch(value) is not None


def is_ignored(name: str) -> bool:
    """Names that are not landing files: hidden or temporary (being written) and ``_`` markers."""
    return name.startswith((".", "_")) or name.endswith(".tmp")


@dataclass(frozen=True)
class LandingFile:
    """A file found in the landing zone (not yet judged: the loader validates its place and type)."""

    entity: str
    path: Path  # absolute
    relative: str  # POSIX path relative to the landing root: the ``_file`` of its rows
    account_id: str | None  # the first folder under the entity folder; None when the file sits at its top
    size_bytes: int
    mtime_ns: int

    @property
    def suffix(self) -> str:
        """The lower-cased extension, e.g. ``.jsonl``."""
        return self.path.suffix.lower()


def scan_landing(root: Path | str, entities: Iterable[str] | None = None) -> list[LandingFile]:
    """Every landing file of the given entities (default: all), sorted by path."""
    root = Path(root)
    found: list[LandingFile] = []
    for entity in entities if entities is not None else ENTITIES:
        base = root / SOURCE_DIR / entity
        if not base.is_dir():
            continue
        for path in _walk(base):
            stat = path.stat()
            parts = path.relative_to(base).parts
            found.append(
                LandingFile(
                    entity=entity,
                    path=path,
                    relative=path.relative_to(root).as_posix(),
                    account_id=parts[0] if len(parts) > 1 else None,
                    size_bytes=stat.st_size,
                    mtime_ns=stat.st_mtime_ns,
                )
            )
    return sorted(found, key=lambda f: f.relative)


def _walk(base: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if not is_ignored(d))
        for name in sorted(filenames):
            if not is_ignored(name):
                yield Path(dirpath) / name


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's content (streamed: files can be gigabytes)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def landing_path(root: Path | str, entity: str, account_id: str, name: str) -> Path:
    """Where a file of ``entity`` for ``account_id`` lands."""
    if entity not in ENTITIES:
        raise ValueError(f"unknown Recart entity {entity!r}")
    if not valid_account_id(account_id):
        raise ValueError(f"not a valid Recart account id: {account_id!r}")
    return Path(root) / SOURCE_DIR / entity / account_id / name


@contextmanager
def atomic_write(path: Path) -> Iterator[IO[bytes]]:
    """Write ``path`` through a hidden temp file renamed into place, so readers see all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as handle:
            yield handle
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def temp_name_for(path: Path) -> Path:
    """The hidden temp name a writer uses before renaming into ``path`` (for writers like DuckDB COPY)."""
    return path.with_name(f".{path.name}.tmp")
