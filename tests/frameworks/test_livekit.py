"""Placeholder until the LiveKit generator lands."""


def test_nothing_yet() -> None:
    pass
