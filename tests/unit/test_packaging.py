"""Packaging: a wheel built from the tracked files installs one import name, ``relay_rl`` (no generic top-level
``cluster`` or ``learner`` in site-packages), whose roles import from the installed copy, and the ``relay-rl``
command and ``python -m relay_rl`` print the version."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of a copy of the tracked files (a clean clone: nothing of this checkout's builds or caches)."""
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("dist")
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if f.startswith(
            ("cluster/", "learner/", "rollout_workers/", "reward_workers/", "teacher_workers/", "relay_rl/")
        ) or f in ("pyproject.toml", "README.md"):
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, src / f)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)],
        check=True,
        capture_output=True,
    )
    (found,) = out.glob("relay_rl-*.whl")
    return found


def test_the_wheel_holds_one_top_level_name(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"relay_rl"}, tops
    for role in ("cluster", "learner", "rollout_workers", "reward_workers", "teacher_workers"):
        assert f"relay_rl/{role}/__init__.py" in names
    assert "relay_rl/learner/methods/grpo.py" in names and "relay_rl/cluster/config/run.py" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "relay-rl = relay_rl.cluster.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_the_installed_package_imports_from_itself(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    assert sorted(p.name for p in target.iterdir() if not p.name.endswith(".dist-info") and p.name != "bin") == [
        "relay_rl"
    ]
    env = {**os.environ, "PYTHONPATH": str(target)}
    probe = (
        "import relay_rl, relay_rl.cluster.config, relay_rl.learner.methods; "
        "print(relay_rl.cluster.config.__file__); import importlib.util; "
        "print(importlib.util.find_spec('cluster'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[0].startswith(str(target / "relay_rl" / "cluster")), out
    assert out[1] == "None"  # no generic top-level module
    version = subprocess.run(
        [sys.executable, "-m", "relay_rl", "--version"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    import relay_rl

    assert version.strip() == f"relay-rl {relay_rl.__version__}"


def test_the_command_prints_the_version():
    exe = Path(sys.executable).with_name("relay-rl")
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=True).stdout
    import relay_rl

    assert out.strip() == f"relay-rl {relay_rl.__version__}"
