//! The command line: global flags and subcommands. Parsing only; `main`
//! dispatches to the library.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

const ROOT_EXAMPLES: &str = "\
Examples:
  pgsteward --config /etc/pgsteward/pgsteward.toml check
  pgsteward partitions plan                 # the DDL the next pass would run, changing nothing
  pgsteward partitions apply                # one maintenance pass (CronJob)
  pgsteward lag --output json               # exit 1 when any replica is over threshold
  pgsteward upgrade plan --target-class large
  pgsteward convert plan --table public.events   # partition a live table without copying it
  pgsteward capacity --plot capacity.svg    # when storage, XIDs, sequences, partitions run out
  pgsteward run                             # the service: schedules, /metrics, /healthz, /readyz
  pgsteward demo                            # the whole cycle on a throwaway local cluster

Configuration: --config FILE, else $PGSTEWARD_CONFIG, else /etc/pgsteward/pgsteward.toml;
PGSTEWARD_SECTION__KEY environment variables override the file
(e.g. PGSTEWARD_DATABASE__PRIMARY=postgres://steward@db:5432/app).

Exit codes: 0 done and healthy; 1 an operation failed or a check found a problem;
2 bad usage or configuration.";

#[derive(Debug, Parser)]
#[command(
    name = "pgsteward",
    version,
    about = "Keeps production PostgreSQL healthy as it grows: partitions, replica lag, zero-downtime upgrades",
    after_help = ROOT_EXAMPLES
)]
pub struct Cli {
    /// Configuration file (TOML).
    #[arg(long, global = true, env = "PGSTEWARD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log line format.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "PGSTEWARD_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    /// Log level or tracing filter (`info`, `debug`, `pgsteward=debug,tokio_postgres=warn`).
    #[arg(
        long,
        global = true,
        default_value = "info",
        env = "PGSTEWARD_LOG_LEVEL",
        value_name = "LEVEL"
    )]
    pub log_level: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum OutputFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct OutputArgs {
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub output: OutputFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run as a service: scheduled partition passes and lag checks, plus /metrics, /healthz, /readyz.
    #[command(
        after_help = "Example:\n  pgsteward --config /etc/pgsteward/pgsteward.toml --log-format json run\n\n\
        Runs until SIGTERM or SIGINT. Only the instance holding the advisory lock on the primary runs DDL;\n\
        the others keep checking lag and report pgsteward_leader 0."
    )]
    Run,
    /// Partition maintenance: create ahead, fill gaps, apply retention.
    #[command(subcommand)]
    Partitions(PartitionsCommand),
    /// One lag check of every replica; exit 1 when any is over threshold or unreachable.
    #[command(
        after_help = "Examples:\n  pgsteward lag\n  pgsteward lag --output json | jq '.replicas[] | select(.healthy | not)'"
    )]
    Lag(OutputArgs),
    /// Zero-downtime move of the primary to a larger machine.
    #[command(subcommand)]
    Upgrade(UpgradeCommand),
    /// Turn a plain table into a partitioned one online, without copying rows.
    #[command(subcommand)]
    Convert(ConvertCommand),
    /// Validate the configuration and reach every endpoint it names.
    #[command(
        after_help = "Example:\n  pgsteward --config config/pgsteward.example.toml check --output json"
    )]
    Check(OutputArgs),
    /// Growth and the dates storage, RDS max storage, XIDs, sequences, partitions and connections run out.
    #[command(
        after_help = "Examples:\n  pgsteward capacity\n  pgsteward capacity --horizon 180d --plot capacity.svg\n  \
        pgsteward capacity --output json | jq '.sequences[] | select(.state == \"warning\")'\n\n\
        Exit 1 when something runs out within its warning window (storage 14 days, RDS max_allocated_storage 30,\n\
        wraparound 30, sequences 90, connections 14) or a figure could not be read; the message names the GRANT.\n\
        Each run records a sample on the primary (pgsteward.capacity_samples)."
    )]
    Capacity(CapacityArgs),
    /// The whole cycle on a throwaway local primary + replica + PgBouncer: partitions, lag, upgrade.
    #[command(
        after_help = "Example:\n  pgsteward demo\n\nNeeds the PostgreSQL server programs and PgBouncer \
        (apt-get install -y postgresql pgbouncer). Everything lives in a temporary directory and is removed at the end."
    )]
    Demo(DemoArgs),
    /// The SQL that makes pgsteward's own tables, empty, for a logical subscriber of a publication that covers them.
    #[command(after_help = "Example:\n  \
        pgsteward schema-sql | psql \"postgres://admin@subscriber:5432/app\"\n  \
        psql \"postgres://admin@subscriber:5432/app\" -c 'ALTER SUBSCRIPTION app_sub REFRESH PUBLICATION'\n\n\
        A FOR ALL TABLES (or FOR TABLES IN SCHEMA pgsteward) publication publishes pgsteward's tables too;\n\
        once every subscriber has them, list the publication in database.subscribers_have_pgsteward_schema.\n\
        No configuration is read and nothing is connected to.")]
    SchemaSql,
    /// Shell completions on stdout, generated from this command line's definition.
    #[command(after_help = "Examples:\n  \
        pgsteward completions bash > /etc/bash_completion.d/pgsteward\n  \
        pgsteward completions zsh > \"${fpath[1]}/_pgsteward\"\n  \
        pgsteward completions fish > ~/.config/fish/completions/pgsteward.fish")]
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// The manual page (roff) on stdout, or one page per subcommand with --dir.
    #[command(after_help = "Examples:\n  pgsteward man | man -l -\n  \
        pgsteward man --dir /usr/local/share/man/man1")]
    Man(ManArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ManArgs {
    /// Write pgsteward.1 and a page per subcommand (pgsteward-partitions-apply.1, ...) into DIR.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct CapacityArgs {
    #[command(flatten)]
    pub output: OutputArgs,
    /// How far ahead to project (a duration such as "90d"); warning windows do not depend on it.
    #[arg(long, value_name = "DURATION", default_value = "90d")]
    pub horizon: String,
    /// Also write the charts (history, forecast and band, limit) to this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum PartitionsCommand {
    /// Print the DDL the next pass would run; changes nothing.
    #[command(
        after_help = "Example:\n  pgsteward partitions plan\n  pgsteward partitions plan --output json"
    )]
    Plan(OutputArgs),
    /// One maintenance pass: create the current and premade periods, fill gaps, apply retention.
    #[command(after_help = "Example:\n  pgsteward partitions apply\n\n\
        Exit 1 when any table could not be brought up to date (it is retried on the next pass).")]
    Apply(OutputArgs),
    /// Managed tables, their partitions, coverage ahead, gaps and rows in DEFAULT.
    #[command(after_help = "Example:\n  pgsteward partitions status --output json")]
    Status(OutputArgs),
    /// Archives in object storage ([archive]): bounds, rows, bytes, SHA-256 and the retirement's state.
    #[command(after_help = "Examples:\n  pgsteward partitions archives\n  \
        pgsteward partitions archives --table public.audit_log --output json")]
    Archives {
        /// Only this table's archives.
        #[arg(long, value_name = "SCHEMA.TABLE")]
        table: Option<crate::pg::QualifiedName>,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Restore an archived partition into a new table (default) or as a partition again, verified.
    #[command(after_help = "Examples:\n  \
        pgsteward partitions restore --table public.audit_log --from pgsteward/public.audit_log/20250101T000000Z_20250201T000000Z.copy\n  \
        pgsteward partitions restore --table public.audit_log --from KEY --into restore.audit_log_2025_01\n  \
        pgsteward partitions restore --table public.audit_log --from KEY --attach\n\n\
        Never overwrites: a target that exists is refused. The row count and SHA-256 are checked \
        before the restore commits.")]
    Restore {
        /// The partitioned table the archive was made from.
        #[arg(long, value_name = "SCHEMA.TABLE")]
        table: crate::pg::QualifiedName,
        /// The archive's object key (data or manifest), as `partitions archives` lists it.
        #[arg(long, value_name = "KEY")]
        from: String,
        /// The new table (default: the partition's original name).
        #[arg(long, value_name = "SCHEMA.TABLE")]
        into: Option<crate::pg::QualifiedName>,
        /// Attach the restored table to --table as the partition of its original bounds.
        #[arg(long)]
        attach: bool,
    },
}

