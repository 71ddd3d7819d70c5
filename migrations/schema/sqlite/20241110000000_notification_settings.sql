-- The notification bell ships: new users get settings at sign-up, existing users need a backfill.
CREATE TABLE notification_settings (
    user_id       INTEGER PRIMARY KEY REFERENCES users (id),
    email_enabled BOOLEAN NOT NULL,
    push_enabled  BOOLEAN NOT NULL,
    created_at    TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
);
