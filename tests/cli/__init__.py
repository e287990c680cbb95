"""The chicory-backends command."""
