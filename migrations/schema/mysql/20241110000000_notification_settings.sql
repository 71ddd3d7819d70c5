-- The notification bell ships: new users get settings at sign-up, existing users need a backfill.
CREATE TABLE notification_settings (
    user_id       bigint NOT NULL PRIMARY KEY,
    email_enabled boolean NOT NULL,
    push_enabled  boolean NOT NULL,
    created_at    datetime(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    FOREIGN KEY (user_id) REFERENCES users (id)
) ENGINE=InnoDB;
