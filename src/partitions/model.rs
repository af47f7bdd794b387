//! The vocabulary of partition maintenance: key values, what the catalog says
//! about a table, and the actions a plan is made of. No logic beyond accessors.
//!
//! Key values are `i64` microseconds: UTC instants for `timestamptz` keys and
//! wall-clock values read as if UTC for `timestamp`/`date` keys. One ordering
//! serves every key type, and MINVALUE/MAXVALUE are `i64::MIN`/`i64::MAX`.

use serde::Serialize;

use crate::pg::QualifiedName;

pub type Key = i64;
pub const KEY_MIN: Key = i64::MIN;
pub const KEY_MAX: Key = i64::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyType {
    Timestamptz,
    Timestamp,
    Date,
}

impl KeyType {
    /// From `format_type`/`regtype` output; `None` for key types we do not manage.
    pub fn from_sql(name: &str) -> Option<KeyType> {
        match name {
            "timestamp with time zone" | "timestamptz" => Some(KeyType::Timestamptz),
            "timestamp without time zone" | "timestamp" => Some(KeyType::Timestamp),
            "date" => Some(KeyType::Date),
            _ => None,
        }
    }
    pub(crate) fn sql_type(self) -> &'static str {
        match self {
            KeyType::Timestamptz => "timestamp with time zone",
            KeyType::Timestamp => "timestamp without time zone",
            KeyType::Date => "date",
        }
    }
}

/// A half-open key range `[lo, hi)`, as a range partition's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Range {
    pub lo: Key,
    pub hi: Key,
}

impl Range {
    pub fn overlaps(&self, other: &Range) -> bool {
        self.lo < other.hi && other.lo < self.hi
    }
}

/// One attached partition as the catalog shows it.
#[derive(Debug, Clone)]
pub struct ExistingPartition {
    pub name: QualifiedName,
    /// `None` when the bound expression could not be read (reported, never touched).
    pub range: Option<Range>,
    /// Left by an interrupted `DETACH ... CONCURRENTLY`.
    pub detach_pending: bool,
    /// Some foreign key references this partition: retention leaves it alone.
    pub fk_referenced: bool,
}

#[derive(Debug, Clone)]
pub struct DefaultPartition {
    pub name: QualifiedName,
    /// Exact 0 when the relation is empty on disk, else the planner's estimate.
    pub rows_estimate: u64,
    /// Our exclusion CHECKs left behind by an interrupted attach.
    pub pgsteward_checks: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize)]
pub struct Grant {
    /// A role name, or `PUBLIC`.
    pub grantee: String,
    pub privilege: String,
    pub grantable: bool,
}

/// What the catalog says about one managed, validly partitioned table.
#[derive(Debug, Clone)]
pub struct TableState {
    pub table: QualifiedName,
    pub oid: u32,
    pub key_column: String,
    pub key_type: KeyType,
    pub owner: String,
    pub grants: Vec<Grant>,
    pub partitions: Vec<ExistingPartition>,
    pub default: Option<DefaultPartition>,
    /// The parent's row-level security, enabled and forced.
    pub row_security: bool,
    pub force_row_security: bool,
    /// The parent's `relreplident`: `d`, `f`, `n` or `i`.
    pub replica_identity: String,
    /// The parent's owner may create in its schema: `ALTER TABLE ... OWNER
    /// TO` it, which every new partition gets, needs that.
    pub owner_can_create: bool,
    /// Partitions whose access differs from what the parent implies now
    /// (empty for almost every table: the catalog query describes only these).
    pub access_drift: Vec<PartitionAccess>,
}

/// One partition's access as the catalog shows it, when it differs from the
/// parent's (`partitions::access` decides what to repair).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct PartitionAccess {
    pub schema: String,
    pub name: String,
    pub is_default: bool,
    pub owner: String,
    /// The role DDL runs as acts as the owner: it can repair the partition.
    pub manageable: bool,
    /// Every privilege, the owner's own included (`aclexplode`).
    pub grants: Vec<Grant>,
    pub row_security: bool,
    pub force_row_security: bool,
    pub replica_identity: String,
    /// The partition's index attached to the parent's replica identity
    /// index, quoted; `None` when there is none (or the parent has none).
    pub identity_index: Option<String>,
    /// Policies of its own.
    pub policies: i32,
}

