"""The coordinator's durable state: one SQLite file plus a directory of checkpoint files.

``FederationStore(path)`` opens (or creates) ``path`` -- e.g. ``state/federation.db`` -- and keeps
the global-adapter checkpoints in ``state/federation.checkpoints/`` (see
``fedmask.coordinator.checkpoint``). The database holds:

- ``federation_config``: the validated run config as canonical JSON, written once; a changed
  config is refused unless the caller allows it explicitly, and then it becomes a new version.
- ``rounds``: one row per round number, ``open`` -> ``committed`` | ``failed``, with the round id
  of its latest attempt, the attempt count, timestamps from the injected clock.
- ``roster``: the participants selected for each round.
- ``checkpoints``: the index of checkpoint files (name, SHA-256, size) per committed round;
  round 0 is the initial adapter.
- ``ledger``: one append-only JSON record per committed round: round id, survivors, dropped
  participants and why, encoding parameters, the record-level epsilon each participant
  reported, the participant-level epsilon, metrics, and the checkpoint's version hash.

One round, in the order that makes a crash at any point recoverable::

    begin_round(r, round_id, selected)       transaction: rounds[r] = open, roster
    ... secure aggregation, decode, optimizer.apply ...
    ref = save_checkpoint(r, vector, ...)    files fsynced under their final names
    commit_round(r, ref, ledger_entry)       ONE transaction: checkpoint index row, ledger row,
                                             rounds[r] = committed; WAL fsynced before it returns

A crash before ``commit_round``'s COMMIT leaves round r ``open`` and possibly unreferenced
checkpoint files: on restart ``interrupted_round()`` reports r, ``collect_garbage()`` removes the
files, and ``begin_round(r, new_round_id, selected)`` re-runs it (attempt + 1). A crash after
the COMMIT loses nothing: the files it references were durable before it began.

Invariants the schema enforces itself (triggers), whatever the caller does: the ledger and the
checkpoint index are append-only, a finished round never changes, a round is committed only
together with its ledger row and checkpoint, and a checkpoint row is added only for an open
round. Every write takes ``BEGIN IMMEDIATE``; ``PRAGMA synchronous = FULL`` in WAL mode makes a
commit durable before it returns. One process writes at a time (an exclusive ``flock`` on
``<path>.lock``, released by the kernel if the process dies); any number may read with
``read_only=True``, which creates no file (no lock, no ``-wal`` or ``-shm``).

The schema is versioned (``schema_migrations``); ``MIGRATIONS`` only ever grows, each step runs
in its own transaction, and a database written by a newer version is refused.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import hashlib
import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeGuard

import numpy as np

from fedmask.coordinator import checkpoint as checkpoints
from fedmask.coordinator.checkpoint import CheckpointError, CheckpointRef, FileRef
from fedmask.durable import fsync_directory, write_text_atomic
from fedmask.pki import NAME_PATTERN

__all__ = [
    "MIGRATIONS",
    "ConfigMismatch",
    "FederationStore",
    "InvalidRecord",
    "LedgerEntry",
    "RoundRecord",
    "RoundState",
    "RoundStateError",
    "SchemaError",
    "StoreError",
    "StoreLocked",
    "schema_version",
]

MAX_ROUND_ID_BYTES = 256  # as on the wire (proto.wire.MAX_ROUND_ID_BYTES)
MAX_REASON_CHARS = 2000
DEFAULT_BUSY_TIMEOUT_S = 10.0

# Forward-only: append a new tuple of statements for each schema change, never edit an old one.
MIGRATIONS: list[tuple[str, ...]] = [
    # 1: the initial schema.
    (
        """CREATE TABLE federation_config (
            version INTEGER PRIMARY KEY CHECK (version >= 1),
            config_json TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            created_at REAL NOT NULL
        )""",
        """CREATE TABLE rounds (
            round_number INTEGER PRIMARY KEY CHECK (round_number >= 1),
            state TEXT NOT NULL CHECK (state IN ('open', 'committed', 'failed')),
            attempt INTEGER NOT NULL CHECK (attempt >= 1),
            round_id BLOB NOT NULL UNIQUE
                CHECK (typeof(round_id) = 'blob' AND length(round_id) BETWEEN 1 AND 256),
            config_version INTEGER NOT NULL REFERENCES federation_config (version),
            started_at REAL NOT NULL,
            finished_at REAL,
            failure_reason TEXT,
            CHECK ((state = 'open') = (finished_at IS NULL)),
            CHECK ((state = 'failed') = (failure_reason IS NOT NULL))
        )""",
        """CREATE TABLE roster (
            round_number INTEGER NOT NULL REFERENCES rounds (round_number),
            participant TEXT NOT NULL,
            PRIMARY KEY (round_number, participant)
        ) WITHOUT ROWID""",
        """CREATE TABLE checkpoints (
            round_number INTEGER PRIMARY KEY CHECK (round_number >= 0),
            adapter_file TEXT NOT NULL UNIQUE,
            adapter_sha256 TEXT NOT NULL,
            adapter_bytes INTEGER NOT NULL,
            optimizer_file TEXT UNIQUE,
            optimizer_sha256 TEXT,
            optimizer_bytes INTEGER,
            recorded_at REAL NOT NULL,
            CHECK ((optimizer_file IS NULL) = (optimizer_sha256 IS NULL)
                   AND (optimizer_file IS NULL) = (optimizer_bytes IS NULL))
        )""",
        """CREATE TABLE ledger (
            round_number INTEGER PRIMARY KEY REFERENCES rounds (round_number),
            entry_json TEXT NOT NULL,
            recorded_at REAL NOT NULL
        )""",
        """CREATE TRIGGER ledger_append_only_update BEFORE UPDATE ON ledger
            BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END""",
        """CREATE TRIGGER ledger_append_only_delete BEFORE DELETE ON ledger
            BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END""",
        """CREATE TRIGGER checkpoints_append_only_update BEFORE UPDATE ON checkpoints
            BEGIN SELECT RAISE(ABORT, 'the checkpoint index is append-only'); END""",
        """CREATE TRIGGER checkpoints_append_only_delete BEFORE DELETE ON checkpoints
            BEGIN SELECT RAISE(ABORT, 'the checkpoint index is append-only'); END""",
        """CREATE TRIGGER checkpoints_only_for_open_rounds BEFORE INSERT ON checkpoints
            WHEN NEW.round_number > 0 AND NOT EXISTS (
                SELECT 1 FROM rounds WHERE round_number = NEW.round_number AND state = 'open')
            BEGIN SELECT RAISE(ABORT, 'a checkpoint is recorded only while committing an open round'); END""",
        """CREATE TRIGGER finished_rounds_are_final BEFORE UPDATE ON rounds
            WHEN OLD.state <> 'open'
            BEGIN SELECT RAISE(ABORT, 'a finished round is final'); END""",
        """CREATE TRIGGER finished_rounds_are_kept BEFORE DELETE ON rounds
            WHEN OLD.state <> 'open'
            BEGIN SELECT RAISE(ABORT, 'a finished round is final'); END""",
        """CREATE TRIGGER committed_rounds_are_complete BEFORE UPDATE OF state ON rounds
            WHEN NEW.state = 'committed' AND (
                NOT EXISTS (SELECT 1 FROM ledger WHERE round_number = NEW.round_number)
                OR NOT EXISTS (SELECT 1 FROM checkpoints WHERE round_number = NEW.round_number))
            BEGIN SELECT RAISE(ABORT, 'a round is committed only with its ledger entry and checkpoint'); END""",
        """CREATE TRIGGER ledger_only_for_open_rounds BEFORE INSERT ON ledger
            WHEN NOT EXISTS (SELECT 1 FROM rounds WHERE round_number = NEW.round_number AND state = 'open')
            BEGIN SELECT RAISE(ABORT, 'a ledger entry is recorded only while committing an open round'); END""",
    ),
    # 2: participants proven to have sent bad protocol messages, excluded for good.
    (
        """CREATE TABLE exclusions (
            participant TEXT PRIMARY KEY,
            round_number INTEGER NOT NULL CHECK (round_number >= 1),
            round_id BLOB NOT NULL,
            reason TEXT NOT NULL,
            recorded_at REAL NOT NULL
        ) WITHOUT ROWID""",
        """CREATE TRIGGER exclusions_append_only_update BEFORE UPDATE ON exclusions
            BEGIN SELECT RAISE(ABORT, 'exclusions are append-only'); END""",
        """CREATE TRIGGER exclusions_append_only_delete BEFORE DELETE ON exclusions
            BEGIN SELECT RAISE(ABORT, 'exclusions are append-only'); END""",
    ),
    # 3: the store's identity, and every checkpoint file it is about to write (garbage collection
    # deletes only files recorded here and no longer needed, never a file it does not know).
    (
        """CREATE TABLE store_identity (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            federation_id TEXT NOT NULL,
            created_at REAL NOT NULL
        )""",
        """CREATE TABLE checkpoint_files (
            name TEXT PRIMARY KEY,
            round_number INTEGER NOT NULL CHECK (round_number >= 0),
            recorded_at REAL NOT NULL
        ) WITHOUT ROWID""",
    ),
]

# Beside the checkpoints: which federation they belong to. A store whose database is missing or
# empty next to this file (or next to checkpoint files) refuses to start a new federation there.
IDENTITY_FILE_NAME = "IDENTITY.json"
IDENTITY_FORMAT = "fedmask-store-identity/1"


def schema_version() -> int:
    """The schema version this build writes (the number of migrations)."""
    return len(MIGRATIONS)


class StoreError(Exception):
    """The store cannot do what was asked; the message says why."""


class StoreLocked(StoreError):
    """Another process has the store open for writing."""


class SchemaError(StoreError):
    """The database is not a fedmask store this build can use."""


class ConfigMismatch(StoreError):
    """The store belongs to a federation run with a different config."""


class RoundStateError(StoreError):
    """A round operation does not fit the round's state (or the round sequence)."""


