//! Pure: what is wrong with a parent's indexes (declared or made by hand),
//! and the steps that repair it. Tested without a server.
//!
//! PostgreSQL keeps a valid partitioned index complete (ATTACH PARTITION
//! builds or attaches what is missing), so work is needed only for a declared
//! index that does not exist, an invalid parent index (made `ON ONLY` and not
//! finished), an invalid partition index, and leftovers of failed
//! concurrent builds.

use serde::Serialize;

use super::catalog::{ParentIndex, Partition, TableIndexes};
use crate::config::indexes::{child_index_name, IndexDef, IndexSpec};
use crate::pg::QualifiedName;

/// One thing wrong with a parent's indexes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Problem {
    /// Declared in the configuration, not on the parent.
    DeclaredMissing { index: String },
    /// Made `ON ONLY` (or left by an interrupted build): not used by queries
    /// on the parent until every partition has its index attached.
    ParentInvalid {
        index: String,
        partitions_missing: usize,
    },
    /// A partition with no index attached to the parent index.
    PartitionMissing {
        index: String,
        partition: QualifiedName,
    },
    /// An invalid index on a partition: attached, or the leftover of a
    /// cancelled concurrent build (still maintained on every write).
    PartitionInvalid {
        index: String,
        partition: QualifiedName,
        partition_index: String,
        attached: bool,
    },
    /// A valid index on a partition that matches the parent index but is not attached.
    PartitionUnattached {
        index: String,
        partition: QualifiedName,
        partition_index: String,
    },
    /// Wrong, but not repaired automatically; the reason says what to do.
    NotRepairable { index: String, reason: String },
}

impl Problem {
    pub fn text(&self) -> String {
        match self {
            Problem::DeclaredMissing { index } => format!("{index}: declared but not built"),
            Problem::ParentInvalid {
                index,
                partitions_missing,
            } => format!(
                "{index}: invalid parent index ({partitions_missing} partitions without it attached)"
            ),
            Problem::PartitionMissing { index, partition } => {
                format!("{index}: missing on {partition}")
            }
            Problem::PartitionInvalid {
                index,
                partition,
                partition_index,
                attached,
            } => format!(
                "{index}: invalid {} index {partition_index} on {partition}",
                if *attached { "attached" } else { "unattached" }
            ),
            Problem::PartitionUnattached {
                index,
                partition,
                partition_index,
            } => format!("{index}: {partition_index} on {partition} is not attached"),
            Problem::NotRepairable { index, reason } => format!("{index}: {reason}"),
        }
    }
}

/// What to do on one partition for one parent index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChildAction {
    /// Attach the existing valid index `child`.
    Attach,
    /// Build `child` concurrently (dropping an invalid one of that name first), then attach.
    Build,
    /// `REINDEX INDEX CONCURRENTLY` an attached invalid index.
    Reindex,
}

/// One partition's step for one parent index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Job {
    /// The parent index, in the parent's schema.
    pub index: String,
    pub partition: QualifiedName,
    /// The partition's index, in the partition's schema.
    pub child: String,
    pub action: ChildAction,
    #[serde(skip)]
    pub def: IndexDef,
}

/// Everything one parent needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Repair {
    pub problems: Vec<Problem>,
    /// Declared indexes to create `ON ONLY` on the parent, first.
    #[serde(skip)]
    pub create: Vec<(String, IndexDef)>,
    /// Invalid leftovers of failed builds to drop concurrently: `(partition, index)`.
    pub drop: Vec<(QualifiedName, String)>,
    pub jobs: Vec<Job>,
    /// Observations that are not problems of the parent's indexes.
    pub notes: Vec<String>,
}

impl Repair {
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.drop.is_empty() && self.jobs.is_empty()
    }
}

