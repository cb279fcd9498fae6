"""Tests of trainers.atomic_dir: one build however many callers, atomic replacement, failed builds retried."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from trainers.atomic_dir import build_dir_once

REPO_ROOT = Path(__file__).resolve().parents[2]
MARKER = "DONE"


def _counting_build(calls: list[Path], delay: float = 0.0):
    """A build that records each call, optionally sleeps (to widen races), and writes one file."""

    def build(out_dir: Path) -> dict:
        calls.append(out_dir)
        time.sleep(delay)
        (out_dir / "payload.txt").write_text("built\n")
        return {"n": len(calls)}

    return build


def _entries(root: Path) -> list[str]:
    return sorted(path.name for path in root.iterdir())


def test_builds_once_and_writes_the_marker_last(tmp_path: Path) -> None:
    target = tmp_path / "cache" / "artifact"
    calls: list[Path] = []
    assert build_dir_once(target, _counting_build(calls), marker=MARKER) == target
    assert build_dir_once(str(target), _counting_build(calls), marker=MARKER) == target
    assert len(calls) == 1
    assert calls[0].parent == target.parent and calls[0].name.startswith(".artifact.tmp-")
    assert (target / "payload.txt").read_text() == "built\n"
    assert json.loads((target / MARKER).read_text()) == {"n": 1}
    # Only the directory and its lock file remain; no temporary directory is left behind.
    assert _entries(target.parent) == ["artifact", "artifact.lock"]


def test_build_returning_none_writes_an_empty_marker(tmp_path: Path) -> None:
    target = build_dir_once(tmp_path / "a", lambda out_dir: None, marker=MARKER)
    assert json.loads((target / MARKER).read_text()) == {}


def test_concurrent_threads_build_once(tmp_path: Path) -> None:
    target = tmp_path / "artifact"
    calls: list[Path] = []
    build = _counting_build(calls, delay=0.2)
    start = threading.Barrier(8)
    results: list[Path] = []

    def worker() -> None:
        start.wait()
        results.append(build_dir_once(target, build, marker=MARKER))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert results == [target] * 8
    assert len(calls) == 1
    assert _entries(tmp_path) == ["artifact", "artifact.lock"]


def test_concurrent_processes_build_once(tmp_path: Path) -> None:
    target, log = tmp_path / "artifact", tmp_path / "builds.log"
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from trainers.atomic_dir import build_dir_once\n"
        "def build(out_dir):\n"
        "    with open(sys.argv[2], 'a') as log:\n"
        "        log.write('build\\n')\n"
        "    time.sleep(0.5)\n"
        "    (out_dir / 'payload.txt').write_text('built')\n"
        f"print(build_dir_once(Path(sys.argv[1]), build, marker={MARKER!r}))\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(target), str(log)],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    results = [proc.communicate(timeout=120) for proc in procs]
    for proc, (_, stderr) in zip(procs, results, strict=True):
        assert proc.returncode == 0, stderr
    assert [stdout.strip() for stdout, _ in results] == [str(target)] * 3
    assert log.read_text() == "build\n"
    assert (target / "payload.txt").read_text() == "built"


def test_failed_build_leaves_no_complete_dir_and_is_retried(tmp_path: Path) -> None:
    target = tmp_path / "artifact"

    def failing(out_dir: Path) -> None:
        (out_dir / "half-written").write_text("x")
        raise RuntimeError("build failed")

    with pytest.raises(RuntimeError, match="build failed"):
        build_dir_once(target, failing, marker=MARKER)
    assert not target.exists()
    assert _entries(tmp_path) == ["artifact.lock"]

    calls: list[Path] = []
    assert build_dir_once(target, _counting_build(calls), marker=MARKER) == target
    assert len(calls) == 1 and (target / MARKER).is_file()


def test_failed_rebuild_keeps_the_old_directory(tmp_path: Path) -> None:
    target = tmp_path / "artifact"
    target.mkdir()
    (target / "old.txt").write_text("old")

    def failing(out_dir: Path) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_dir_once(target, failing, marker=MARKER)
    assert _entries(target) == ["old.txt"]
    assert _entries(tmp_path) == ["artifact", "artifact.lock"]


def test_incomplete_dir_and_crash_leftovers_are_replaced(tmp_path: Path) -> None:
    target = tmp_path / "artifact"
    target.mkdir()
    (target / "partial.txt").write_text("from a crashed build")
    (tmp_path / ".artifact.tmp-crashed").mkdir()
    (tmp_path / ".artifact-other.tmp-keep").mkdir()  # another artifact's build directory is not touched
    calls: list[Path] = []
    build_dir_once(target, _counting_build(calls), marker=MARKER)
    assert len(calls) == 1
    assert _entries(target) == [MARKER, "payload.txt"]
    assert _entries(tmp_path) == [".artifact-other.tmp-keep", "artifact", "artifact.lock"]


def test_custom_completeness_check_rebuilds_a_stale_dir(tmp_path: Path) -> None:
    target = tmp_path / "artifact"
    calls: list[Path] = []
    build_dir_once(target, _counting_build(calls), marker=MARKER)

    def is_current(path: Path) -> bool:
        return (path / MARKER).is_file() and json.loads((path / MARKER).read_text())["n"] == 2

    build_dir_once(target, _counting_build(calls), marker=MARKER, is_complete=is_current)
    build_dir_once(target, _counting_build(calls), marker=MARKER, is_complete=is_current)
    assert len(calls) == 2
    assert json.loads((target / MARKER).read_text()) == {"n": 2}


def test_public_makes_the_tree_world_readable(tmp_path: Path) -> None:
    def build(out_dir: Path) -> None:
        (out_dir / "sub").mkdir(mode=0o700)
        for path in (out_dir / "file", out_dir / "sub" / "nested"):
            path.write_text("x")
            os.chmod(path, 0o600)

    public = build_dir_once(tmp_path / "public", build, marker=MARKER, public=True)
    private = build_dir_once(tmp_path / "private", build, marker=MARKER)
    mode = lambda path: stat.S_IMODE(path.stat().st_mode)  # noqa: E731
    assert [mode(public / name) for name in ("", "sub", "file", "sub/nested", MARKER)] == [
        0o755,
        0o755,
        0o644,
        0o644,
        0o644,
    ]
    assert mode(private) == 0o700 and mode(private / "file") == 0o600
