"""The header-only kernel builds in Debug with -Wall -Wextra -Werror and passes its C++ test."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed (pip install '.[test]')")
def test_kernel_debug_build_is_warning_free_and_passes(tmp_path):
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    configure = ["cmake", "-S", str(ROOT / "tests" / "cpp"), "-B", str(tmp_path), "-DCMAKE_BUILD_TYPE=Debug", *generator]
    for command in (configure, ["cmake", "--build", str(tmp_path)]):
        done = subprocess.run(command, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
    run = subprocess.run([str(tmp_path / "kernel_test")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 failure(s)" in run.stdout
