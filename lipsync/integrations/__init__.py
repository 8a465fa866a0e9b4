"""The avatar in voice-agent frameworks: Pipecat (``pipecat_service``) and LiveKit Agents (``livekit_avatar``).

Each is a thin adapter over :mod:`lipsync.agent` and needs its framework installed (the ``pipecat`` and
``livekit`` extras); neither needs the gateway's own dependencies.
"""
