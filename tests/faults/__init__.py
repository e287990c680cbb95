"""Servers that stop, fail over, refuse or misbehave; secrets and TLS."""
