//! pgsteward keeps a PostgreSQL cluster in shape while it grows: partition
//! maintenance, replica lag, online conversion to partitions, and zero-downtime
//! vertical upgrades behind PgBouncer.
//!
//! # The map
//!
//! Every module, ordered by layer from the ground up: a top-level module may
//! import only modules listed ABOVE it (and its own children), never one listed
//! below. A module's children are listed in reading order.
//!
//! * [`outcome`]: [`Outcome`], how a command that ran to completion judged what it saw (exit 0 or 1).
//! * [`output`]: text tables and JSON documents for status-like commands.
//! * [`pg`]: PostgreSQL plumbing shared by every subsystem.
//!   * [`pg::error`]: [`pg::PgError`] and the classification of server errors callers decide on.
//!   * [`pg::ident`]: identifier quoting, qualified names, literals.
//!   * [`pg::sql`]: the statements the plumbing itself runs.
//!   * [`pg::retry`]: lock-race retries: the transient-error classifier, backoff, cancellable waits.
//!   * [`pg::conninfo`]: connection strings parsed (both forms) and redacted the way libpq does.
//!   * [`pg::libpq`]: what a connection string leaves out: `PG*` environment defaults and the password file.
//!   * [`pg::tls`]: rustls for PostgreSQL, following libpq's `sslmode` semantics.
//!   * [`pg::iam`]: RDS IAM authentication tokens as passwords.
//!   * [`pg::spec`]: [`pg::ConnSpec`], a parsed connection string: defaults, `sslmode`, IAM.
//!   * `pg::connect`: connecting under a spec: one connection or a pool, with a deadline.
//! * [`schema`]: versioned migrations of the `pgsteward` schema on the primary, applied by whoever needs them first;
//!   [`schema::published`]: writers of the schema refuse while a publication publishes it to subscribers not declared to have it.
//! * [`privileges`]: what a command needs of the steward's role, checked before acting, with the GRANT to run.
//! * [`workload`]: client load with a ledger of every acknowledged commit and error (the demo, the tests).
//! * [`failpoint`]: named failpoints at step boundaries (the upgrade, convert, archive retirement; test builds only).
//! * [`saga`]: the saga core: a saga as a table of rows (do, undo, point of no return, the kind's column), one
//!   runner generic over the kind that knows no step by name, the journal's store as a seam (starts, completions,
//!   undos), the kind's hooks (region entry, admission, failure policy); failpoints at every boundary. The
//!   vertical upgrade and `convert` run on it.
//! * [`cli`]: the command line (clap), parsing only.
//! * [`tooling`]: shell completions and manual pages, generated from [`cli`].
//! * [`telemetry`]: the tracing subscriber: text or JSON lines on stderr, `--log-level`.
//! * [`localpg`]: PostgreSQL clusters and PgBouncer on this host (local provider, demo, tests).
//!   * `localpg::child`: a child's minimal environment; passwords only through private files.
//!   * `localpg::conf`: the postgresql.conf settings written here, quoted as the server reads them.
//!   * `localpg::watchdog`: `sh` loops that clean up servers once their maker is gone.
//!   * `localpg::majors`: which PostgreSQL majors are installed, and a replica made across majors.
//!   * `localpg::cluster`: one cluster: create, configure, start, stop, setup SQL.
//!   * `localpg::bouncer`: a PgBouncer process for the demo and the tests.
//! * [`config`]: defaults, then TOML, then `PGSTEWARD_` variables; unknown keys refused; validated types,
//!   split by owner: a [`config::Process`] (HTTP, the state root) and the [`config::Cluster`] it serves.
//!   Subsystems take a `&Cluster` or the one section they read; only `service` takes the whole [`config::Config`].
//!   * [`config::units`]: human durations, calendar spans, byte sizes and cron schedules.
//!   * `config::upgrade`: the `[upgrade]` and `[cutover]` sections (provider, pause bounds, PgBouncer).
//!   * `config::cluster`: the file, validated, split into the process and its one cluster (named `default`).
//!   * `config::bounds`: the allowed range of every duration, size and count.
//!   * `config::suggest`: the valid key or value nearest to a mistyped one.
//!   * [`config::indexes`]: declared indexes (`indexes = [...]`), validated, and the SQL made from them.
//! * [`pooler`]: the PgBouncer admin console: PAUSE, RESUME (every instance independently), RELOAD,
//!   the entries that reach the primary; [`pooler::ini`]: the `[databases]` rewrite;
//!   [`pooler::members`]: the instances a name resolves to (a headless Service's pods);
//!   [`pooler::stats`]: the pools' figures and the pre-pause health gate (pure parts).
//! * [`provider`]: makes, describes, promotes and retires the servers of an upgrade.
//!   * `provider::sql`: every statement the providers run, one named constant each (three shared with `upgrade::sql`).
//!   * [`provider::fence`]: the fences themselves (a `pg_hba.conf` block, per-database settings).
//!   * [`provider::settings`]: what a new server copied from the source runs with (standby floors, class over copy).
//!   * [`provider::slotsync`]: what a new server needs to receive PostgreSQL 17+ failover slots (its slot, settings).
//!   * [`provider::local`]: clusters on this host (`pg_basebackup`, `pg_promote()`); `local::running`
//!     its SQL on running servers (a replica repointed, the new server's slot dropped).
//!   * [`provider::rds`]: RDS read replicas, promoted; its children: `api` (the SDK calls behind a
//!     trait), `error`, `ids`, `status`, `poll` (retries and waits), `readers` (readers and the swap).
//! * [`upgrade`]: the persisted, resumable vertical-upgrade saga with its point of no return at promote.
//!   * `upgrade::sql`: every statement the saga runs, one named constant each (the guard's in `guard::sql`).
//!   * [`upgrade::step`]: the steps' names, order and regions (the journal's vocabulary);
//!     [`upgrade::table`]: the saga as an executable table, one row per step ([`upgrade::table::SAGA`]).
//!   * [`upgrade::record`]: step statuses and facts, the legal transitions, the state replayed from the journal.
//!   * [`upgrade::journal`]: the append-only, fsync'd JSONL journal of one upgrade; replay.
//!   * [`upgrade::keeper`]: the pause keeper, a process that closes the write pause of a runner that died in it.
//!   * [`upgrade::window`]: the write pause as a component: its deadline, its measured length, the pause keeper
//!     it arms; the bound of each query inside it.
//!   * [`upgrade::guard`]: one upgrade per cluster (in the database `postgres`): the runner's lock sessions and keepalive;
//!     `guard::read` the guard row as the service, the CronJob and the pass read it.
//!   * [`upgrade::precheck`]: the prechecks as a pure judgement over observed facts;
//!     [`upgrade::privileges`]: the steward's privileges, judged, each missing one with its GRANT.
//!   * [`upgrade::current`]: for other commands: is `database.primary` still the primary; waiting out a cutover.
//!   * [`upgrade::cutover`]: the write pause and the decision to start it; the fence step and the unfences.
//!   * [`upgrade::fence`]: the fence of the old primary as a component with its own state (staged, put up,
//!     lifted, proven), for any upgrade kind; `fence::files` the server's files replaced and synced,
//!     [`upgrade::fence::flush`] the fenced primary's final flush.
//!   * [`upgrade::observe`]: what the prechecks read from the servers (the facts `precheck` judges).
//!   * [`upgrade::steps`]: the body of each step, observe before act; [`upgrade::finish`]: verify and retire_old.
//!   * [`upgrade::swap`]: the steps slow on RDS around the pause: new readers, the identifier swap.
//!   * [`upgrade::saga`]: the context every step runs with (configuration, journal, provider, guard, shared sessions,
//!     one fence and one pause window).
//!   * `upgrade::kind`: the upgrade as a [`saga`] kind: its JSONL store, its write-pause and guard hooks, its
//!     failure policy (roll back before promote, needs resume after).
//!   * [`upgrade::runner`]: where a run starts (the pure recovery decision) and ends, on the [`saga`] core.
//!   * [`upgrade::rescue`]: the pause keeper's process: closes the window of a runner gone or stuck.
//! * [`lag`]: replica lag, `pgsteward lag`.
//!   * `lag::sql`: the lag queries, one named constant each.
//!   * [`lag::observe`]: reads the primary and every replica on pooled connections with timeouts.
//!   * [`lag::evaluate`](mod@lag::evaluate): the pure verdict on one replica.
//! * [`archive`]: partition archives in S3-compatible object storage: text COPY streamed into
//!   multipart uploads (bounded memory, SHA-256 on the fly), manifests, read-back verification,
//!   restore; `archive::store` the client (checksums "when required", every call bounded).
//! * [`partitions`]: partition maintenance: the pass and `pgsteward partitions plan|apply|status`.
//!   * `partitions::sql`: the pass's static queries, one named constant each.
//!   * [`partitions::model`]: the vocabulary: key values, catalog facts, actions.
//!   * [`partitions::needs`]: the privileges a pass needs, for [`privileges::check`].
//!   * [`partitions::period`]: the grid of periods in a table's zone; partition names.
//!   * [`partitions::catalog`]: every managed table read in one query.
//!   * [`partitions::plan`]: the pure planner: desired vs. existing partitions.
//!   * [`partitions::access`]: pure: what each partition's owner, grants, row-level security and
//!     replica identity must be given the parent's now, and the repairs.
//!   * [`partitions::ddl`]: the DDL text, identifiers quoted.
//!   * [`partitions::session`]: the session a pass talks through.
//!   * [`partitions::blockers`]: who holds the lock a statement gave up on.
//!   * [`partitions::probe`]: what DEFAULT holds of a new range and who publishes it; the pure
//!     decision how the partition is attached, or the refusal (`plan` and `apply`).
//!   * [`partitions::standby`]: hot standbys and the pass's replayed ACCESS EXCLUSIVE locks: which
//!     steps take one, waiting for standby queries (`standby_lock_wait`), `check`'s verdict.
//!   * [`partitions::apply`]: lock-safe execution of a plan (with `attach`: one new partition;
//!     `guards`: the foreign keys and triggers a move must not fire).
//!   * [`partitions::report`]: what a pass did, per table.
//!   * `partitions::converting`: tables `convert` is working on, which the pass leaves alone.
//!   * [`partitions::retire`]: `retention_mode = "archive"`: the persisted retirement
//!     (detaching → detached → uploaded → verified → dropped), `partitions archives|restore`.
//!   * [`partitions::indexes`]: declared indexes read (`catalog`), compared (`drift`, pure), built online (`build`).
//! * [`convert`]: online conversion of a plain table into a partitioned one, no rows copied.
//!   * `convert::plan`, `convert::refuse`, `convert::ddl`: the pure half: boundary, names, refusals, each step's SQL.
//!   * `convert::sql`, `convert::inspect`, `convert::journal`, `convert::index`: static queries,
//!     reading, journaling, the unique index builds.
//!   * [`convert::table`]: the conversion as a [`saga`] table (its store the journal row);
//!     `convert::steps` the bodies of its steps and undos.
//! * [`capacity`]: capacity planning, `pgsteward capacity`: when storage, XIDs, sequences, partitions, connections run out.
//!   * [`capacity::forecast`]: the model, pure: rates from increments, trend, weekly term, dates.
//!   * `capacity::model`, `capacity::sql`, [`capacity::observe`]: what a run reads from the primary.
//!   * [`capacity::samples`]: the run's samples in `pgsteward.capacity_samples`; the history read back.
//!   * [`capacity::aws`]: RDS allocated/maximum storage and CloudWatch `FreeStorageSpace`.
//!   * [`capacity::evaluate`] (growth, storage) and [`capacity::limits`] (XIDs, sequences,
//!     connections, coverage): the verdicts, pure.
//!   * [`capacity::report`] (the JSON contract), [`capacity::assemble`] (pure), [`capacity::render`]
//!     (text, sparklines), [`capacity::plot`] (`--plot FILE.svg`).
//! * [`check`]: `pgsteward check`: the configuration and every endpoint it names.
//! * [`metrics`]: the Prometheus registry, every `pgsteward_*` metric, bounded labels.
//!   * [`metrics::capacity`]: the `pgsteward_capacity_*` metrics from a capacity report.
//!   * [`metrics::pooler`]: the `pgsteward_pgbouncer_*` metrics, every instance's pools.
//! * [`http`]: `/metrics`, `/healthz`, `/readyz`.
//! * [`service`]: `pgsteward run`: the jobs on their cron schedules until a signal.
//!   * [`service::scheduler`]: one loop per job, no overlap.
//!   * [`service::leader`]: the advisory lock on the primary; only the leader runs DDL.
//!   * [`service::shutdown`]: the signal, and named tasks drained with a deadline.
//! * [`demo`]: the whole cycle on a throwaway local primary, replica and PgBouncer.
//! * [`error`]: [`Error`], every subsystem's error, which decides the process exit code.
//!
//! The binary (`main.rs`) parses the command line, loads the configuration and
//! dispatches to these modules.

// An `unwrap` outside tests is a panic nobody decided on: return the error,
// or `expect` with the invariant that makes it impossible.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

// rustfmt keeps these sorted; the layer order is the map above.
pub mod archive;
pub mod capacity;
pub mod check;
pub mod cli;
pub mod config;
pub mod convert;
pub mod demo;
pub mod error;
pub mod failpoint;
pub mod heap;
pub mod http;
pub mod lag;
pub mod localpg;
pub mod metrics;
pub mod outcome;
pub mod output;
pub mod partitions;
pub mod pg;
pub mod pooler;
pub mod privileges;
pub mod provider;
pub mod saga;
pub mod schema;
pub mod service;
pub mod telemetry;
pub mod tooling;
pub mod upgrade;
pub mod workload;

pub use error::Error;
pub use outcome::Outcome;
