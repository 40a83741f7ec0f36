"""The VLM on a remote OpenAI-compatible server (a vLLM pool, or any host running ``vllm serve``).

``GNOSIS_ENGINE=remote`` reads pages with the model another server runs: each page is one chat-completions request
to ``GNOSIS_VLM_URL`` (``http://host:8000/v1``), its image a base64 data URL beside the model profile's prompt. The
profile stays on our side: the prompt, the image's pixel budget, the token bound, and how the answer becomes
Markdown are the same as in-process (``engines.profiles``); the server only runs the model.

At ``load`` the engine asks ``GET /models`` which model the server serves: a server that serves another one is an
``EngineUnavailableError`` naming both; a server that does not answer is retried with backoff for
``startup_wait`` seconds (a pool scaled to zero takes minutes to start), then an error saying so. vLLM names the
snapshot it loaded in the model's ``root``; when that is a hub-cache snapshot folder, its commit becomes the
engine's revision.

A page (``submit``) is one request on the engine's own event loop thread, at most ``capacity`` at once. Its future
stays pending while the request runs, so ``future.cancel()`` succeeds then: the request's task is cancelled, httpx
closes its connection, and vLLM aborts a request whose client went away. Connection errors, timeouts, 429 (its
``Retry-After`` honoured up to ``backoff_max``) and 5xx are tried again with exponential backoff and jitter,
``tries`` times in all; then the page fails with the last reason, as does a page the server refuses (4xx). Failed
pages are ``PageText.error``, never exceptions: the reading loop goes on with the rest of the document.

The API key goes only into the ``Authorization`` header: never into a log line, an error or ``EngineInfo``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import io
import json
import logging
import random
import re
import threading
import time
from collections.abc import Coroutine, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from gnosis_ocr.documents.model import Page
from gnosis_ocr.engines.base import GREEDY, Decoding, EngineInfo, PageText, recognize_by_submit
from gnosis_ocr.errors import ConfigError, EngineUnavailableError

if TYPE_CHECKING:
    import httpx

    from gnosis_ocr.engines.profiles import ModelProfile

logger = logging.getLogger(__name__)

ImageFormat = Literal["png", "jpeg"]
MAX_RESPONSE_BYTES = 16 * 1024 * 1024  # a page's answer: 15,000 tokens of text is well under 1 MiB
MAX_REASON_CHARS = 300  # of a server's error body quoted in a page's error
MODELS_TIMEOUT = 30.0  # seconds for one GET /models at start-up (then asked again until startup_wait has passed)
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_SNAPSHOT = re.compile(r"/snapshots/([0-9a-f]{40})/?$")


@dataclass(frozen=True)
class Endpoint:
    """The server's base URL, checked: http(s), a host, no credentials, no query."""

    base: str  # e.g. http://vlm:8000/v1, no trailing slash

    @property
    def shown(self) -> str:
        """What logs, errors and /readyz show: the base URL (it never holds credentials)."""
        return self.base

    def url(self, path: str) -> str:
        return f"{self.base}/{path}"


def parse_url(url: str) -> Endpoint:
    """``GNOSIS_VLM_URL`` checked; a URL without a path gets ``/v1`` (where OpenAI-compatible servers answer)."""
    hint = "Set GNOSIS_VLM_URL to the server's OpenAI-compatible base URL, e.g. http://vlm-host:8000/v1."
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"GNOSIS_VLM_URL is not a URL: {exc}.", hint=hint) from None
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"GNOSIS_VLM_URL must be http:// or https://, not {parts.scheme or 'no scheme'}.", hint=hint)
    if not parts.hostname:
        raise ConfigError("GNOSIS_VLM_URL has no host.", hint=hint)
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            "GNOSIS_VLM_URL must not hold credentials (user:password@).", hint="Put the key in GNOSIS_VLM_API_KEY."
        )
    if parts.query or parts.fragment:
        raise ConfigError("GNOSIS_VLM_URL must not have a query or a fragment.", hint=hint)
    path = parts.path.rstrip("/") or "/v1"
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    netloc = f"{host}:{port}" if port is not None else host
    return Endpoint(urlunsplit((parts.scheme, netloc, path, "", "")))


def retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (delta-seconds or an HTTP date), None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, float(when.timestamp()) - (time.time() if now is None else now))


def backoff_delay(attempt: int, *, base: float, cap: float, rng: random.Random) -> float:
    """Seconds before try ``attempt + 1`` (``attempt`` >= 1): ``base * 2**(attempt-1)`` capped at ``cap``, times
    a random factor in [0.5, 1) so clients that failed together do not come back together."""
    return min(cap, base * 2.0 ** (attempt - 1)) * (0.5 + rng.random() / 2)


def encode_image(page: Page, profile: ModelProfile, max_pixels: int, image_format: ImageFormat) -> str:
    """The page image scaled down to the profile's budget, as a data URL."""
    image = profile.fit(page.image.convert("RGB"), max_pixels)
    buffer = io.BytesIO()
    if image_format == "jpeg":
        image.save(buffer, format="JPEG", quality=92)
    else:
        image.save(buffer, format="PNG", compress_level=1)  # a fast compression: the bytes only cross a network
    return f"data:image/{image_format};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def chat_body(profile: ModelProfile, model: str, image_url: str, decoding: Decoding, max_tokens: int) -> dict[str, Any]:
    """The chat-completions request for one page: the profile's system turn and prompt beside the image."""
    image = {"type": "image_url", "image_url": {"url": image_url}}
    text = {"type": "text", "text": profile.prompt}
    messages: list[dict[str, Any]] = []
    if profile.system:
        messages.append({"role": "system", "content": profile.system})
    messages.append({"role": "user", "content": [image, text] if profile.image_first else [text, image]})
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": decoding.max_tokens or max_tokens,
        "temperature": decoding.temperature,
    }
    if decoding.seed is not None:
        body["seed"] = decoding.seed
    if profile.ignore_eos:  # vLLM's extension (benchmarks and loop tests); other servers are not sent it
        body["ignore_eos"] = True
    return body


