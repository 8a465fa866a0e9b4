"""Launchers and operations: ``up`` (weights → repository → Triton → gateway), ``fleet`` and the pod probes."""
