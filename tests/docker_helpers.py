"""What the deployment tests read from docker/: the Dockerfile's stages."""

from __future__ import annotations

import re
from pathlib import Path

DOCKERFILE = Path(__file__).resolve().parent.parent / "docker" / "Dockerfile"


def dockerfile_stages(path: Path = DOCKERFILE) -> dict[str, str]:
    """Stage name → its instructions (the text up to the next FROM)."""
    stages: dict[str, str] = {}
    current = None
    for line in path.read_text().splitlines():
        match = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, flags=re.IGNORECASE)
        if match:
            current = match.group(1)
            stages[current] = ""
        elif current is not None:
            stages[current] += line + "\n"
    return stages
