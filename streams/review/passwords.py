"""scrypt password hashes for the web view's users: `scrypt:N:r:p:<salt b64>:<hash b64>` (stdlib only)."""
from __future__ import annotations

import base64
import hashlib
import hmac
import os

N, R, P = 2 ** 14, 8, 1  # ~16 MiB and ~50 ms per check on this class of machine: fine for a login form
_DKLEN = 32


def hash_password(password: str, *, n: int = N, r: int = R, p: int = P, salt: bytes | None = None) -> str:
    """A new hash of `password` with a random 16-byte salt (or `salt`)."""
    if not password:
        raise ValueError("an empty password cannot be hashed")
    salt = os.urandom(16) if salt is None else salt
    dk = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=_DKLEN, maxmem=256 * 1024 * 1024)
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"scrypt:{n}:{r}:{p}:{b64(salt)}:{b64(dk)}"


def verify_password(password: str, stored: str) -> bool:
    """True when `password` matches `stored`; a malformed hash is False (never an exception), compared in constant time."""
    try:
        kind, n, r, p, salt, dk = stored.split(":")
        if kind != "scrypt":
            return False
        want = base64.b64decode(dk)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                             dklen=len(want), maxmem=256 * 1024 * 1024)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)
