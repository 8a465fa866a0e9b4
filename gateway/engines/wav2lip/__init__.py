"""Wav2Lip (Rudrabha/Wav2Lip; weights non-commercial): each frame's 16 mel frames + the portrait's face →
a 96² face with the lips for the audio. Options (``options``), timeline (``timeline``), its face in a portrait
and paste-back weights (``face``), the engine (``engine``)."""

from gateway.engines.wav2lip.engine import Wav2Lip

__all__ = ["Wav2Lip"]
