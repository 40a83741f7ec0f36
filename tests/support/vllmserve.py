"""vLLM's own OpenAI-compatible server (``vllm serve``, from ``.venv-vllm``) on a free loopback port, for tests.

It serves a model folder (a hub-cache snapshot) under ``served`` with the CPU settings of ``tests/support/
vllmenv.py``, offline and with usage reporting off, exactly as ``deploy/cloudrun.sh vllm`` starts it on a GPU:
``--model <snapshot path> --served-model-name <repo id>``. Start-up takes ~45 s on two cores; a test module
shares one server. ``stop()`` ends it and every process of its session (vLLM's engine core is a child process).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx

from tests.support.objectstores import free_port, terminate
from tests.support.vllmenv import ROOT, vllm_env

START_TIMEOUT = 240.0  # seconds; ~45 s here when the machine is otherwise idle


class VllmServer:
    def __init__(
        self,
        python: Path,
        model: Path,
        served: str,
        log: Path,
        *,
        api_key: str | None = None,
        max_num_seqs: int = 8,
        max_model_len: int = 4096,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.served = served
        self.api_key = api_key
        self.log_path = log
        env = vllm_env() | {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "VLLM_HOST_IP": "127.0.0.1",  # else vLLM finds its address with a UDP connect to a public one
        }
        command = [
            str(python),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--model",
            str(model),
            "--served-model-name",
            served,
            "--dtype",
            "float32",
            "--enforce-eager",
            "--max-model-len",
            str(max_model_len),
            "--max-num-seqs",
            str(max_num_seqs),
            "--limit-mm-per-prompt",
            '{"image": 1, "video": 0}',
        ]
        if api_key:
            command += ["--api-key", api_key]
        self._log = log.open("ab")
        began = time.monotonic()
        self.proc = subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.started_in = time.monotonic() - began

    def _wait_ready(self) -> None:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        deadline = time.monotonic() + START_TIMEOUT
        with httpx.Client(timeout=5, trust_env=False, headers=headers) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(f"vllm serve exited during start-up:\n{self.tail()}")
                with contextlib.suppress(httpx.TransportError):
                    if client.get(f"{self.url}/models").status_code == 200:
                        return
                time.sleep(0.5)
        raise AssertionError(f"vllm serve was not ready in {START_TIMEOUT:.0f} s:\n{self.tail()}")

    def tail(self, chars: int = 6000) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, then SIGKILL for whatever of its session is left (idempotent)."""
        terminate(self.proc, timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # the engine core and anything else it started
        if not self._log.closed:
            self._log.close()

    def metric(self, name: str) -> float:
        """The sum of every sample of ``name`` on vLLM's /metrics (outside its API key), e.g.
        ``vllm:num_requests_running``."""
        text = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5, trust_env=False).text
        return sum(
            float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith((name + " ", name + "{"))
        )

    def kill(self) -> None:
        """SIGKILL the server and its engine core at once (a crash, not a shutdown)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        if not self._log.closed:
            self._log.close()