/// Decides the repair of one parent from its catalog and declared indexes.
/// A declared index that does not validate is never here: config loading refused it.
pub fn plan(declared: &[IndexSpec], t: &TableIndexes) -> Repair {
    let mut r = Repair::default();
    for spec in declared {
        if t.parent.iter().any(|p| p.name == spec.name) {
            continue;
        }
        let Ok(def) = spec.def() else { continue };
        r.problems.push(Problem::DeclaredMissing {
            index: spec.name.clone(),
        });
        r.create.push((spec.name.clone(), def.clone()));
        // Before the parent index exists nothing can be attached to it: every
        // partition gets a build (an invalid leftover of that name is dropped first).
        for p in buildable(&t.partitions, &spec.name, &mut r.notes) {
            r.jobs.push(Job {
                index: spec.name.clone(),
                partition: p.name.clone(),
                child: child_index_name(&t.table.name, &p.name.name, &spec.name),
                action: ChildAction::Build,
                def: def.clone(),
            });
        }
    }
    for pi in &t.parent {
        plan_existing(t, pi, &mut r);
    }
    // Invalid unattached indexes that match no parent index are not ours to drop.
    for p in &t.partitions {
        for ix in &p.indexes {
            let known = r
                .drop
                .iter()
                .any(|(dp, di)| dp == &p.name && di == &ix.name)
                || r.jobs
                    .iter()
                    .any(|j| j.partition == p.name && j.child == ix.name);
            if !ix.valid && ix.attached_to.is_none() && !known {
                r.notes.push(format!(
                    "{}: invalid index {} matches no index of the parent; drop it (DROP INDEX CONCURRENTLY) or rebuild it (REINDEX INDEX CONCURRENTLY)",
                    p.name, ix.name
                ));
            }
        }
    }
    r
}

/// Partitions an index can be built on: plain tables not being detached.
fn buildable<'a>(
    parts: &'a [Partition],
    index: &str,
    notes: &mut Vec<String>,
) -> Vec<&'a Partition> {
    parts
        .iter()
        .filter(|p| {
            if p.detach_pending {
                return false;
            }
            if p.kind != "r" {
                notes.push(format!(
                    "{index}: {} is not a plain table (relkind {}); its index is not built concurrently",
                    p.name, p.kind
                ));
                return false;
            }
            true
        })
        .collect()
}

fn plan_existing(t: &TableIndexes, pi: &ParentIndex, r: &mut Repair) {
    let Some(tail) = &pi.tail else {
        if !pi.valid {
            r.problems.push(Problem::NotRepairable {
                index: pi.name.clone(),
                reason: "invalid, and its definition could not be read to build its partitions' indexes; finish it by hand".into(),
            });
        }
        return;
    };
    let def = IndexDef {
        unique: pi.unique,
        tail: tail.clone(),
    };
    let matches = |ix: &super::catalog::PartitionIndex| {
        ix.unique == pi.unique && ix.tail.as_ref() == Some(tail)
    };
    // Leftovers of failed builds of this index: unattached, invalid, same definition.
    for p in &t.partitions {
        for ix in &p.indexes {
            if !ix.valid && ix.attached_to.is_none() && matches(ix) {
                r.problems.push(Problem::PartitionInvalid {
                    index: pi.name.clone(),
                    partition: p.name.clone(),
                    partition_index: ix.name.clone(),
                    attached: false,
                });
                r.drop.push((p.name.clone(), ix.name.clone()));
            }
        }
    }
    let mut notes = Vec::new();
    let parts = buildable(&t.partitions, &pi.name, &mut notes);
    let mut missing = 0;
    let mut jobs = Vec::new();
    for p in parts {
        if let Some(ix) = p.indexes.iter().find(|ix| ix.attached_to == Some(pi.oid)) {
            if !ix.valid {
                r.problems.push(Problem::PartitionInvalid {
                    index: pi.name.clone(),
                    partition: p.name.clone(),
                    partition_index: ix.name.clone(),
                    attached: true,
                });
                jobs.push(Job {
                    index: pi.name.clone(),
                    partition: p.name.clone(),
                    child: ix.name.clone(),
                    action: ChildAction::Reindex,
                    def: def.clone(),
                });
            }
            continue;
        }
        // A valid parent index is complete by construction; an attached
        // partition without it would be a server bug, not drift.
        if pi.valid {
            continue;
        }
        missing += 1;
        r.problems.push(Problem::PartitionMissing {
            index: pi.name.clone(),
            partition: p.name.clone(),
        });
        if let Some(ix) = p
            .indexes
            .iter()
            .find(|ix| ix.valid && ix.attached_to.is_none() && matches(ix))
        {
            r.problems.push(Problem::PartitionUnattached {
                index: pi.name.clone(),
                partition: p.name.clone(),
                partition_index: ix.name.clone(),
            });
            jobs.push(Job {
                index: pi.name.clone(),
                partition: p.name.clone(),
                child: ix.name.clone(),
                action: ChildAction::Attach,
                def: def.clone(),
            });
            continue;
        }
        let child = child_index_name(&t.table.name, &p.name.name, &pi.name);
        if let Some(taken) = p.indexes.iter().find(|ix| ix.name == child) {
            if taken.valid || taken.attached_to.is_some() {
                r.problems.push(Problem::NotRepairable {
                    index: pi.name.clone(),
                    reason: format!(
                        "{} on {} has the name its partition index needs but another definition; rename or drop it",
                        child, p.name
                    ),
                });
                continue;
            }
        }
        jobs.push(Job {
            index: pi.name.clone(),
            partition: p.name.clone(),
            child,
            action: ChildAction::Build,
            def: def.clone(),
        });
    }
    if !pi.valid {
        r.problems.push(Problem::ParentInvalid {
            index: pi.name.clone(),
            partitions_missing: missing,
        });
        if missing == 0 && jobs.is_empty() {
            // The server re-checks a parent index only when an index is
            // attached to it: one left invalid by a partition detached before
            // its attach stays so with every remaining partition complete.
            r.problems.push(Problem::NotRepairable {
                index: pi.name.clone(),
                reason: "invalid although every partition has it attached; drop it (a declared index is then rebuilt by the next pass)".into(),
            });
        }
        if let Some(c) = &pi.constraint {
            // Attaching to a constraint's index needs the partition's index to
            // back a matching constraint: not done online here.
            r.problems.push(Problem::NotRepairable {
                index: pi.name.clone(),
                reason: format!(
                    "backs constraint {c}; add the constraint to each partition (ADD CONSTRAINT ... USING INDEX) and attach by hand"
                ),
            });
            return;
        }
    }
    r.notes.extend(notes);
    r.jobs.extend(jobs);
}

