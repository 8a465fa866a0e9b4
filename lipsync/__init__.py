"""The semantics that the offline pipeline (``export``) and the streaming gateway share, torch-free:
audio framing, coefficient layout, per-frame schedules and windows. Both sides import these, so the
streamed frames and the offline frames are computed from the same definitions."""
