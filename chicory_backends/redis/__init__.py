"""The Redis backend: topology.py (single node, Sentinel, Cluster: every difference
between them), connection.py (connection options, errors as ours), scripts.py with
store.lua and index.lua (the Lua scripts, package data), listener.py (the subscription
that wakes waiters), backend.py (the contract)."""

from chicory_backends.redis.backend import RedisBackend
from chicory_backends.redis.listener import LISTENER_CLIENT_NAME

__all__ = ["LISTENER_CLIENT_NAME", "RedisBackend"]
