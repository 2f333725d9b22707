-- Tables that grow by thousands of rows a second in a sale, some of them emptied as fast
-- (the outbox is a queue: every row is deleted once Kafka has it). Postgres' default
-- thresholds (a fifth of the table) let their statistics go stale within seconds of a cold
-- start: the planner then scans the outbox's dead rows on every relay poll. Vacuum and analyze
-- them after a fixed number of changes instead.
ALTER TABLE outbox SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 2000,
                        autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 2000,
                        autovacuum_vacuum_cost_delay = 0);
ALTER TABLE events SET (autovacuum_analyze_scale_factor = 0.02, autovacuum_analyze_threshold = 5000);
ALTER TABLE idempotency_keys SET (autovacuum_analyze_scale_factor = 0.02, autovacuum_analyze_threshold = 5000);
ALTER TABLE reservation_deadlines SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 5000,
                                       autovacuum_analyze_scale_factor = 0.02, autovacuum_analyze_threshold = 5000);
