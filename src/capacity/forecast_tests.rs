use super::*;

const GB: f64 = 1e9;
/// A Monday (2025-01-06) in days since the epoch.
const MONDAY: f64 = 20094.0;

fn daily(days: usize, rate: impl Fn(f64) -> f64) -> Vec<Increment> {
    (0..days)
        .map(|d| {
            let t0 = MONDAY + d as f64;
            Increment {
                t0,
                t1: t0 + 1.0,
                amount: rate(t0),
            }
        })
        .collect()
}

/// A rate fitted to 30 days that alternate between growing `even` and
/// `odd` bytes: noise around their mean.
fn alternating(even: f64, odd: f64) -> RateModel {
    let incs = daily(30, |t| if (t as i64) % 2 == 0 { even } else { odd });
    fit_rate(&incs, MONDAY + 30.0, 3).unwrap()
}

#[test]
fn weekday_counts_from_monday() {
    assert_eq!(weekday(MONDAY), 0);
    assert_eq!(weekday(MONDAY + 5.5), 5);
    assert_eq!(weekday(0.0), 3, "1970-01-01 was a Thursday");
}

#[test]
fn constant_growth_gives_its_rate_and_exact_date() {
    let incs = daily(10, |_| 2.0 * GB);
    let m = fit_rate(&incs, MONDAY + 10.0, 3).unwrap();
    assert!((m.rate_now() - 2.0 * GB).abs() < 1e-3, "{m:?}");
    assert!(m.b.abs() < 1e-3);
    assert!((m.grown(30.0) - 60.0 * GB).abs() < 1.0);
    let d = m.days_until(100.0 * GB, 150.0 * GB, 365.0).unwrap();
    assert!((d - 25.0).abs() < 1e-6, "{d}");
    assert_eq!(m.confidence(), 1.0);
}

#[test]
fn a_rising_rate_is_trended_to_today() {
    // 1 GB/day on day 0, +0.1 GB/day each day; "now" is the end of day 20.
    let incs = daily(20, |t| (1.0 + 0.1 * (t - MONDAY + 0.5)) * GB);
    let now = MONDAY + 20.0;
    let m = fit_rate(&incs, now, 3).unwrap();
    assert!((m.rate_now() - 3.0 * GB).abs() < 1e-3 * GB, "{m:?}");
    assert!((m.b - 0.1 * GB).abs() < 1e-6 * GB);
    // ∫0..10 (3 + 0.1 t) dt = 30 + 5.
    assert!((m.grown(10.0) - 35.0 * GB).abs() < 1e-3 * GB);
}

#[test]
fn weekly_seasonality_is_learned_after_three_weeks() {
    let season = [1.3, 1.2, 1.2, 1.2, 1.1, 0.5, 0.5];
    let mean: f64 = season.iter().sum::<f64>() / 7.0;
    let incs = daily(28, |t| season[weekday(t)] * GB);
    let m = fit_rate(&incs, MONDAY + 28.0, 3).unwrap();
    let w = m.weekly.expect("weekly term after 4 weeks");
    assert!((m.rate_now() - mean * GB).abs() < 1e-3 * GB, "{m:?}");
    assert!((w[5] - (0.5 - mean) * GB).abs() < 1e-3 * GB);
    // A whole week ahead grows by exactly one week of the pattern.
    assert!((m.grown(7.0) - season.iter().sum::<f64>() * GB).abs() < 1e-3 * GB);
    // Two weeks are not enough for the term.
    let short = fit_rate(&daily(14, |t| season[weekday(t)] * GB), MONDAY + 14.0, 3).unwrap();
    assert!(short.weekly.is_none());
}

#[test]
fn too_few_observations_say_how_many_more() {
    let err = fit_rate(&daily(1, |_| GB), MONDAY + 1.0, 3).unwrap_err();
    assert_eq!(err, Shortfall { have: 1, need: 3 });
    assert_eq!(err.more(), 2);
}

#[test]
fn shrinking_gives_no_date_and_no_confidence() {
    let incs = daily(10, |_| -GB);
    let m = fit_rate(&incs, MONDAY + 10.0, 3).unwrap();
    assert!(m.rate_now() < 0.0);
    assert_eq!(m.days_until(10.0 * GB, 20.0 * GB, 3650.0), None);
    assert_eq!(m.confidence(), 0.0);
    // Already over the limit is 0 days, never negative.
    assert_eq!(m.days_until(30.0 * GB, 20.0 * GB, 3650.0), Some(0.0));
}

#[test]
fn a_falling_trend_never_projects_negative_growth() {
    let incs = daily(20, |t| (2.0 - 0.1 * (t - MONDAY)) * GB);
    let m = fit_rate(&incs, MONDAY + 20.0, 3).unwrap();
    assert!(m.rate_now() > 0.0);
    assert!(m.rate_at(MONDAY + 200.0) >= 0.0);
    assert!(m.grown(365.0) >= m.grown(10.0));
}

