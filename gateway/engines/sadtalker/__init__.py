"""SadTalker (OpenTalker/SadTalker; Apache-2.0): audio → 3DMM motion coefficients → keypoints → face renderer.
Options (``options``), timeline (``timeline``), its crop of a portrait (``crop``), the engine (``engine``)."""

from gateway.engines.sadtalker.engine import SadTalker

__all__ = ["SadTalker"]
