"""The Backend contract on every backend: SQLite, PostgreSQL, MariaDB, Redis (3 topologies)."""
