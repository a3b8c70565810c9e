"""The README's install path type-checks a user's script: after ``pip install -e <repo>`` in a
fresh virtual environment, mypy (run for that environment) finds geboost and checks ``push``.

setuptools' editable installs hide the package behind an import hook that mypy cannot follow
(``import-not-found``); the build backend must write a ``.pth`` naming the source folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from tests.support import port_open, skip_or_fail

pytest.importorskip("mypy")

REPO = Path(__file__).resolve().parents[2]

USER_SCRIPT = """
from geboost import BoostOptions, boost, new_booster


def add(x: int, y: int) -> int:
    return x + y


b = new_booster(BoostOptions(queue_name="q", consume_func=add))
b.push(1, 2)
b.push("one", 2)  # line 10: wrong type


@boost("q2")
def hello(name: str) -> None: ...


hello.push(3)  # line 17: wrong type
"""


def _env() -> dict[str, str]:
    """The tests run with PYTHONPATH at the repository: a user's shell has no such thing, and
    it would let mypy find geboost whatever the install did."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MYPYPATH")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _share_dependencies(venv_python: Path, deps_dir: Path) -> None:
    """Make the project's installed dependencies (msgspec, gevent, loguru, ...) visible to the
    new environment without downloading them: a folder of links to everything in this
    interpreter's site-packages except geboost itself, named by a ``.pth`` in the new one."""
    deps_dir.mkdir()
    ours = ("geboost", "__editable__", "_editable_impl_geboost")
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.lower().startswith(ours) and entry.suffix != ".pth":
            (deps_dir / entry.name).symlink_to(entry)
    site = subprocess.run(
        [str(venv_python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env=_env(),
    ).stdout.strip()
    # "zz": .pth files are read in name order, so geboost's own entry comes first.
    Path(site, "zz-project-dependencies.pth").write_text(f"{deps_dir}\n")


@pytest.mark.timeout(300)
def test_editable_install_as_the_readme_says_lets_mypy_check_push(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    venv_python = venv / "bin" / "python"
    install = subprocess.run(
        [str(venv_python), "-m", "pip", "install", "--quiet", "--no-deps", "-e", str(REPO)],
        capture_output=True,
        text=True,
        timeout=240,
        env=_env(),
    )
    if install.returncode != 0:
        if not port_open("pypi.org", 443, timeout_s=5):
            skip_or_fail("PyPI is unreachable: pip cannot fetch the build backend")
        pytest.fail(f"pip install -e failed:\n{install.stdout}\n{install.stderr}")
    _share_dependencies(venv_python, tmp_path / "deps")

    project = tmp_path / "project"
    project.mkdir()
    (project / "user.py").write_text(textwrap.dedent(USER_SCRIPT).lstrip("\n"))
    checked = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--cache-dir",
            str(tmp_path / "mypy-cache"),
            "--python-executable",
            str(venv_python),
            "user.py",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=project,
        env=_env(),
    )
    out = checked.stdout + checked.stderr
    assert "import-not-found" not in out, out
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert errors == [
        'user.py:10: error: Argument 1 to "push" of "Booster" has incompatible type "str"; '
        'expected "int"  [arg-type]',
        'user.py:17: error: Argument 1 to "push" of "Booster" has incompatible type "int"; '
        'expected "str"  [arg-type]',
    ], out

    # The console script the install declared runs from that venv (no PYTHONPATH).
    (project / "tasks.py").write_text(
        "from geboost import BoostOptions, new_booster\n"
        "b = new_booster(BoostOptions(queue_name='fresh-venv-q', consume_func=print))\n"
    )
    status = subprocess.run(
        [str(venv / "bin" / "geboost"), "status", "tasks.py"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=project,
        env=_env(),
    )
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines()[1].split() == ["fresh-venv-q", "0", "0", "0", "0", "no", "0"]
