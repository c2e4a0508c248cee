"""The package as users install it: `python -m build` gives an sdist and a wheel (the wheel built
from the sdist, so a file missing from either shows), `twine check` passes, and the wheel,
installed into a fresh virtual environment, runs the command line with its configs and presets.

The fresh environment gets the wheel alone (`--no-deps`, no index); its dependencies are seen
through a `.pth` line naming this environment's site-packages, which Python appends after the
fresh environment's own: `visionloom` itself can only come from the wheel (the editable install
here is a finder that a plain path entry never runs), while torch and transformers are not
downloaded again.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def run(*command: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, cwd=cwd, timeout=600
    )
    assert done.returncode == 0, f"{command}: {done.stdout[-2000:]}{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # The sources as a clone has them (tracked and new files), so the build writes nothing into the checkout.
    source = tmp_path_factory.mktemp("source")
    files = run("git", "ls-files", "--cached", "--others", "--exclude-standard", cwd=REPO).splitlines()
    for name in files:
        if (REPO / name).is_file():
            target = source / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes((REPO / name).read_bytes())
    run(sys.executable, "-m", "build", "--no-isolation", "--outdir", out, source)
    return out


def test_build_gives_an_sdist_and_a_wheel_that_twine_accepts(built):
    wheels, sdists = list(built.glob("*.whl")), list(built.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1
    assert "PASSED" in run(sys.executable, "-m", "twine", "check", *wheels, *sdists)
    names = zipfile.ZipFile(wheels[0]).namelist()
    assert "visionloom/py.typed" in names
    packaged = {name for name in names if name.startswith("visionloom/configs/") and name.endswith(".yaml")}
    shipped = {
        str(path.relative_to(REPO / "src"))
        for path in (REPO / "src" / "visionloom" / "configs").rglob("*.yaml")
    }
    assert packaged == shipped
    from visionloom import __version__

    assert wheels[0].name.startswith(f"visionloom-{__version__}-")


def test_the_wheel_runs_from_a_fresh_environment(built, tmp_path):
    environment = tmp_path / "env"
    venv.EnvBuilder(with_pip=True).create(environment)
    python = environment / "bin" / "python"
    run(python, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", *built.glob("*.whl"))
    fresh_site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    (fresh_site / "borrowed-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    where = run(python, "-c", "import visionloom; print(visionloom.__file__, visionloom.__version__)")
    assert where.startswith(str(fresh_site)), where
    command = environment / "bin" / "visionloom"
    assert "doctor" in run(command, "--help")
    doctor = run(command, "doctor", "tiny-llava")
    assert "healthy" in doctor and "not healthy" not in doctor
    assert "phase3" in run(command, "config", "show", "retrieval/phase3")
