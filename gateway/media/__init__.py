"""Pixels and samples: decoding pushed audio, pasting faces back into the output framing, fragmented MP4."""
