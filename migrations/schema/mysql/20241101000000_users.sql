-- The demo application's schema, for MySQL and MariaDB (the PostgreSQL one is in ../postgres,
-- with the same versions). Schema changes belong to a schema tool (here `sqlx migrate`);
-- datamig migrations only change rows.
CREATE TABLE users (
    id         bigint NOT NULL AUTO_INCREMENT PRIMARY KEY,
    -- Binary: emails compare as written, so `email <> lower(email)` finds upper case (the
    -- default collation, utf8mb4_general_ci, ignores case).
    email      varchar(320) COLLATE utf8mb4_bin NOT NULL,
    created_at datetime(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) ENGINE=InnoDB;
