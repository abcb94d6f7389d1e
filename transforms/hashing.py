"""Content hashing: hex SHA-256 of NFC-normalised UTF-8 text, or HMAC-SHA256 with a secret key."""

from __future__ import annotations

import hashlib
import hmac
import unicodedata
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ContentHasher:
    """Hashes texts and bytes one way for the whole run.

    With ``key`` set the hash is HMAC-SHA256, so short prompts cannot be recovered by hashing
    guesses. The key is never part of ``repr``.

    >>> ContentHasher().text("e\\u0301")  == ContentHasher().text("\\u00e9")  # NFC: same text
    True
    >>> ContentHasher().text(None) is None
    True
    >>> ContentHasher().text("")[:12]
    'e3b0c44298fc'
    """

    key: bytes | None = field(default=None, repr=False)

    @property
    def mode(self) -> str:
        """``sha256`` or ``hmac-sha256``: stored beside every hash so readers know which."""
        return "sha256" if self.key is None else "hmac-sha256"

    def data(self, payload: bytes) -> str:
        """Hex digest of raw bytes (an image)."""
        if self.key is None:
            return hashlib.sha256(payload).hexdigest()
        return hmac.new(self.key, payload, hashlib.sha256).hexdigest()

    def text(self, text: str | None) -> str | None:
        """Hex digest of the NFC-normalised UTF-8 text; ``None`` for absent text."""
        return self.texts([text])[0]

    def texts(self, texts: list[str | None]) -> list[str | None]:
        """:meth:`text` of each, in one loop (the hot path hashes whole columns): the one
        definition of a text's hash.

        >>> hasher = ContentHasher(b"k")
        >>> hasher.texts(["e\\u0301", None]) == [hasher.text("\\u00e9"), None]
        True
        """
        normalize, sha256 = unicodedata.normalize, hashlib.sha256
        if self.key is None:
            return [None if t is None else sha256(normalize("NFC", t).encode()).hexdigest() for t in texts]
        key, digest = self.key, hmac.digest
        return [
            None if t is None else digest(key, normalize("NFC", t).encode(), "sha256").hex() for t in texts
        ]
