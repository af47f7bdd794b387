//! Capacity planning: forecast accuracy against Prometheus' `predict_linear`
//! on one synthetic trace, accuracy against a real server's partitions, and
//! the cost of one run over 10,000 partitions. Figures side by side; asserts
//! only what is deterministic (the synthetic trace is seeded).
//! `cargo test --release --features failpoints --test it bench::capacity:: -- --ignored --nocapture --test-threads 1`
//! (docs/benchmarks.md has the figures).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Datelike;
use pgsteward::capacity::forecast::{
    daily_last, fit_rate, increments_from_samples, predict_linear, Point,
};

use crate::harness::{fresh_db, must, owner_psql, shared, steward_url, write_config};

const GB: f64 = 1e9;
/// Samples every 5 minutes, as a Prometheus scrape would see the disk.
const STEP_DAYS: f64 = 5.0 / 1440.0;

/// One year growing about 100 GB → 1 TB (10× a year, compounding), writes
/// heavier on weekdays (1.2×) than at weekends (0.5×), a daily cycle (busy
/// afternoons), ±30 % noise on every 5-minute step and ±0.05 % jitter on
/// each reading (VACUUM, relation extension).
fn trace() -> Vec<Point> {
    let mut rng = fastrand::Rng::with_seed(24);
    let g = 10f64.ln() / 365.0;
    let mut size = 100.0 * GB;
    let steps = (365.0 / STEP_DAYS) as usize;
    let mut out = Vec::with_capacity(steps);
    for k in 0..steps {
        let t = 20_089.0 + k as f64 * STEP_DAYS; // from a Monday
        let week = if pgsteward::capacity::forecast::weekday(t) < 5 {
            1.2
        } else {
            0.5
        };
        let day = 1.0 + 0.6 * (2.0 * std::f64::consts::PI * (t.fract() - 0.35)).cos();
        let noise = 1.0 + 0.3 * (rng.f64() * 2.0 - 1.0);
        size += size * g * week / 1.0143 * day * noise * STEP_DAYS;
        let reading = size * (1.0 + 0.0005 * (rng.f64() * 2.0 - 1.0));
        out.push(Point { t, v: reading });
    }
    out
}

/// Our forecast `h` days after `end` from the samples up to `end`, the way a
/// run sees them: the last sample of each past day, and now.
fn ours(
    daily: &[Point],
    now: Point,
    h: f64,
) -> Option<(f64, pgsteward::capacity::forecast::RateModel)> {
    let mut pts: Vec<Point> = daily
        .iter()
        .copied()
        .filter(|p| p.t < now.t.floor())
        .collect();
    pts.push(now);
    let incs = increments_from_samples(&daily_last(&pts));
    let m = fit_rate(&incs, now.t, 2).ok()?;
    Some((now.v + m.grown(h), m))
}

fn pct(x: f64) -> String {
    format!("{:.1} %", x * 100.0)
}

fn summary(errors: &mut [f64]) -> (f64, f64, f64) {
    errors.sort_by(f64::total_cmp);
    let mean = errors.iter().sum::<f64>() / errors.len() as f64;
    let p95 = errors[(errors.len() as f64 * 0.95) as usize - 1];
    (mean, p95, errors[errors.len() - 1])
}