class _Failure(Exception):
    """One try at a page failed; ``retry`` says whether another try may do better, ``wait`` what the server asked."""

    def __init__(self, reason: str, *, retry: bool, wait: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry = retry
        self.wait = wait


class RemoteEngine:
    def __init__(
        self,
        url: str,
        *,
        model: str,
        profile: ModelProfile,
        api_key: str | None = None,
        capacity: int = 16,
        connect_timeout: float = 10.0,
        read_timeout: float = 300.0,
        tries: int = 4,
        backoff: float = 1.0,
        backoff_max: float = 30.0,
        startup_wait: float = 60.0,
        max_pixels: int | None = None,
        max_tokens: int | None = None,
        image_format: ImageFormat = "png",
    ) -> None:
        """``model``: the name the server serves the model under (vLLM's ``--served-model-name``). ``tries``:
        requests per page at most. ``startup_wait``: seconds ``load`` waits for a server that does not answer yet.
        """
        if tries < 1 or capacity < 1:
            raise ValueError(f"tries and capacity must be 1 or more (got {tries}, {capacity})")
        self._endpoint = parse_url(url)
        self._model = model
        self._profile = profile
        self._api_key = api_key
        self._capacity = capacity
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._tries = tries
        self._backoff = backoff
        self._backoff_max = backoff_max
        self._startup_wait = startup_wait
        self._max_pixels = max_pixels or profile.max_pixels
        self._max_tokens = max_tokens or profile.max_tokens
        self._image_format: ImageFormat = image_format
        self._rng = random.Random()  # noqa: S311 (jitter, not a secret)
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: httpx.AsyncClient | None = None
        self._semaphore: asyncio.Semaphore | None = None
        self._tasks: dict[Future[PageText], asyncio.Task[None]] = {}
        self._loaded = False
        self._closed = False
        self._revision: str | None = None
        self.requests = 0  # HTTP requests sent for pages (tries included)
        self.aborted = 0  # pages whose request was cancelled while it ran

    # -- the seam ---------------------------------------------------------------------------------------

    @property
    def info(self) -> EngineInfo:
        return EngineInfo(
            name="remote",
            backend="remote",
            model=self._model,
            revision=self._revision,
            device="remote",
            vlm=True,
            profile=self._profile.name,
            endpoint=self._endpoint.shown,
        )

    @property
    def capacity(self) -> int:
        return self._capacity

    def load(self) -> None:
        """Start the event loop and check that the server serves ``model``. Raises EngineUnavailableError."""
        with self._load_lock:
            if self._closed:
                raise EngineUnavailableError("The remote engine is closed.", hint="Create a new engine.")
            if self._loaded:
                return
            self._start_loop()
            self._revision = self._call(self._check_models(), timeout=self._startup_wait + self._read_timeout + 30)
            self._loaded = True
        logger.info(
            "remote: %s serves %s%s; profile %s, %d pages in flight at most",
            self._endpoint.shown,
            self._model,
            f" (commit {self._revision[:7]})" if self._revision else "",
            self._profile.name,
            self._capacity,
        )

    def submit(self, page: Page, decoding: Decoding = GREEDY) -> Future[PageText]:
        self.load()
        future: Future[PageText] = Future()
        with self._lock:
            if self._closed or self._loop is None:
                raise EngineUnavailableError("The remote engine is closed.", hint="Create a new engine.")
            # under the lock: close() cannot stop the loop before this page is on it (it then ends cancelled)
            self._loop.call_soon_threadsafe(self._start_page, page, decoding, future)
        future.add_done_callback(self._on_done)
        return future

    def recognize(self, pages: Sequence[Page], decoding: Decoding = GREEDY) -> list[PageText]:
        return recognize_by_submit(self, pages, decoding)

    def close(self) -> None:
        """Pages still running end cancelled (their requests aborted); then the client and the loop stop."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(RuntimeError, TimeoutError):  # the loop stopped already
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        logger.info("remote: %s closed (%d pages aborted)", self._endpoint.shown, self.aborted)

    # -- the loop -----------------------------------------------------------------------------------------

    def _start_loop(self) -> None:
        if self._loop is not None:
            return
        import httpx

        loop = asyncio.new_event_loop()
        ready: Future[None] = Future()

        def run() -> None:
            asyncio.set_event_loop(loop)
            headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
            self._client = httpx.AsyncClient(
                headers=headers,
                timeout=httpx.Timeout(self._read_timeout, connect=self._connect_timeout),
                limits=httpx.Limits(max_connections=self._capacity, max_keepalive_connections=self._capacity),
                trust_env=False,  # the operator's URL, not a proxy from the environment
                follow_redirects=False,
            )
            self._semaphore = asyncio.Semaphore(self._capacity)
            ready.set_result(None)
            loop.run_forever()
            loop.close()

        thread = threading.Thread(target=run, name="gnosis-remote", daemon=True)
        thread.start()
        ready.result(timeout=30)
        self._loop, self._thread = loop, thread

    def _call(self, coroutine: Coroutine[Any, Any, Any], *, timeout: float) -> Any:
        if self._loop is None:
            raise EngineUnavailableError("The remote engine is not started.")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=timeout)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            raise EngineUnavailableError("The remote engine is not started.")
        return self._client

    async def _shutdown(self) -> None:
        running = list(self._tasks.items())
        for future, task in running:
            future.cancel()  # the page ends cancelled, not failed: the reader leaves it pending
            task.cancel()
        await asyncio.gather(*(task for _, task in running), return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    # -- load: which model does the server serve? ---------------------------------------------------------

    async def _check_models(self) -> str | None:
        """The commit of the served snapshot (when vLLM names one), after checking the server serves the model."""
        import httpx

        client = self._http()
        url = self._endpoint.url("models")
        deadline = time.monotonic() + self._startup_wait
        timeout = min(self._read_timeout, MODELS_TIMEOUT)  # a hung server is asked again, not waited on for minutes
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await client.get(url, timeout=timeout)
            except httpx.TransportError as exc:
                why = _transport_reason(exc)
            else:
                if response.status_code not in RETRY_STATUSES:
                    return self._served(response)
                why = f"HTTP {response.status_code}"
            delay = backoff_delay(attempt, base=self._backoff, cap=self._backoff_max, rng=self._rng)
            if time.monotonic() + delay > deadline:
                raise EngineUnavailableError(
                    f"The model server at {self._endpoint.shown} does not answer: {why} "
                    f"({attempt} {'try' if attempt == 1 else 'tries'} in {self._startup_wait:.0f} s).",
                    hint="Start it (vllm serve), check GNOSIS_VLM_URL, or give it longer with "
                    "GNOSIS_VLM_STARTUP_WAIT_SECONDS.",
                )
            logger.info("remote: %s not answering yet (%s); trying again in %.1f s", self._endpoint.shown, why, delay)
            await asyncio.sleep(delay)

    def _served(self, response: httpx.Response) -> str | None:
        where = self._endpoint.shown
        if response.status_code in (401, 403):
            what = "refused the API key" if self._api_key else "needs an API key"
            raise EngineUnavailableError(
                f"The model server at {where} {what} (HTTP {response.status_code}).",
                hint="Set GNOSIS_VLM_API_KEY to the key the server was started with (vllm serve --api-key).",
            )
        try:
            data = response.json()["data"] if response.status_code == 200 else None
            served = {str(m["id"]): str(m.get("root") or "") for m in data} if isinstance(data, list) else None
        except (ValueError, KeyError, TypeError):
            served = None
        if served is None:
            raise EngineUnavailableError(
                f"{where}/models answered HTTP {response.status_code} without a model list: {_snippet(response.text)}",
                hint="GNOSIS_VLM_URL must be an OpenAI-compatible base URL (vLLM: http://host:8000/v1).",
            )
        if self._model not in served:
            names = ", ".join(repr(name) for name in sorted(served)) or "no model"
            raise EngineUnavailableError(
                f"The model server at {where} serves {names}, not {self._model!r}.",
                hint=f"Set GNOSIS_VLM_SERVED_MODEL to the name it serves, or start the server with "
                f"--served-model-name {self._model}.",
            )
        match = _SNAPSHOT.search(served[self._model])
        return match.group(1) if match else None

    # -- one page -----------------------------------------------------------------------------------------

    def _start_page(self, page: Page, decoding: Decoding, future: Future[PageText]) -> None:
        if future.cancelled():
            return
        if self._closed:
            future.cancel()
            return
        task = asyncio.get_running_loop().create_task(self._page(page, decoding, future))
        self._tasks[future] = task
        task.add_done_callback(lambda _: self._tasks.pop(future, None))

    def _on_done(self, future: Future[PageText]) -> None:
        loop = self._loop
        if future.cancelled() and loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(self._abort, future)

    def _abort(self, future: Future[PageText]) -> None:
        task = self._tasks.get(future)
        if task is not None and not task.done():
            task.cancel()
            self.aborted += 1

    async def _page(self, page: Page, decoding: Decoding, future: Future[PageText]) -> None:
        semaphore = self._semaphore or asyncio.Semaphore(self._capacity)
        started = time.monotonic()
        try:
            async with semaphore:
                image_url = await asyncio.get_running_loop().run_in_executor(
                    None, encode_image, page, self._profile, self._max_pixels, self._image_format
                )
                body = json.dumps(chat_body(self._profile, self._model, image_url, decoding, self._max_tokens))
                del image_url
                result = await self._post_with_retries(page, body.encode(), started)
        except asyncio.CancelledError:
            return  # the future was cancelled (or the engine closes): nothing to deliver
        except Exception as exc:  # our own bug: the page fails, the traceback is logged once
            logger.exception("remote: page %d failed", page.number)
            result = PageText(page.number, "", time.monotonic() - started, error=f"{type(exc).__name__}: {exc}")
        if future.set_running_or_notify_cancel():
            future.set_result(result)

    async def _post_with_retries(self, page: Page, body: bytes, started: float) -> PageText:
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._post(page, body, started)
            except _Failure as failure:
                if not failure.retry or attempt >= self._tries:
                    tries = f" after {attempt} tries" if attempt > 1 else ""
                    logger.warning("remote: page %d failed%s: %s", page.number, tries, failure.reason)
                    error = f"the model server at {self._endpoint.shown} failed{tries}: {failure.reason}"
                    meta: dict[str, object] = {"tries": attempt}
                    return PageText(page.number, "", time.monotonic() - started, error=error, meta=meta)
                delay = backoff_delay(attempt, base=self._backoff, cap=self._backoff_max, rng=self._rng)
                if failure.wait is not None:
                    delay = min(max(delay, failure.wait), self._backoff_max)
                logger.info(
                    "remote: page %d try %d/%d failed (%s); again in %.1f s",
                    page.number,
                    attempt,
                    self._tries,
                    failure.reason,
                    delay,
                )
                await asyncio.sleep(delay)

    async def _post(self, page: Page, body: bytes, started: float) -> PageText:
        import httpx

        client = self._http()
        self.requests += 1
        headers = {"Content-Type": "application/json"}
        try:
            async with client.stream(
                "POST", self._endpoint.url("chat/completions"), content=body, headers=headers
            ) as response:
                raw = await _read_bounded(response, MAX_RESPONSE_BYTES)
        except httpx.TransportError as exc:
            raise _Failure(_transport_reason(exc), retry=True) from exc
        status = response.status_code
        if status != 200:
            reason = f"HTTP {status}: {_snippet(_error_message(raw))}"
            wait = retry_after(response.headers.get("Retry-After")) if status == 429 else None
            raise _Failure(reason, retry=status in RETRY_STATUSES, wait=wait)
        return self._page_text(page, raw, started)

    def _page_text(self, page: Page, raw: bytes, started: float) -> PageText:
        try:
            answer = json.loads(raw)
            choice = answer["choices"][0]
            content = choice["message"]["content"] or ""
            if not isinstance(content, str):
                raise TypeError(f"content is {type(content).__name__}")
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise _Failure(f"an answer that is not a chat completion ({exc}): {_snippet(raw)}", retry=False) from exc
        parsed = self._profile.parse(content)
        meta: dict[str, object] = dict(parsed.meta)
        usage = answer.get("usage")
        tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
        if isinstance(tokens, int):
            meta["new_tokens"] = tokens
        finish = choice.get("finish_reason")
        meta["finish_reason"] = finish
        if finish == "length":
            meta["truncated"] = True
        if parsed.rotate:
            meta["rotate"] = parsed.rotate
        return PageText(page.number, parsed.markdown, time.monotonic() - started, meta=meta)


async def _read_bounded(response: httpx.Response, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise _Failure(f"the answer is larger than {limit // (1024 * 1024)} MiB", retry=False)
        chunks.append(chunk)
    return b"".join(chunks)


def _transport_reason(exc: Exception) -> str:
    import httpx

    if isinstance(exc, httpx.ConnectTimeout):
        return "connect timed out"
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({type(exc).__name__})"
    text = str(exc) or type(exc).__name__
    return f"connection failed: {text}"


def _error_message(raw: bytes) -> str:
    """The message of an OpenAI-style error body ({"error": {"message": ...}}), else the body."""
    try:
        body = json.loads(raw)
        error = body.get("error") if isinstance(body, dict) else None
        message = error.get("message") if isinstance(error, dict) else error
        if isinstance(message, str) and message:
            return message
    except ValueError:
        pass
    return raw.decode("utf-8", "replace")


def _snippet(text: str | bytes) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = " ".join(text.split())
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 3] + "..."
