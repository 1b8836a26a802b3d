"""API keys and per-client rate limits: pure logic, no HTTP (the middleware in `app.api.middleware` applies them).

Keys are never stored or compared in the clear: each configured key is kept as its sha256, a presented key is hashed
and compared with `hmac.compare_digest` against every stored hash (constant time, and no early exit that would tell
which key came close). Only the key's id (its name in the configuration) is ever logged.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

_HASH = re.compile(r"^[0-9a-f]{64}$")


class KeyConfigurationError(ValueError):
    """The API key settings cannot be used (malformed line, duplicate id); the message names the line."""


def hash_key(key: str) -> str:
    """sha256 hex of a key, as written in an API keys file (`brain-tumor hash-key` prints it)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


HEADER_SAFE_RULE = (
    "the key must be printable ASCII without spaces at its start or end (an HTTP header cannot carry them)"
)


MIN_KEY_CHARACTERS = 16
MIN_KEY_DISTINCT_CHARACTERS = 8
WEAK_KEY_RULE = (
    f"the key must have at least {MIN_KEY_CHARACTERS} characters, {MIN_KEY_DISTINCT_CHARACTERS} of them different: "
    "AUTH_FAILURES_PER_MINUTE counts wrong keys per "
    "client address, which a client with many addresses gets round, so only a long key stops guessing (make one with "
    "`python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
)


def strong_enough(key: str) -> bool:
    """Whether `key` is long and varied enough to leave guessing hopeless (throttling by address alone does not:
    200 wrong keys from 200 addresses are each answered 401, none 429, and an IPv6 client has a /64 of addresses).
    Length alone lets ``aaaaaaaaaaaaaaaa`` and ``passwordpassword`` through; 8 different characters refuse such typed
    keys and about 1 in 100 random 16-digit hex keys (a longer random key is what the rule asks for)."""
    return len(key) >= MIN_KEY_CHARACTERS and len(set(key)) >= MIN_KEY_DISTINCT_CHARACTERS


def header_safe(key: str) -> bool:
    """Whether an `X-API-Key` header can carry `key` as it is: a header value loses its outer spaces on the way (HTTP
    trims them) and cannot carry control or non-ASCII characters, so such a key could never match, and its owner
    would lock out their address with each try."""
    return key == key.strip() and all(" " <= character <= "~" for character in key)


@dataclass(frozen=True)
class ApiKeyStore:
    """Key id -> sha256 of the key. Empty means authentication is off."""

    hashes: dict[str, str]

    @property
    def enabled(self) -> bool:
        return bool(self.hashes)

    @classmethod
    def from_settings(cls, plain_keys: Iterable[str], keys_file: Path | None) -> ApiKeyStore:
        """Keys from `API_KEYS` (`id:key` items) and from a file of `id:sha256hex` lines (`#` starts a comment).

        Raises
        ------
        KeyConfigurationError
            For an item without an id, a key that no header can carry or that is too short to resist guessing, a
            hash that is not 64 hex digits, or an id given twice.
        """
        hashes: dict[str, str] = {}

        def add(key_id: str, digest: str, where: str) -> None:
            if not key_id:
                raise KeyConfigurationError(f"{where}: an API key needs an id before the ':' (id:key)")
            if key_id in hashes:
                raise KeyConfigurationError(f"{where}: API key id {key_id!r} is given twice")
            hashes[key_id] = digest

        for position, item in enumerate(plain_keys, start=1):
            key_id, separator, key = item.strip().partition(":")
            if not separator or not key:
                raise KeyConfigurationError(f"API_KEYS item {position}: expected id:key")
            if not header_safe(key):
                raise KeyConfigurationError(f"API_KEYS item {position}: {HEADER_SAFE_RULE}")
            if not strong_enough(key):
                raise KeyConfigurationError(f"API_KEYS item {position}: {WEAK_KEY_RULE}")
            add(key_id.strip(), hash_key(key), f"API_KEYS item {position}")
        if keys_file is not None:
            try:
                text = Path(keys_file).read_text()
            except OSError as error:  # named: a read that fails (EIO on a network mount) comes without the file's name
                raise OSError(error.errno, error.strerror, str(keys_file)) from error
            for number, line in enumerate(text.splitlines(), start=1):
                line = line.split("#", 1)[0].strip()
                if not line:
                    continue
                key_id, _, digest = line.partition(":")
                digest = digest.strip().lower()
                if not _HASH.match(digest):
                    raise KeyConfigurationError(f"{keys_file} line {number}: expected id:<64 hex digits of sha256>")
                add(key_id.strip(), digest, f"{keys_file} line {number}")
        return cls(hashes)

    def authenticate(self, presented: str | None) -> str | None:
        """The id of the key `presented`, or None if it matches none."""
        if not presented:
            return None
        digest = hash_key(presented).encode("ascii")
        found = None
        for key_id, stored in self.hashes.items():
            if hmac.compare_digest(digest, stored.encode("ascii")):
                found = key_id  # no break: every stored key costs the same comparison
        return found


