"""No tracked file names an absolute path of one particular machine (its checkout, home or shared-data folder).

Docs, help texts and shipped JSON use paths relative to the repository, or `$SHARED_DATA`
for the shared data folder. A path is flagged when `/work/`, `/home/`, `/root/` or
`/Users/` starts it (not when it is the middle of a URL or of a relative path).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# a path that starts at one of these folders; the '/' must not continue a word, URL or relative path
MACHINE_PATH = re.compile(r"(?<![\w.~/-])/(?:work|home|root|Users)/[\w.$-]")
# Justified exceptions, each with its reason: (file, the text allowed there).
ALLOWED: list[tuple[str, str]] = []


def tracked_text_files() -> list[Path]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the shipped-file list comes from `git ls-files`")
    names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    files = []
    for name in names.decode().split("\0"):
        path = ROOT / name
        if name and path.is_file():
            head = path.read_bytes()[:8192]
            if b"\0" not in head:  # binary files (PNG, safetensors) are not read as text
                files.append(path)
    return files


def find_machine_paths(text: str) -> list[str]:
    return [text[m.start(): m.start() + 60].split()[0] for m in MACHINE_PATH.finditer(text)]


def test_the_pattern_tells_machine_paths_from_urls_and_relative_paths() -> None:
    assert [hit.startswith("/work/shared/data/caa") for hit in find_machine_paths('x "/work/shared/data/caa" y')] == [True]
    assert find_machine_paths("--data=/home/me/x.json")
    assert find_machine_paths("(/root/.cache)")
    assert not find_machine_paths("https://example.org/home/page and docs/work/x and ../shared/data and ~/work")
    assert not find_machine_paths("$SHARED_DATA/caa/x.json and tests/data/work/y")


def test_no_tracked_file_names_an_absolute_machine_path() -> None:
    found = []
    for path in tracked_text_files():
        relative = path.relative_to(ROOT).as_posix()
        if relative == "tests/test_shipped_paths.py":
            continue  # this file's own examples
        text = path.read_text(encoding="utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), start=1):
            for hit in find_machine_paths(line):
                if not any(relative == f and allowed in line for f, allowed in ALLOWED):
                    found.append(f"{relative}:{number}: {hit}")
    assert not found, (
        "these tracked files name absolute paths of one machine; use a path relative to the repository or "
        "$SHARED_DATA (the shared data folder):\n" + "\n".join(found[:40])
    )