/// The statements a repair runs, in order, for `partitions plan`.
pub fn sql(t: &QualifiedName, r: &Repair) -> Vec<String> {
    let mut out = Vec::new();
    for (name, def) in &r.create {
        out.push(def.create_sql(name, t, true, false));
    }
    for (p, ix) in &r.drop {
        out.push(sql_drop_concurrently(&QualifiedName::new(&p.schema, ix)));
    }
    // Said once, not per partition: it only matters where a build had failed.
    if r.jobs.iter().any(|j| j.action == ChildAction::Build) {
        out.push(
            "-- each build first drops, concurrently, an invalid index of its name left by a failed build"
                .to_string(),
        );
    }
    for j in &r.jobs {
        let child = QualifiedName::new(&j.partition.schema, &j.child);
        let parent = QualifiedName::new(&t.schema, &j.index);
        match j.action {
            ChildAction::Attach => out.push(sql_attach(&parent, &child)),
            ChildAction::Build => {
                out.push(format!("-- {}", j.partition));
                out.push(j.def.create_sql(&j.child, &j.partition, false, true));
                out.push(sql_attach(&parent, &child));
            }
            ChildAction::Reindex => out.push(sql_reindex(&child)),
        }
    }
    out
}

pub fn sql_attach(parent_index: &QualifiedName, child_index: &QualifiedName) -> String {
    format!(
        "ALTER INDEX {} ATTACH PARTITION {}",
        parent_index.quoted(),
        child_index.quoted()
    )
}

pub fn sql_drop_concurrently(index: &QualifiedName) -> String {
    format!("DROP INDEX CONCURRENTLY IF EXISTS {}", index.quoted())
}

pub fn sql_drop(index: &QualifiedName) -> String {
    format!("DROP INDEX IF EXISTS {}", index.quoted())
}

pub fn sql_reindex(index: &QualifiedName) -> String {
    format!("REINDEX INDEX CONCURRENTLY {}", index.quoted())
}

#[cfg(test)]
mod tests {
    use super::super::catalog::PartitionIndex;
    use super::*;

    const TAIL: &str = "btree (user_id)";