#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// The server class to move the primary to (a key of [upgrade.local.classes], or an RDS instance class).
    #[arg(long, value_name = "CLASS")]
    pub target_class: String,
}

#[derive(Debug, Subcommand)]
pub enum UpgradeCommand {
    /// Run the prechecks and print the steps an upgrade would take; changes nothing.
    #[command(after_help = "Example:\n  pgsteward upgrade plan --target-class large")]
    Plan {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Start an upgrade and drive it to the end, printing progress.
    #[command(
        after_help = "Example:\n  pgsteward upgrade start --target-class large\n\n\
        Safe to interrupt: `pgsteward upgrade resume` continues from the journal in upgrade.state_dir."
    )]
    Start {
        #[command(flatten)]
        target: TargetArgs,
    },
    /// The current or last upgrade, step by step.
    #[command(after_help = "Example:\n  pgsteward upgrade status --output json")]
    Status(OutputArgs),
    /// Continue an interrupted upgrade from its journal.
    #[command(after_help = "Example:\n  pgsteward upgrade resume")]
    Resume,
    /// Roll back an upgrade that has not promoted yet and delete its new replica.
    #[command(after_help = "Example:\n  pgsteward upgrade abort")]
    Abort,
    /// The pause keeper a runner arms before PAUSE (internal; see docs/upgrade.md).
    #[command(hide = true)]
    Keeper {
        /// Resume writes for a runner that is still alive after this long.
        #[arg(long)]
        after_ms: u64,
    },
}

