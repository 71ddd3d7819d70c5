-- The demo application's schema, for MySQL and MariaDB (the PostgreSQL one is in ../postgres,
-- with the same versions). Schema changes belong to a schema tool (here `sqlx migrate`);
-- datamig migrations only change rows.
CREATE TABLE users (
    id         bigint NOT NULL AUTO_INCREMENT PRIMARY KEY,
    email      varchar(320) NOT NULL,
    created_at datetime(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) ENGINE=InnoDB;
