-- Keeps every sample of the last 14 days, then the last of each day for
-- about two years (connections keep all: their daily peak is the signal).
-- Only a week past the 14-day mark is looked at per run, so a run costs the
-- same however long the history; rows that age past it unpruned (the
-- sampler stopped for a week) are only extra rows.
DELETE FROM pgsteward.capacity_samples s
WHERE s.taken_at < now() - interval '800 days'
   OR (s.kind <> 'connections'
       AND s.taken_at < now() - interval '14 days'
       AND s.taken_at >= now() - interval '21 days'
       AND EXISTS (
           SELECT 1 FROM pgsteward.capacity_samples l
           WHERE l.kind = s.kind AND l.subject = s.subject AND l.taken_at > s.taken_at
             AND l.taken_at < date_trunc('day', s.taken_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
                              + interval '1 day'))
