-- Reconciling payments whose outcome is unknown. `charges` counts the charge requests sent for
-- a payment, each counted *before* it is sent: a row with charges > 0 may have been charged,
-- so whoever claims it next asks the gateway for the charge's status (by the order's
-- idempotency key) instead of deciding on a guess. `outcome_unknown_since` is set when a
-- charge's reply was lost (timeout, transport error) or the status could not be learnt; such
-- rows are what `surge_payments_awaiting_reconciliation` counts. The row is still deleted when
-- the payment settles, and while it exists the expiry worker leaves the order's hold alone.
ALTER TABLE pending_payments
    ADD COLUMN charges               INT NOT NULL DEFAULT 0,
    ADD COLUMN outcome_unknown_since TIMESTAMPTZ;
