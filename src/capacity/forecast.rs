//! The forecasting model: pure arithmetic over observations, unit-tested on
//! synthetic traces (`forecast_tests.rs`) and measured in the accuracy
//! benchmark.
//!
//! Time is in days (f64, since the Unix epoch, UTC); quantities are whatever
//! the caller measures (bytes, XIDs, sequence values, connections).
//!
//! Two shapes of input:
//! * **growth** (sizes, XIDs consumed, sequence values): observed as
//!   [`Increment`]s, an amount added over an interval. A closed partition is
//!   one (its bytes over its period); two size samples a day or more apart
//!   are another ([`increments_from_samples`]). The rate per day is fitted
//!   with weighted least squares as `a + b·(t − now)` (the trend), plus an
//!   additive weekly term once there are three weeks of daily increments.
//!   Longer intervals weigh more: a month of growth says more than a day.
//! * **levels** (daily peak connections): a straight line through the points.
//!
//! Invariants: a model is never made from fewer observations than it needs
//! ([`Shortfall`] says how many more); a projection never goes below zero; a
//! rate at or below zero never yields a date ("not growing"), so shrinking
//! tables give no negative days.

/// Seconds per day.
pub const DAY_SECONDS: f64 = 86_400.0;

/// Two samples closer than this never make a rate: sizes move in pages and
/// by relation extension, and hourly traffic swings. Samples are first
/// reduced to the last one of each UTC day ([`daily_last`]), so rates are
/// drawn over about a day; the margin below a day absorbs a CLI run late in
/// one day against the service's sample at the same hour the next.
pub const MIN_RATE_SPAN_DAYS: f64 = 0.75;

/// Increments before a trend (slope) is fitted; below it the rate is the
/// weighted mean (a slope through three points extrapolates too wildly).
const TREND_MIN: usize = 4;
/// Daily increments spanning this many days turn the weekly term on.
const WEEKLY_MIN_DAYS: f64 = 21.0;
/// Observations at which the history factor of [`RateModel::confidence`] is 1.
const FULL_CONFIDENCE_N: f64 = 8.0;
/// Older observations weigh less: half as much every this many days before
/// now (or every four observation intervals, when they are longer, so
/// monthly partitions keep a trend through several months). Growth that
/// accelerates (compounding) is then trended from what it is lately, not
/// from a straight line through a year of it.
const HALF_LIFE_DAYS: f64 = 21.0;
const HALF_LIFE_INTERVALS: f64 = 4.0;
/// z for the two-sided 95 % band.
const Z95: f64 = 1.96;

/// A measured value at a time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Days since the Unix epoch.
    pub t: f64,
    pub v: f64,
}

/// `amount` added between `t0` and `t1` (days; `t1 > t0`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Increment {
    pub t0: f64,
    pub t1: f64,
    pub amount: f64,
}

impl Increment {
    pub fn days(&self) -> f64 {
        self.t1 - self.t0
    }
    pub fn rate(&self) -> f64 {
        self.amount / self.days()
    }
}

/// Not enough history for a model: `have` observations, `need` in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shortfall {
    pub have: usize,
    pub need: usize,
}

impl Shortfall {
    pub fn more(&self) -> usize {
        self.need.saturating_sub(self.have)
    }
}

/// A fitted growth rate.
#[derive(Debug, Clone, PartialEq)]
pub struct RateModel {
    /// "Now": the model's origin, days since the epoch.
    pub t_ref: f64,
    /// Rate per day at `t_ref` (weekly term averaged out).
    pub a: f64,
    /// Change of the rate per day, per day, at `t_ref` (0 without a trend).
    pub b: f64,
    /// `Some(g)` when growth compounds: the rate grows by the factor
    /// `e^(g·days)` (chosen when it fits better than a straight trend).
    pub compound: Option<f64>,
    var_a: f64,
    var_b: f64,
    cov_ab: f64,
    /// Additive rate per UTC weekday (Monday = 0), mean 0, once fitted.
    pub weekly: Option<[f64; 7]>,
    /// Observations the model was fitted on.
    pub n: usize,
}

