"""Who is asking: the identities that own jobs, conversations and streams, and the API keys that prove them.

Every job records the ``id`` of one :class:`Identity`; every read on someone's behalf passes it (see
:mod:`tasks.store`), so another identity gets "not found". How an identity is recognised is the app's business
(``ui/identity.py``: a browser's signed session, an API key, a header from a trusted proxy); what identities may
do is decided here, once:

* ``max_priority``: the highest priority it may ask for (asking for more is refused, not downgraded);
* ``max_waiting``: how many of its jobs may wait at once (QUEUE_MAX_WAITING_PER_USER unless its key says);
* ``rate_per_min`` and ``quota_per_day``: requests per minute and jobs per day (0 = no limit of its own);
* ``admin``: may see and manage everyone's jobs on ``/admin``.

API keys are stored hashed (``key:{sha256}``, plus the index ``keys``): the plaintext is shown once, when it is
made (``uv run main.py keys create NAME``), and can't be read back.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import asdict, dataclass

from tasks import keys
from tasks.connection import get_async_redis, get_redis
from tasks.queue import PRIORITY_LEVELS
from tasks.settings import settings

KEY_PREFIX = "qc_"  # what an API key looks like: qc_<43 url-safe characters>


@dataclass(frozen=True)
class Identity:
    kind: str                 # browser | key | anonymous | proxy
    id: str                   # what jobs record as their owner, e.g. "k:3f2a…", "b:<browser id>"
    name: str                 # for people: the key's name, "browser", the client address
    max_priority: str = "high"
    max_waiting: int = 0      # 0: QUEUE_MAX_WAITING_PER_USER
    rate_per_min: int = 0     # 0: API_RATE_PER_MIN
    quota_per_day: int = 0    # 0: none
    admin: bool = False

    def may_use(self, priority: str) -> bool:
        return PRIORITY_LEVELS.get(priority, 99) >= PRIORITY_LEVELS[self.max_priority]

    @property
    def waiting_limit(self) -> int:
        return self.max_waiting or settings.queue_max_waiting_per_user


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    name: str
    max_priority: str
    max_waiting: int
    rate_per_min: int
    quota_per_day: int
    admin: bool
    created_at: int
    revoked: bool = False

    def identity(self) -> Identity:
        return Identity("key", "k:" + self.key_id, self.name, self.max_priority, self.max_waiting, self.rate_per_min,
                        self.quota_per_day, self.admin or self.name in settings.admins)


def digest(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def create_key(name: str, *, max_priority: str = "normal", max_waiting: int = 0, rate_per_min: int = 0,
               quota_per_day: int = 0, admin: bool = False) -> tuple[str, ApiKey]:
    """Make a key; returns (the plaintext, shown this once, the key's record)."""
    if max_priority not in PRIORITY_LEVELS:
        raise ValueError(f"max priority must be one of {', '.join(PRIORITY_LEVELS)}")
    if not name.strip():
        raise ValueError("a key needs a name")
    plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
    hashed = digest(plaintext)
    record = ApiKey(hashed[:16], name.strip(), max_priority, max_waiting, rate_per_min, quota_per_day, admin,
                    int(time.time()))
    client = get_redis()
    pipe = client.pipeline()
    pipe.hset(keys.api_key(hashed), mapping={k: str(int(v)) if isinstance(v, bool) else str(v)
                                             for k, v in asdict(record).items()})
    pipe.hset(keys.API_KEYS, record.key_id, hashed)
    pipe.execute()
    return plaintext, record


async def find_key(plaintext: str) -> ApiKey | None:
    """The live key this plaintext is, or None (unknown or revoked). Constant-time by construction: a lookup
    by the hash of what was presented. Asynchronous: the app looks a key up on every API request."""
    if not plaintext.startswith(KEY_PREFIX):
        return None
    return _record(await get_async_redis().hgetall(keys.api_key(digest(plaintext))), live_only=True)


def list_keys() -> list[ApiKey]:
    client = get_redis()
    hashes = client.hvals(keys.API_KEYS)
    pipe = client.pipeline(transaction=False)
    for hashed in hashes:
        pipe.hgetall(keys.api_key(hashed))
    return sorted(filter(None, (_record(raw) for raw in pipe.execute())), key=lambda k: k.created_at)


def revoke_key(key_id_or_name: str) -> list[ApiKey]:
    """Revoke the keys with this id (or name); returns those revoked."""
    client = get_redis()
    revoked = []
    for key in list_keys():
        if not key.revoked and key_id_or_name in (key.key_id, key.name):
            client.hset(keys.api_key(client.hget(keys.API_KEYS, key.key_id)), "revoked", "1")
            revoked.append(key)
    return revoked


def _record(raw: dict, live_only: bool = False) -> ApiKey | None:
    if not raw or (live_only and raw.get("revoked") == "1"):
        return None
    return ApiKey(raw["key_id"], raw["name"], raw.get("max_priority", "normal"), int(raw.get("max_waiting") or 0),
                  int(raw.get("rate_per_min") or 0), int(raw.get("quota_per_day") or 0), raw.get("admin") == "1",
                  int(raw.get("created_at") or 0), raw.get("revoked") == "1")
