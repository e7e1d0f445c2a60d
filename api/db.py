"""The API's tables: hashed API tokens and idempotency keys (SQLAlchemy 2).

SQLite by default (``database_url`` from the site config, else a file in the API's
instance directory), PostgreSQL by URL (``postgresql+psycopg://...``; what a site with
more than one ``imgsave serve`` uses: docs/install-portal.md). Like every table imgsave keeps, these
are an index, not the truth: a lost idempotency key only means a retried request makes
a second save, and tokens can be issued again.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    DateTime,
    Integer,
    MetaData,
    String,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from site_configs.schema import SiteConfig

INSTANCE_ENV = "IMGSAVE_INSTANCE_DIR"
DEFAULT_INSTANCE_DIR = Path("/var/lib/imgsave/api")
DEFAULT_DB_FILE = "imgsave-api.db"


def utcnow() -> datetime:
    """Now in UTC, naive (SQLite keeps no time zone; every stored time is UTC)."""
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    """Base of the API's tables (their names start with ``api_`` in a shared database)."""


class ApiToken(Base):
    """A bearer token; only the SHA-256 of the token is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user: Mapped[str] = mapped_column(String(64), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    label: Mapped[str] = mapped_column(String(200), default="")
    created: Mapped[datetime] = mapped_column(DateTime)
    expires: Mapped[datetime] = mapped_column(DateTime)
    revoked: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)

    def usable(self, now: datetime | None = None) -> bool:
        """Neither revoked nor expired."""
        return self.revoked is None and (now or utcnow()) < self.expires


class IdempotencyKey(Base):
    """``Idempotency-Key`` → the save it created, per user.

    A row with an empty ``job_id`` is a claim: a request with this key is being
    submitted right now, by ``claimant`` (host, pid and start time of the server
    process), as save ``request_id`` (chosen before submitting).
    """

    __tablename__ = "api_idempotency_keys"
    __table_args__ = (UniqueConstraint("user", "key", name="uq_api_idempotency_user_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(255))
    body_hash: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str] = mapped_column(String(64), default="")
    request_id: Mapped[str] = mapped_column(String(64), default="")
    target: Mapped[str] = mapped_column(String(512), default="")
    node: Mapped[str] = mapped_column(String(255), default="")
    created: Mapped[datetime] = mapped_column(DateTime)
    claimant: Mapped[str] = mapped_column(String(255), default="", server_default="")


def instance_dir() -> Path:
    """Where the API keeps its default database and cookie secret."""
    return Path(os.environ.get(INSTANCE_ENV) or DEFAULT_INSTANCE_DIR)


PRIVATE_CACHE_FILE = "usage-cache.db"


def database_url(config: SiteConfig, instance: Path | None = None, account: str = "") -> str:
    """The site's ``database_url`` (or a SQLite file in the instance directory) for the
    service account; for any other ``account`` (a user's own ``imgsave report``, root
    included) a private SQLite cache in that account's spool: the site's database is
    the service account's alone (mode 0600; tokens, every user's usage)."""
    if account and account != config.service_account:
        return f"sqlite:///{config.spool_for(account) / PRIVATE_CACHE_FILE}"
    if config.database_url:
        return config.database_url
    return f"sqlite:///{(instance or instance_dir()) / DEFAULT_DB_FILE}"


class Database:
    """An engine and a session factory; tables are created on first use."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = _engine(url)
        create_tables(Base.metadata, self.engine)
        add_missing_columns(Base.metadata, self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session committed on success and rolled back on any error."""
        with self._sessions() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def ping(self) -> None:
        """Raise if the database cannot answer a trivial query."""
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))


def create_tables(metadata: MetaData, engine: Engine) -> None:
    """Create what is missing of ``metadata``'s tables. Two servers starting at once on
    one PostgreSQL both find a table missing and both create it; the loser's CREATE
    fails, and a second look finds the table there."""
    try:
        metadata.create_all(engine)
    except (IntegrityError, ProgrammingError):
        metadata.create_all(engine)


def add_missing_columns(metadata: MetaData, engine: Engine) -> None:
    """Add columns a newer imgsave has to tables an older one made. Only columns with a
    server default are ever added, so old rows stay valid."""
    tables = inspect(engine)
    for table in metadata.sorted_tables:
        if not tables.has_table(table.name):
            continue
        present = {c["name"] for c in tables.get_columns(table.name)}
        for column in table.columns:
            if column.name in present or column.server_default is None:
                continue
            kind = column.type.compile(dialect=engine.dialect)
            default = column.server_default.arg  # type: ignore[attr-defined]
            try:
                with engine.begin() as connection:
                    connection.execute(text(
                        f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind} "
                        f"NOT NULL DEFAULT '{default}'"))
            except (OperationalError, ProgrammingError):
                # another server added it a moment ago; anything else fails the next use
                if column.name not in {c["name"] for c in inspect(engine).get_columns(table.name)}:
                    raise


def _engine(url: str) -> Engine:
    if url.startswith("postgresql"):
        # every stored time is naive UTC; the session's zone must not shift them
        return create_engine(url, pool_pre_ping=True,
                             connect_args={"options": "-c timezone=UTC"})
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    path = url.split(":///", 1)[1] if ":///" in url else ""
    if path and path != ":memory:" and not path.startswith("file:"):  # not a URI
        Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # created 0600 before SQLite opens it: tokens and usage are nobody else's
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600))
        os.chmod(path, 0o600)
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(connection: Any, _record: Any) -> None:
        # WAL lets readers run beside the one writer; waitress serves with threads.
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    return engine