class InvalidRecord(StoreError, ValueError):
    """A value handed to the store is malformed."""


class RoundState(enum.StrEnum):
    OPEN = "open"
    COMMITTED = "committed"
    FAILED = "failed"


@dataclass(frozen=True)
class RoundRecord:
    round_number: int
    state: RoundState
    attempt: int  # 1, or more when the round was re-run after an interruption
    round_id: bytes  # the id of the latest attempt
    selected: tuple[str, ...]
    config_version: int
    started_at: float
    finished_at: float | None
    failure_reason: str | None
    checkpoint: CheckpointRef | None  # set iff committed


@dataclass(frozen=True)
class LedgerEntry:
    """What the federation loop knows about a round when it commits it.

    ``dropped`` maps each selected participant that missed the round to the reason;
    ``survivors`` are those whose updates are in the sum. Together they are exactly the round's
    selected participants. ``epsilon`` is the record-level epsilon each participant reported
    (cumulative, from its own accountant); ``participant_epsilon`` the coordinator's
    participant-level epsilon from the distributed noise (cumulative), ``delta`` the delta both
    are stated at. ``encoding`` is every clip, scale and modulus of the round; ``metrics`` free
    JSON (accuracy per party, upload bytes, wall time, ...).
    """

    survivors: tuple[str, ...]
    dropped: Mapping[str, str]
    encoding: Mapping[str, Any]
    epsilon: Mapping[str, float]
    participant_epsilon: float | None = None
    delta: float | None = None
    metrics: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        survivors = self.survivors
        if isinstance(survivors, str) or not isinstance(survivors, Iterable):
            raise InvalidRecord("survivors is a list of participant names")
        survivors = tuple(survivors)
        _check_names(survivors, "survivors")
        if not survivors:
            raise InvalidRecord("a committed round has at least one survivor")
        object.__setattr__(self, "survivors", tuple(sorted(survivors)))
        if not isinstance(self.dropped, Mapping):
            raise InvalidRecord("dropped maps participant names to the reason they dropped")
        _check_names(tuple(self.dropped), "dropped")
        for name, reason in self.dropped.items():
            _check_reason(reason, f"the drop reason of {name}")
        both = set(survivors) & set(self.dropped)
        if both:
            raise InvalidRecord(f"{', '.join(sorted(both))} both survived and dropped")
        object.__setattr__(self, "dropped", MappingProxyType(dict(sorted(self.dropped.items()))))
        if not isinstance(self.encoding, Mapping) or not self.encoding:
            raise InvalidRecord("encoding must state the round's encoding parameters")
        if not isinstance(self.epsilon, Mapping):
            raise InvalidRecord("epsilon maps participant names to their record-level epsilon")
        _check_names(tuple(self.epsilon), "epsilon")
        for name, value in self.epsilon.items():
            _check_non_negative(value, f"the epsilon of {name}")
        if self.participant_epsilon is not None:
            _check_non_negative(self.participant_epsilon, "participant_epsilon")
        if self.delta is not None and not (_is_number(self.delta) and 0 < self.delta < 1):
            raise InvalidRecord(f"delta must be in (0, 1), got {self.delta!r}")
        if not isinstance(self.metrics, Mapping):
            raise InvalidRecord("metrics is a JSON object")
        for name in ("encoding", "metrics"):
            _canonical_json(getattr(self, name), name)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> LedgerEntry:
        if not isinstance(data, Mapping):
            raise InvalidRecord("a ledger entry is a mapping")
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise InvalidRecord(f"unknown ledger entry fields: {', '.join(sorted(unknown))}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise InvalidRecord(f"incomplete ledger entry: {exc}") from None


class FederationStore:
    """See the module docstring. Methods are safe to call from several threads of one process."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        read_only: bool = False,
        busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
    ) -> None:
        self._path = Path(path)
        self._clock = clock
        self._read_only = read_only
        self._lock = threading.RLock()
        self._lock_file: int | None = None
        if read_only:
            if not self._path.is_file():
                raise StoreError(f"no federation store at {self._path}")
            _check_sqlite_header(self._path)
            self._db = self._connect(_read_only_uri(self._path), busy_timeout_s, uri=True)
            self._check_schema_current()
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._take_writer_lock()
        created = not self._path.exists()
        try:
            if created or self._path.stat().st_size == 0:
                # Refused before SQLite writes a new schema there: a refused start changes nothing.
                self._check_no_federation_to_orphan()
            if created:
                self._create_database(busy_timeout_s)
            self._db = self._connect(str(self._path), busy_timeout_s)
            self._migrate()
            self.checkpoint_dir.mkdir(exist_ok=True)
        except BaseException:
            self._release_writer_lock()
            raise
        if created:
            # Make the new database file's and checkpoint directory's names durable too.
            fsync_directory(self._path.parent)

    # ----------------------------------------------------------------------------------------
    # Opening and closing

    @property
    def path(self) -> Path:
        return self._path

    @property
    def checkpoint_dir(self) -> Path:
        return self._path.parent / f"{self._path.stem}.checkpoints"

    def close(self) -> None:
        with self._lock:
            self._db.close()
            self._release_writer_lock()

    def __enter__(self) -> FederationStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def schema_version(self) -> int:
        with self._lock:
            return _stored_schema_version(self._db)

    def _connect(self, target: str, busy_timeout_s: float, *, uri: bool = False) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(target, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False, uri=uri)
            db.execute("PRAGMA foreign_keys = ON")
            if self._read_only:
                # A reader needs no particular journal mode (an immutable open reports 'delete'
                # whatever the file says); this read is what finds a file that is no database.
                _stored_schema_version(db)
                return db
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            db.execute("PRAGMA synchronous = FULL")
        except sqlite3.DatabaseError as exc:
            raise SchemaError(f"{self._path} is not a usable SQLite database: {exc}") from None
        if mode != "wal":
            db.close()
            raise StoreError(f"{self._path}: could not switch to WAL journaling (got {mode!r})")
        return db

    def _create_database(self, busy_timeout_s: float) -> None:
        """Make the schema under a temporary name and rename it into place: a reader (``coordinator
        status``) never finds the database half made, only absent or with its tables."""
        temporary = self._path.with_name(f".{self._path.name}.creating")
        for leftover in (temporary, *_sqlite_side_files(temporary)):
            leftover.unlink(missing_ok=True)  # from a creation that crashed; the writer lock is ours
        self._db = self._connect(str(temporary), busy_timeout_s)
        try:
            self._migrate()
        finally:
            self._db.close()  # the last connection's close folds the write-ahead log into the file
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, self._path)

    def _take_writer_lock(self) -> None:
        self._lock_file = _writer_lock(self._path)

    def _release_writer_lock(self) -> None:
        if self._lock_file is not None:
            os.close(self._lock_file)  # closing the descriptor drops the flock
            self._lock_file = None

    def _migrate(self) -> None:
        target = schema_version()
        with self._transaction():
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
            )
            current = _stored_schema_version(self._db)
        if current > target:
            raise SchemaError(
                f"{self._path} has schema version {current}, newer than this build's {target}: "
                "upgrade fedmask to open it"
            )
        # The writer lock is ours, so nobody migrates concurrently; each step is all or nothing.
        for version in range(current + 1, target + 1):
            with self._transaction():
                for statement in MIGRATIONS[version - 1]:
                    self._db.execute(statement)
                self._db.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)", (version, self._now())
                )

    def _check_schema_current(self) -> None:
        version = _stored_schema_version(self._db)
        if version == 0:
            raise SchemaError(
                f"{self._path} is not a fedmask coordinator store (an SQLite database without its tables)"
            )
        if version != schema_version():
            raise SchemaError(
                f"{self._path} has schema version {version}, this build reads {schema_version()}"
                + (": open it for writing once to migrate it" if version < schema_version() else "")
            )

    # ----------------------------------------------------------------------------------------
    # Federation config

    def initialise(self, config: Mapping[str, Any], *, allow_config_change: bool = False) -> int:
        """Record the run config, or check it against the recorded one; returns its version.

        The same config (as canonical JSON) reopens the federation as it is, e.g. after a crash.
        A different one raises ``ConfigMismatch`` naming the changed keys, unless
        ``allow_config_change``: then it becomes the next config version, used by the rounds
        begun from now on.
        """
        if not isinstance(config, Mapping):
            raise InvalidRecord("the federation config is a JSON object")
        text = _canonical_json(config, "the federation config")
        digest = hashlib.sha256(text.encode()).hexdigest()
        with self._transaction():
            row = self._db.execute(
                "SELECT version, config_json, sha256 FROM federation_config ORDER BY version DESC LIMIT 1"
            ).fetchone()
            self._check_identity(fresh=row is None)
            if row is not None and row[2] == digest:
                return int(row[0])
            if row is not None and not allow_config_change:
                changes = _describe_changes(json.loads(row[1]), json.loads(text))
                raise ConfigMismatch(
                    f"{self._path} belongs to a federation with a different config ({changes}); "
                    "start with the same config to resume it, or allow the change explicitly "
                    "(coordinator run --allow-config-change)"
                )
            version = 1 if row is None else int(row[0]) + 1
            self._db.execute(
                "INSERT INTO federation_config (version, config_json, sha256, created_at) VALUES (?, ?, ?, ?)",
                (version, text, digest, self._now()),
            )
            if row is None:
                self._write_identity(digest)
            return version

    @property
    def identity_path(self) -> Path:
        return self.checkpoint_dir / IDENTITY_FILE_NAME

    def federation_id(self) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT federation_id FROM store_identity").fetchone()
        return None if row is None else str(row[0])

    def _check_identity(self, *, fresh: bool) -> None:
        """A database with no federation in it must not start one over another federation's
        checkpoints; one with a federation must match the identity beside its checkpoints."""
        if fresh:
            self._check_no_federation_to_orphan()
            return
        recorded = self._read_identity()
        mine = self.federation_id()
        if recorded is not None and mine is not None and recorded["federation_id"] != mine:
            raise StoreError(
                f"{self._path} belongs to federation {mine}, but {self.checkpoint_dir} to "
                f"{recorded['federation_id']}: the state directory mixes two federations"
            )

    def _check_no_federation_to_orphan(self) -> None:
        """Refuse a missing or empty database beside another federation's checkpoints."""
        if not self.checkpoint_dir.is_dir():
            return
        recorded = self._read_identity()
        leftovers = [
            e.name
            for e in os.scandir(self.checkpoint_dir)
            if checkpoints.is_checkpoint_file_name(e.name) and not checkpoints.is_temporary_file_name(e.name)
        ]
        if recorded is not None or leftovers:
            what = f"federation {recorded['federation_id']}" if recorded else f"{len(leftovers)} checkpoint files"
            raise StoreError(
                f"{self._path} is missing or empty, but {self.checkpoint_dir} holds {what}: refusing to start "
                "a new federation over them. Restore the database from a backup (fedmask coordinator backup "
                "writes one; docs/durability.md), or move the state directory away to start afresh"
            )

    def _read_identity(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.identity_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError) as exc:
            raise StoreError(f"cannot read {self.identity_path}: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != IDENTITY_FORMAT or "federation_id" not in data:
            raise StoreError(f"{self.identity_path} is not a {IDENTITY_FORMAT} file")
        return data

    def _write_identity(self, config_sha256: str) -> None:
        federation_id = os.urandom(16).hex()
        now = self._now()
        self._db.execute(
            "INSERT INTO store_identity (id, federation_id, created_at) VALUES (1, ?, ?)", (federation_id, now)
        )
        document = {"format": IDENTITY_FORMAT, "federation_id": federation_id, "config_sha256": config_sha256}
        write_text_atomic(self.identity_path, json.dumps(document, sort_keys=True) + "\n")

    def config(self) -> dict[str, Any]:
        """The current federation config."""
        with self._lock:
            config = json.loads(self._current_config()[1])
        if not isinstance(config, dict):
            raise StoreError(f"{self._path}: the recorded federation config is not a JSON object")
        return config

    def _current_config(self) -> tuple[int, str]:
        row = self._db.execute(
            "SELECT version, config_json FROM federation_config ORDER BY version DESC LIMIT 1"
        ).fetchone()
        if row is None:
            raise StoreError(
                f"{self._path} has no federation config yet (a new store: a coordinator records its config "
                "when it starts; initialise(config) in the API)"
            )
        return int(row[0]), row[1]

    # ----------------------------------------------------------------------------------------
    # Checkpoint files

    def save_checkpoint(
        self,
        round_number: int,
        vector: np.ndarray,
        layout: Any,
        optimizer_state: Mapping[str, Any] | None = None,
    ) -> CheckpointRef:
        """Write the global adapter after ``round_number`` durably (not yet committed): the open
        round's, or round 0's (the initial adapter) before anything is committed."""
        self._check_writable()
        with self._lock:
            if round_number == 0:
                if self._checkpoint_rows(limit=1):
                    raise RoundStateError("the initial adapter (round 0) is already committed")
            else:
                open_round = self._open_round_number()
                if open_round != round_number:
                    raise RoundStateError(
                        f"round {round_number} is not open (open round: {open_round}): call begin_round first"
                    )
        try:
            return checkpoints.save_checkpoint(
                self.checkpoint_dir, round_number, vector, layout, optimizer_state, before_writing=self._record_files
            )
        except CheckpointError as exc:
            raise InvalidRecord(str(exc)) from None

    def _record_files(self, names: list[str]) -> None:
        round_number = int(names[0].split("-")[1])
        with self._transaction():
            self._db.executemany(
                "INSERT OR IGNORE INTO checkpoint_files (name, round_number, recorded_at) VALUES (?, ?, ?)",
                [(name, round_number, self._now()) for name in names],
            )

    def load_checkpoint(self, ref: CheckpointRef) -> tuple[np.ndarray, Any]:
        """The verified ``(vector, layout)`` of a checkpoint (``CheckpointCorrupt`` if damaged)."""
        return checkpoints.load_checkpoint(self.checkpoint_dir, ref)

    def load_optimizer_state(self, ref: CheckpointRef) -> dict[str, Any] | None:
        return checkpoints.load_optimizer_state(self.checkpoint_dir, ref)

    def iter_adapter_chunks(self, ref: CheckpointRef, chunk_bytes: int) -> Iterator[bytes]:
        """The adapter file of ``ref`` in chunks, verified first; send with ``ref.version``."""
        return checkpoints.iter_chunks(self.checkpoint_dir, ref, chunk_bytes)

    def collect_garbage(self) -> list[str]:
        """Remove checkpoint files this store recorded writing that no committed round refers to
        (left by an interrupted or re-run round), and temporary files; returns their names. A
        file the store has no record of is never deleted, whatever its name (after a lost
        database, say). Call it at start-up, not between ``save_checkpoint`` and ``commit_round``."""
        self._check_writable()
        with self._lock:
            referenced = set()
            for row in self._checkpoint_rows():
                referenced.add(row[1])
                if row[4] is not None:
                    referenced.add(row[4])
            written = {name for (name,) in self._db.execute("SELECT name FROM checkpoint_files")}
            removed = []
            for entry in sorted(os.scandir(self.checkpoint_dir), key=lambda e: e.name):
                if not (entry.is_file() and checkpoints.is_checkpoint_file_name(entry.name)):
                    continue
                superseded = entry.name in written and entry.name not in referenced
                if superseded or checkpoints.is_temporary_file_name(entry.name):
                    os.unlink(entry.path)
                    removed.append(entry.name)
            if removed:
                fsync_directory(self.checkpoint_dir)
            return removed

    # ----------------------------------------------------------------------------------------
    # Rounds

    def commit_initial(self, ref: CheckpointRef) -> None:
        """Record the initial global adapter (round 0), before any round has begun."""
        self._check_writable()
        if not isinstance(ref, CheckpointRef) or ref.round_number != 0:
            raise InvalidRecord("the initial checkpoint is a CheckpointRef of round 0")
        checkpoints.verify_files(self.checkpoint_dir, ref)
        with self._transaction():
            self._current_config()
            if self._checkpoint_rows(limit=1) or self._db.execute("SELECT 1 FROM rounds LIMIT 1").fetchone():
                raise RoundStateError("the initial adapter can only be recorded before the first round")
            self._insert_checkpoint(ref, self._now())

    def next_round_number(self) -> int:
        """The round to begin next: the interrupted one if a round is open, else the one after
        the last finished round (1 for a new federation)."""
        with self._lock:
            open_round = self._open_round_number()
            if open_round is not None:
                return open_round
            last = self._db.execute("SELECT MAX(round_number) FROM rounds").fetchone()[0]
            return 1 if last is None else int(last) + 1

    def begin_round(self, round_number: int, round_id: bytes, selected: Iterable[str]) -> RoundRecord:
        """Open round ``round_number`` with a fresh ``round_id`` and the selected participants.

        It must be ``next_round_number()``. If that round is open -- interrupted by a crash --
        this re-runs it: new round id (it must differ), new roster, attempt + 1.
        """
        self._check_writable()
        _check_round_number(round_number)
        if not isinstance(round_id, bytes) or not 1 <= len(round_id) <= MAX_ROUND_ID_BYTES:
            raise InvalidRecord(f"a round id is 1 to {MAX_ROUND_ID_BYTES} bytes")
        if isinstance(selected, str) or not isinstance(selected, Iterable):
            raise InvalidRecord("selected is a list of participant names")
        names = tuple(selected)
        _check_names(names, "selected")
        if not names:
            raise InvalidRecord("a round needs at least one selected participant")
        with self._transaction():
            config_version, _ = self._current_config()
            expected = self.next_round_number()
            if round_number != expected:
                raise RoundStateError(self._why_not_next(round_number, expected))
            now = self._now()
            previous = self._db.execute(
                "SELECT attempt, round_id FROM rounds WHERE round_number = ?", (round_number,)
            ).fetchone()
            if previous is None:
                with _round_id_must_be_new():
                    self._db.execute(
                        "INSERT INTO rounds (round_number, state, attempt, round_id, config_version, started_at) "
                        "VALUES (?, 'open', 1, ?, ?, ?)",
                        (round_number, round_id, config_version, now),
                    )
            else:
                if bytes(previous[1]) == round_id:
                    raise InvalidRecord("a re-run round needs a new round id")
                self._db.execute("DELETE FROM roster WHERE round_number = ?", (round_number,))
                with _round_id_must_be_new():
                    self._db.execute(
                        "UPDATE rounds SET attempt = ?, round_id = ?, config_version = ?, started_at = ? "
                        "WHERE round_number = ?",
                        (previous[0] + 1, round_id, config_version, now, round_number),
                    )
            self._db.executemany(
                "INSERT INTO roster (round_number, participant) VALUES (?, ?)",
                [(round_number, name) for name in sorted(names)],
            )
            return self._round(round_number)

    def commit_round(
        self, round_number: int, checkpoint: CheckpointRef, entry: LedgerEntry | Mapping[str, Any]
    ) -> dict[str, Any]:
        """Commit the open round: checkpoint index row, ledger row and ``committed`` state in one
        transaction, durable when this returns. ``checkpoint`` comes from ``save_checkpoint``
        of this round; its files are verified before the transaction. Returns the ledger record.
        """
        self._check_writable()
        if not isinstance(entry, LedgerEntry):
            entry = LedgerEntry.from_mapping(entry)
        if not isinstance(checkpoint, CheckpointRef) or checkpoint.round_number != round_number:
            raise InvalidRecord(f"the checkpoint must be a CheckpointRef of round {round_number}")
        checkpoints.verify_files(self.checkpoint_dir, checkpoint)
        with self._transaction():
            record = self._round_or_none(round_number)
            if record is None or record.state is not RoundState.OPEN:
                state = "not begun" if record is None else record.state.value
                raise RoundStateError(f"round {round_number} is {state}, only an open round can be committed")
            selected = set(record.selected)
            accounted = set(entry.survivors) | set(entry.dropped)
            if accounted != selected:
                missing, extra = sorted(selected - accounted), sorted(accounted - selected)
                raise InvalidRecord(
                    f"survivors and dropped must be exactly the round's selected participants"
                    f" (unaccounted: {missing or 'none'}; not selected: {extra or 'none'})"
                )
            strangers = sorted(set(entry.epsilon) - selected)
            if strangers:
                raise InvalidRecord(f"epsilon reported for participants not in the round: {strangers}")
            now = self._now()
            ledger_record = {
                "round": round_number,
                "round_id": record.round_id.hex(),
                "attempt": record.attempt,
                "config_version": record.config_version,
                "started_at": record.started_at,
                "finished_at": now,
                "selected": list(record.selected),
                "survivors": list(entry.survivors),
                "dropped": dict(entry.dropped),
                "encoding": dict(entry.encoding),
                "epsilon": {name: float(value) for name, value in sorted(entry.epsilon.items())},
                "participant_epsilon": _float_or_none(entry.participant_epsilon),
                "delta": _float_or_none(entry.delta),
                "metrics": dict(entry.metrics),
                "checkpoint": {
                    "file": checkpoint.adapter.name,
                    "version": checkpoint.version,
                    "bytes": checkpoint.adapter.size_bytes,
                },
            }
            self._insert_checkpoint(checkpoint, now)
            self._db.execute(
                "INSERT INTO ledger (round_number, entry_json, recorded_at) VALUES (?, ?, ?)",
                (round_number, _canonical_json(ledger_record, "the ledger entry"), now),
            )
            self._db.execute(
                "UPDATE rounds SET state = 'committed', finished_at = ? WHERE round_number = ?",
                (now, round_number),
            )
            return ledger_record

    def fail_round(self, round_number: int, reason: str) -> RoundRecord:
        """Close the open round as failed (e.g. fewer than t survivors); the global adapter stays
        as it was and the next round is ``round_number + 1``."""
        self._check_writable()
        _check_reason(reason, "the failure reason")
        with self._transaction():
            record = self._round_or_none(round_number)
            if record is None or record.state is not RoundState.OPEN:
                state = "not begun" if record is None else record.state.value
                raise RoundStateError(f"round {round_number} is {state}, only an open round can fail")
            self._db.execute(
                "UPDATE rounds SET state = 'failed', finished_at = ?, failure_reason = ? WHERE round_number = ?",
                (self._now(), reason, round_number),
            )
            return self._round(round_number)

    def exclude(self, participant: str, round_number: int, round_id: bytes, reason: str) -> None:
        """Record that ``participant`` was proven to misbehave in this round: it takes part in no
        later round of this federation. The first proof recorded stays; later ones add nothing."""
        self._check_writable()
        _check_names((participant,), "the excluded participant")
        _check_round_number(round_number)
        _check_reason(reason, "the exclusion reason")
        with self._transaction():
            self._db.execute(
                "INSERT OR IGNORE INTO exclusions (participant, round_number, round_id, reason, recorded_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (participant, round_number, bytes(round_id), reason, self._now()),
            )

    def exclusions(self) -> dict[str, str]:
        """Excluded participant -> why (the round and what it did)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT participant, round_number, reason FROM exclusions ORDER BY recorded_at, participant"
            ).fetchall()
        return {name: f"round {round_number}: {reason}" for name, round_number, reason in rows}

    def interrupted_round(self) -> RoundRecord | None:
        """The round left open by a crash (to be re-run), if any."""
        with self._lock:
            number = self._open_round_number()
            return None if number is None else self._round(number)

    def last_committed(self) -> CheckpointRef | None:
        """The checkpoint of the last committed round (round 0 for the initial adapter), or
        None when nothing is committed. Its ``round_number`` says which round."""
        with self._lock:
            rows = self._checkpoint_rows(limit=1)
            return _checkpoint_from_row(rows[0]) if rows else None

    def rounds(self) -> list[RoundRecord]:
        with self._lock:
            numbers = [row[0] for row in self._db.execute("SELECT round_number FROM rounds ORDER BY round_number")]
            return [self._round(number) for number in numbers]

    def ledger(self) -> list[dict[str, Any]]:
        """Every ledger record, oldest first, as JSON-ready dicts (see ``commit_round``)."""
        with self._lock:
            return [
                json.loads(row[0]) for row in self._db.execute("SELECT entry_json FROM ledger ORDER BY round_number")
            ]

    def check_files(self) -> list[str]:
        """Every indexed checkpoint file is there with its recorded size: a cheap check for start-up
        (``verify`` re-hashes them all)."""
        with self._lock:
            refs = [_checkpoint_from_row(row) for row in self._checkpoint_rows()]
        problems = []
        for ref in refs:
            for file in (ref.adapter, ref.optimizer):
                if file is None:
                    continue
                try:
                    size = (self.checkpoint_dir / file.name).stat().st_size
                except OSError as exc:
                    problems.append(f"round {ref.round_number}: {file.name}: {exc.strerror or exc}")
                    continue
                if size != file.size_bytes:
                    problems.append(
                        f"round {ref.round_number}: {file.name} has {size} bytes, {file.size_bytes} recorded"
                    )
        return problems

    def backup(self, destination: str | os.PathLike[str]) -> Path:
        """A consistent copy of the database (SQLite's online backup), written durably; the
        checkpoint files it indexes are immutable and stay where they are."""
        destination = Path(destination)
        if destination.exists():
            raise StoreError(f"{destination} exists: choose a new file for the backup")
        temporary = destination.with_name(f".{destination.name}.tmp")
        placed = False
        try:
            # Created here rather than by sqlite3.connect, whose "unable to open database file"
            # does not say why (read-only file system, no such directory, permission denied).
            os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
            with self._lock:
                target = sqlite3.connect(str(temporary))
                try:
                    target.execute("PRAGMA journal_mode = OFF")  # a failed copy is deleted: no journal needed
                    self._db.backup(target)
                finally:
                    target.close()
            with open(temporary, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(temporary, destination)
            placed = True
            fsync_directory(destination.parent)
        except (OSError, sqlite3.Error) as exc:
            # No partial (or not durably placed) copy may be left to be mistaken for a backup.
            with contextlib.suppress(OSError):
                (destination if placed else temporary).unlink(missing_ok=True)
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise StoreError(f"cannot write the backup {destination}: {reason}") from None
        return destination

    def verify(self) -> list[str]:
        """Problems found by SQLite's integrity and foreign-key checks and by re-hashing every
        indexed checkpoint file; empty when all is well."""
        problems = []
        with self._lock:
            for (message,) in self._db.execute("PRAGMA integrity_check"):
                if message != "ok":
                    problems.append(f"integrity: {message}")
            for row in self._db.execute("PRAGMA foreign_key_check"):
                problems.append(f"foreign key: {row}")
            refs = [_checkpoint_from_row(row) for row in self._checkpoint_rows()]
        for ref in refs:
            try:
                checkpoints.verify_files(self.checkpoint_dir, ref)
            except CheckpointError as exc:
                problems.append(f"round {ref.round_number}: {exc}")
        return problems

    # ----------------------------------------------------------------------------------------
    # Internals

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._check_writable()
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise StoreError(f"{self._path}: cannot start a write transaction: {exc}") from None
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _check_writable(self) -> None:
        if self._read_only:
            raise StoreError(f"{self._path} is open read-only")

    def _now(self) -> float:
        now = self._clock()
        if not _is_number(now) or not math.isfinite(now):
            raise StoreError(f"the clock returned {now!r}")
        return float(now)

    def _open_round_number(self) -> int | None:
        row = self._db.execute("SELECT round_number FROM rounds WHERE state = 'open'").fetchone()
        return None if row is None else int(row[0])

    def _why_not_next(self, round_number: int, expected: int) -> str:
        row = self._db.execute("SELECT state FROM rounds WHERE round_number = ?", (round_number,)).fetchone()
        if row is not None:
            return f"round {round_number} is already {row[0]}; the next round is {expected}"
        open_round = self._open_round_number()
        if open_round is not None:
            return (
                f"round {open_round} is still open (interrupted): re-run it with begin_round({open_round}, ...) "
                "or close it with fail_round"
            )
        return f"the next round is {expected}, not {round_number}"

    def _round_or_none(self, round_number: int) -> RoundRecord | None:
        row = self._db.execute(
            "SELECT round_number, state, attempt, round_id, config_version, started_at, finished_at, "
            "failure_reason FROM rounds WHERE round_number = ?",
            (round_number,),
        ).fetchone()
        if row is None:
            return None
        selected = tuple(
            name
            for (name,) in self._db.execute(
                "SELECT participant FROM roster WHERE round_number = ? ORDER BY participant", (round_number,)
            )
        )
        checkpoint_row = self._db.execute(
            f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints WHERE round_number = ?", (round_number,)
        ).fetchone()
        return RoundRecord(
            round_number=int(row[0]),
            state=RoundState(row[1]),
            attempt=int(row[2]),
            round_id=bytes(row[3]),
            selected=selected,
            config_version=int(row[4]),
            started_at=float(row[5]),
            finished_at=None if row[6] is None else float(row[6]),
            failure_reason=row[7],
            checkpoint=None if checkpoint_row is None else _checkpoint_from_row(checkpoint_row),
        )

    def _round(self, round_number: int) -> RoundRecord:
        record = self._round_or_none(round_number)
        assert record is not None
        return record

    def _checkpoint_rows(self, limit: int | None = None) -> list[tuple[Any, ...]]:
        query = f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints ORDER BY round_number DESC"
        if limit is not None:
            query += f" LIMIT {int(limit)}"
        return self._db.execute(query).fetchall()

    def _insert_checkpoint(self, ref: CheckpointRef, now: float) -> None:
        optimizer = ref.optimizer
        try:
            self._db.execute(
                f"INSERT INTO checkpoints ({_CHECKPOINT_COLUMNS}, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    ref.round_number,
                    ref.adapter.name,
                    ref.adapter.sha256,
                    ref.adapter.size_bytes,
                    None if optimizer is None else optimizer.name,
                    None if optimizer is None else optimizer.sha256,
                    None if optimizer is None else optimizer.size_bytes,
                    now,
                ),
            )
        except sqlite3.IntegrityError as exc:
            raise InvalidRecord(f"cannot index the checkpoint of round {ref.round_number}: {exc}") from None


_CHECKPOINT_COLUMNS = (
    "round_number, adapter_file, adapter_sha256, adapter_bytes, optimizer_file, optimizer_sha256, optimizer_bytes"
)


@contextlib.contextmanager
def _round_id_must_be_new() -> Iterator[None]:
    try:
        yield
    except sqlite3.IntegrityError:
        raise InvalidRecord("this round id was already used by another round") from None


def _checkpoint_from_row(row: tuple[Any, ...]) -> CheckpointRef:
    optimizer = None if row[4] is None else FileRef(row[4], row[5], int(row[6]))
    return CheckpointRef(int(row[0]), FileRef(row[1], row[2], int(row[3])), optimizer)


def _writer_lock(path: Path) -> int:
    """The exclusive flock beside the database at ``path`` (held while the descriptor is open)."""
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreLocked(f"{path} is already open for writing (a running coordinator?)") from None
    return fd


def restore_backup(backup: str | os.PathLike[str], path: str | os.PathLike[str]) -> list[str]:
    """Put the database ``backup`` (from :meth:`FederationStore.backup`) in place of the one at
    ``path``, with the coordinator stopped; returns :meth:`FederationStore.verify`'s problems
    with the restored store. Refused, with nothing changed, if the coordinator runs, the backup is
    damaged or of a newer schema, or it belongs to another federation than the checkpoints
    beside ``path``. Rounds committed after the backup are run again after the restore."""
    backup, path = Path(backup), Path(path)
    if not backup.is_file():
        raise StoreError(f"no backup at {backup}")
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = _writer_lock(path)
    try:
        try:
            _check_sqlite_header(backup)
            source = sqlite3.connect(_read_only_uri(backup), uri=True)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the backup {backup}: {exc}") from None
        try:
            try:
                check = [message for (message,) in source.execute("PRAGMA integrity_check")]
                version = _stored_schema_version(source)
                row = source.execute("SELECT federation_id FROM store_identity").fetchone() if version >= 3 else None
                indexed = source.execute("SELECT count(*) FROM checkpoints").fetchone()[0]
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"{backup} is not a usable federation store backup: {exc}") from None
            if check != ["ok"]:
                raise StoreError(f"{backup} is damaged: {'; '.join(check[:3])}")
            if version > schema_version():
                raise SchemaError(f"{backup} has schema version {version}; this fedmask knows {schema_version()}")
            checkpoints_dir = path.parent / f"{path.stem}.checkpoints"
            if indexed and not checkpoints_dir.is_dir():
                # Restoring the index without the files would leave a store that cannot resume.
                raise StoreError(
                    f"{backup} indexes {indexed} checkpoint(s) and {checkpoints_dir} does not exist: a restore "
                    "puts back the database only; copy the checkpoints directory there first"
                )
            identity_path = checkpoints_dir / IDENTITY_FILE_NAME
            if identity_path.is_file():
                try:
                    recorded = json.loads(identity_path.read_text(encoding="utf-8")).get("federation_id")
                except (OSError, json.JSONDecodeError, AttributeError) as exc:
                    raise StoreError(f"cannot read {identity_path}: {exc}") from None
                if row is None or row[0] != recorded:
                    theirs = "no federation" if row is None else f"federation {row[0]}"
                    raise StoreError(
                        f"{backup} holds {theirs}, but the checkpoints beside {path} belong to federation {recorded}"
                    )
            temporary = path.with_name(f".{path.name}.restore.tmp")
            temporary.unlink(missing_ok=True)
            target = sqlite3.connect(str(temporary))
            try:
                source.backup(target)
            finally:
                target.close()
        finally:
            source.close()
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        # The old database's write-ahead log must not be replayed into the restored one.
        for stale in _sqlite_side_files(path):
            stale.unlink(missing_ok=True)
        os.replace(temporary, path)
        fsync_directory(path.parent)
    finally:
        os.close(lock)
    with FederationStore(path) as store:  # migrates an older backup, then checks every file
        return store.verify()


SQLITE_HEADER = b"SQLite format 3\x00"


def _sqlite_side_files(path: Path) -> tuple[Path, Path]:
    """The write-ahead log and shared-memory index SQLite keeps beside the database at ``path``."""
    return path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")


def _check_sqlite_header(path: Path) -> None:
    """One clear line for a file that cannot be a store, before SQLite gets to say it vaguely."""
    try:
        with open(path, "rb") as handle:
            header = handle.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not header:
        raise SchemaError(f"{path} is empty: not a fedmask coordinator store")
    if header != SQLITE_HEADER:
        raise SchemaError(f"{path} is not a fedmask coordinator store (not an SQLite database)")


def _read_only_uri(path: Path) -> str:
    """The URI that opens ``path`` for reading without creating any file beside it.

    With a write-ahead log there (a coordinator has the store open, or died with commits not yet
    copied back) SQLite reads through it and its ``-shm`` index, both already present. Without
    one, ``mode=ro`` alone would create both; but then everything committed is in the file
    itself, so it is opened ``immutable`` (which ignores any log, hence only then). A writer
    starting meanwhile writes to a new log, not to the file, until it checkpoints (after about
    1000 pages or when it closes): a short read sees the file as it was."""
    uri = path.resolve().as_uri() + "?mode=ro"
    if not path.with_name(path.name + "-wal").exists():
        uri += "&immutable=1"
    return uri


def _stored_schema_version(db: sqlite3.Connection) -> int:
    has_table = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'").fetchone()
    if not has_table:
        return 0
    return int(db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()[0])


# --------------------------------------------------------------------------------------------
# Validation


def _float_or_none(value: float | None) -> float | None:
    return None if value is None else float(value)


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_round_number(round_number: object) -> None:
    if isinstance(round_number, bool) or not isinstance(round_number, int) or round_number < 1:
        raise InvalidRecord(f"round numbers are integers >= 1, got {round_number!r}")


def _check_names(names: tuple[object, ...], what: str) -> None:
    for name in names:
        if not isinstance(name, str) or NAME_PATTERN.fullmatch(name) is None:
            raise InvalidRecord(f"{what}: malformed participant name {name!r}")
    if len(set(names)) != len(names):
        raise InvalidRecord(f"{what}: participant names repeat")


def _check_reason(reason: object, what: str) -> None:
    if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON_CHARS:
        raise InvalidRecord(f"{what} must be a non-empty string of at most {MAX_REASON_CHARS} characters")


def _check_non_negative(value: object, what: str) -> None:
    if not _is_number(value) or not math.isfinite(value) or value < 0:
        raise InvalidRecord(f"{what} must be a finite number >= 0, got {value!r}")


def _canonical_json(value: Any, what: str) -> str:
    try:
        return checkpoints.canonical_json(value)
    except CheckpointError as exc:
        raise InvalidRecord(f"{what}: {exc}") from None


def _describe_changes(old: Any, new: Any) -> str:
    """'changed: a.b; added: c; removed: d' between two JSON objects."""
    changed: list[str] = []
    added: list[str] = []
    removed: list[str] = []

    def walk(a: Any, b: Any, path: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                child = f"{path}.{key}" if path else str(key)
                if key not in b:
                    removed.append(child)
                elif key not in a:
                    added.append(child)
                else:
                    walk(a[key], b[key], child)
        elif a != b:
            changed.append(path or "(the whole config)")

    walk(old, new, "")
    groups = (("changed", changed), ("added", added), ("removed", removed))
    parts = [f"{label}: {', '.join(keys)}" for label, keys in groups if keys]
    return "; ".join(parts) or "no visible change"
