-- The notification bell ships: new users get settings at sign-up, existing users need a backfill.
CREATE TABLE notification_settings (
    user_id       bigint PRIMARY KEY REFERENCES users (id),
    email_enabled boolean NOT NULL,
    push_enabled  boolean NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