/// The UTC weekday (Monday = 0) of a day number since the epoch (a Thursday).
pub fn weekday(t: f64) -> usize {
    ((t.floor() as i64 + 3).rem_euclid(7)) as usize
}

/// The last sample of each UTC day, in time order.
pub fn daily_last(points: &[Point]) -> Vec<Point> {
    let mut out: Vec<Point> = Vec::new();
    for p in sorted(points) {
        match out.last_mut() {
            Some(l) if l.t.floor() == p.t.floor() => *l = p,
            _ => out.push(p),
        }
    }
    out
}

/// The highest sample of each UTC day, placed at noon of that day.
pub fn daily_peak(points: &[Point]) -> Vec<Point> {
    let mut out: Vec<Point> = Vec::new();
    for p in sorted(points) {
        let noon = p.t.floor() + 0.5;
        match out.last_mut() {
            Some(l) if l.t == noon => l.v = l.v.max(p.v),
            _ => out.push(Point { t: noon, v: p.v }),
        }
    }
    out
}

fn sorted(points: &[Point]) -> Vec<Point> {
    let mut pts: Vec<Point> = points
        .iter()
        .copied()
        .filter(|p| p.t.is_finite() && p.v.is_finite())
        .collect();
    pts.sort_by(|x, y| x.t.total_cmp(&y.t));
    pts
}

/// Increments from samples of a growing quantity: greedy from the oldest,
/// each ending at the first sample at least [`MIN_RATE_SPAN_DAYS`] after the
/// previous end. Samples closer together are skipped, never divided by.
/// Input need not be sorted; non-finite values are dropped.
pub fn increments_from_samples(points: &[Point]) -> Vec<Increment> {
    let pts = sorted(points);
    let mut out = Vec::new();
    let Some(mut anchor) = pts.first().copied() else {
        return out;
    };
    for p in pts.iter().skip(1) {
        if p.t - anchor.t >= MIN_RATE_SPAN_DAYS {
            out.push(Increment {
                t0: anchor.t,
                t1: p.t,
                amount: p.v - anchor.v,
            });
            anchor = *p;
        }
    }
    out
}

