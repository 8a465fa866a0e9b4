"""The engines, one package each (``gateway/engines/<name>/``), and the registry that names them.

An engine package owns everything of its own: its options model, its timeline, its part of an avatar record,
its Triton model names and its rules for each mode (``gateway.engines.base``). Adding one is its folder and
one ``register`` line below; nothing else in the gateway names an engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.engines.base import Engine, EngineClass, EngineRun, Paste, same_picture
from gateway.engines.sadtalker import SadTalker
from gateway.engines.wav2lip import Wav2Lip
from gateway.session.options import EngineOptions, Mode, SessionOptions

__all__ = [
    "Engine",
    "EngineClass",
    "EngineRun",
    "Paste",
    "default_engine",
    "engines",
    "lipsync_request_engine",
    "options_model",
    "parse_engine_options",
    "quantizable_models",
    "register",
    "registered",
    "same_picture",
    "session_options",
    "takes_video",
]

_REGISTERED: dict[str, EngineClass] = {}


def register(engine: EngineClass) -> EngineClass:
    """Make ``engine`` available to every gateway created from now on (the first registered is the default)."""
    _REGISTERED[engine.name] = engine
    return engine


def unregister(name: str) -> None:
    """Forget an engine (tests that register one of their own)."""
    _REGISTERED.pop(name, None)


def registered() -> Mapping[str, EngineClass]:
    return dict(_REGISTERED)


def default_engine() -> str:
    """The engine a client gets when it names none."""
    return next(iter(_REGISTERED))


def lipsync_request_engine() -> str:
    """The engine the compatible request/response protocol runs when its request names none: the protocol is
    Wav2Lip's, and its clients expect Wav2Lip."""
    return "wav2lip"


def engines(audio_block: int = 4) -> dict[str, Engine]:
    """Every registered engine, made for one gateway, by name; ``audio_block``: frames per audio-model call
    (expression blocks, mel blocks)."""
    return {name: engine(audio_block) for name, engine in _REGISTERED.items()}


def quantizable_models() -> tuple[str, ...]:
    """The registered engines' models that have an int8 form (``LIPSYNC_INT8_MODELS`` may name these)."""
    return tuple(model for engine in _REGISTERED.values() for model in getattr(engine, "int8_models", ()))


def takes_video(engine: Engine | EngineClass) -> bool:
    """Whether ``engine`` animates video avatars (it declares ``takes_video = True``); others take photos only."""
    return bool(getattr(engine, "takes_video", False))


def options_model(name: str) -> type[EngineOptions]:
    """The options model of engine ``name``; ValueError in words when there is no such engine."""
    engine = _REGISTERED.get(name)
    if engine is None:
        raise ValueError(f"engine must be one of {', '.join(_REGISTERED)}; got {name!r}")
    return engine.options_model


def parse_engine_options(fields: Mapping[str, Any]) -> EngineOptions:
    """The options a client sent (flat, as the protocols carry them) in the model of the engine they name.

    An option of another engine is a mistake worth saying in its own words; any other unknown field is left
    to the model (which forbids it). Raises pydantic's ValidationError, or ValueError.
    """
    name = fields.get("engine", default_engine())
    if not isinstance(name, str):
        raise ValueError(f"engine must be a name, got {name!r}")
    model = options_model(name)
    for other, engine in _REGISTERED.items():
        misplaced = [
            key for key in fields if key in engine.options_model.model_fields and key not in model.model_fields
        ]
        if misplaced:
            verb = "applies" if len(misplaced) == 1 else "apply"
            raise ValueError(f"{', '.join(misplaced)} {verb} to the {other} engine, not {name}")
    return model.model_validate({**fields, "engine": name})


def session_options(
    engine: str | None = None, *, mode: Mode = "clip", first_chunk_frames: int | None = None, **options: Any
) -> SessionOptions:
    """Session options from keyword options (tests, benchmarks, tools): ``session_options("wav2lip", pads=…)``."""
    engine_options = parse_engine_options({"engine": engine or default_engine(), **options})
    return SessionOptions(engine_options, mode=mode, first_chunk_frames=first_chunk_frames)


# The engines, the default first. A new engine: its package, and one line here.
register(SadTalker)
register(Wav2Lip)
