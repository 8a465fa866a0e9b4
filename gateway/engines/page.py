"""What the page shows of an engine: its label, and a control for each option of its own.

Derived from the engine's options model, so the page (web/) names no engine: a field's type and bounds give its
control (a choice from a ``Literal``, a checkbox from a ``bool``, a number from an ``int``, a slider from a
bounded ``float``), its ``title`` the label and its ``description`` a hint; ``Control`` in the field's
``Annotated`` metadata adds what a type cannot say (each choice's words, a slider's step, "More options").
A field no control fits (Wav2Lip's four ``pads``) is left off the page: the server's default applies.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from gateway.session.options import EngineOptions

Scalar = bool | int | float | str  # bool first: a JSON true stays a bool, not 1


@dataclass(frozen=True)
class Control:
    """How the page shows an option beyond its type: ``pose: Annotated[Literal[...], Control(choices=...)]``."""

    choices: Mapping[Any, str] = field(default_factory=dict)  # a label per value of a choice
    step: float | None = None  # a number's step (a slider's default: a hundredth of its range)
    more: bool = False  # under "More options" rather than beside the engine's choice


class Choice(BaseModel):
    value: Scalar  # as sent in ``options``
    label: str


class OptionControl(BaseModel):
    """One of an engine's own options, as the page shows it and sends it (``options[name]``)."""

    name: str
    label: str
    hint: str | None = None
    kind: Literal["choice", "checkbox", "number", "range"]
    default: Scalar | None = None
    choices: list[Choice] = []  # kind "choice"
    min: int | float | None = None  # kinds "number" and "range"
    max: int | float | None = None
    step: int | float | None = None
    integer: bool = False  # a whole number
    more: bool = False  # under "More options"


class EnginePage(BaseModel):
    label: str  # one line for the engine's choice
    options: list[OptionControl]
    takes_video: bool = False  # it animates video avatars too (others take photos only)


def describe(name: str, model: type[EngineOptions], *, takes_video: bool = False) -> EnginePage:
    """Engine ``name``'s label and its own options' controls (the options every engine takes are the page's)."""
    schema = model.model_json_schema()["properties"]
    controls = [
        control
        for key, info in model.model_fields.items()
        if key not in EngineOptions.model_fields and (control := _control(key, info, schema[key])) is not None
    ]
    return EnginePage(label=model.label or name, options=controls, takes_video=takes_video)


def _control(name: str, info: FieldInfo, schema: Mapping[str, Any]) -> OptionControl | None:
    hints = next((m for m in info.metadata if isinstance(m, Control)), Control())
    common: dict[str, Any] = {
        "name": name,
        "label": info.title or name.replace("_", " ").capitalize(),
        "hint": info.description,
        "default": schema.get("default"),
        "more": hints.more,
    }
    if "enum" in schema:
        choices = [Choice(value=value, label=hints.choices.get(value, str(value))) for value in schema["enum"]]
        return OptionControl(kind="choice", choices=choices, **common)
    kind = schema.get("type")
    if kind == "boolean":
        return OptionControl(kind="checkbox", **common)
    if kind not in ("integer", "number"):
        return None  # a list, an optional value, a nested model: no control on the page
    integer = kind == "integer"
    low: float | None = schema.get("minimum")
    high: float | None = schema.get("maximum")
    # An exclusive bound of a whole number is the next one in; a slider cannot exclude its end (the server can).
    if "exclusiveMinimum" in schema:
        low = math.floor(schema["exclusiveMinimum"]) + 1 if integer else schema["exclusiveMinimum"]
    if "exclusiveMaximum" in schema:
        high = math.ceil(schema["exclusiveMaximum"]) - 1 if integer else schema["exclusiveMaximum"]
    slider = not integer and low is not None and high is not None
    step = hints.step
    if step is None and integer:
        step = 1
    elif step is None and low is not None and high is not None:
        step = (high - low) / 100
    return OptionControl(kind="range" if slider else "number", min=low, max=high, step=step, integer=integer, **common)
