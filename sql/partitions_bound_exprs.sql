-- Fallback for bounds whose stored node text was not understood: the
-- server's own rendering. Needs TimeZone=UTC and DateStyle=ISO (set at connect).
SELECT c.oid::int8, pg_get_expr(c.relpartbound, c.oid) FROM pg_class c WHERE c.oid = ANY($1::int8[]::oid[])