#[test]
#[ignore]
fn bench_capacity_accuracy_vs_predict_linear() {
    let tr = trace();
    let daily = daily_last(&tr);
    println!(
        "trace: {} samples, {:.0} GB → {:.0} GB over 365 days",
        tr.len(),
        tr[0].v / GB,
        tr[tr.len() - 1].v / GB
    );
    // 30-day forecasts from every day between day 60 and day 330, at noon.
    let per_day = (1.0 / STEP_DAYS) as usize;
    let (mut e_ours, mut e_1h, mut e_1d) = (Vec::new(), Vec::new(), Vec::new());
    for d in 60..=330 {
        let i = d * per_day + per_day / 2;
        let now = tr[i];
        let truth = tr[i + 30 * per_day].v;
        let err = |p: f64| (p - truth).abs() / truth;
        // The last day of samples is all either window reads.
        let hist = &tr[i.saturating_sub(per_day + 1)..=i];
        e_ours.push(err(ours(&daily, now, 30.0).unwrap().0));
        e_1h.push(err(predict_linear(hist, now.t, 1.0 / 24.0, 30.0).unwrap()));
        e_1d.push(err(predict_linear(hist, now.t, 1.0, 30.0).unwrap()));
    }
    let rows = [
        (
            "pgsteward (daily increments, trend, weekly term)",
            summary(&mut e_ours),
        ),
        ("predict_linear(disk[1h], 30d)", summary(&mut e_1h)),
        ("predict_linear(disk[1d], 30d)", summary(&mut e_1d)),
    ];
    println!("\n30-day forecast error over {} origins:", e_ours.len());
    println!("{:<52} {:>8} {:>8} {:>8}", "method", "mean", "p95", "max");
    for (name, (mean, p95, max)) in rows {
        println!(
            "{name:<52} {:>8} {:>8} {:>8}",
            pct(mean),
            pct(p95),
            pct(max)
        );
    }

    // The storage alert: a 900 GB volume, checked hourly as the service
    // runs. pgsteward warns when the 95 % band reaches the limit within 14
    // days; Prometheus' rule is `predict_linear(disk[W], 14d) > limit`.
    let limit = 900.0 * GB;
    let cross = tr.iter().find(|p| p.v >= limit).map(|p| p.t).unwrap();
    let per_hour = per_day / 24;
    let (mut first_ours, mut first_1h, mut first_1d) = (None, None, None);
    let (mut on_ours, mut on_1h, mut on_1d, mut checks) = (0, 0, 0, 0);
    for i in (60 * per_day..tr.len()).step_by(per_hour) {
        let now = tr[i];
        if now.t >= cross {
            break;
        }
        let hist = &tr[i.saturating_sub(per_day + 1)..=i];
        let a_ours = ours(&daily, now, 0.0)
            .and_then(|(_, m)| m.days_until_upper(now.v, limit, 14.0))
            .is_some();
        let a_1h = predict_linear(hist, now.t, 1.0 / 24.0, 14.0).is_some_and(|v| v > limit);
        let a_1d = predict_linear(hist, now.t, 1.0, 14.0).is_some_and(|v| v > limit);
        for (a, first) in [
            (a_ours, &mut first_ours),
            (a_1h, &mut first_1h),
            (a_1d, &mut first_1d),
        ] {
            if a && first.is_none() {
                *first = Some(now.t);
            }
        }
        if cross - now.t <= 14.0 {
            checks += 1;
            on_ours += i32::from(a_ours);
            on_1h += i32::from(a_1h);
            on_1d += i32::from(a_1d);
        }
    }
    println!(
        "\nstorage alert, 900 GB limit reached on day {:.1}:",
        cross - tr[0].t
    );
    println!(
        "{:<52} {:>16} {:>26}",
        "rule", "first fired", "on in the last 14 days"
    );
    for (name, first, on) in [
        (
            "pgsteward days_until_full_earliest <= 14",
            first_ours,
            on_ours,
        ),
        ("predict_linear(disk[1h], 14d) > limit", first_1h, on_1h),
        ("predict_linear(disk[1d], 14d) > limit", first_1d, on_1d),
    ] {
        println!(
            "{name:<52} {:>16} {:>26}",
            first.map_or("never".into(), |f| format!("{:.1} d before", cross - f)),
            format!("{on}/{checks} checks")
        );
    }
    let lead = cross - first_ours.unwrap();
    assert!(
        summary(&mut e_ours).2 <= 0.10,
        "pgsteward's 30-day error stays within 10 %"
    );
    assert!(
        lead >= 14.0,
        "the storage alert fires at least 14 days ahead ({lead:.1})"
    );
}

/// Monthly partitions of `table`: `rows(k)` rows of ~260 bytes in the month
/// `k` months from now, for `k` in `first..=last`.
fn monthly(db: &str, table: &str, first: i32, last: i32, rows: impl Fn(i32) -> i32) {
    let mut sql = format!(
        "CREATE TABLE public.{table} (at timestamptz NOT NULL, id bigint, payload text) PARTITION BY RANGE (at);\n\
         CREATE INDEX ON public.{table} (id);\n"
    );
    for i in first..=last {
        sql.push_str(&format!(
            "DO $$ DECLARE d date := (date_trunc('month', now()) + make_interval(months => {i}))::date; \
             BEGIN EXECUTE format('CREATE TABLE public.%I PARTITION OF public.{table} FOR VALUES FROM (%L) TO (%L)', \
             '{table}_' || to_char(d, 'YYYY_MM'), d, (d + interval '1 month')::date); END $$;\n\
             INSERT INTO public.{table} SELECT date_trunc('month', now()) + make_interval(months => {i}) + (g % 27) * interval '1 day', g, repeat('x', 200) FROM generate_series(1, {}) g;\n",
            rows(i)
        ));
    }
    owner_psql(shared(), db, &sql);
}

