-- The demo application's schema. Schema changes belong to a schema tool (here `sqlx migrate`);
-- datamig migrations only change rows.
CREATE TABLE users (
    id         bigserial PRIMARY KEY,
    email      text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
