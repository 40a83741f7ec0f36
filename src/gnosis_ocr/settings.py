"""The one Settings object. Only entry points build it; nothing else in gnosis-ocr reads ``os.environ``.

Variables (the seed deployment's names are honoured as they are):

=============================  ==========================================================================
``MODEL_CACHE_PATH``           root of the Hugging Face style cache (``<root>/hub/models--org--name``).
                               Falls back to ``HF_HOME``, then ``/cache/huggingface`` when ``/cache`` is
                               mounted, then the user's cache directory.
``MODEL_NAME``                 model repository id (default ``nanonets/Nanonets-OCR-s``).
``GNOSIS_MODEL_REVISION``      branch, tag or commit sha to serve (default ``main``).
``HF_ENDPOINT``                hub address (default ``https://huggingface.co``); a mirror works.
``HF_TOKEN``                   token for gated or private repositories (never logged).
``GNOSIS_CACHE_MODE``          ``auto`` | ``offline`` | ``refresh`` (see docs/CACHE.md).
``GNOSIS_NETWORK_GUARD``       ``count`` (default) or ``strict``: strict refuses hub connections once
                               the model is resolved; ``offline`` mode is always strict.
``GNOSIS_CACHE_LEASE_TTL``     seconds a writer's lease lives without renewal (default 60).
``GNOSIS_CACHE_LEASE_WAIT``    seconds a starter waits for another writer before downloading itself.
``GNOSIS_CACHE_BUCKET``        ``gs://bucket/prefix`` (or ``s3://``) the cache root is mounted from: the download
                               lease is then taken through the bucket's conditional writes, so instances on
                               separate mounts download once (unset: the bucket of a gcsfuse or rclone
                               mount where the mount table says so, else a file lease, one mount only).
``GNOSIS_CACHE_READ_WORKERS``  files read in parallel when loading weights (default 4).
``GNOSIS_CACHE_READ_CHUNK_MIB`` size of each sequential read (default 16).
``GNOSIS_VERIFY_ON_LOAD``      ``full`` (default): sha256 of every weight shard while it is read, a mismatch is
                               refused; ``sizes``: only the sizes against the ready-manifest (for a bucket that
                               ``cache verify --full`` checked when it was filled; docs/CACHE.md). The older
                               ``GNOSIS_CACHE_VERIFY_ON_LOAD=true|false`` means full|sizes.
``GNOSIS_CACHE_DOWNLOAD_WORKERS`` files downloaded in parallel by ``warm`` (default 4).
``GNOSIS_ENGINE``              ``auto`` | ``nanonets`` | ``tesseract`` | ``layout`` | ``remote``: auto takes the VLM
                               where a GPU is and the model is complete in the cache (auto never downloads), else
                               layout where its model file is installed, else tesseract, and says why; layout adds
                               tables, headings and reading order on CPU;
                               remote reads pages on an OpenAI-compatible server (``GNOSIS_VLM_URL``).
``GNOSIS_ENGINE_PLUGINS``      engines gnosis-ocr does not ship: ``name=package.module:factory``, comma-separated;
                               ``GNOSIS_ENGINE`` and an upload's ``engine`` may then name them (engines/plugins.py).
``GNOSIS_TESSERACT_LANG``      tesseract languages, e.g. ``eng`` or ``eng+deu`` (default ``eng``).
``GNOSIS_OCR_WORKERS``         CPU engine worker processes (default: number of cores).
``GNOSIS_KEEP_FURNITURE``      layout engine: keep running headers, footers and page numbers in the Markdown
                               (default false: they are dropped from it and kept in the page's meta).
``GNOSIS_LAYOUT_MODEL``        layout engine: the model file ``layout_cdla.onnx`` (default: where
                               ``scripts/layout-model`` puts it, ``<prefix>/share/gnosis-ocr/models``).
``GNOSIS_DEVICE``              ``cuda``, ``cuda:1`` or ``cpu`` for the VLM (default: cuda when present).
``GNOSIS_VLM_BACKEND``         ``auto`` | ``vllm`` | ``transformers``: how the VLM runs (auto: vLLM where it is
                               installed and a GPU is present, else transformers).
``GNOSIS_VLM_PROFILE``         the model profile (prompt, limits, output parsing); default: the model's own,
                               else the generic Qwen2.5-VL one (``gnosis-ocr models`` lists them).
``GNOSIS_VLM_MAX_NEW_TOKENS``  bound on generated tokens per page (default: the profile's).
``GNOSIS_VLM_MAX_PIXELS``      page image pixel budget the model sees (default: the profile's).
``GNOSIS_VLM_BATCH_SIZE``      transformers: pages per generation (default 4 on GPU, 1 on CPU).
``GNOSIS_VLM_DTYPE``           ``auto`` | ``bfloat16`` | ``float16`` | ``float32`` (auto: bf16 where supported).
``GNOSIS_VLM_GPU_MEMORY_UTILIZATION``  vLLM: share of GPU memory for weights and KV cache (default 0.90).
``GNOSIS_VLM_MAX_MODEL_LEN``   vLLM: longest prompt + output in tokens (default 16384: a page image plus the
                               profiles' token bounds, up to 15,000).
``GNOSIS_VLM_MAX_NUM_SEQS``    vLLM: pages decoded together (default 64).
``GNOSIS_VLM_LOOP_GUARD``      ``true`` (default): a VLM page whose output repeats or stops at max tokens is read
                               again, then falls back; ``false`` takes every page as the model wrote it.
``GNOSIS_VLM_LOOP_RETRIES``    loop guard: retries of a looping page at a rising temperature (default 2), then
                               the page falls back to its text layer or tesseract.
``GNOSIS_VLM_URL``             remote: the server's OpenAI-compatible base URL (``http://vlm:8000/v1``; http or
                               https, no credentials in it).
``GNOSIS_VLM_API_KEY``         remote: sent as ``Authorization: Bearer <key>`` (vllm serve --api-key); never logged.
``GNOSIS_VLM_SERVED_MODEL``    remote: the name the server serves the model under (default: ``MODEL_NAME`` when the
                               profile lists it, else the profile's model); checked at start with ``GET /models``.
``GNOSIS_VLM_CONCURRENCY``     remote: pages in flight at once (default 16; the pool's instances x max-num-seqs).
``GNOSIS_VLM_CONNECT_TIMEOUT``, ``GNOSIS_VLM_READ_TIMEOUT``
                               remote: seconds to connect (10) and to wait for one page's answer (300).
``GNOSIS_VLM_TRIES``           remote: requests per page at most (default 4): connection errors, timeouts, 429
                               and 5xx are tried again with backoff, then the page fails with the reason.
``GNOSIS_VLM_STARTUP_WAIT_SECONDS`` remote: how long start-up waits for a server that does not answer yet (60).
``GNOSIS_VLM_IMAGE_FORMAT``    remote: ``png`` (default, lossless) or ``jpeg`` (smaller) page images.
``GNOSIS_MAX_INFLIGHT_PAGES``  pages of all running jobs in the engine at once (default: what the engine asks
                               for: vLLM's max_num_seqs, one batch for the others).
``GNOSIS_MAX_RUNNING_JOBS``    jobs whose pages are read at the same time (default 8); others queue.
``GNOSIS_SHUTDOWN_GRACE_SECONDS`` on shutdown, seconds the pages in flight get to finish (default 8: Cloud Run
                               allows 10 after SIGTERM); the rest stay pending for the next start.
``GNOSIS_TEXT_LAYER``          ``auto`` | ``never`` | ``only``: use a PDF page's own text instead of OCR.
``GNOSIS_MAX_PAGES``, ``GNOSIS_MAX_PAGE_PIXELS``, ``GNOSIS_MAX_TOTAL_PIXELS``, ``GNOSIS_MAX_BYTES``,
``GNOSIS_TARGET_PIXELS``       limits against bombs, and the size pages are rendered to.
``GNOSIS_RENDER_WORKERS``      processes that open and render documents, per pool (default 4; two pools, one
                               opens/checks, one renders; started as needed). 0 renders in the server process
                               without the two limits below (trusted documents only).
``GNOSIS_RENDER_MEMORY_MIB``   address space each of them may use (default 2048); a page past it fails alone.
``GNOSIS_RENDER_TIMEOUT_SECONDS`` wall-clock time to open a document or render one page (default 60); a page
                               past it fails alone, its worker is killed and replaced.
``GNOSIS_HOST``                address ``gnosis-ocr serve`` binds (default ``127.0.0.1``; ``0.0.0.0`` in a
                               container).
``GNOSIS_PORT`` or ``PORT``    its port (default 7799; Cloud Run sets ``PORT``).
``GNOSIS_STORAGE``             where the service keeps jobs: a local folder (default
                               ``$TMPDIR/gnosis-ocr/storage``), or ``gs://bucket/prefix`` / ``s3://bucket/prefix``
                               when several instances share job state.
``GNOSIS_JOB_TTL_SECONDS``     finished jobs are deleted after this long (default 86400).
``GNOSIS_JOB_STALE_SECONDS``   an instance that has not written its heartbeat for this long loses its
                               unfinished jobs to the others (shared storage; default 60).
``GNOSIS_MAX_FILES``, ``GNOSIS_MAX_UPLOAD_BYTES``, ``GNOSIS_MAX_QUEUED_JOBS``
                               files per job (20), bytes per upload request (1 GiB; each file is also
                               bound by ``GNOSIS_MAX_BYTES``), jobs waiting before uploads get 503 (100).
``GNOSIS_MAX_PDF_BUILDS``      searchable PDFs (``result.pdf``) built and sent at once (default 2); one more is
                               answered 503 with Retry-After (each takes a core and ~100 MiB while it builds, and
                               its file in the storage's staging folder until it is sent).
``GNOSIS_API_KEY``             when set, every HTTP route but ``/healthz``, ``/readyz``, the docs and the UI's
                               files needs it, as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>`` (never
                               logged); several keys separated by commas are all accepted (key rotation).
                               Set but empty is no key; a value with only commas or spaces refuses to start.
``GNOSIS_ALLOWED_ORIGINS``     origins (``https://app.example.com``, comma-separated) whose pages may send
                               POST, PUT, PATCH and DELETE; any other cross-site browser request gets 403.
``GNOSIS_ALLOWED_HOSTS``       when set, the ``Host`` names the service answers to (comma-separated;
                               ``name`` any port, ``name:port``, ``*.example.com``); others get 421. The
                               probes ``/healthz`` and ``/readyz`` answer any Host.
``GNOSIS_HTTP_HEADER_TIMEOUT`` seconds a connection gets to send a request's line and headers (default 10);
                               a new connection that sends nothing is closed after as long.
``GNOSIS_HTTP_MAX_HEADER_BYTES`` bytes a request's line and headers may take (default 65536); more: 431.
``GNOSIS_HTTP_KEEPALIVE_TIMEOUT`` seconds an idle keep-alive connection stays open (default 5).
``GNOSIS_HTTP_MAX_CONNECTIONS`` open client connections at once (default 1000); more are answered 503 and
                               closed at once.
``GNOSIS_WEBHOOK_SECRET``      key of the HMAC-SHA256 signature on job callbacks (``callback_url``), at least 16
                               characters (never logged); unset: uploads with a ``callback_url`` are refused.
``GNOSIS_WEBHOOK_ALLOWED_HOSTS`` callback hosts (comma-separated names or IP literals) called even though they
                               resolve to loopback, private or other non-public addresses (default: none).
``GNOSIS_WEBHOOK_MAX_ATTEMPTS`` POSTs per callback delivery at most (default 8), retried on connection errors,
                               5xx and 429.
``GNOSIS_WEBHOOK_BACKOFF_SECONDS`` wait before the second attempt (default 2), doubling each time, at most 300.
``GNOSIS_WEBHOOK_TIMEOUT_SECONDS`` to connect, and to wait for the receiver's answer (default 10).
=============================  ==========================================================================
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated, Literal, get_args

import platformdirs
from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from gnosis_ocr.documents.model import DocumentLimits

CacheMode = Literal["auto", "offline", "refresh"]
GuardMode = Literal["count", "strict"]
EngineName = Literal["auto", "vlm", "nanonets", "tesseract", "layout", "remote"]  # the built-in engines
VlmBackend = Literal["auto", "vllm", "transformers"]
VlmDtype = Literal["auto", "bfloat16", "float16", "float32"]
TextLayerPolicy = Literal["auto", "never", "only"]
VerifyOnLoad = Literal["full", "sizes"]
VlmImageFormat = Literal["png", "jpeg"]

DEFAULT_MODEL = "nanonets/Nanonets-OCR-s"
DEFAULT_ENDPOINT = "https://huggingface.co"
MOUNTED_CACHE = Path("/cache/huggingface")


def default_cache_root(mounted: Path = MOUNTED_CACHE) -> Path:
    """``/cache/huggingface`` when the bucket mount is there (even read-only), else the user's cache dir."""
    if mounted.is_dir():
        return mounted
    parent = mounted.parent
    if parent.is_dir() and os.access(parent, os.W_OK):
        return mounted
    return Path(platformdirs.user_cache_dir("gnosis-ocr")) / "huggingface"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GNOSIS_", populate_by_name=True, extra="ignore", frozen=True)

    model_cache_path: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("MODEL_CACHE_PATH", "GNOSIS_MODEL_CACHE_PATH", "HF_HOME"),
    )
    model_name: str = Field(default=DEFAULT_MODEL, validation_alias=AliasChoices("MODEL_NAME", "GNOSIS_MODEL"))
    model_revision: str = "main"
    hf_endpoint: str = Field(default=DEFAULT_ENDPOINT, validation_alias=AliasChoices("HF_ENDPOINT"))
    hf_token: SecretStr | None = Field(default=None, validation_alias=AliasChoices("HF_TOKEN"))

    cache_mode: CacheMode = "auto"
    network_guard: GuardMode = "count"
    cache_lease_ttl: float = Field(default=60.0, gt=0)
    cache_lease_wait: float = Field(default=1800.0, ge=0)
    cache_bucket: str | None = Field(default=None, pattern=r"^(gs|gcs|s3)://[^/]+(/.*)?$")
    cache_read_workers: int = Field(default=4, ge=1, le=64)
    cache_read_chunk_mib: int = Field(default=16, ge=1, le=1024)
    verify_on_load: VerifyOnLoad = Field(
        default="full", validation_alias=AliasChoices("GNOSIS_VERIFY_ON_LOAD", "GNOSIS_CACHE_VERIFY_ON_LOAD")
    )
    cache_download_workers: int = Field(default=4, ge=1, le=64)

    engine: str = "auto"  # an EngineName, or a name in engine_plugins
    engine_plugins: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    tesseract_lang: str = Field(default="eng", pattern=r"^[A-Za-z_]+(\+[A-Za-z_]+)*$")
    ocr_workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, le=64)
    keep_furniture: bool = False  # layout engine: running headers, footers, page numbers stay in the Markdown
    layout_model: Path | None = None  # layout engine: the model file (default: <prefix>/share/gnosis-ocr/models)
    device: str | None = None
    vlm_backend: VlmBackend = "auto"
    vlm_profile: str | None = None
    vlm_max_new_tokens: int | None = Field(default=None, ge=1, le=32768)
    vlm_max_pixels: int | None = Field(default=None, ge=10_000, le=40_000_000)
    vlm_batch_size: int | None = Field(default=None, ge=1, le=64)
    vlm_dtype: VlmDtype = "auto"
    vlm_gpu_memory_utilization: float = Field(default=0.90, gt=0.05, le=0.99)
    vlm_max_model_len: int = Field(default=16384, ge=256, le=131072)
    vlm_max_num_seqs: int = Field(default=64, ge=1, le=4096)
    vlm_loop_guard: bool = True
    vlm_loop_retries: int = Field(default=2, ge=0, le=5)
    # GNOSIS_ENGINE=remote: an OpenAI-compatible server (vllm serve) runs the model (engines/remote.py)
    vlm_url: str | None = None
    vlm_api_key: SecretStr | None = None
    vlm_served_model: str | None = None
    vlm_concurrency: int = Field(default=16, ge=1, le=1024)
    vlm_connect_timeout: float = Field(default=10.0, gt=0, le=600)
    vlm_read_timeout: float = Field(default=300.0, gt=0, le=7200)
    vlm_tries: int = Field(default=4, ge=1, le=20)
    vlm_startup_wait_seconds: float = Field(default=60.0, ge=0, le=3600)
    vlm_image_format: VlmImageFormat = "png"
    max_inflight_pages: int | None = Field(default=None, ge=1, le=4096)
    max_running_jobs: int = Field(default=8, ge=1, le=256)
    shutdown_grace_seconds: float = Field(default=8.0, ge=0, le=3600)
    text_layer: TextLayerPolicy = "auto"
    max_pages: int = Field(default=500, ge=1)
    max_page_pixels: int = Field(default=40_000_000, ge=10_000)
    max_total_pixels: int = Field(default=2_000_000_000, ge=10_000)
    max_bytes: int = Field(default=200 * 1024 * 1024, ge=1)
    target_pixels: int = Field(default=2_400_000, ge=100_000)
    render_workers: int = Field(default=4, ge=0, le=64)
    render_memory_mib: int = Field(default=2048, ge=256)
    render_timeout_seconds: float = Field(default=60.0, gt=0)

    # The service's job storage: a local folder (default, ephemeral) or gs://bucket/prefix, s3://bucket/prefix
    # when several instances share job state. Jobs finished longer than job_ttl_seconds ago are deleted.
    storage: str = Field(default_factory=lambda: str(Path(tempfile.gettempdir()) / "gnosis-ocr" / "storage"))
    job_ttl_seconds: float = Field(default=24 * 3600.0, gt=0)
    job_stale_seconds: float = Field(default=60.0, gt=0)  # an instance silent this long gives up its jobs
    max_files: int = Field(default=20, ge=1, le=1000)  # files per job
    max_upload_bytes: int = Field(default=1024 * 1024 * 1024, ge=1)  # one request, all files together
    max_queued_jobs: int = Field(default=100, ge=1)
    max_pdf_builds: int = Field(default=2, ge=1, le=64)

    log_level: str = "INFO"

    host: str = "127.0.0.1"
    port: int = Field(default=7799, ge=1, le=65535, validation_alias=AliasChoices("GNOSIS_PORT", "PORT"))
    api_key: SecretStr | None = None
    allowed_origins: Annotated[tuple[str, ...], NoDecode] = ()
    allowed_hosts: Annotated[tuple[str, ...], NoDecode] = ()
    http_header_timeout: float = Field(default=10.0, gt=0, le=3600)
    http_max_header_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    http_keepalive_timeout: int = Field(default=5, ge=1, le=3600)
    http_max_connections: int = Field(default=1000, ge=1, le=1_000_000)
    webhook_secret: SecretStr | None = None
    webhook_allowed_hosts: Annotated[tuple[str, ...], NoDecode] = ()
    webhook_max_attempts: int = Field(default=8, ge=1, le=20)
    webhook_backoff_seconds: float = Field(default=2.0, gt=0, le=300)
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=120)

    @field_validator("verify_on_load", mode="before")
    @classmethod
    def _verify_from_bool(cls, value: object) -> object:
        # GNOSIS_CACHE_VERIFY_ON_LOAD was a boolean: true is full, false is sizes
        text = str(value).strip().lower()
        if text in ("true", "1", "yes", "on"):
            return "full"
        return "sizes" if text in ("false", "0", "no", "off") else value

    @field_validator("hf_endpoint")
    @classmethod
    def _strip_endpoint(cls, value: str) -> str:
        return value.rstrip("/")

    @field_validator("api_key", "vlm_api_key")
    @classmethod
    def _blank_key_is_no_key(cls, value: SecretStr | None) -> SecretStr | None:
        # GNOSIS_API_KEY= (set but empty, as templated deployments often leave it) means no key, not "" as the key
        return value if value is not None and value.get_secret_value().strip() else None

    @field_validator("webhook_secret")
    @classmethod
    def _usable_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None  # set but empty: no secret, as with GNOSIS_API_KEY
        if len(value.get_secret_value()) < 16:
            raise ValueError("GNOSIS_WEBHOOK_SECRET must be at least 16 characters (e.g. `openssl rand -hex 32`)")
        return value

    @field_validator("webhook_allowed_hosts", mode="before")
    @classmethod
    def _host_list(cls, value: object) -> object:
        # "hooks.internal, 10.0.0.7, [fd00::1]": host names lower-case, IPv6 literals without brackets
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            return value
        hosts = (str(item).strip().lower().strip("[]").rstrip(".") for item in items)
        return tuple(host for host in hosts if host)

    @field_validator("engine_plugins", mode="before")
    @classmethod
    def _plugins(cls, value: object) -> object:
        from gnosis_ocr.engines.plugins import parse_plugins

        return parse_plugins(value, get_args(EngineName)) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _known_engine(self) -> Settings:
        if self.engine not in get_args(EngineName) and self.engine not in self.engine_plugins:
            plugins = f"; plugins: {', '.join(self.engine_plugins)}" if self.engine_plugins else ""
            raise ValueError(
                f"GNOSIS_ENGINE={self.engine[:40]!r} is not an engine: use one of {', '.join(get_args(EngineName))}"
                f"{plugins} (GNOSIS_ENGINE_PLUGINS adds others)"
            )
        return self

    @field_validator("allowed_origins", "allowed_hosts", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        # "a, b" from the environment or a sequence from code; compared lower-case, an origin without its last /
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            return value
        return tuple(str(item).strip().rstrip("/").lower() for item in items if str(item).strip())

    @model_validator(mode="after")
    def _fill_cache_root(self) -> Settings:
        if self.model_cache_path is None:
            object.__setattr__(self, "model_cache_path", default_cache_root())
        return self

    @property
    def cache_root(self) -> Path:
        """The resolved cache root; always set after validation."""
        path = self.model_cache_path if self.model_cache_path is not None else default_cache_root()
        return path.expanduser()

    @property
    def strict_offline(self) -> bool:
        return self.cache_mode == "offline" or self.network_guard == "strict"

    def limits(self) -> DocumentLimits:
        return DocumentLimits(
            max_bytes=self.max_bytes,
            max_pages=self.max_pages,
            max_page_pixels=self.max_page_pixels,
            max_total_pixels=self.max_total_pixels,
            target_pixels=min(self.target_pixels, self.max_page_pixels),
            render_workers=self.render_workers,
            render_memory_bytes=self.render_memory_mib * 1024 * 1024,
            render_timeout=self.render_timeout_seconds,
        )

    def token(self) -> str | None:
        return self.hf_token.get_secret_value() if self.hf_token is not None else None
