"""Engines from elsewhere: ``GNOSIS_ENGINE_PLUGINS=name=package.module:factory[,name2=...]``.

An operator may bring an engine gnosis-ocr does not ship (a proprietary OCR, an experiment) without changing
gnosis-ocr: ``factory`` is called with the ``Settings`` and returns an object of either engine shape
(``engines.base.Engine`` or ``StreamingEngine``), not loaded yet. ``name`` then works wherever an engine is named:
``GNOSIS_ENGINE=name``, ``--engine name``, an upload's ``engine`` field. The setting is the operator's, like every
other: nothing a request sends can add a plugin or import a module.

This is also how the tests bring their deterministic fake engine (``tests/support/fakeengine.py``, registered as
``fake`` in ``tests/conftest.py``): the production package ships no test engine and no test switch.
"""

from __future__ import annotations

import importlib
import re
from typing import TYPE_CHECKING

from gnosis_ocr.engines.base import Engine, StreamingEngine
from gnosis_ocr.errors import ConfigError, EngineUnavailableError

if TYPE_CHECKING:
    from gnosis_ocr.settings import Settings

NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
SPEC = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")


def parse_plugins(value: str, builtin: tuple[str, ...]) -> dict[str, str]:
    """``name=module:factory`` pairs, comma-separated, into {name: spec}. ConfigError names the bad pair."""
    plugins: dict[str, str] = {}
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        name, sep, spec = (s.strip() for s in item.partition("="))
        if not sep or not NAME.match(name) or not SPEC.match(spec):
            raise ConfigError(
                f"GNOSIS_ENGINE_PLUGINS has {item[:80]!r}, which is not name=package.module:factory.",
                hint="e.g. GNOSIS_ENGINE_PLUGINS=myocr=my_package.engines:make_engine (names: a-z, 0-9, _ and -).",
            )
        if name in builtin or name in plugins:
            raise ConfigError(
                f"GNOSIS_ENGINE_PLUGINS names the engine {name!r} "
                f"{'twice' if name in plugins else 'that gnosis-ocr already has'}.",
                hint="Give the plugin another name.",
            )
        plugins[name] = spec
    return plugins


def plugin_engine(settings: Settings, name: str) -> Engine | StreamingEngine:
    """The engine the plugin ``name`` builds from ``settings`` (not loaded yet)."""
    spec = settings.engine_plugins[name]
    module_name, _, attr = spec.partition(":")
    where = f"the engine plugin {name}={spec} (GNOSIS_ENGINE_PLUGINS)"
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except ImportError as exc:
        raise EngineUnavailableError(
            f"Cannot import {where}: {exc}.", hint=f"Install the package that provides {module_name}."
        ) from exc
    except AttributeError as exc:
        raise EngineUnavailableError(
            f"{module_name} has no {attr!r}, named by {where}.", hint="Check the factory's name."
        ) from exc
    engine = factory(settings)
    if not isinstance(engine, Engine | StreamingEngine):
        raise EngineUnavailableError(
            f"{where} returned a {type(engine).__name__}, which is not an engine.",
            hint="The factory must return an object with the Engine or StreamingEngine methods "
            "(gnosis_ocr.engines.base).",
        )
    return engine
