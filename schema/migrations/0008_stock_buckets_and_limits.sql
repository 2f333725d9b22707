-- Purchase limits: the units each customer holds of items with a `max_per_customer`, one row
-- per counted order line. Written by the writer that reserves the line, in its transaction
-- (after it took the (sku, customer) advisory lock and read the customer's sum); deleted by the
-- transition that releases or expires the order's hold; kept when the order is paid (units
-- sold keep counting).
CREATE TABLE purchase_allowances (
    order_id     UUID   NOT NULL,
    sku          TEXT   NOT NULL,
    customer_id  TEXT   NOT NULL,
    units        BIGINT NOT NULL CHECK (units > 0),
    PRIMARY KEY (order_id, sku)
);
CREATE INDEX purchase_allowances_customer_idx ON purchase_allowances (sku, customer_id);

-- The catalog view shows an item's settings beside its totals (summed over its buckets), and
-- keeps each bucket stream's version so that redelivered events of any bucket are skipped.
ALTER TABLE catalog_items
    ADD COLUMN buckets           INT    NOT NULL DEFAULT 1,
    ADD COLUMN max_per_customer  BIGINT,
    ADD COLUMN bucket_versions   BIGINT[] NOT NULL DEFAULT '{}';
