-- SQLite only (its tables without rowids; PostgreSQL has no rowid tables). Recorded here
-- so both stores list the same migrations.
SELECT 1;