/// A table with 24 closed monthly partitions of known, growing sizes: the
/// growth and the days until a limit against the truth computed from the
/// construction (rows per month rising linearly, bytes per row measured).
#[test]
#[ignore]
fn bench_capacity_real_server_accuracy() {
    let db = crate::capacity::db_name(&fresh_db("cap_bench_real"));
    let rows = |k: i32| 2000 + 400 * (k + 24); // k = -24 ..= -1: 2000 → 11200
    monthly(&db, "history", -24, 1, |k| if k < 0 { rows(k) } else { 0 });
    let closed: f64 = must(shared().psql(
        &db,
        "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         WHERE i.inhparent = 'public.history'::regclass AND c.relname < to_char(date_trunc('month', now()), '\"history_\"YYYY_MM')",
    ))
    .trim()
    .parse()
    .unwrap();
    let total_rows: f64 = (-24..0).map(|k| f64::from(rows(k))).sum();
    let per_row = closed / total_rows;
    // Rows per month at month position x (0 = the first month's start):
    // 2000 + 400·(x − ½), the value at each month's middle.
    let now = chrono::Utc::now();
    let month_start = now.date_naive().with_day0(0).unwrap();
    let month_len = 30.44;
    let x_now = 24.0 + (now.date_naive() - month_start).num_seconds() as f64 / 86_400.0 / month_len;
    let rate_at = |x: f64| per_row * (2000.0 + 400.0 * (x - 0.5)) / month_len;
    let truth_growth = rate_at(x_now);
    // A limit 90 days of growth away, for this table alone.
    let free = (0..90)
        .map(|d| rate_at(x_now + (f64::from(d) + 0.5) / month_len))
        .sum::<f64>();
    let dir = tempfile::tempdir().unwrap();
    let cfg = crate::capacity::config(
        dir.path(),
        &db,
        "[[partitions.tables]]\ntable = \"public.history\"\ninterval = \"monthly\"\npremake = 1\n",
    );
    let (_, r) = crate::capacity::capacity_json(&cfg, &["--horizon", "180d"]);
    let used = r["storage"]["used_bytes"].as_f64().unwrap();
    let cfg = crate::capacity::config(
        dir.path(),
        &db,
        &format!(
            "[capacity]\nstorage_limit = \"{}\"\n[[partitions.tables]]\ntable = \"public.history\"\ninterval = \"monthly\"\npremake = 1\n",
            (used + free) as u64
        ),
    );
    let (_, r) = crate::capacity::capacity_json(&cfg, &["--horizon", "180d"]);
    let t = crate::capacity::find(&r, "tables", "table", "public.history");
    let growth = t["growth_bytes_per_day"].as_f64().unwrap();
    let days = t["days_until_full"].as_f64().unwrap();
    println!("24 monthly partitions, {total_rows} rows, {per_row:.0} bytes per row (heap + index)");
    println!(
        "{:<28} {:>16} {:>16} {:>8}",
        "", "reported", "truth", "error"
    );
    println!(
        "{:<28} {:>16.0} {:>16.0} {:>8}",
        "growth, bytes per day",
        growth,
        truth_growth,
        pct((growth - truth_growth).abs() / truth_growth)
    );
    println!(
        "{:<28} {:>16.1} {:>16.1} {:>8}",
        "days until the limit",
        days,
        90.0,
        pct((days - 90.0).abs() / 90.0)
    );
    println!("confidence {}", t["confidence"]);
    assert_eq!(t["observations"], 24);
}

