"""The HTTP and WebSocket interfaces, one router per interface (docs/protocol.md describes them)."""
