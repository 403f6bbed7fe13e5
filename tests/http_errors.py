"""What every Shipyard HTTP error looks like, checked the same way in-process and over sockets."""

from __future__ import annotations

import httpx


def assert_error(response: httpx.Response, status: int, *fragments: str) -> str:
    """An error in Shipyard's shape: that status, exactly application/json, {"error": "..."} naming
    the problem (each fragment appears in the message); a 5xx never shows a traceback or path."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str), body
    message: str = body["error"]
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    if status >= 500:
        assert "Traceback" not in response.text
        assert "/" not in message, message
    if status == 503:
        assert "retry-after" in response.headers
    return message
