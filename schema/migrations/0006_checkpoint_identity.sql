-- A Kafka offset means something only for one cluster and one incarnation of a topic: a broker
-- whose data was replaced, or a topic deleted and created again, starts its offsets over. Each
-- checkpoint names the cluster and topic ids its offsets belong to; a projector that finds
-- others (or offsets outside the partition's range) heals from the event store instead of
-- skipping. NULL next_offset: after such a heal, the next message of the partition continues.
ALTER TABLE projection_checkpoints ADD COLUMN cluster_id TEXT, ADD COLUMN topic_id TEXT,
    ALTER COLUMN next_offset DROP NOT NULL;
