"""The Redis backend: connection.py (modes, pools, errors), listener.py (the
subscription that wakes waiters), backend.py (the contract)."""

from chicory_backends.redis.backend import RedisBackend
from chicory_backends.redis.listener import LISTENER_CLIENT_NAME

__all__ = ["LISTENER_CLIENT_NAME", "RedisBackend"]
