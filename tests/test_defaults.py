"""The defaults that make a gateway safe to expose (issue 18), pinned: changing one must be a visible decision,
made here and in the help text, never a side effect of another change."""

from __future__ import annotations

import os
import re
from typing import Any

import pytest

from gateway.__main__ import settings_help
from gateway.app import create_app
from gateway.settings import Settings
from gateway.transport.http_server import TRANSPORT_MESSAGE_MARGIN, make_server

# What a gateway started with no settings at all does, per issue 18's concerns.
SAFE_DEFAULTS: dict[str, Any] = {
    # Nothing open by default: loopback only, no anonymous service of a reachable address.
    "host": "127.0.0.1",
    "auth_token": None,
    "allow_anonymous": False,
    "allowed_origins": [],
    "allowed_hosts": [],
    "forwarded_allow_ips": None,
    # No client holds a connection or a slot by doing nothing.
    "send_timeout_s": 10.0,
    "start_timeout_s": 10.0,
    "idle_timeout_s": 30.0,
    "header_timeout_s": 10.0,
    "body_timeout_s": 120.0,
    "keep_alive_timeout_s": 5.0,
    "drain_timeout_s": 300.0,
    # No client exhausts the server.
    "max_sessions": 8,
    "max_sessions_per_client": 2,
    "max_sockets_per_client": 4,
    "max_inflight_calls": 4,
    "max_inflight_renders": 3,
    "max_session_seconds": 600.0,
    "max_conversation_seconds": 4 * 3600.0,
    "max_message_bytes": 16 * 2**20,
    "max_portrait_bytes": 20 * 2**20,
    "max_portrait_pixels": 25_000_000,
    "max_portrait_preparations": 2,
    "max_portrait_queue": 8,
}


@pytest.fixture
def defaults(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings() with no LIPSYNC_* variable and no .env file (the tests' conftest sets some)."""
    for name in list(os.environ):
        if name.startswith("LIPSYNC_"):
            monkeypatch.delenv(name)
    return Settings(_env_file=None)


def test_the_security_relevant_defaults(defaults: Settings) -> None:
    actual = {name: getattr(defaults, name) for name in SAFE_DEFAULTS}
    assert actual == SAFE_DEFAULTS


def test_every_limit_is_listed_with_its_default_by_up_help() -> None:
    """The repository's promise (tests/test_cli.py): `python -m gateway up --help` lists every setting; each limit
    with its default (the one pinned above, where it is)."""
    help_text = settings_help()
    limits = [n for n in Settings.model_fields if re.match(r"max_|.*_timeout_s$|.*_per_client$", n)]
    for name in limits:
        line = next((line for line in help_text.splitlines() if f"LIPSYNC_{name.upper()} " in line), None)
        assert line is not None, name
        default = SAFE_DEFAULTS.get(name, Settings.model_fields[name].default)
        assert line.endswith(f"(default: {default})"), line


def test_the_http_server_bounds_what_a_client_sends(defaults: Settings) -> None:
    settings = defaults.model_copy(update={"triton_url": "127.0.0.1:1"})  # never contacted: the app is not started
    config = make_server(create_app(settings), settings).config
    # One WebSocket message a little over the app's limit (refused in words by the app), one held at a time, none
    # inflated from a few compressed bytes.
    assert TRANSPORT_MESSAGE_MARGIN == 64 * 1024
    assert config.ws_max_size == settings.max_message_bytes + TRANSPORT_MESSAGE_MARGIN
    assert config.ws_max_queue == 1
    assert config.ws_per_message_deflate is False
    assert config.timeout_keep_alive == 5
    # X-Forwarded-For is believed from no one unless the operator names the proxies.
    assert config.proxy_headers is False
    # The protocols with the header deadline and the cut-off of clients that stop reading.
    assert isinstance(config.http, type) and config.http.__name__ == "HeaderDeadline"
    assert isinstance(config.ws, type) and config.ws.__name__ == "StalledWebSocketsCutOff"
