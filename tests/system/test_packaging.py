"""The config tree is found in a checkout and in an installed wheel (where it ships as rlhf_bench/conf)."""

import subprocess
import sys
import zipfile

import pytest

from rlhf_bench.cli import conf_dir


def test_conf_dir_in_checkout():
    folder = conf_dir()
    assert (folder / "config.yaml").is_file()
    assert (folder / "method" / "ppo.yaml").is_file()


@pytest.mark.slow
def test_installed_wheel_carries_and_finds_conf(tmp_path, installed_wheel):
    wheel, target = installed_wheel
    names = zipfile.ZipFile(wheel).namelist()
    assert "rlhf_bench/conf/config.yaml" in names
    assert "rlhf_bench/conf/method/ppo.yaml" in names
    assert "rlhf_bench/published/adaptive_kl_target.yaml" in names  # the registry of published claims
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "from rlhf_bench.cli import conf_dir, load_config; from rlhf_bench.repro.registry import published_dir;"
            " print(conf_dir()); print(load_config([]).method.name); print(published_dir())",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    found, method, published = probe.stdout.split()
    assert found == str(target / "rlhf_bench" / "conf")
    assert method == "ppo"
    assert published == str(target / "rlhf_bench" / "published")
