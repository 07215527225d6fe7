-- Never holds a row. A batch that must stop when a check fails inserts NULL into the column
-- named for the check (the others take their default): the NOT NULL constraint turns that
-- into an error that names it, the batch stops there, and the caller rolls back. That lets a
-- commit whose checks pass end with its own COMMIT, one round trip to SQLite's thread
-- instead of two (`sql.rs`).
CREATE TABLE commit_checks (
    storage_limit     INTEGER NOT NULL DEFAULT 0,
    upload_changed    INTEGER NOT NULL DEFAULT 0,
    missing_reference INTEGER NOT NULL DEFAULT 0,
    tag_immutable     INTEGER NOT NULL DEFAULT 0
);
