"""Content hashing (DESIGN.md, stage 2): hex SHA-256 of the NFC-normalised UTF-8 text, or
HMAC-SHA256 with a secret key; absent text gives NULL, an empty string is hashed."""

import hashlib
import hmac
import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from transforms.hashing import ContentHasher

SECRET = b"pepper-\x00\xffsecret-key-4711"
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def nfc_utf8(text: str) -> bytes:
    return unicodedata.normalize("NFC", text).encode("utf-8")


@given(st.text())
def test_text_hash_is_sha256_of_nfc_utf8(text: str) -> None:
    assert ContentHasher().text(text) == hashlib.sha256(nfc_utf8(text)).hexdigest()


@given(st.text())
def test_nfc_and_nfd_forms_of_one_text_hash_equal(text: str) -> None:
    hasher = ContentHasher()
    nfc = unicodedata.normalize("NFC", text)
    nfd = unicodedata.normalize("NFD", text)
    assert hasher.text(nfc) == hasher.text(nfd) == hasher.text(text)


def test_composed_and_decomposed_accent_hash_equal() -> None:
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    assert composed != decomposed
    assert ContentHasher().text(composed) == ContentHasher().text(decomposed)
    assert ContentHasher().text(decomposed) == hashlib.sha256("café".encode()).hexdigest()


def test_absent_text_has_no_hash() -> None:
    assert ContentHasher().text(None) is None
    assert ContentHasher(SECRET).text(None) is None


def test_empty_text_is_hashed_like_any_other() -> None:
    assert ContentHasher().text("") == EMPTY_SHA256


@given(st.text())
def test_hash_is_64_lowercase_hex_chars(text: str) -> None:
    digest = ContentHasher().text(text)
    assert digest is not None
    assert len(digest) == 64
    assert set(digest) <= set("0123456789abcdef")


@given(st.binary())
def test_bytes_hash_is_plain_sha256_without_normalisation(payload: bytes) -> None:
    assert ContentHasher().data(payload) == hashlib.sha256(payload).hexdigest()


@given(st.text(), st.binary(min_size=1, max_size=64))
def test_keyed_text_hash_is_hmac_sha256_of_nfc_utf8(text: str, key: bytes) -> None:
    expected = hmac.new(key, nfc_utf8(text), hashlib.sha256).hexdigest()
    assert ContentHasher(key).text(text) == expected


@given(st.binary(), st.binary(min_size=1, max_size=64))
def test_keyed_bytes_hash_is_hmac_sha256(payload: bytes, key: bytes) -> None:
    assert ContentHasher(key).data(payload) == hmac.new(key, payload, hashlib.sha256).hexdigest()


@given(st.text())
def test_keyed_hash_differs_from_plain_hash(text: str) -> None:
    assert ContentHasher(SECRET).text(text) != ContentHasher().text(text)


def test_keyed_hash_of_empty_text_is_not_the_empty_sha256() -> None:
    assert ContentHasher(SECRET).text("") == hmac.new(SECRET, b"", hashlib.sha256).hexdigest()
    assert ContentHasher(SECRET).text("") != EMPTY_SHA256


def test_different_keys_give_different_hashes() -> None:
    assert ContentHasher(b"key-one").text("hello") != ContentHasher(b"key-two").text("hello")


def test_mode_names_the_algorithm() -> None:
    assert ContentHasher().mode == "sha256"
    assert ContentHasher(SECRET).mode == "hmac-sha256"


def test_key_never_appears_in_repr_or_str() -> None:
    hasher = ContentHasher(SECRET)
    for shown in (repr(hasher), str(hasher)):
        assert repr(SECRET) not in shown
        assert SECRET.hex() not in shown
        assert "secret-key" not in shown
