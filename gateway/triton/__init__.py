"""Triton: the gRPC client the sessions call (endpoints, health, retries) and the embedded server launcher."""
