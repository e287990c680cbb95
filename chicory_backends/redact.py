"""Passwords out of text we show: URLs and error messages (the CLI and the dashboard)."""

from __future__ import annotations

import re
from typing import overload

# scheme://user:password@ ; the password runs to the last "@" before the path or a space,
# so that an unencoded "@" in it is masked whole.
_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):[^/\s]*@")
# password=..., PWD=... (ODBC connection strings, URL query options), token=...
_PASSWORD_WORDS = re.compile(r"(?i)\b(password|passwd|pwd|secret|token)=([^\s&;,]+)")


@overload
def redact(text: str) -> str: ...
@overload
def redact(text: None) -> None: ...
def redact(text: str | None) -> str | None:
    """``text`` with every URL's password and every ``password=`` value replaced by
    ``***``: a URL to print (``--url`` in the next-page command) or an error message
    that may name one (workers' broker and backend errors)."""
    if text is None:
        return None
    text = _CREDENTIALS.sub(r"\g<scheme>\g<user>:***@", text)
    return _PASSWORD_WORDS.sub(r"\1=***", text)
