"""The streaming gateway: FastAPI WebSocket service between browsers and Triton. Never imports torch."""
