"""Sample keys for WebDataset shards, derived safely from arbitrary video ids.

A video id comes from a manifest and may hold anything: slashes, `..`, dots, control
characters, unicode, thousands of characters. WebDataset splits a member name at its first dot
(key before it, extension after), and `tar x` writes member names as paths, so the id itself
can never be a member name. A key is instead

    <prefix>_<hash>

where `<prefix>` is the id reduced to ASCII letters, digits, `-` and `_` (every other run of
characters becomes one `_`, unicode is first folded to its closest ASCII form), at most
`PREFIX_CHARS` long and `id` when nothing is left; and `<hash>` is the first `HASH_CHARS` hex
digits of SHA-256 of the id's UTF-8 bytes. The prefix keeps keys readable; the hash keeps two
ids that sanitise alike (`a/b` and `a.b`) distinct. The original id is stored in each sample's
json, so nothing is lost.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

PREFIX_CHARS = 40
HASH_CHARS = 16
KEY_PATTERN = re.compile(rf"^[A-Za-z0-9_-]{{1,{PREFIX_CHARS}}}_[0-9a-f]{{{HASH_CHARS}}}$")
_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9_-]+")


def id_hash(video_id: str) -> str:
    """Hex digest that makes a key unique; SHA-256 so it is the same on every machine."""
    return hashlib.sha256(video_id.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_CHARS]


def key_prefix(video_id: str) -> str:
    """Readable part of a key: the id folded to `[A-Za-z0-9_-]`, bounded in length."""
    ascii_form = unicodedata.normalize("NFKD", video_id).encode("ascii", "ignore").decode("ascii")
    prefix = _UNSAFE_RUN.sub("_", ascii_form).strip("_-")[:PREFIX_CHARS].strip("_-")
    return prefix or "id"


def sample_key(video_id: str) -> str:
    """The shard key of a video id: `<prefix>_<hash>`; never contains `.`, `/` or controls."""
    if not isinstance(video_id, str):
        raise TypeError(f"video id must be a str, got {type(video_id).__name__}")
    return f"{key_prefix(video_id)}_{id_hash(video_id)}"


def is_valid_key(key: str) -> bool:
    """True when `key` has the shape `sample_key` produces (used by the reader to reject tars
    with member names this toolkit would never write)."""
    return KEY_PATTERN.match(key) is not None
