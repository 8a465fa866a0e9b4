"""Tests run in the agents' own environment (``make agents``: Pipecat, LiveKit Agents), against a gateway the main
suite started (tests/test_agent_frameworks.py): its URL, an avatar on it and a spoken sentence come in the
environment."""

from __future__ import annotations

import os
import wave
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def gateway() -> tuple[str, str]:
    """(the gateway's http URL, an avatar id on it)."""
    return os.environ["LIPSYNC_TEST_GATEWAY"], os.environ["LIPSYNC_TEST_AVATAR"]


@pytest.fixture(scope="session")
def sentence() -> np.ndarray:
    """A spoken sentence (espeak-ng) as int16 PCM at 16 kHz."""
    with wave.open(str(Path(os.environ["LIPSYNC_TEST_SPEECH"]))) as wav:
        assert wav.getframerate() == 16_000 and wav.getnchannels() == 1
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
