"""benchmarks/gpu_check.py, the GPU machine's one command, kept from rotting while no GPU is lent: its
dry run (device=cpu, tiny sizes) end to end against the documented schema, and its pieces."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_check  # noqa: E402  (benchmarks/ is no package)


@pytest.mark.slow
def test_dry_run_writes_a_report_that_follows_the_schema(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    cmd = [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(out)]
    proc = subprocess.run([*cmd, "--work", str(work)], capture_output=True, text=True, timeout=1800, cwd=tmp_path)
    report = json.loads((out / "gpu_check.json").read_text())
    assert proc.returncode == 0, (proc.stdout[-3000:], json.dumps(report["parts"], indent=1)[-4000:])
    assert gpu_check.validate(report) == [] and report["schema_errors"] == []
    assert report["dry_run"] is True and list(report["parts"]) == list(gpu_check.PARTS)
    parts = report["parts"]
    assert parts["install"]["status"] == "skipped"  # no --wheels
    assert parts["versus_trl"]["status"] == "skipped" and "versus_trl.py" in parts["versus_trl"]["error"]

    tests = parts["gpu_tests"]["result"]
    collected = len(re.findall(r"^def test_", (REPO / "tests/system/test_gpu.py").read_text(), re.M))
    assert (tests["passed"], tests["failed"], tests["errors"], tests["skipped"]) == (collected, 0, 0, 0)

    pipeline = parts["pipeline"]["result"]
    assert pipeline["status"] == "finished" and pipeline["device"] == "cpu" and pipeline["precision"] == "bfloat16"
    assert all(pipeline["checks"].values()) and Path(pipeline["record"]).exists()
    assert pipeline["lm_eval"] is False  # off in the dry run

    for name, parameters in (("throughput_tiny", None), ("throughput_160m", pythia_parameters(gpu_check.PYTHIA_DRY))):
        result = parts[name]["result"]
        assert parts[name]["status"] == "ok" and result["device"] == "cpu"
        assert parameters is None or result["parameters"] == parameters
        for method in gpu_check.THROUGHPUT_METHODS:
            rates = result["methods"][method]
            assert rates["status"] == "ok" and rates["steps_per_second"] > 0, (name, method, rates)
        assert result["methods"]["dpo"]["generated_tokens_per_second"] == 0  # DPO samples nothing
        assert result["generation"]["tokens_per_second"] > 0
        assert result["update"]["mfu"] > 0 and result["peak"]["flops"] > 0
    assert "throughput_160m" in "\n".join(report["summary"])
    assert "gpu_check (dry run)" in proc.stdout


def pythia_parameters(c: dict) -> int:
    """GPT-NeoX's parameter count by hand: embedding and (untied) output V x d; per layer two layer
    norms (4d), QKV (3d^2 + 3d), the attention output (d^2 + d), the MLP (2 d i + i + d); a final
    layer norm (2d)."""
    v, d, i, n = c["vocab_size"], c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    layer = 4 * d + 3 * d * d + 3 * d + d * d + d + 2 * d * i + i + d
    return 2 * v * d + n * layer + 2 * d


def test_pythia_160m_is_built_to_its_published_size():
    """EleutherAI/pythia-160m has 162,322,944 parameters (its model card's 'total params'), which the
    hand count gives for the config in gpu_check.PYTHIA_160M; transformers builds exactly that."""
    import torch
    from transformers import AutoModelForCausalLM, GPTNeoXConfig

    assert pythia_parameters(gpu_check.PYTHIA_160M) == 162_322_944
    with torch.device("meta"):  # shapes only: no 650 MB of weights
        model = AutoModelForCausalLM.from_config(GPTNeoXConfig(**gpu_check.PYTHIA_160M))
    assert sum(p.numel() for p in model.parameters()) == 162_322_944
    with torch.device("meta"):
        dry = AutoModelForCausalLM.from_config(GPTNeoXConfig(**gpu_check.PYTHIA_DRY))
    assert sum(p.numel() for p in dry.parameters()) == pythia_parameters(gpu_check.PYTHIA_DRY)


def minimal_report() -> dict:
    part = {"status": "skipped", "seconds": 0.0, "limit_seconds": 10.0, "error": "why", "result": None}
    return {
        "schema_version": 1,
        "dry_run": True,
        "started": "2026-12-05T00:00:00+00:00",
        "seconds": 1.0,
        "budget_seconds": 450.0,
        "command": "python gpu_check.py",
        "git": None,
        "environment": {},
        "parts": {"install": dict(part), "versus_trl": dict(part)},
        "summary": [],
        "schema_errors": [],
    }


def test_validate_names_each_departure_from_the_schema():
    report = minimal_report()
    assert gpu_check.validate(report) == []
    del report["started"]
    report["seconds"] = float("nan")
    report["parts"]["install"]["status"] = "done"
    report["parts"]["gpu_tests"] = {**report["parts"]["versus_trl"], "status": "ok", "result": {"device": "cuda"}}
    report["parts"]["extra"] = {}
    errors = gpu_check.validate(report)
    assert "report.started: missing" in errors
    assert "report.seconds: nan is not finite" in errors
    assert "report.parts.install.status: 'done' is not one of ok, failed, timeout, skipped" in errors
    assert "report.parts.gpu_tests.result.passed: missing" in errors  # an ok part's result is checked
    assert any(e.startswith("report.parts.extra: not a part") for e in errors)
    assert len(errors) == 5 + 4  # gpu_tests also misses failed, skipped, errors, tests


def test_docs_document_every_key_of_the_schema():
    docs = (REPO / "docs" / "gpu.md").read_text()
    missing = [key for key in gpu_check.schema_keys() if f"`{key}`" not in docs]
    assert missing == []


def test_junit_results_counts_each_outcome(tmp_path):
    xml = tmp_path / "junit.xml"
    xml.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.system.test_gpu" name="test_a" time="1.5"/>'
        '<testcase classname="tests.system.test_gpu" name="test_b" time="0.1"><failure message="assert 1 == 2"/></testcase>'
        '<testcase classname="tests.system.test_gpu" name="test_c" time="0"><skipped message="needs a CUDA device"/></testcase>'
        '<testcase classname="tests.system.test_gpu" name="test_d" time="0"><error message="fixture broke"/></testcase>'
        "</testsuite></testsuites>"
    )
    result = gpu_check.junit_results(xml)
    assert (result["passed"], result["failed"], result["skipped"], result["errors"]) == (1, 1, 1, 1)
    assert result["tests"][0] == {
        "id": "tests.system.test_gpu::test_a",
        "outcome": "passed",
        "seconds": 1.5,
        "message": "",
    }
    assert result["tests"][1]["message"] == "assert 1 == 2"


def test_install_leaves_installed_projects_alone(tmp_path):
    """A wheel whose project is installed (pytest here) is not installed again, whatever its version:
    the image's packages are never replaced. No wheels at all: the part is skipped."""
    with pytest.raises(gpu_check.Skipped, match="gpu_wheels.sh"):
        gpu_check.install_wheels(tmp_path, 60)
    (tmp_path / "pytest-0.0.1-py3-none-any.whl").write_bytes(b"")  # never opened: pytest is installed
    (tmp_path / "Typing_Extensions-0.0.1-py3-none-any.whl").write_bytes(b"")  # a name normalised first
    result = gpu_check.install_wheels(tmp_path, 60)
    assert result["installed"] == [] and result["present"] == ["pytest", "typing-extensions"]
    assert result["wheels"] == 2