/// Fits the rate model on `incs` with its origin at `t_ref`. `need` is the
/// fewest increments the caller accepts (at least 1).
pub fn fit_rate(incs: &[Increment], t_ref: f64, need: usize) -> Result<RateModel, Shortfall> {
    let incs: Vec<&Increment> = incs
        .iter()
        .filter(|i| i.days() > 0.0 && i.amount.is_finite())
        .collect();
    let need = need.max(1);
    if incs.len() < need {
        return Err(Shortfall {
            have: incs.len(),
            need,
        });
    }
    let n = incs.len();
    // Weights: interval lengths, halved every HALF_LIFE_DAYS back from now,
    // normalised to sum to n so the residual variance keeps the units of a
    // single observation.
    let mut lengths: Vec<f64> = incs.iter().map(|i| i.days()).collect();
    lengths.sort_by(f64::total_cmp);
    let half_life = HALF_LIFE_DAYS.max(HALF_LIFE_INTERVALS * lengths[lengths.len() / 2]);
    let raw: Vec<f64> = incs
        .iter()
        .map(|i| {
            let age = (t_ref - (i.t0 + i.t1) / 2.0).max(0.0);
            i.days() * 0.5f64.powf(age / half_life)
        })
        .collect();
    let total: f64 = raw.iter().sum();
    let w: Vec<f64> = raw.iter().map(|r| r * n as f64 / total).collect();
    let x: Vec<f64> = incs.iter().map(|i| (i.t0 + i.t1) / 2.0 - t_ref).collect();
    let y: Vec<f64> = incs.iter().map(|i| i.rate()).collect();

    let trend = n >= TREND_MIN;
    let (mut a, mut b, mut var_a, mut var_b, mut cov_ab) = wls(&x, &y, &w, trend);

    // Weekly term: daily increments over three weeks or more. Residuals of
    // the trend, averaged per weekday and centred, then the trend refitted on
    // the deseasonalised rates.
    let daily = incs.iter().all(|i| i.days() < 1.5);
    let span = incs.last().map_or(0.0, |l| l.t1) - incs.first().map_or(0.0, |f| f.t0);
    let mut weekly = None;
    if daily && span >= WEEKLY_MIN_DAYS {
        let mut cnt = [0.0; 7];
        for inc in &incs {
            cnt[weekday(inc.t0 + 0.5 * inc.days())] += 1.0;
        }
        if cnt.iter().all(|c| *c >= 2.0) {
            // Backfitting: the weekday means and the trend are estimated in
            // turn until they settle (a partial week at either end couples them).
            let days: Vec<usize> = incs
                .iter()
                .map(|i| weekday(i.t0 + 0.5 * i.days()))
                .collect();
            let mut s = [0.0; 7];
            for _ in 0..8 {
                let mut sum = [0.0; 7];
                for (k, d) in days.iter().enumerate() {
                    sum[*d] += y[k] - (a + b * x[k]);
                }
                for d in 0..7 {
                    s[d] = sum[d] / cnt[d];
                }
                let mean = s.iter().sum::<f64>() / 7.0;
                for v in &mut s {
                    *v -= mean;
                }
                let adjusted: Vec<f64> =
                    days.iter().enumerate().map(|(k, d)| y[k] - s[*d]).collect();
                (a, b, var_a, var_b, cov_ab) = wls(&x, &adjusted, &w, trend);
            }
            weekly = Some(s);
        }
    }
    // Compounding: the log of the (deseasonalised) rate on a straight line,
    // kept when it explains the rates better than the straight trend does.
    // Growth of a database is often a share of its size (10× a year); a
    // straight trend through a curve runs below it at the end, and an alert
    // drawn from it comes late.
    let adjusted: Vec<f64> = incs
        .iter()
        .enumerate()
        .map(|(k, i)| y[k] - weekly.map_or(0.0, |s| s[weekday(i.t0 + 0.5 * i.days())]))
        .collect();
    let mut compound = None;
    if trend && adjusted.iter().all(|r| *r > 0.0) {
        let logs: Vec<f64> = adjusted.iter().map(|r| r.ln()).collect();
        let (la, lb, lva, lvb, lcov) = wls(&x, &logs, &w, true);
        let sse = |f: &dyn Fn(f64) -> f64| -> f64 {
            x.iter()
                .zip(&adjusted)
                .zip(&w)
                .map(|((x, y), w)| w * (y - f(*x)).powi(2))
                .sum()
        };
        let linear = sse(&|x| a + b * x);
        let exp = sse(&|x| (la + lb * x).exp());
        if lb > 0.0 && exp < linear {
            let r0 = la.exp();
            // The delta method: the log's variances scaled by the rate².
            (a, b, var_a, var_b, cov_ab) =
                (r0, r0 * lb, r0 * r0 * lva, r0 * r0 * lvb, r0 * r0 * lcov);
            compound = Some(lb);
        }
    }
    Ok(RateModel {
        t_ref,
        a,
        b,
        compound,
        var_a,
        var_b,
        cov_ab,
        weekly,
        n,
    })
}

