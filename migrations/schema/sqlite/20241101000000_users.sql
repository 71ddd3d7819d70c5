-- The demo application's schema, for SQLite (the PostgreSQL one is in ../postgres, with the
-- same versions). Schema changes belong to a schema tool (here `sqlx migrate`); datamig
-- migrations only change rows.
CREATE TABLE users (
    id         INTEGER PRIMARY KEY,
    email      TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
);
