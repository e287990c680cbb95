"""The test suite: a package of tiers (see docs/architecture.md and README)."""
