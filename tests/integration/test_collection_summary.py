"""The pytest summary names test files a conftest left out, and why (tests/conftest.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_left_out_files_are_listed_with_their_reason(tmp_path: Path) -> None:
    # The repository's root conftest, as the root conftest of a small test tree.
    (tmp_path / "conftest.py").write_text(
        f"import sys\nsys.path.insert(0, {str(TESTS)!r})\n"
        f"exec(open({str(TESTS / 'conftest.py')!r}).read())\n"
    )
    sub = tmp_path / "adapters"
    sub.mkdir()
    (sub / "conftest.py").write_text(
        'collect_ignore_glob = ["test_heavy_*.py", "test_other_*.py"]\n'
        '_LEFT_OUT = ["test_heavy_*.py (needs torch, trl)"]\n'
    )
    (sub / "test_heavy_sampler.py").write_text("def test_x():\n    pass\n")
    (sub / "test_other_thing.py").write_text("def test_y():\n    pass\n")
    (sub / "test_light.py").write_text("def test_z():\n    pass\n")
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    summary = out.stdout[out.stdout.index("test files not run") :]
    assert "adapters/test_heavy_sampler.py: needs torch, trl" in summary
    assert "adapters/test_other_thing.py: left out by adapters/conftest.py" in summary
    assert "test_light" not in summary
    assert "1 passed" in summary
