"""Where a search keeps its history: optuna's RDB storage (SQLite by default, PostgreSQL to share one search).

The storage IS the search history: every trial, its parameters and its measured figures live there, so a search
resumes after an interruption and several workers (processes or machines) can add trials to one study.
"""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from condense.errors import CondenseError

DEFAULT_DB = "search.db"


def storage_url(storage: str | None, out_dir: str | Path | None) -> str | None:
    """The database URL: `storage` as given (postgres:// normalised), else SQLite in `out_dir`, else None (memory).

    Example:
        >>> storage_url(None, "/tmp/run")
        'sqlite:////tmp/run/search.db'
    """
    if storage:
        if storage.startswith("postgres://"):
            storage = "postgresql://" + storage[len("postgres://"):]
        if "://" not in storage:  # a bare path: a SQLite file
            return f"sqlite:///{Path(storage).resolve()}"
        if storage.startswith("postgresql://"):
            storage = "postgresql+" + _pg_driver() + storage[len("postgresql"):]
        return storage
    if out_dir is None:
        return None
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{out / DEFAULT_DB}"


def _pg_driver() -> str:
    """SQLAlchemy's default PostgreSQL driver differs between versions: name one that is installed."""
    import importlib.util

    for mod in ("psycopg2", "psycopg"):
        if importlib.util.find_spec(mod) is not None:
            return mod
    return "psycopg2"


def masked(url: str | None) -> str:
    """The URL with any password replaced by ***, for messages and reports."""
    return "in-memory" if url is None else re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("postgresql"):
        return {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 60}}  # several local workers: wait for the write lock, don't fail
    return {}


def check_reachable(url: str) -> None:
    """Connect once; an unreachable or misconfigured database is a CondenseError naming the fix."""
    try:
        import sqlalchemy
    except ImportError:
        raise CondenseError("search storage needs SQLAlchemy: pip install optuna sqlalchemy") from None
    try:
        engine = sqlalchemy.create_engine(url, **_engine_kwargs(url))
    except (ImportError, ModuleNotFoundError) as e:
        raise CondenseError(f"no database driver for {masked(url)} ({e}); install it (PostgreSQL: pip install "
                            "psycopg2-binary)") from None
    except Exception as e:  # noqa: BLE001  (sqlalchemy raises ArgumentError and others for malformed URLs)
        raise CondenseError(f"invalid storage URL {masked(url)!r} ({type(e).__name__}); use e.g. "
                            "postgresql://user:password@host:5432/dbname or omit --storage for SQLite") from None
    try:
        with engine.connect():
            pass
    except Exception as e:  # noqa: BLE001
        first = str(getattr(e, "orig", e)).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CondenseError(f"cannot reach the search database {masked(url)}: {first[:200]}; check the host, port, "
                            "credentials and that the server is running, or omit --storage to use SQLite in "
                            "--out") from None
    finally:
        engine.dispose()


def open_storage(url: str | None, heartbeat_s: int) -> Any:
    """An optuna storage for `url` (checked reachable first); None -> in-memory (no resume)."""
    import warnings

    import optuna

    if url is None:
        return optuna.storages.InMemoryStorage()
    check_reachable(url)
    for attempt in range(3):  # workers starting together on a fresh database race to create its tables
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats
                return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url),
                                                  heartbeat_interval=heartbeat_s, grace_period=3 * heartbeat_s)
        except Exception:  # noqa: BLE001  (sqlalchemy IntegrityError / ProgrammingError from the race)
            if attempt == 2:
                raise
            time.sleep(1 + attempt)
    raise AssertionError("unreachable")
