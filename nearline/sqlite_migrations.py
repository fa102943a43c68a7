"""The SQLite file's schema (:mod:`nearline.sqlite_db`): its migrations, applied in order.

``PRAGMA user_version`` records how many have run; :meth:`nearline.sqlite_db.Database` applies
the rest when it opens the file. Append a new list to change the schema; never edit an applied
one. Every ``JobRecord`` field is a column of ``jobs`` (:mod:`nearline.store.sqlite`).
"""

from __future__ import annotations

#: Schema migrations, applied in order; ``PRAGMA user_version`` records how many have run.
#: Append a new list to change the schema; never edit an applied one.
MIGRATIONS: list[list[str]] = [
    [
        # Queues. ``seq`` (the rowid) orders messages FIFO; ``lane`` is the rank in LANES.
        # ``visible_at`` is 0 for a message never leased, the lease's end while leased.
        """CREATE TABLE IF NOT EXISTS messages (
            seq INTEGER PRIMARY KEY,
            queue TEXT NOT NULL,
            message_id TEXT NOT NULL,
            lane INTEGER NOT NULL,
            body BLOB NOT NULL,
            enqueued_at REAL NOT NULL,
            expires_at REAL,
            visible_at REAL NOT NULL DEFAULT 0,
            delivery_count INTEGER NOT NULL DEFAULT 0,
            lease_token TEXT,
            UNIQUE (queue, message_id)
        )""",
        # The rowid is the index's last column: receive walks lanes in order, then FIFO. It
        # leaves visible_at out so that leasing and settling never rewrite the index.
        "CREATE INDEX IF NOT EXISTS messages_order ON messages (queue, lane)",
        # Partial: only messages sent with a TTL pay for it; finds the expired ones to drop.
        """CREATE INDEX IF NOT EXISTS messages_expiry ON messages (queue, expires_at)
            WHERE expires_at IS NOT NULL""",
        """CREATE TABLE IF NOT EXISTS dead_letters (
            id INTEGER PRIMARY KEY,
            queue TEXT NOT NULL,
            message_id TEXT NOT NULL,
            body BLOB NOT NULL,
            reason TEXT NOT NULL,
            delivery_count INTEGER NOT NULL,
            dead_at REAL NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS dead_letters_queue ON dead_letters (queue, id)",
        # Job records; JSON columns hold text, NULL for None.
        """CREATE TABLE IF NOT EXISTS jobs (
            id TEXT PRIMARY KEY,
            pipeline TEXT NOT NULL,
            input TEXT,
            status TEXT NOT NULL,
            output TEXT,
            custom_status TEXT,
            created REAL NOT NULL,
            updated REAL NOT NULL,
            deadline REAL,
            priority TEXT NOT NULL,
            idempotency_key TEXT,
            callback_url TEXT
        )""",
        "CREATE INDEX IF NOT EXISTS jobs_overdue ON jobs (status, deadline)",
        "CREATE INDEX IF NOT EXISTS jobs_purge ON jobs (status, updated)",
    ],
    [
        # Idempotency (nearline/idempotency.py): a keyed job holds its key's slot, one job per
        # slot; deleting the row frees it. ``enqueued`` is 0 while a keyed job's message is not
        # yet sent. Records from before keep NULL slots (their keys start new jobs).
        "ALTER TABLE jobs ADD COLUMN idempotency_slot TEXT",
        "ALTER TABLE jobs ADD COLUMN fingerprint TEXT",
        "ALTER TABLE jobs ADD COLUMN enqueued INTEGER NOT NULL DEFAULT 1",
        """CREATE UNIQUE INDEX IF NOT EXISTS jobs_slot ON jobs (idempotency_slot)
            WHERE idempotency_slot IS NOT NULL""",
    ],
    [
        # The callback outbox (nearline/deliveries.py): one row per ended job with a
        # callback_url, written by the trigger in the transaction that ends the job, gone with
        # the job's row. ``due`` is the next attempt's time, or the lease's end while a
        # dispatcher holds the row (``token``).
        """CREATE TABLE IF NOT EXISTS deliveries (
            job_id TEXT PRIMARY KEY,
            url TEXT NOT NULL,
            created REAL NOT NULL,
            due REAL NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            token TEXT
        )""",
        "CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (due)",
        "ALTER TABLE jobs ADD COLUMN status_url TEXT",
        """CREATE TRIGGER IF NOT EXISTS jobs_outbox AFTER UPDATE OF status ON jobs
            WHEN NEW.callback_url IS NOT NULL
                AND NEW.status IN ('Completed', 'Failed', 'Terminated')
                AND OLD.status NOT IN ('Completed', 'Failed', 'Terminated')
            BEGIN
                INSERT OR IGNORE INTO deliveries (job_id, url, created, due)
                    VALUES (NEW.id, NEW.callback_url, NEW.updated, NEW.updated);
            END""",
        """CREATE TRIGGER IF NOT EXISTS jobs_outbox_gone AFTER DELETE ON jobs
            BEGIN
                DELETE FROM deliveries WHERE job_id = OLD.id;
            END""",
    ],
    [
        # Endpoints with several deployments (docs/deployments.md): the one chosen at submit.
        # Records from before keep NULL (their pipeline's deployment with the most traffic).
        "ALTER TABLE jobs ADD COLUMN deployment TEXT",
    ],
    [
        # Mirroring (docs/deployments.md): a shadow job's live job, found by it for comparison.
        "ALTER TABLE jobs ADD COLUMN shadow_of TEXT",
        "CREATE INDEX IF NOT EXISTS jobs_shadow_of ON jobs (shadow_of) WHERE shadow_of IS NOT NULL",
        # The live traffic splits (nearline/splits/sqlite.py): one row per endpoint changed at
        # run time, and its history of changes (the last 50 kept per endpoint).
        """CREATE TABLE IF NOT EXISTS splits (
            endpoint TEXT PRIMARY KEY,
            split TEXT NOT NULL,
            at REAL NOT NULL
        )""",
        """CREATE TABLE IF NOT EXISTS split_history (
            id INTEGER PRIMARY KEY,
            endpoint TEXT NOT NULL,
            split TEXT NOT NULL,
            reason TEXT NOT NULL,
            at REAL NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS split_history_endpoint ON split_history (endpoint, id)",
    ],
    [
        # The outcomes log (nearline/outcomes.py): a row per job ended Completed or Failed, by the
        # trigger, in the transaction that ends it; the lifecycle trims it to an hour.
        """CREATE TABLE IF NOT EXISTS outcomes (id INTEGER PRIMARY KEY, endpoint TEXT NOT NULL,
            deployment TEXT, job_id TEXT NOT NULL, shadow_of TEXT, succeeded INTEGER NOT NULL,
            created REAL NOT NULL, ended REAL NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS outcomes_endpoint ON outcomes (endpoint, ended)",
        """CREATE TRIGGER IF NOT EXISTS jobs_outcome AFTER UPDATE OF status ON jobs
            WHEN NEW.status IN ('Completed', 'Failed') AND OLD.status IN ('Pending', 'Running')
            BEGIN INSERT INTO outcomes (endpoint, deployment, job_id, shadow_of, succeeded, created, ended)
                VALUES (NEW.pipeline, NEW.deployment, NEW.id, NEW.shadow_of, NEW.status = 'Completed',
                        NEW.created, NEW.updated); END""",
    ],
    [
        # Per-step timings of the batch a worker ran the job in (the dashboard's job page):
        # JSON, set by the finish that a worker's result makes; NULL otherwise and on older rows.
        "ALTER TABLE jobs ADD COLUMN timings TEXT",
    ],
]