#[test]
fn noise_widens_the_band_and_lowers_confidence() {
    let clean = fit_rate(&daily(30, |_| GB), MONDAY + 30.0, 3).unwrap();
    let noisy = alternating(0.2 * GB, 1.8 * GB);
    assert!(clean.band(30.0) < 1.0, "{}", clean.band(30.0));
    assert!(noisy.band(30.0) > clean.band(30.0));
    assert!(noisy.confidence() < clean.confidence());
}

#[test]
fn samples_closer_than_a_day_make_no_rate() {
    let hourly: Vec<Point> = (0..=72)
        .map(|h| Point {
            t: MONDAY + h as f64 / 24.0,
            v: 100.0 + h as f64,
        })
        .collect();
    // Days 0, 1, 2 end at hours 23, 47, 71; day 3 has hour 72 only, an
    // hour after day 2's last: too close for a rate.
    let incs = increments_from_samples(&daily_last(&hourly));
    assert_eq!(incs.len(), 2);
    for i in &incs {
        assert!((i.days() - 1.0).abs() < 1e-9);
        assert!((i.rate() - 24.0).abs() < 1e-6);
    }
    // A CLI run minutes after the service's sample adds nothing.
    let close = [
        Point { t: MONDAY, v: 1.0 },
        Point {
            t: MONDAY + 0.01,
            v: 5.0,
        },
    ];
    assert!(increments_from_samples(&close).is_empty());
    // Last of yesterday, then a run just after midnight: too close.
    let midnight = [
        Point {
            t: MONDAY + 0.98,
            v: 1.0,
        },
        Point {
            t: MONDAY + 1.02,
            v: 5.0,
        },
    ];
    assert!(increments_from_samples(&daily_last(&midnight)).is_empty());
}

#[test]
fn daily_peak_keeps_each_days_highest() {
    let pts = [
        Point {
            t: MONDAY + 0.1,
            v: 3.0,
        },
        Point {
            t: MONDAY + 0.6,
            v: 9.0,
        },
        Point {
            t: MONDAY + 1.2,
            v: 4.0,
        },
    ];
    let p = daily_peak(&pts);
    assert_eq!(p.len(), 2);
    assert_eq!(
        p[0],
        Point {
            t: MONDAY + 0.5,
            v: 9.0
        }
    );
}

#[test]
fn predict_linear_extrapolates_its_window() {
    let pts: Vec<Point> = (0..10)
        .map(|k| Point {
            t: k as f64,
            v: 2.0 * k as f64,
        })
        .collect();
    let v = predict_linear(&pts, 9.0, 3.0, 5.0).unwrap();
    assert!((v - 28.0).abs() < 1e-9);
    assert_eq!(predict_linear(&pts, 9.0, 0.1, 5.0), None);
}

#[test]
fn level_trend_reaches_its_limit() {
    let pts: Vec<Point> = (0..10)
        .map(|k| Point {
            t: MONDAY + k as f64,
            v: 50.0 + 2.0 * k as f64,
        })
        .collect();
    let t = fit_level(&pts, MONDAY + 9.0, 3).unwrap();
    assert!((t.slope - 2.0).abs() < 1e-9);
    assert!((t.days_until(68.0, 100.0, 365.0).unwrap() - 16.0).abs() < 1e-9);
    let flat: Vec<Point> = pts.iter().map(|p| Point { t: p.t, v: 50.0 }).collect();
    let f = fit_level(&flat, MONDAY + 9.0, 3).unwrap();
    assert_eq!(f.days_until(50.0, 100.0, 365.0), None);
}

#[test]
fn the_upper_band_is_reached_first() {
    let noisy = alternating(0.5 * GB, 1.5 * GB);
    let central = noisy.days_until(0.0, 20.0 * GB, 365.0).unwrap();
    let early = noisy.days_until_upper(0.0, 20.0 * GB, 365.0).unwrap();
    assert!(early < central, "{early} < {central}");
    assert!(early > 0.0);
    assert_eq!(
        noisy.days_until_upper(30.0 * GB, 20.0 * GB, 365.0),
        Some(0.0)
    );
}

#[test]
fn compounding_growth_is_recognised() {
    // 1 GB/day growing 1 % a day (a share of the size): the straight trend
    // through it runs low at the end; the compounding fit does not.
    let incs = daily(60, |t| GB * (0.01 * (t - MONDAY + 0.5)).exp());
    let now = MONDAY + 60.0;
    let m = fit_rate(&incs, now, 3).unwrap();
    assert!(m.compound.is_some_and(|g| (g - 0.01).abs() < 1e-4), "{m:?}");
    assert!(
        (m.rate_now() / GB / (0.6f64).exp() - 1.0).abs() < 0.01,
        "{m:?}"
    );
    let truth: f64 = (0..30)
        .map(|d| GB * (0.01 * (60.0 + d as f64 + 0.5)).exp())
        .sum();
    assert!((m.grown(30.0) / truth - 1.0).abs() < 0.005);
    // A straight rising rate stays a straight trend.
    let lin = fit_rate(&daily(60, |t| GB * (1.0 + 0.01 * (t - MONDAY))), now, 3).unwrap();
    assert!(lin.compound.is_none(), "{lin:?}");
}
