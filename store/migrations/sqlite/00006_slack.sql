-- +goose Up
-- The Slack message that shows one build in one channel of one slack
-- sink: posted on the build's first event, edited in place with
-- chat.update on the next ones. channel is the id Slack answered with
-- (chat.update needs it), seq the last event the message shows (an older
-- event never overwrites a newer state), reply_ts the thread reply posted
-- when the build failed.
CREATE TABLE slack_messages (
    sink        TEXT    NOT NULL,
    target      TEXT    NOT NULL,
    build_id    INTEGER NOT NULL,
    channel     TEXT    NOT NULL,
    ts          TEXT    NOT NULL,
    seq         INTEGER NOT NULL DEFAULT 0,
    reply_ts    TEXT    NOT NULL DEFAULT '',
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (sink, target, build_id)
);
CREATE INDEX slack_messages_updated ON slack_messages(updated_at);

-- Mail an email sink holds back: digests collect events of a group (the
-- sink's recipients) until release_at; quiet hours hold non-urgent mail
-- until they end. A flusher leases due rows (lease_until) before sending
-- them, so two nodes never send the same group; a send that fails moves
-- release_at on and counts a try.
CREATE TABLE mail_holds (
    id           INTEGER PRIMARY KEY,
    sink         TEXT    NOT NULL,
    grp          TEXT    NOT NULL,
    event_id     TEXT    NOT NULL,
    release_at   INTEGER NOT NULL,
    lease_until  INTEGER NOT NULL DEFAULT 0,
    tries        INTEGER NOT NULL DEFAULT 0,
    payload      BLOB    NOT NULL,
    created_at   INTEGER NOT NULL,
    UNIQUE (sink, grp, event_id)
);
CREATE INDEX mail_holds_due ON mail_holds(sink, release_at);

-- +goose Down
DROP TABLE mail_holds;
DROP TABLE slack_messages;
