"""Sessions, logins and CSRF tokens of the web view (signed cookie; no server-side session store).

The cookie holds `{"u": user or None, "csrf": token}`, signed and timestamped with itsdangerous
(HMAC-SHA1 over the key; tampering or an expired stamp reads as "no session"). Every POST carries
the session's CSRF token in a form field, compared in constant time (the synchroniser-token pattern);
the cookie is HttpOnly and SameSite=Strict on top. Logging in draws a new token (no fixation).
"""
from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer

from streams.review.passwords import verify_password
from streams.settings import WebSettings

COOKIE = "defectstream_session"


@dataclass(frozen=True)
class Session:
    user: str | None
    csrf: str


class Sessions:
    """Reads and writes the signed session cookie; checks passwords against the configured users."""

    def __init__(self, settings: WebSettings):
        self.settings = settings
        key = settings.secret_key.get_secret_value() if settings.secret_key else secrets.token_urlsafe(32)
        self._ser = URLSafeTimedSerializer(key, salt="defectstream-web-session")

    def load(self, cookie: str | None) -> Session | None:
        if not cookie:
            return None
        try:
            data: Any = self._ser.loads(cookie, max_age=self.settings.session_max_age_s)
        except BadSignature:  # also SignatureExpired
            return None
        if not isinstance(data, dict) or not isinstance(data.get("csrf"), str):
            return None
        user = data.get("u")
        if user is not None and user not in self.settings.users:  # a user removed from settings is out
            return None
        return Session(user if isinstance(user, str) else None, data["csrf"])

    def dump(self, session: Session) -> str:
        return self._ser.dumps({"u": session.user, "csrf": session.csrf})

    @staticmethod
    def fresh(user: str | None = None) -> Session:
        return Session(user, secrets.token_urlsafe(24))

    def check_password(self, user: str, password: str) -> bool:
        stored = self.settings.users.get(user)
        if stored is None:
            verify_password(password, _DUMMY)  # the same work for an unknown user: no user enumeration by timing
            return False
        return verify_password(password, stored.get_secret_value())

    @staticmethod
    def csrf_ok(session: Session | None, token: str | None) -> bool:
        return bool(session and token) and hmac.compare_digest(session.csrf.encode(), str(token).encode())

    def cookie_kwargs(self) -> dict[str, Any]:
        return {"httponly": True, "samesite": "strict", "secure": self.settings.secure_cookie,
                "max_age": self.settings.session_max_age_s, "path": "/"}


# hash of a random password: verifying against it costs what a real check costs
_DUMMY = "scrypt:16384:8:1:AAAAAAAAAAAAAAAAAAAAAA==:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