#[derive(Debug, Clone, Args)]
pub struct ConvertTable {
    /// The table, SCHEMA.TABLE; it needs a [[partitions.tables]] entry (what it becomes).
    #[arg(long, value_name = "SCHEMA.TABLE")]
    pub table: crate::pg::QualifiedName,
}

#[derive(Debug, Clone, Args)]
pub struct ConvertKey {
    /// The partition key column (default: the table's only timestamptz, timestamp or date column).
    #[arg(long, value_name = "COLUMN")]
    pub key: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ConvertCommand {
    /// What would change, every step with its SQL, or why the table cannot be converted; changes nothing.
    #[command(
        after_help = "Example:\n  pgsteward convert plan --table public.events\n\n\
        Exit 1 when the table cannot be converted (each reason with what to do)."
    )]
    Plan {
        #[command(flatten)]
        table: ConvertTable,
        #[command(flatten)]
        key: ConvertKey,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Convert: build keys and the CHECK online, then swap in one short transaction.
    #[command(
        after_help = "Example:\n  pgsteward convert start --table public.events\n\n\
        Safe to interrupt: `pgsteward convert resume` continues from the journal (pgsteward.conversions)."
    )]
    Start {
        #[command(flatten)]
        table: ConvertTable,
        #[command(flatten)]
        key: ConvertKey,
    },
    /// The table's conversion step by step, who drives it, progress, the first partition.
    #[command(
        after_help = "Example:\n  pgsteward convert status --table public.events --output json"
    )]
    Status {
        #[command(flatten)]
        table: ConvertTable,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Continue an interrupted conversion from its journal.
    #[command(after_help = "Example:\n  pgsteward convert resume --table public.events")]
    Resume {
        #[command(flatten)]
        table: ConvertTable,
    },
    /// Before the swap: remove everything the conversion built.
    #[command(after_help = "Example:\n  pgsteward convert abort --table public.events")]
    Abort {
        #[command(flatten)]
        table: ConvertTable,
    },
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Keep the temporary directory (and stop the servers) instead of removing it.
    #[arg(long)]
    pub keep: bool,
}
