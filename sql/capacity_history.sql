-- Sample history: per kind, subject and UTC day, the day's last sample and
-- its highest (connections are judged by their daily peak). Days since the
-- epoch, oldest first.
SELECT kind, subject,
       extract(epoch FROM max(taken_at))::float8 / 86400 AS t_last,
       (array_agg(value ORDER BY taken_at DESC))[1] AS last_value,
       max(value) AS peak
FROM pgsteward.capacity_samples
WHERE taken_at > now() - interval '800 days'
GROUP BY kind, subject, date_trunc('day', taken_at AT TIME ZONE 'UTC')
ORDER BY kind, subject, t_last
