"""Harnesses the tiers share: servers, databases, apps the real workers run."""
