"""Build a directory once, atomically, however many threads and processes ask for it at the same time.

:func:`build_dir_once` is the one implementation of the locked atomic-directory build used for every cached
artifact of the project: the materialised embedded and tiny models (:mod:`trainers.models.embedded`,
:mod:`trainers.models.tiny`) and the shared reference log-probs (:mod:`trainers.reference.logps`). The recipe:

1. A *marker file* inside the directory, written last, says the directory is complete; a complete directory is
   returned at once, without locking.
2. Otherwise an exclusive ``fcntl`` lock on ``<parent>/<name>.lock`` serialises the builders (across
   processes on one file system, and across threads, since each call opens the lock file anew). The first one
   in builds, the others find the marker when they get the lock and return.
3. The build writes into a temporary sibling directory ``.<name>.tmp-*``, the marker is written last, and the
   directory is renamed into place; an incomplete or stale directory already there is moved aside first, so
   the target path only ever holds a whole old or a whole new directory.
4. A failed build removes its temporary directory and leaves the target as it was (so a later call retries);
   temporary directories of builders that crashed are removed by the next builder that holds the lock.
"""

from __future__ import annotations

import fcntl
import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["build_dir_once"]

logger = logging.getLogger(__name__)


def build_dir_once(
    target: str | Path,
    build: Callable[[Path], Any],
    *,
    marker: str,
    is_complete: Callable[[Path], bool] | None = None,
    what: str | None = None,
    public: bool = False,
) -> Path:
    """Return ``target``, building it first unless it is complete, at most once across concurrent callers.

    Args:
        target: The directory to build; its parent is created if missing and also holds the lock file
            ``<name>.lock`` and the temporary build directories ``.<name>.*``.
        build: Writes the directory's content into the (empty, temporary) directory it is given and returns the
            JSON-serialisable payload of the marker file, or ``None`` for an empty object.
        marker: Name of the marker file written into the directory after ``build`` returned.
        is_complete: Whether an existing directory is complete and current; defaults to "the marker file
            exists". A stricter check (e.g. the marker records the source it was built from) makes a stale
            directory be rebuilt.
        what: What is built, for the log line written when a build starts; defaults to ``target``'s name.
        public: Make the built tree world-readable (directories ``0o755``, files ``0o644``) before the rename;
            temporary directories are owner-only and some writers create owner-only files.

    Returns:
        ``target`` as a :class:`~pathlib.Path`.

    Raises:
        Exception: Whatever ``build`` raises; the temporary directory is removed and ``target`` is untouched.
    """
    target = Path(target)
    complete = is_complete if is_complete is not None else (lambda path: (path / marker).is_file())
    if complete(target):
        return target
    parent, name = target.parent, target.name
    parent.mkdir(parents=True, exist_ok=True)
    with open(parent / f"{name}.lock", "a+") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            if complete(target):
                return target
            # Holding the lock, no other builder is running: temporary directories left are from crashes.
            for stale in parent.glob(f".{name}.*"):
                shutil.rmtree(stale, ignore_errors=True)
            logger.info("materializing %s into %s", what or name, target)
            _build_and_rename(target, build, marker=marker, public=public)
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
    return target


def _build_and_rename(target: Path, build: Callable[[Path], Any], *, marker: str, public: bool) -> None:
    """Build into a temporary sibling of ``target``, write the marker, and rename it into place."""
    parent, name = target.parent, target.name
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent))
    try:
        payload = build(tmp_dir)
        (tmp_dir / marker).write_text(json.dumps({} if payload is None else payload, indent=2) + "\n")
        if public:
            _make_public(tmp_dir)
        if target.exists():
            # Move the incomplete/stale directory aside first so that the rename below stays atomic.
            trash = Path(tempfile.mkdtemp(prefix=f".{name}.old-", dir=parent))
            target.rename(trash / "old")
            shutil.rmtree(trash, ignore_errors=True)
        tmp_dir.rename(target)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise


def _make_public(root: Path) -> None:
    """Make the tree under ``root`` world-readable: directories ``0o755``, files ``0o644`` (links untouched)."""
    root.chmod(0o755)
    for path in root.rglob("*"):
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)
