-- Tables that `pgsteward convert` is converting and that have not reached the
-- swap: the partition pass leaves them alone, `plan` and `status` say so.
-- Returns schema, table, the last step done, when it was done, when the
-- conversion started. Reads convert's journal (sql/convert_journal_table.sql,
-- whose columns are the contract); run only when that table exists.
SELECT table_schema, table_name, step, updated_at, started_at
FROM pgsteward.conversions
WHERE state = 'active' AND step NOT IN ('swapped', 'partitions_made')
ORDER BY table_schema, table_name