/// One change that makes a partition's access what the parent implies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "repair", rename_all = "snake_case")]
pub enum AccessRepair {
    Owner {
        to: String,
    },
    Revoke {
        grantee: String,
        privilege: String,
        grant_option_only: bool,
    },
    Grant {
        grantee: String,
        privilege: String,
        grantable: bool,
    },
    RowSecurity {
        enable: bool,
    },
    ForceRowSecurity {
        force: bool,
    },
    /// `FULL`, `NOTHING`, `DEFAULT`, or `USING INDEX` with the quoted index.
    ReplicaIdentity {
        what: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CreateReason {
    /// The period "now" falls in.
    Current,
    /// Ahead of the current period, up to `premake`.
    Premake,
    /// Between existing partitions and now: left by downtime.
    Gap,
}

impl CreateReason {
    /// As `partitions plan` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            CreateReason::Current => "current",
            CreateReason::Premake => "premake",
            CreateReason::Gap => "gap",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DetachHow {
    /// PG14+, no DEFAULT partition: never takes ACCESS EXCLUSIVE on the parent.
    Concurrently,
    /// A DEFAULT partition exists, which forbids CONCURRENTLY.
    Plain,
    /// An interrupted concurrent detach is completed.
    Finalize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    Create {
        #[serde(serialize_with = "ser_name")]
        partition: QualifiedName,
        period: String,
        #[serde(skip)]
        range: Range,
        reason: CreateReason,
    },
    Retire {
        #[serde(serialize_with = "ser_name")]
        partition: QualifiedName,
        how: DetachHow,
        /// Drop after detaching (`retention_mode = "drop"`).
        drop: bool,
        /// Archive to object storage, verify, then drop (`retention_mode =
        /// "archive"`; `partitions::retire`).
        #[serde(default)]
        archive: bool,
        reason: String,
    },
    /// An exclusion CHECK on the DEFAULT left by an interrupted attach; it
    /// would make inserts of that range fail.
    DropDefaultCheck { constraint: String },
    /// A partition's owner, privileges, row-level security or replica
    /// identity made what the parent implies (`partitions::access`).
    RepairAccess {
        #[serde(serialize_with = "ser_name")]
        partition: QualifiedName,
        repairs: Vec<AccessRepair>,
    },
}

fn ser_name<S: serde::Serializer>(n: &QualifiedName, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(n)
}

/// Something the plan will not touch but the operator should know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Note {
    pub partition: String,
    pub kind: NoteKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NoteKind {
    OffGrid,
    Overlap,
    FkReferenced,
    NameTaken,
    GapTruncated,
}

#[derive(Debug, Clone, Serialize)]
pub struct TablePlan {
    pub actions: Vec<Action>,
    pub notes: Vec<Note>,
    /// What the pass will not do by itself and the operator must fix, each
    /// with the fix: the table is a problem (exit 1) while any is left.
    pub problems: Vec<String>,
}

/// What a new partition copies from its parent beyond the pass's catalog
/// (read only for tables with a partition to create).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParentDetails {
    /// The parent's replica identity index, when it is `USING INDEX`: the
    /// new partition uses its own index attached to it.
    pub identity_index: Option<u32>,
    pub row_security: bool,
    pub force_row_security: bool,
    /// `relreplident`: `d`efault, `f`ull, `n`othing or `i`ndex.
    pub replica_identity: String,
    /// `None` for the database's default tablespace.
    pub tablespace: Option<String>,
    /// `server_version_num`: which `LIKE` clauses the server knows.
    pub server_version: i32,
    /// The parent's index names: the partition's copies are named after
    /// them ([`crate::config::indexes::child_index_name`]).
    pub indexes: Vec<String>,
}

/// A foreign key of another table that references the parent (or its DEFAULT).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferencingFk {
    pub constraint: String,
    pub table: QualifiedName,
    /// Referencing columns, in the constraint's order.
    pub columns: Vec<String>,
    /// The referenced columns of the parent, same order.
    pub referenced: Vec<String>,
    /// `ON DELETE` action as SQL words (`CASCADE`, `SET NULL`, ...).
    pub on_delete: String,
}
