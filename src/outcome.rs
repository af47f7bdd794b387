//! How a command or a job ended: [`Outcome`] when it ran to completion,
//! [`ErrorLabel`] naming the kind of failure when it did not. The ground
//! floor: every subsystem returns an `Outcome` and labels its error, and this
//! module imports nothing, so no subsystem reaches up for either.

/// How a command that ran to completion judged what it saw: exit 0 or 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Healthy,
    /// The command worked but found a problem (lag over threshold, a table
    /// that could not be brought up to date, an unreachable endpoint).
    Problem,
}

impl Outcome {
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Healthy => 0,
            Outcome::Problem => 1,
        }
    }

    pub fn and(self, other: Outcome) -> Outcome {
        if self == Outcome::Healthy && other == Outcome::Healthy {
            Outcome::Healthy
        } else {
            Outcome::Problem
        }
    }
}

/// The fixed set of failure kinds a metric may carry
/// (`pgsteward_job_failures_total{error=...}`): bounded cardinality, and one
/// place that lists them. Each subsystem's error names its own through a
/// `metric_label()` method; the service's jobs add the findings that fail a
/// job without an error value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorLabel {
    Config,
    Postgres,
    LocalServer,
    Partitions,
    Lag,
    Service,
    Upgrade,
    Convert,
    Capacity,
    Schema,
    Demo,
    /// A PgBouncer admin endpoint's name did not resolve (the pool metrics job).
    Pooler,
    /// The lag job could not reach the primary.
    PrimaryUnreachable,
    /// The configured primary is in recovery (a replica).
    PrimaryInRecovery,
    /// The pass ran, but at least one table or its indexes failed.
    Table,
}

impl ErrorLabel {
    /// The label value as exported; stable, since dashboards and alerts match on it.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorLabel::Config => "config",
            ErrorLabel::Postgres => "postgres",
            ErrorLabel::LocalServer => "local_server",
            ErrorLabel::Partitions => "partitions",
            ErrorLabel::Lag => "lag",
            ErrorLabel::Service => "service",
            ErrorLabel::Upgrade => "upgrade",
            ErrorLabel::Convert => "convert",
            ErrorLabel::Capacity => "capacity",
            ErrorLabel::Schema => "schema",
            ErrorLabel::Demo => "demo",
            ErrorLabel::Pooler => "pooler",
            ErrorLabel::PrimaryUnreachable => "primary_unreachable",
            ErrorLabel::PrimaryInRecovery => "primary_in_recovery",
            ErrorLabel::Table => "table",
        }
    }
}

impl std::fmt::Display for ErrorLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
