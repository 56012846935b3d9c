"""A disk cache of every request and its reply, keyed by content, so an interrupted run resumes without paying twice.

The key is the SHA-256 of the judge's identity (endpoint, model, decoding settings: never a secret) and the
request (messages, answer length, whether P(yes) was asked for). Entries live in one SQLite file, each
committed as its reply arrives; several processes may share it.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from sae.analysis.autointerp.judges.base import Reply, Request

__all__ = ["CACHE_FILE", "RequestCache", "request_key"]

CACHE_FILE = "autointerp_cache.sqlite"


def request_key(identity: dict[str, Any], request: Request) -> str:
    """The content key of `request` sent to the judge of `identity`."""
    text = json.dumps({"judge": identity, "request": request.content()}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


class RequestCache:
    """`RequestCache(path)`: get/put replies by key; a folder means `folder/autointerp_cache.sqlite`."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if path.is_dir():
            path = path / CACHE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(str(path), timeout=30, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # each reply survives a killed process
            self._db.execute("CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, judge TEXT, request TEXT, reply TEXT)")
            self._db.commit()
        except sqlite3.DatabaseError as e:
            raise ValueError(f"{path} is not an autointerp request cache ({e}): delete it or pass another cache") from None

    def get(self, key: str) -> Reply | None:
        with self._lock:
            row = self._db.execute("SELECT reply FROM replies WHERE key = ?", (key,)).fetchone()
        return Reply.from_json(json.loads(row[0])) if row else None

    def put(self, key: str, judge: str, request: Request, reply: Reply) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?)",
                (key, judge, json.dumps(request.content(), ensure_ascii=False), json.dumps(reply.to_json())),
            )
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM replies").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
