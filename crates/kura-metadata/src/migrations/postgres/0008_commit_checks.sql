-- Never holds a row. Used by the SQLite batches only; kept here so both schemas match.
CREATE TABLE commit_checks (
    storage_limit  INTEGER NOT NULL,
    upload_changed INTEGER NOT NULL
);
