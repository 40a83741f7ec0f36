"""Resolve and load a model the way an engine does, in a fresh process, and report what touched the network.

    python -m tests.support.load_model [--deny-network] [--generate]

Configuration comes from the environment (MODEL_CACHE_PATH, MODEL_NAME, HF_ENDPOINT, GNOSIS_CACHE_MODE), as in
production. ``--deny-network`` installs, before anything else, an audit hook that refuses and records every
socket connection and every name lookup except AF_UNIX: the proof is that loading still works.
Prints one JSON line.
"""

from __future__ import annotations

import json
import os
import socket
import sys

denied: list[str] = []


def _deny(event: str, args: tuple[object, ...]) -> None:
    if event == "socket.connect":
        sock, address = args
        if isinstance(sock, socket.socket) and sock.family == socket.AF_UNIX:
            return
        denied.append(f"connect {address!r}")
        raise ConnectionRefusedError(f"test forbids network: connect {address!r}")
    if event == "socket.getaddrinfo":
        denied.append(f"getaddrinfo {args[0]!r}")
        raise ConnectionRefusedError(f"test forbids network: getaddrinfo {args[0]!r}")


def main() -> None:
    if "--deny-network" in sys.argv:
        sys.addaudithook(_deny)

    from gnosis_ocr.modelcache import cache_from_settings, read_options_from_settings
    from gnosis_ocr.modelcache.offline import prepare_environment
    from gnosis_ocr.settings import Settings

    settings = Settings()
    prepare_environment(os.environ, offline=settings.cache_mode == "offline")
    cache = cache_from_settings(settings)
    resolved = cache.resolve(settings.model_name, settings.model_revision, mode=settings.cache_mode)

    from transformers import Qwen2_5_VLForConditionalGeneration

    from gnosis_ocr.modelcache.loader import load_pretrained, load_processor_parts

    model = load_pretrained(
        resolved,
        Qwen2_5_VLForConditionalGeneration,
        metrics=cache.metrics,
        options=read_options_from_settings(settings),
    )
    tokenizer, image_processor = load_processor_parts(resolved)
    out: dict[str, object] = {
        "commit": resolved.commit,
        "hit": resolved.hit,
        "path": str(resolved.path),
        "params": sum(p.numel() for p in model.parameters()),
        "tokenizer": type(tokenizer).__name__,
        "image_processor": type(image_processor).__name__,
    }
    if "--generate" in sys.argv:
        import torch
        from PIL import Image, ImageDraw

        from tests.support.tinymodel import build_generation_inputs

        image = Image.new("RGB", (112, 84), "white")
        ImageDraw.Draw(image).text((8, 30), "Hello", fill="black")
        inputs = build_generation_inputs(tokenizer, image_processor, image, "Extract the text.")
        with torch.no_grad():
            generated = model.generate(**inputs, max_new_tokens=5, do_sample=False)
        out["new_tokens"] = int(generated.shape[1] - inputs["input_ids"].shape[1])
    out["guard_attempts"] = cache.guard.total
    out["metric_network_attempts"] = cache.metrics.network_attempts()
    out["denied"] = denied
    print(json.dumps(out))


if __name__ == "__main__":
    main()