/// Weighted least squares of `y` on `x` (`trend`) or on a constant:
/// (a, b, var a, var b, cov ab).
fn wls(x: &[f64], y: &[f64], w: &[f64], trend: bool) -> (f64, f64, f64, f64, f64) {
    let n = x.len() as f64;
    let sw: f64 = w.iter().sum();
    let swx: f64 = w.iter().zip(x).map(|(w, x)| w * x).sum();
    let swy: f64 = w.iter().zip(y).map(|(w, y)| w * y).sum();
    let swxx: f64 = w.iter().zip(x).map(|(w, x)| w * x * x).sum();
    let swxy: f64 = w.iter().zip(x).zip(y).map(|((w, x), y)| w * x * y).sum();
    let det = sw * swxx - swx * swx;
    let sloped = trend && det.abs() > 1e-12 * sw * swxx.max(1.0);
    let (a, b) = if sloped {
        (
            (swy * swxx - swx * swxy) / det,
            (sw * swxy - swx * swy) / det,
        )
    } else {
        (swy / sw, 0.0)
    };
    let p = if sloped { 2.0 } else { 1.0 };
    let rss: f64 = w
        .iter()
        .zip(x)
        .zip(y)
        .map(|((w, x), y)| w * (y - a - b * x).powi(2))
        .sum();
    // One observation has no spread: its variance is unknown, taken as the
    // rate's own square (confidence 0), never as exact.
    let s2 = if n > p {
        rss / (n - p)
    } else {
        (swy / sw).powi(2)
    };
    if sloped {
        (a, b, s2 * swxx / det, s2 * sw / det, -s2 * swx / det)
    } else {
        (a, b, s2 / sw, 0.0, 0.0)
    }
}

impl RateModel {
    /// Rate per day at time `t`, weekly term included; never below zero
    /// once extrapolated past `t_ref` (a falling trend says growth slows,
    /// not that data will delete itself).
    pub fn rate_at(&self, t: f64) -> f64 {
        let s = self.weekly.map_or(0.0, |w| w[weekday(t)]);
        let trend = match self.compound {
            Some(g) => self.a * (g * (t - self.t_ref)).exp(),
            None => self.a + self.b * (t - self.t_ref),
        };
        let r = trend + s;
        if t > self.t_ref && self.a > 0.0 {
            r.max(0.0)
        } else {
            r
        }
    }

    /// The rate today with the weekly term averaged out: "grows by this much
    /// per day now".
    pub fn rate_now(&self) -> f64 {
        self.a
    }

    /// Amount added from `t_ref` over the next `h` days (integrated per
    /// day, so the weekly term and the non-negative clamp are honoured).
    pub fn grown(&self, h: f64) -> f64 {
        if h <= 0.0 {
            return 0.0;
        }
        let steps = (h.ceil() as usize).max(1);
        let dt = h / steps as f64;
        (0..steps)
            .map(|k| self.rate_at(self.t_ref + (k as f64 + 0.5) * dt) * dt)
            .sum()
    }

    /// Half-width of the 95 % band of [`RateModel::grown`] at `h` days: the
    /// standard error of the mean rate over `[0, h]`, times `h`.
    pub fn band(&self, h: f64) -> f64 {
        let m = h / 2.0;
        let var = self.var_a + m * m * self.var_b + 2.0 * m * self.cov_ab;
        // Compounding: the variances are of the log's line (scaled by the
        // rate now); the mean rate over [0, h] is larger by the growth.
        let scale = self.compound.map_or(1.0, |g| (g * m).exp());
        Z95 * var.max(0.0).sqrt() * scale * h.max(0.0)
    }

    /// A measure in [0, 1]: 1 − the relative standard error of today's rate,
    /// scaled down while there are fewer than eight observations. 0 when the
    /// rate is not positive (no date is drawn from it).
    pub fn confidence(&self) -> f64 {
        if self.a <= 0.0 {
            return 0.0;
        }
        let rel = self.var_a.max(0.0).sqrt() / self.a;
        let history = (self.n as f64 / FULL_CONFIDENCE_N).min(1.0);
        ((1.0 - rel).clamp(0.0, 1.0) * history * 100.0).round() / 100.0
    }

