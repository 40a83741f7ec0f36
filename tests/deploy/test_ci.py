"""cloudbuild.yaml and the example workflow: they fill the bucket with commands the CLI has, push where the
service looks, and call deploy/cloudrun.sh with settings it reads."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from gnosis_ocr.cli.main import app

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
SCRIPT_TEXT = (ROOT / "deploy" / "cloudrun.sh").read_text()
CLOUD_BUILD_BUILTINS = {"PROJECT_ID", "BUILD_ID", "PROJECT_NUMBER", "LOCATION", "SHORT_SHA", "COMMIT_SHA"}


def load(path: str) -> Any:
    return yaml.safe_load((ROOT / path).read_text())


def gnosis_commands(script: str) -> list[list[str]]:
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in {"&&", "||", ";", "|"}:
            commands.append([])
        else:
            commands[-1].append(token)
    return [c[1:] for c in commands if c and c[0] == "gnosis-ocr"]


def assert_cli_accepts(argv: list[str]) -> None:
    result = CliRunner().invoke(app, [*argv, "--help"])
    assert result.exit_code == 0, f"gnosis-ocr {' '.join(argv)}: {result.output}"


def script_reads(name: str) -> bool:
    return re.search(rf"\b{name}=\$\{{{name}:-", SCRIPT_TEXT) is not None


def test_cloud_build_builds_fills_the_bucket_then_deploys_that_image() -> None:
    build = load("cloudbuild.yaml")
    steps = {step["id"]: step for step in build["steps"]}
    assert list(steps)[-1] == "deploy"
    order = list(steps)
    assert order.index("build") < order.index("push") < order.index("prepopulate-cache") < order.index("deploy")
    assert "--file=docker/Dockerfile.gpu" in steps["build"]["args"]

    fill = steps["prepopulate-cache"]
    script = " ".join(fill["args"][1:])
    commands = gnosis_commands(script)
    assert [c[:2] for c in commands] == [["cache", "warm"], ["cache", "push"]]
    for command in commands:
        assert_cli_accepts(command)
    assert commands[1][3] == "gs://${_BUCKET}/huggingface", (
        "push to the prefix the service mounts as /cache/huggingface"
    )

    deploy = steps["deploy"]
    assert deploy["args"] == ["deploy/cloudrun.sh", "deploy"]
    env = dict(item.split("=", 1) for item in deploy["env"])
    for name in env:
        assert script_reads(name), f"deploy/cloudrun.sh does not read {name}"
    assert env["IMAGE"] == fill["name"], "deploy the image that filled the cache"
    assert any(env["IMAGE"] in arg for arg in steps["build"]["args"])


def test_cloud_build_builds_the_gpu_image_around_a_backend_the_dockerfile_has() -> None:
    build = load("cloudbuild.yaml")
    (step,) = [s for s in build["steps"] if s["id"] == "build"]
    dockerfile = (ROOT / "docker" / "Dockerfile.gpu").read_text()
    builds = set(re.findall(r"^FROM \S+ AS build-(\w+)$", dockerfile, flags=re.MULTILINE))
    default = re.search(r"^ARG VLM_BACKEND=(\w+)$", dockerfile, flags=re.MULTILINE)
    assert default is not None and builds >= {"vllm", "transformers"}
    assert "--build-arg=VLM_BACKEND=${_VLM_BACKEND}" in step["args"]
    chosen = build["substitutions"]["_VLM_BACKEND"]
    assert chosen in builds, f"_VLM_BACKEND={chosen}: Dockerfile.gpu has builds {sorted(builds)}"
    assert chosen == default.group(1), "Cloud Build makes the image a plain `docker build` makes"


def test_cloud_build_substitutions_are_declared() -> None:
    text = (ROOT / "cloudbuild.yaml").read_text()
    declared = set(load("cloudbuild.yaml")["substitutions"])
    for name in set(re.findall(r"\$\{?(_[A-Z0-9_]+)", text)):
        assert name in declared, f"${name} is not in substitutions"
    for name in set(re.findall(r"\$\{?([A-Z][A-Z0-9_]+)", text)) - {"DOCKER_BUILDKIT"}:
        assert name in CLOUD_BUILD_BUILTINS, f"${name} is neither a built-in nor declared"


def test_the_workflow_authenticates_without_keys_then_warms_pushes_and_deploys() -> None:
    workflow = load(".github/workflows/prepopulate-cache.yml")
    assert workflow["permissions"]["id-token"] == "write"
    steps = workflow["jobs"]["prepopulate"]["steps"]
    uses = [s.get("uses", "").split("@")[0] for s in steps]
    assert "google-github-actions/auth" in uses
    auth = steps[uses.index("google-github-actions/auth")]
    assert "workload_identity_provider" in auth["with"]
    assert "credentials_json" not in auth["with"]
    runs = [s["run"] for s in steps if "run" in s]
    commands = [c for run in runs for c in gnosis_commands(run)]
    assert [c[:2] for c in commands] == [["cache", "warm"], ["cache", "push"]]
    for command in commands:
        assert_cli_accepts(command)
    deploy = next(s for s in steps if s.get("run", "").startswith("deploy/cloudrun.sh"))
    assert deploy["run"].split() == ["deploy/cloudrun.sh", "deploy"]
    for name in deploy["env"]:
        assert script_reads(name), f"deploy/cloudrun.sh does not read {name}"
    install = next(s["run"] for s in steps if "pip install" in s.get("run", ""))
    assert "'.[gcs]'" in install, "the project itself, with the gcs extra for push"
