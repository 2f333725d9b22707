-- Payments submitted and not yet settled with the gateway. The token is the gateway's
-- (never a card number) and the row is deleted when the payment settles. `next_attempt_at`
-- is also a lease: a worker that claims a row pushes it into the future, so a second worker
-- skips it, and a crashed worker's claim comes back when the lease runs out.
CREATE TABLE pending_payments (
    order_id         UUID        PRIMARY KEY,
    payment_token    TEXT        NOT NULL,
    attempts         INT         NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    submitted_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX pending_payments_due_idx ON pending_payments (next_attempt_at);
