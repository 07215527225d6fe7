-- Robot accounts (for CI): a secret instead of a password, an optional expiry, and a list of
-- permissions, each in one project, limited to repositories matching a glob.
CREATE TABLE robots (
    id           INTEGER PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    -- The project of a project-level robot; NULL for a system-level robot.
    project_id   BIGINT REFERENCES projects(id) ON DELETE CASCADE,
    description  TEXT NOT NULL DEFAULT '',
    secret_hash  TEXT NOT NULL,
    expires_at   BIGINT,
    disabled     BOOLEAN NOT NULL DEFAULT FALSE,
    created_at   BIGINT NOT NULL
);

CREATE TABLE robot_permissions (
    robot_id     BIGINT NOT NULL REFERENCES robots(id) ON DELETE CASCADE,
    project_id   BIGINT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    -- Glob over the repository path inside the project (`*` = every repository).
    repositories TEXT NOT NULL DEFAULT '*',
    -- Comma-separated actions: pull, push, delete, list.
    actions      TEXT NOT NULL,
    PRIMARY KEY (robot_id, project_id, repositories)
);

-- Members may be limited to some repositories of their project too.
ALTER TABLE project_members ADD COLUMN repositories TEXT NOT NULL DEFAULT '*';
