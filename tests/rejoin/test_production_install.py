"""A production install (`pip install rejoin`) has neither the test tools, nor the loopback
server's WebRTC stack, nor the PostgreSQL driver; the public API and the simulation commands
work without them."""

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).parent.parent.parent
DEVELOPMENT_ONLY = {"hypothesis", "aiortc", "pytest", "psycopg", "psycopg_pool"}

WITHOUT_DEVELOPMENT_PACKAGES = f"""
import sys

class Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {sorted(DEVELOPMENT_ONLY)!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, Absent())
"""


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_DEVELOPMENT_PACKAGES + code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_production_dependencies_leave_out_the_development_packages() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    required = {name.split("=")[0].split(">")[0] for name in project["dependencies"]}
    assert required & DEVELOPMENT_ONLY == set()


def test_the_public_api_imports_without_the_development_packages() -> None:
    done = run("import rejoin; print(len(rejoin.__all__))")
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) > 10


def test_compare_runs_without_the_development_packages() -> None:
    done = run("from rejoin.cli import main; sys.exit(main(['compare']))")
    assert done.returncode == 0, done.stderr
    assert "supervised" in done.stdout


def test_a_loopback_run_without_its_extra_says_what_to_install() -> None:
    done = run(
        "from rejoin.cli import main; "
        "sys.exit(main(['simulate', 'rapid-switch', '--sfu', 'loopback']))"
    )
    assert done.returncode == 2
    assert done.stderr == (
        "rejoin: --sfu loopback needs aiortc: pip install 'rejoin[loopback]'\n"
    ), done.stderr


def test_a_postgresql_log_without_its_extra_says_what_to_install() -> None:
    done = run(
        "from rejoin.cli import main; sys.exit(main(['replay', 'postgresql://u:hunter2@db/log']))"
    )
    assert done.returncode == 2
    assert done.stderr == (
        "rejoin: postgresql://u@db/log: a PostgreSQL log needs psycopg: "
        "pip install 'rejoin[postgres]'\n"
    ), done.stderr
