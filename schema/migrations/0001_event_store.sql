-- The event store: the write side's only source of truth.
--
-- `events` is append-only. `(stream_id, version)` is unique: two writers deciding from the same
-- version collide here, and the later one gets an optimistic-concurrency conflict.
-- `position` is the global order (an identity: allocated at insert, so in commit order per
-- stream but not across streams; readers that need "everything up to P" use the outbox or
-- wait for in-flight transactions, see docs).
CREATE TABLE events (
    position        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        UUID        NOT NULL UNIQUE,
    stream_id       TEXT        NOT NULL,
    stream_type     TEXT        NOT NULL,
    version         BIGINT      NOT NULL CHECK (version > 0),
    event_type      TEXT        NOT NULL,
    schema_version  INT         NOT NULL DEFAULT 1,
    payload         JSONB       NOT NULL,
    correlation_id  UUID        NOT NULL,
    causation_id    UUID,
    actor           TEXT        NOT NULL,
    occurred_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT events_stream_version_key UNIQUE (stream_id, version)
);

CREATE INDEX events_type_position_idx ON events (stream_type, position);
CREATE INDEX events_occurred_at_idx ON events (occurred_at);

-- Transactional outbox: one row per event not yet acknowledged by Kafka, written in the same
-- transaction as the event. The relay publishes in position order and deletes after delivery.
CREATE TABLE outbox (
    position BIGINT PRIMARY KEY REFERENCES events (position)
);

-- Idempotency keys: the first answer to a keyed request, kept so that retries get it again.
CREATE TABLE idempotency_keys (
    scope         TEXT        NOT NULL,
    key           TEXT        NOT NULL,
    request_hash  BYTEA       NOT NULL,
    status        SMALLINT    NOT NULL,
    response      JSONB       NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);

-- Open reservations by expiry, so the expiry worker finds due ones without scanning streams.
CREATE TABLE reservation_deadlines (
    order_id    UUID        PRIMARY KEY,
    expires_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX reservation_deadlines_due_idx ON reservation_deadlines (expires_at);
