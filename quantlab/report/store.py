"""The results store: one row per run in SQLite (standard library ``sqlite3``) under ``reports/``.

A run is written in one transaction (``INSERT OR REPLACE``), so an interrupted run leaves no partial row.
A run's key is a hash of its kind, model, method and configuration: re-running a finished configuration
finds its row and reuses it unless asked to redo it.

A row that cannot be read back (a JSON column that does not parse or is not an object, a measured or
predicted metric that is not a number) is bad input, not a bug: reading it raises one
:class:`QuantlabError` naming the store and the row, so ``quantlab report`` prints one line and exits 2.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from quantlab.errors import QuantlabError

DEFAULT_STORE = Path(__file__).resolve().parent.parent.parent / "reports" / "quantlab.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    model TEXT NOT NULL,
    method TEXT NOT NULL,
    config TEXT NOT NULL,
    env TEXT NOT NULL,
    metrics TEXT NOT NULL,
    artifacts TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL
)
"""


def config_key(kind: str, model: str, method: str, config: dict) -> str:
    canon = json.dumps({"kind": kind, "model": model, "method": method, "config": config}, sort_keys=True,
                       default=str)
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RunRecord:
    key: str
    kind: str
    model: str
    method: str
    config: dict
    env: dict
    metrics: dict
    created_at: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    artifacts: dict = field(default_factory=dict)


_QUANTITY_PREFIXES = ("meas_", "pred_")
_QUANTITY_SUFFIXES = ("_bytes", "_s", "_ms", "_tok_per_s", "_per_s", "_db", "_flops", "_pct")


def _is_quantity(name: str) -> bool:
    """A measured or predicted number (by the naming convention: ``meas_``/``pred_`` or a unit suffix)."""
    return name.startswith(_QUANTITY_PREFIXES) or name.endswith(_QUANTITY_SUFFIXES)


class ResultStore:
    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else DEFAULT_STORE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._connect() as con:
                con.execute(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise QuantlabError(f"{self.path} is not a quantlab results store ({e})") from e

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def put(self, r: RunRecord) -> None:
        row = (r.key, r.kind, r.model, r.method, json.dumps(r.config, sort_keys=True, default=str),
               json.dumps(r.env, sort_keys=True, default=str), json.dumps(r.metrics, sort_keys=True, default=str),
               json.dumps(r.artifacts, sort_keys=True), r.created_at)
        con = self._connect()
        try:
            with con:  # one transaction: committed whole or rolled back
                con.execute("INSERT OR REPLACE INTO runs (key, kind, model, method, config, env, metrics, artifacts, "
                            "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
        finally:
            con.close()

    def _record(self, row) -> RunRecord:
        key, kind, model, method, config, env, metrics, artifacts, created = row

        def bad(why: str) -> QuantlabError:
            return QuantlabError(f"{self.path}: row {key!r} ({kind} {model} {method}) is corrupt: {why}; "
                                 "delete or re-run it")

        cols = {}
        for name, text in (("config", config), ("env", env), ("metrics", metrics), ("artifacts", artifacts)):
            try:
                v = json.loads(text)
            except (TypeError, ValueError) as e:
                raise bad(f"its {name} column is not valid JSON ({e})") from None
            if not isinstance(v, dict):
                raise bad(f"its {name} column is a JSON {type(v).__name__}, not an object")
            cols[name] = v
        for k, v in cols["metrics"].items():
            if _is_quantity(k) and not (v is None or isinstance(v, (int, float))):
                raise bad(f"metric {k} is {v!r}, not a number")
        if not all(isinstance(x, str) for x in (key, kind, model, method, created)):
            raise bad("a key, kind, model, method or created_at that is not text")
        return RunRecord(key, kind, model, method, cols["config"], cols["env"], cols["metrics"], created,
                         cols["artifacts"])

    def get(self, key: str) -> RunRecord | None:
        con = self._connect()
        try:
            row = con.execute("SELECT key, kind, model, method, config, env, metrics, artifacts, created_at FROM runs "
                              "WHERE key = ?", (key,)).fetchone()
        finally:
            con.close()
        return self._record(row) if row else None

    def records(self, kind: str | None = None, model: str | None = None) -> list[RunRecord]:
        q = "SELECT key, kind, model, method, config, env, metrics, artifacts, created_at FROM runs"
        cond, args = [], []
        if kind:
            cond.append("kind = ?")
            args.append(kind)
        if model:
            cond.append("model = ?")
            args.append(model)
        if cond:
            q += " WHERE " + " AND ".join(cond)
        q += " ORDER BY created_at, rowid"
        con = self._connect()
        try:
            return [self._record(r) for r in con.execute(q, args).fetchall()]
        finally:
            con.close()

    def frame(self, kind: str | None = None):
        """A tidy DataFrame: one flat row per run; config_*, env_*, then meas_*/pred_* columns as stored."""
        import pandas as pd

        rows = []
        for r in self.records(kind):
            row = {"key": r.key, "kind": r.kind, "model": r.model, "method": r.method, "created_at": r.created_at}
            row.update({f"config_{k}": (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in r.config.items()})
            row.update({f"env_{k}": v for k, v in r.env.items()})
            row.update(r.metrics)
            rows.append(row)
        return pd.DataFrame(rows)
