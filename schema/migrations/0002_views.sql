-- Read-optimized views, written only by projectors (from Kafka) and read by the query API.
-- Each row keeps the version of the last event of its stream that was applied: events at or
-- below it are ignored, so re-delivery is harmless.

CREATE TABLE catalog_items (
    sku             TEXT        PRIMARY KEY,
    name            TEXT        NOT NULL,
    category        TEXT        NOT NULL,
    price_minor     BIGINT      NOT NULL,
    currency        TEXT        NOT NULL,
    available       BIGINT      NOT NULL,
    reserved        BIGINT      NOT NULL,
    sold            BIGINT      NOT NULL,
    version         BIGINT      NOT NULL,
    last_position   BIGINT      NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL
);
CREATE INDEX catalog_items_category_idx ON catalog_items (category, sku);

CREATE TABLE orders (
    order_id        UUID        PRIMARY KEY,
    customer_id     TEXT        NOT NULL,
    status          TEXT        NOT NULL,
    lines           JSONB       NOT NULL,
    total_minor     BIGINT      NOT NULL,
    currency        TEXT        NOT NULL,
    placed_at       TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL,
    version         BIGINT      NOT NULL,
    last_position   BIGINT      NOT NULL
);
-- customer_orders: a customer's orders newest first, keyset-paginated by (placed_at, order_id).
CREATE INDEX orders_customer_idx ON orders (customer_id, placed_at DESC, order_id DESC);

-- Where each projection is in each topic partition: written in the same transaction as the
-- view rows, so a crash never applies a message twice or skips one.
CREATE TABLE projection_checkpoints (
    projection   TEXT        NOT NULL,
    topic        TEXT        NOT NULL,
    partition    INT         NOT NULL,
    next_offset  BIGINT      NOT NULL,
    position     BIGINT      NOT NULL DEFAULT 0,
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, topic, partition)
);

-- Messages a projector could not decode or apply: kept with the error, never silently dropped.
CREATE TABLE dead_letters (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    projection  TEXT        NOT NULL,
    topic       TEXT        NOT NULL,
    partition   INT         NOT NULL,
    "offset"    BIGINT      NOT NULL,
    key         TEXT,
    payload     BYTEA,
    error       TEXT        NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (projection, topic, partition, "offset")
);

-- Units and revenue sold per SKU and minute (from StockCommitted: stock of a paid order).
CREATE TABLE sales_by_minute (
    sku            TEXT        NOT NULL,
    minute         TIMESTAMPTZ NOT NULL,
    units          BIGINT      NOT NULL,
    revenue_minor  BIGINT      NOT NULL,
    currency       TEXT        NOT NULL,
    PRIMARY KEY (sku, minute)
);
CREATE INDEX sales_by_minute_minute_idx ON sales_by_minute (minute);
