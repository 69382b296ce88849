"""Tests of aujax as a package: the packaged configs and how --config names them, and an install into a fresh
virtual environment whose `aujax` command runs from another directory with no checkout in sight.

The install reuses this environment's packages (a .pth file points the new environment at them) and builds without
isolation or an index, so it needs no network.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib

import pytest
from ml_collections.config_flags import config_flags

from aujax import configs, main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE_FILES = ("pyproject.toml", "README.md", "aujax")  # what a wheel is built from


def load_config(path: str):
    """The config that `--config=<path>` gives (ml_collections reads the file)."""
    return config_flags.ConfigFileFlagParser(name="config").parse(path)


@pytest.mark.parametrize("name", configs.NAMES)
def test_experiments_configs_are_the_packaged_ones(name):
    packaged = load_config(configs.resolve(name))
    assert os.path.dirname(configs.resolve(name)) == os.path.dirname(configs.__file__)
    assert load_config(os.path.join(REPO, "experiments", f"{name}.py")).to_dict() == packaged.to_dict()


def test_paper_and_bias_override_the_default():
    default = load_config(configs.path("default"))
    paper, bias = load_config(configs.path("paper")), load_config(configs.path("bias"))
    assert (default.train.epochs, paper.train.epochs, bias.train.epochs) == (4, 25, 6)
    assert paper.model.widths == "full" and paper.seed == bias.seed == default.seed


def test_config_flag_takes_a_packaged_name_or_a_path():
    argv = ["aujax", "--config=paper", "--config", "bias", "--config=experiments/paper.py", "--config.seed=3",
            "--workdir=paper"]
    assert main._with_config_file(argv) == ["aujax", f"--config={configs.path('paper')}", "--config",
                                            configs.path("bias"), "--config=experiments/paper.py",
                                            "--config.seed=3", "--workdir=paper"]
    with pytest.raises(ValueError, match="packaged: default, paper, bias"):
        configs.path("papers")


def requirements(path: str) -> list[str]:
    """The requirement lines of a pip requirements file, without comments."""
    with open(os.path.join(REPO, path)) as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


def test_package_requires_what_the_requirements_files_list():
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    assert project["dependencies"] == requirements("requirements.txt")
    assert project["optional-dependencies"]["test"] == requirements("tests/requirements.txt")
    assert project["scripts"] == {"aujax": "aujax.main:run"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> str:
    """The bin directory of a fresh virtual environment with aujax installed from a copy of the package's files."""
    root = tmp_path_factory.mktemp("install")
    source = root / "source"
    source.mkdir()
    for name in PACKAGE_FILES:  # a copy, so that the build leaves no build/ or egg-info in the checkout
        path = os.path.join(REPO, name)
        if os.path.isdir(path):
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(path, source / name)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site_packages = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(site_packages, "test_dependencies.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")  # jax, tfds, ... and setuptools from this environment
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--no-index", str(source)], check=True)
    return str(venv / "bin")


def run_installed(installed: str, tmp_path, *command: str) -> subprocess.CompletedProcess:
    """`command` with the environment's bin directory first, run in `tmp_path` without the checkout on the path."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = installed + os.pathsep + env.get("PATH", "")
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_installed_aujax_command_runs_from_another_directory(installed, tmp_path):
    helped = run_installed(installed, tmp_path, "aujax", "--help")  # absl's --help exits with status 1
    assert "--config: Experiment config: a packaged one (default, paper, bias)" in helped.stdout
    assert "--mode:" in helped.stdout and "--workdir:" in helped.stdout

    refused = run_installed(installed, tmp_path, "aujax", "--config=paper", "--config.train.epoch=3")
    assert refused.returncode == 1  # the paper config was found and read: it has no such field
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith("aujax: error: --config.train.epoch: no such field (config.train has batch_size, ")


@pytest.mark.slow
def test_installed_package_holds_its_configs_and_face_model(installed, tmp_path):
    code = ("import os, aujax; from aujax import configs; from aujax.data import faces; "
            "print(os.path.dirname(aujax.__file__)); print(configs.resolve('paper')); "
            "print(os.path.getsize(faces.MODEL_PATH))")
    result = run_installed(installed, tmp_path, "python", "-c", code)
    assert result.returncode == 0, result.stderr
    package, paper, model_size = result.stdout.split()
    assert not package.startswith(REPO) and paper == os.path.join(package, "configs", "paper.py")
    assert load_config(paper).to_dict() == load_config(configs.path("paper")).to_dict()
    assert int(model_size) == os.path.getsize(os.path.join(REPO, "aujax", "data", "models", "face_landmarker.task"))


@pytest.mark.parametrize("imports", ["import aujax; import tensorflow_datasets as tfds",
                                     "import tensorflow_datasets as tfds; import aujax"])
def test_importing_aujax_registers_the_builders_in_either_order_with_tfds(imports, tmp_path):
    pytest.importorskip("tensorflow_datasets", reason="the builders need tensorflow-datasets")
    code = (f"{imports}; import sys; light = 'jax' not in sys.modules; "
            f"print(type(tfds.builder('ck_plus', data_dir={str(tmp_path)!r})).__name__, light)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["CkPlus", "True"]


def test_importing_aujax_alone_loads_neither_jax_nor_tfds():
    code = "import aujax, sys; print(sorted({'jax', 'tensorflow_datasets'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
