-- Migration 4: the ETag a retirement's upload should have got, so `verified`
-- can come from one HEAD (the store's own MD5 of the parts it received)
-- instead of reading the whole object back (docs/partitions.md, "the
-- states of a retirement"). NULL for rows uploaded before this migration
-- and for stores whose ETags are not MD5s: those verify by reading back.
-- IF NOT EXISTS: re-runnable, like the migrations before it (and so is
-- `pgsteward schema-sql` on a subscriber that has the older table).
ALTER TABLE pgsteward.retirements ADD COLUMN IF NOT EXISTS etag text;