    /// Days from `t_ref` until `current + grown(d)` reaches `limit`, searched
    /// up to `max_days`; `Some(0)` when already there; `None` when not
    /// reached (or not growing). Bisected within the crossing day.
    pub fn days_until(&self, current: f64, limit: f64, max_days: f64) -> Option<f64> {
        if current >= limit {
            return Some(0.0);
        }
        if self.a <= 0.0 && self.b <= 0.0 {
            return None;
        }
        let mut level = current;
        let mut day = 0.0;
        while day < max_days {
            let step = (max_days - day).min(1.0);
            let add = self.rate_at(self.t_ref + day + step / 2.0) * step;
            if level + add >= limit {
                // Linear within the day.
                let frac = if add > 0.0 {
                    (limit - level) / add
                } else {
                    0.0
                };
                return Some(day + step * frac.clamp(0.0, 1.0));
            }
            level += add;
            day += step;
        }
        None
    }
}

impl RateModel {
    /// Like [`RateModel::days_until`], on the upper edge of the 95 % band:
    /// the earliest the limit may plausibly be reached. Storage warns on it,
    /// so an alert comes early rather than late when growth is noisy.
    pub fn days_until_upper(&self, current: f64, limit: f64, max_days: f64) -> Option<f64> {
        if current >= limit {
            return Some(0.0);
        }
        let reach = |h: f64| current + self.grown(h) + self.band(h);
        let mut day = 0.0;
        while day < max_days {
            let next = (day + 1.0).min(max_days);
            let (lo, hi) = (reach(day), reach(next));
            if hi >= limit {
                let frac = if hi > lo {
                    (limit - lo) / (hi - lo)
                } else {
                    0.0
                };
                return Some(day + (next - day) * frac.clamp(0.0, 1.0));
            }
            day = next;
        }
        None
    }
}

/// A straight line through level observations (daily peaks): value at
/// `t_ref` and slope per day.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LevelTrend {
    pub t_ref: f64,
    pub level: f64,
    pub slope: f64,
    pub n: usize,
}

pub fn fit_level(points: &[Point], t_ref: f64, need: usize) -> Result<LevelTrend, Shortfall> {
    let need = need.max(2);
    if points.len() < need {
        return Err(Shortfall {
            have: points.len(),
            need,
        });
    }
    let x: Vec<f64> = points.iter().map(|p| p.t - t_ref).collect();
    let y: Vec<f64> = points.iter().map(|p| p.v).collect();
    let w = vec![1.0; points.len()];
    let (a, b, ..) = wls(&x, &y, &w, true);
    Ok(LevelTrend {
        t_ref,
        level: a,
        slope: b,
        n: points.len(),
    })
}

impl LevelTrend {
    /// Days until the trend line reaches `limit` (None when flat or falling);
    /// counted from the last observed level `current` when that is higher.
    pub fn days_until(&self, current: f64, limit: f64, max_days: f64) -> Option<f64> {
        let start = self.level.max(current);
        if start >= limit {
            return Some(0.0);
        }
        if self.slope <= 0.0 {
            return None;
        }
        let d = (limit - start) / self.slope;
        (d <= max_days).then_some(d)
    }
}

/// `predict_linear` as Prometheus computes it: least squares over the
/// samples in `[t_end − window, t_end]`, the line's value `h` days after
/// `t_end`. The peer the accuracy benchmark compares against.
pub fn predict_linear(points: &[Point], t_end: f64, window: f64, h: f64) -> Option<f64> {
    let sel: Vec<&Point> = points
        .iter()
        .filter(|p| p.t <= t_end && p.t >= t_end - window)
        .collect();
    if sel.len() < 2 {
        return None;
    }
    let x: Vec<f64> = sel.iter().map(|p| p.t - t_end).collect();
    let y: Vec<f64> = sel.iter().map(|p| p.v).collect();
    let w = vec![1.0; sel.len()];
    let (a, b, ..) = wls(&x, &y, &w, true);
    Some(a + b * h)
}

#[cfg(test)]
#[path = "forecast_tests.rs"]
mod tests;