    fn part(name: &str, indexes: Vec<PartitionIndex>) -> Partition {
        Partition {
            name: QualifiedName::new("public", name),
            kind: "r".into(),
            detach_pending: false,
            indexes,
        }
    }
    fn pix(oid: i64, name: &str, valid: bool, attached: Option<i64>) -> PartitionIndex {
        PartitionIndex {
            oid,
            name: name.into(),
            valid,
            unique: false,
            attached_to: attached,
            tail: Some(TAIL.into()),
        }
    }
    fn parent(valid: bool) -> ParentIndex {
        ParentIndex {
            oid: 1,
            name: "t_user_idx".into(),
            valid,
            unique: false,
            constraint: None,
            tail: Some(TAIL.into()),
        }
    }
    fn table(parent: Vec<ParentIndex>, partitions: Vec<Partition>) -> TableIndexes {
        TableIndexes {
            table: QualifiedName::new("public", "t"),
            oid: 9,
            parent,
            partitions,
        }
    }

    #[test]
    fn a_complete_valid_index_needs_nothing() {
        let t = table(
            vec![parent(true)],
            vec![part("t_1", vec![pix(10, "t_1_user_idx", true, Some(1))])],
        );
        let r = plan(&[], &t);
        assert!(r.problems.is_empty() && r.is_empty(), "{r:#?}");
    }

    #[test]
    fn a_half_done_on_only_index_is_finished_reusing_what_exists() {
        let t = table(
            vec![parent(false)],
            vec![
                part("t_1", vec![pix(10, "t_1_user_idx", true, Some(1))]),
                // Made by hand with another name: attached, not rebuilt.
                part("t_2", vec![pix(11, "by_hand", true, None)]),
                // A cancelled concurrent build of ours: dropped, then built.
                part("t_3", vec![pix(12, "t_3_user_idx", false, None)]),
                part("t_4", vec![]),
            ],
        );
        let r = plan(&[], &t);
        let actions: Vec<(&str, &str, ChildAction)> = r
            .jobs
            .iter()
            .map(|j| {
                (
                    j.partition.name.as_str(),
                    j.child.as_str(),
                    j.action.clone(),
                )
            })
            .collect();
        assert_eq!(
            actions,
            vec![
                ("t_2", "by_hand", ChildAction::Attach),
                ("t_3", "t_3_user_idx", ChildAction::Build),
                ("t_4", "t_4_user_idx", ChildAction::Build),
            ]
        );
        assert_eq!(
            r.drop,
            vec![(QualifiedName::new("public", "t_3"), "t_3_user_idx".into())]
        );
        assert!(r.problems.contains(&Problem::ParentInvalid {
            index: "t_user_idx".into(),
            partitions_missing: 3
        }));
        let sql = sql(&t.table, &r).join(";\n");
        assert!(
            sql.contains(r#"CREATE INDEX CONCURRENTLY "t_4_user_idx" ON "public"."t_4" USING btree (user_id)"#)
                && sql.contains(r#"ALTER INDEX "public"."t_user_idx" ATTACH PARTITION "public"."by_hand""#),
            "{sql}"
        );
    }

    #[test]
    fn a_declared_index_is_created_on_only_then_built_everywhere() {
        let spec: IndexSpec = IndexSpec {
            name: "t_user_idx".into(),
            columns: vec![crate::config::indexes::IndexColumn::Text("user_id".into())],
            unique: false,
            method: None,
            include: vec![],
            predicate: None,
        };
        let t = table(vec![], vec![part("t_1", vec![]), part("t_2", vec![])]);
        let r = plan(std::slice::from_ref(&spec), &t);
        assert_eq!(r.create.len(), 1);
        assert_eq!(r.jobs.len(), 2);
        assert_eq!(
            r.problems,
            vec![Problem::DeclaredMissing {
                index: "t_user_idx".into()
            }]
        );
        let sql = sql(&t.table, &r);
        assert!(
            sql[0].starts_with(r#"CREATE INDEX "t_user_idx" ON ONLY "public"."t""#),
            "{sql:?}"
        );
    }

    #[test]
    fn attached_invalid_is_reindexed_and_constraint_indexes_are_left_to_the_operator() {
        let t = table(
            vec![parent(true)],
            vec![part("t_1", vec![pix(10, "t_1_user_idx", false, Some(1))])],
        );
        let r = plan(&[], &t);
        assert_eq!(r.jobs[0].action, ChildAction::Reindex);
        let mut pk = parent(false);
        pk.constraint = Some("t_pkey".into());
        let t = table(vec![pk], vec![part("t_1", vec![])]);
        let r = plan(&[], &t);
        assert!(r.jobs.is_empty());
        assert!(r
            .problems
            .iter()
            .any(|p| matches!(p, Problem::NotRepairable { .. })));
    }
}