def warn_if_open(host: str, api_keys: ApiKeyStore) -> None:
    """Warn, once at start, that a server without API keys on an address other machines reach serves anyone; on
    loopback (a laptop, a proxy in front) no key is needed. Security policy, so here, not in `app.main`."""
    if not api_keys.enabled and not is_loopback(host):
        logger.warning(
            "no API keys configured while bound to a non-loopback address: anyone who reaches it can use it",
            extra={"fields": {"host": host}},
        )


def is_loopback(host: str) -> bool:
    """Whether `host` (an address, or the name `localhost`) is reached from this machine only."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class RateLimiter:
    """Token bucket per client: `per_minute` requests a minute on average, bursts up to `burst`.

    Thread-safe and in-process: with several replicas each enforces its own share.
    """

    max_clients = 10_000

    def __init__(self, per_minute: int, burst: int | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        if per_minute < 1:
            raise ValueError(f"per_minute must be >= 1; got {per_minute}")
        self.rate = per_minute / 60.0
        self.capacity = float(burst if burst is not None else per_minute)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def acquire(self, client: str) -> float:
        """Take one token for `client`; return 0 if allowed, else the seconds until a token is free."""
        with self._lock:
            now = self._clock()
            tokens = self._tokens(client, now)
            self._buckets.pop(client, None)  # put back last: the table runs from the least to the most recently seen
            if tokens >= 1.0:
                self._buckets[client] = (tokens - 1.0, now)
                self._forget_full_buckets(now)
                return 0.0
            self._buckets[client] = (tokens, now)
            return (1.0 - tokens) / self.rate

    def wait_seconds(self, client: str) -> float:
        """0 if `client` has a token now, else the seconds until it will; takes nothing."""
        with self._lock:
            tokens = self._tokens(client, self._clock())
            return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def _tokens(self, client: str, now: float) -> float:
        tokens, updated = self._buckets.get(client, (self.capacity, now))
        return min(self.capacity, tokens + (now - updated) * self.rate)

    def _forget_full_buckets(self, now: float) -> None:
        """Drop the least recently seen buckets that have refilled while the table is over `max_clients`.

        Why: many distinct clients (rotating addresses) must not grow the table without bound, and a refilled bucket
        says nothing a fresh one would not. Oldest first, stopping at one not yet full, so each bucket is looked at
        about once: a scan of the whole table on every request costs 4 ms a request at 10,000 clients. A bucket is full
        `capacity / rate` seconds after it was last seen at the latest."""
        while len(self._buckets) > self.max_clients:
            oldest = next(iter(self._buckets))
            if self._tokens(oldest, now) < self.capacity:
                return
            del self._buckets[oldest]


def address_group(address: str) -> str:
    """What a per-address limit counts for a client address: an IPv4 address (an IPv4-mapped IPv6 one read as IPv4),
    or the /64 network of an IPv6 address; anything else as it is.

    Why: one IPv6 subscriber holds a /64, 2^64 addresses, and guessed keys from each of 200 addresses would never be
    throttled; ``::ffff:203.0.113.7`` and ``203.0.113.7`` would be two budgets."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def retry_after_header(seconds: float) -> str:
    """Whole seconds, at least 1, for the `Retry-After` header."""
    return str(max(1, math.ceil(seconds)))
