"""One session's life, whatever the engine and the transport: audio in on a fixed frame grid, the engine's
Triton calls, frames out in order; clip and conversation modes; the offline whole-clip render."""
