//! The vertical-upgrade saga: a persisted, resumable sequence of nineteen
//! steps with a point of no return at promote (design: "Vertical upgrade").
//!
//! The saga, from the bottom up:
//! * `sql`: every statement the saga runs, named (the guard's own are `guard::sql`).
//! * `step`: the steps' names, order, regions and the pause window (the journal's vocabulary).
//! * `record`: statuses and legal transitions; the state rebuilt from the journal.
//! * `journal`: the append-only, fsync'd JSONL file in `upgrade.state_dir`.
//! * `window`: the write pause as a component (its deadline, its measured
//!   length, the pause keeper), and the query bound inside it.
//! * `fence`: the fence of the old primary as a component (staged, put up,
//!   lifted and proven), whatever upgrade kind drives it.
//! * `saga`: the context every step runs with (it holds one fence and one
//!   window), and its progress lines.
//! * `table`: the saga as an executable table of the core (`crate::saga`),
//!   one row per step (do, undo, and the upgrade's column: guard move, when
//!   it has work); `table_doc` holds docs/upgrade.md to it.
//! * `kind`: the upgrade as a saga kind: its journal as the core's store,
//!   the write pause's region entry and the guard check as hooks, the
//!   failure policy (undo before promote, forward after).
//! * `runner`: the pure `recovery` decision after a crash, then the core's
//!   runner over the table; the pause keeper's run up to the window's end.
//!
//! The step bodies (each observes, then acts):
//! * `steps`: prechecks, the new server, catch-up, PAUSE, final sync, promote, repoint.
//! * `session`: the saga's direct sessions to the servers (keepalives, a
//!   server-side statement_timeout).
//! * `cutover`: the write pause (pause_writes to resume_writes) and the pure catch-up gate;
//!   the fence step and the unfences, as calls into the fence component.
//! * `undo`: the roll back's undos.
//! * `swap`: new readers before the pause; identifier swap and read move after it.
//! * `finish`: verify through the pooler, repoint local replicas, retire the old servers.
//! * `carry`: the physical slots made on the new server before the pause.
//!
//! * `error`: `UpgradeError`; `commands`: start, resume, abort, status, the keeper's run.
//!
//! Around the saga:
//! * `guard`: one upgrade per cluster (the guard row and its advisory lock), and the DDL gate.
//! * `keeper` and `rescue`: a write pause whose runner died is closed (a child process; the service).
//! * `current`: whether `database.primary` is still the primary, and waiting out a cutover (other commands).
//! * `precheck`, `observe`, `privileges`, `slots`: what `upgrade plan` and the prechecks read and judge.
//! * `plan`: `upgrade plan`, only the steps this provider and cutover run.

mod carry;
mod carry_logical;
mod claim;
mod commands;
pub mod current;
pub mod cutover;
mod error;
pub mod fence;
pub mod finish;
pub mod gate;
pub mod guard;
pub mod journal;
pub mod keeper;
mod kind;
pub mod observe;
pub mod plan;
pub mod precheck;
pub mod privileges;
pub mod record;
pub mod rescue;
pub mod runner;
pub mod saga;
pub mod session;
pub mod slots;
mod sql;
pub mod step;
pub mod steps;
pub mod swap;
pub mod table;
#[cfg(test)]
mod table_doc;
mod undo;
pub mod window;

pub use commands::{
    abort, abort_command, keeper_command, resume, resume_command, start, start_command, start_with,
    status_command, step_timings, RunSummary,
};
pub use current::ensure_primary_current;
pub use error::UpgradeError;
pub use gate::{DdlGate, Gate};
pub use plan::{plan_command, plan_with};