/// One run over 10,000 daily partitions (with an index each), as the
/// steward: never analysed (every partition sized with the size functions),
/// analysed (relpages; exact only for the open ones), and with an ACCESS
/// EXCLUSIVE lock held on a partition meanwhile. The steward's locks on
/// application relations are sampled during the runs.
#[test]
#[ignore]
fn bench_capacity_cost_at_10000_partitions() {
    let n: i32 = std::env::var("PGSTEWARD_BENCH_PARTITIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let db = crate::capacity::db_name(&fresh_db("cap_bench_cost"));
    let made = Instant::now();
    owner_psql(
        shared(),
        &db,
        "CREATE TABLE public.ev (at timestamptz NOT NULL, id bigint, payload text) PARTITION BY RANGE (at);\n\
         CREATE INDEX ON public.ev (id);",
    );
    for b in 0..(n + 499) / 500 {
        let (lo, hi) = (b * 500, ((b + 1) * 500).min(n) - 1);
        owner_psql(
            shared(),
            &db,
            &format!(
                "DO $$ DECLARE d date; BEGIN FOR i IN {lo}..{hi} LOOP \
                 d := (now() - interval '{} days')::date + i; \
                 EXECUTE format('CREATE TABLE public.%I PARTITION OF public.ev FOR VALUES FROM (%L) TO (%L)', \
                 'ev_' || to_char(d, 'YYYY_MM_DD'), d, d + 1); END LOOP; END $$;",
                n - 30
            ),
        );
    }
    owner_psql(
        shared(),
        &db,
        &format!(
            "INSERT INTO public.ev SELECT (now() - interval '{} days')::date + (g % {n}) + interval '1 hour', g, repeat('x', 50) FROM generate_series(1, 200000) g;",
            n - 30
        ),
    );
    println!("{n} partitions made in {:.0?}", made.elapsed());
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &format!(
            "[database]\nprimary = {:?}\n[[partitions.tables]]\ntable = \"public.ev\"\ninterval = \"daily\"\npremake = 3\n",
            steward_url(shared(), &db)
        ),
    );
    let cfg = pgsteward::config::load(&cfg).unwrap().cluster;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let run = |label: &str| {
        let watch = LockWatch::start(&db);
        let started = Instant::now();
        let (report, _) = rt
            .block_on(pgsteward::capacity::run(&cfg, 90.0, None))
            .unwrap();
        let took = started.elapsed();
        let (strongest, waits) = watch.stop();
        println!(
            "{label:<44} {:>8.2?}  strongest lock on application relations: {strongest:<16} lock waits seen: {waits}  ({})",
            took, report.size_method
        );
        assert_eq!(
            report.tables[0].observations as i32,
            n - 30,
            "closed periods"
        );
        took
    };
    run("never analysed (size functions throughout)");
    run("again (warm server caches)");
    must(shared().psql(&db, "ANALYZE public.ev"));
    run("analysed (relpages, exact for the open ones)");
    // DDL's lock held on the parent and on today's partition (sized exactly
    // otherwise): the run must neither wait nor fail.
    let locker = LockHolder::start(&db);
    run("with ACCESS EXCLUSIVE held (parent, today's)");
    drop(locker);
}

/// Samples pg_locks and pg_stat_activity for the capacity session until stopped.
struct LockWatch {
    stop: Arc<AtomicBool>,
    strongest: Arc<AtomicU32>,
    waits: Arc<AtomicU32>,
    handle: Option<std::thread::JoinHandle<()>>,
}

const MODES: [&str; 9] = [
    "none",
    "AccessShareLock",
    "RowShareLock",
    "RowExclusiveLock",
    "ShareUpdateExclusiveLock",
    "ShareLock",
    "ShareRowExclusiveLock",
    "ExclusiveLock",
    "AccessExclusiveLock",
];

impl LockWatch {
    fn start(db: &str) -> LockWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let strongest = Arc::new(AtomicU32::new(0));
        let waits = Arc::new(AtomicU32::new(0));
        let url = crate::harness::authed(&shared().url(db));
        let (s, st, w) = (stop.clone(), strongest.clone(), waits.clone());
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                let c = crate::harness::connect(&url).await;
                let deadline = Instant::now() + Duration::from_secs(300);
                while !s.load(Ordering::SeqCst) && Instant::now() < deadline {
                    let rows = c
                        .query(
                            "SELECT l.mode, l.granted FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
                             JOIN pg_class c ON c.oid = l.relation JOIN pg_namespace n ON n.oid = c.relnamespace \
                             WHERE a.application_name = 'pgsteward capacity' AND n.nspname = 'public'",
                            &[],
                        )
                        .await
                        .unwrap_or_default();
                    for r in rows {
                        let mode: String = r.get(0);
                        let granted: bool = r.get(1);
                        let rank = MODES.iter().position(|m| *m == mode).unwrap_or(0) as u32;
                        st.fetch_max(rank, Ordering::SeqCst);
                        if !granted {
                            w.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            });
        });
        LockWatch {
            stop,
            strongest,
            waits,
            handle: Some(handle),
        }
    }

    fn stop(mut self) -> (&'static str, u32) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        (
            MODES[self.strongest.load(Ordering::SeqCst) as usize],
            self.waits.load(Ordering::SeqCst),
        )
    }
}

/// Another session holding ACCESS EXCLUSIVE on the parent and on today's
/// partition (as DDL would) until dropped; bounded at 5 minutes.
struct LockHolder(std::process::Child);

impl LockHolder {
    fn start(db: &str) -> LockHolder {
        let child = std::process::Command::new("psql")
            .args([&crate::harness::authed(&shared().url(db)), "-c"])
            .arg(
                "BEGIN; LOCK TABLE public.ev IN ACCESS EXCLUSIVE MODE; \
                 DO $$ BEGIN EXECUTE format('LOCK TABLE public.%I IN ACCESS EXCLUSIVE MODE', \
                 'ev_' || to_char(now(), 'YYYY_MM_DD')); END $$; SELECT pg_sleep(300);",
            )
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_secs(1));
        LockHolder(child)
    }
}

impl Drop for LockHolder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
