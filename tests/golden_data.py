"""Where the golden fixtures live: ``tests/golden/`` (what upstream computes; rule and layout in its README)."""

from pathlib import Path

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
