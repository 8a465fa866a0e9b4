"""The streaming gateway: FastAPI WebSocket service between browsers and Triton. Never imports torch."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lipsync-triton")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"
