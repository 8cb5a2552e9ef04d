"""docs/method.md stays true to the repository: every test it names exists, every
anchor a file points to is defined, and nothing points outside the repository."""

from __future__ import annotations

import re
import subprocess

from conftest import REPO

DOC = REPO / "docs" / "method.md"


def _repo_files() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return [f for f in out.splitlines() if (REPO / f).is_file()]


def test_every_test_the_doc_names_exists():
    """`tests/x.py::name`, and `::name` after it in the same paragraph, must be test functions of x."""
    text = DOC.read_text()
    named = []
    for paragraph in text.split("\n\n"):
        current = None
        for match in re.finditer(r"(tests/\w+\.py)?::(\w+)|`(tests/\w+\.py)`", paragraph):
            current = match.group(1) or match.group(3) or current
            if match.group(2):
                assert current, f"'::{match.group(2)}' without a test file before it"
                named.append((current, match.group(2)))
    assert len(named) > 30
    for path, name in named:
        source = (REPO / path).read_text()
        assert re.search(rf"^def {name}\(", source, re.M), f"docs/method.md names {path}::{name}, which does not exist"


def test_every_anchor_pointed_to_is_defined():
    anchors = set(re.findall(r'<a id="([\w-]+)"></a>', DOC.read_text()))
    assert {"calibration", "estimators", "failures", "differential", "step-rule", "secant-memory"} <= anchors
    for path in _repo_files():
        if not path.endswith((".py", ".md", ".toml")):
            continue
        for anchor in re.findall(r"docs/method\.md#([\w-]+)", (REPO / path).read_text(errors="ignore")):
            assert anchor in anchors, f"{path} points to docs/method.md#{anchor}, which is not defined"


def test_nothing_points_outside_the_repository():
    outside = "../" + "shared"  # spelled apart, so this file does not match itself
    for path in _repo_files():
        if path.endswith((".png", ".npy", ".pkl")):
            continue
        text = (REPO / path).read_text(errors="ignore")
        assert outside not in text, f"{path} points outside the repository ({outside})"
