-- Enabled user triggers that fire on DELETE from the relation $1 (regclass
-- text), row- or statement-level: a move out of DEFAULT would fire them,
-- and they may write to other tables. TRIGGER_TYPE_DELETE is bit 3.
-- A trigger declared on the parent fires on DEFAULT through its clone: on
-- PostgreSQL 13 and 14 the clone is marked tgisinternal (15 stopped doing
-- so), so a clone (tgparentid set, 13+) counts whatever tgisinternal says,
-- unless it enforces a foreign key (RI action triggers are internal clones
-- on every major; the foreign-key guard handles referenced rows itself).
SELECT t.tgname::text
FROM pg_trigger t
WHERE t.tgrelid = to_regclass($1)
  AND (NOT t.tgisinternal
       OR (t.tgparentid <> 0
           AND NOT EXISTS (SELECT 1 FROM pg_constraint c
                           WHERE c.oid = t.tgconstraint AND c.contype = 'f')))
  AND t.tgenabled <> 'D'
  AND (t.tgtype & 8) <> 0
ORDER BY 1
