-- +goose Up
-- API usage, metered in memory by the server and added here every few
-- seconds: one row per UTC day, user, token and route ("GET
-- /api/v1/projects/:name"), its counts summed over the flushes. token_id
-- is 0 for requests authenticated by a dashboard session. No foreign
-- keys: usage stays on record whatever happens to the token.
CREATE TABLE api_usage (
    day             TEXT   NOT NULL,
    user_id         BIGINT NOT NULL,
    token_id        BIGINT NOT NULL,
    route           TEXT   NOT NULL,
    requests        BIGINT NOT NULL,
    errors          BIGINT NOT NULL,
    latency_us      BIGINT NOT NULL,
    max_latency_us  BIGINT NOT NULL,
    PRIMARY KEY (day, user_id, token_id, route)
);
CREATE INDEX api_usage_user ON api_usage(user_id, day);

-- +goose Down
DROP TABLE api_usage;
