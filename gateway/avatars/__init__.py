"""Portraits made into avatars: decoding and face finding, output framings, the byte-bounded store, and the
signed records shared between gateways through Redis."""
