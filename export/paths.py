"""Where the project keeps things on disk, relative to the repository root."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# `shared/` sits beside the repository; it carries the checkpoint manifests and the golden fixtures.
SHARED_DIR = REPO_ROOT.parent / "shared"
MANIFEST_DIR = SHARED_DIR / "checkpoints"
GOLDEN_DIR = SHARED_DIR / "golden"
