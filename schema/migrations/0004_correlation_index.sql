-- The console follows one checkout across streams by its correlation id.
CREATE INDEX events_correlation_idx ON events (correlation_id);
