-- Webhooks: endpoints a storefront registers, the deliveries owed to them, and how far the
-- fan-out has read the log. Owned by surge-webhooks (these are not the log's tables).

CREATE TABLE webhook_endpoints (
    id             uuid PRIMARY KEY,
    url            text NOT NULL,
    event_types    text[] NOT NULL CHECK (cardinality(event_types) > 0),
    -- The signing secret: kept as is, because every delivery is signed with it.
    secret         text NOT NULL,
    state          text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'paused')),
    -- Only events after this log position are owed to the endpoint (a safe position taken at
    -- registration): a new endpoint is not sent the history.
    after_position bigint NOT NULL,
    created_by     text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);

-- The pauses of an endpoint, as ranges of the log: events at positions in
-- (paused_after, resumed_after] are not owed to it (resumed_after is NULL while it is paused).
-- Both are safe positions taken when the pause and the resume were asked for, so what is owed
-- depends on an event's position, never on how far behind the fan-out was: an event committed
-- before a pause, or after a resume, is owed whenever the fan-out reaches it. The fan-out
-- deletes a closed pause once its cursor is past it.
CREATE TABLE webhook_endpoint_pauses (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    endpoint_id   uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    paused_after  bigint NOT NULL,
    resumed_after bigint CHECK (resumed_after >= paused_after)
);
-- At most one open pause per endpoint.
CREATE UNIQUE INDEX webhook_endpoint_pauses_open ON webhook_endpoint_pauses (endpoint_id)
    WHERE resumed_after IS NULL;

CREATE TABLE webhook_deliveries (
    id              uuid PRIMARY KEY,
    endpoint_id     uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_id        uuid NOT NULL,
    order_id        uuid NOT NULL,
    position        bigint NOT NULL,
    event_type      text NOT NULL,
    -- The exact bytes that are signed and sent.
    body            text NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    -- Due time while pending; while an attempt is in flight, the end of its lease.
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    state           text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'dead')),
    last_status     integer,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    -- One delivery per event per endpoint, whatever happens to the fan-out.
    UNIQUE (endpoint_id, event_id)
);

-- The deliverer's claim: due pending deliveries.
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';
-- In order per order: is an earlier delivery of the same (endpoint, order) still undelivered?
CREATE INDEX webhook_deliveries_undelivered ON webhook_deliveries (endpoint_id, order_id, position)
    WHERE state <> 'delivered';
-- Listing an endpoint's deliveries by state, a page at a time.
CREATE INDEX webhook_deliveries_by_endpoint ON webhook_deliveries (endpoint_id, state, id);

-- How far the fan-out has read the log (one row).
CREATE TABLE webhook_fanout_cursor (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    position  bigint NOT NULL
);
INSERT INTO webhook_fanout_cursor (singleton, position) VALUES (true, 0);

ALTER TABLE webhook_deliveries SET (autovacuum_vacuum_scale_factor = 0.05);
