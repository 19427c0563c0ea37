"""README's layout section names every folder and module of the tree, and nothing that is not there."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("app", "model", "loadtest", "bench", "reliability")


def layout_block() -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- layout -->\n```\n(.*?)```\n<!-- /layout -->", text, re.S)
    assert m, "README.md has no <!-- layout --> block"
    return m.group(1)


def named_paths(block: str) -> set[str]:
    """Paths the block names: top-level entries (``app/``), and entries under the last folder
    (``  main.py`` under ``app/``; several on one line, separated by two spaces)."""
    paths, folder = set(), ""
    for line in block.splitlines():
        if not line.strip():
            continue
        names = re.split(r"\s{2,}", line.strip())
        if not line.startswith(" "):
            first = names[0]
            if first.endswith("/"):
                folder = first
                paths.add(first.rstrip("/"))
            else:  # a row of top-level files
                paths.update(n for n in names if "." in n or n == "Makefile" or n == "Dockerfile")
            continue
        for n in names:
            if re.fullmatch(r"[\w./-]+", n) and ("." in n or n.endswith("/")):
                paths.add(folder + n.rstrip("/"))
            else:
                break  # the description starts
    return paths


def tracked() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return out.splitlines()


def test_every_named_path_exists():
    missing = sorted(p for p in named_paths(layout_block()) if not (ROOT / p).exists())
    assert not missing, f"README's layout names paths that do not exist: {missing}"


def test_every_folder_and_module_is_named():
    named = named_paths(layout_block())
    files = tracked()
    top = {f.split("/")[0] for f in files if "/" in f and not f.startswith(".")}
    modules = {f for f in files if f.endswith(".py") and f.split("/")[0] in PACKAGES and f.count("/") == 1
               and not f.endswith("__init__.py")}
    missing = sorted((top | modules) - named)
    assert not missing, f"README's layout does not name: {missing}"


def test_the_check_finds_a_missing_module():
    assert "app/main.py" in named_paths(layout_block())
    assert "app/main.py" not in named_paths(layout_block().replace("  main.py ", "  mainx.py "))
