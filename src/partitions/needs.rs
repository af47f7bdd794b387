//! What partition maintenance needs of the steward's role, for
//! [`crate::privileges::check`]: `partitions plan` and `check` verify it
//! before anything acts, and print the GRANT for whatever is missing.

use crate::config::PartitionsConfig;
use crate::privileges::{Need, Required};

/// Per managed table: acting as the owner of it and its partitions (CREATE
/// TABLE ... LIKE, ATTACH / DETACH, DROP, moving DEFAULT rows, giving new
/// partitions the parent's owner); per schema holding one: USAGE and CREATE.
pub fn needs(partitions: &PartitionsConfig) -> Vec<Required> {
    let mut out = Vec::new();
    let mut schemas: Vec<&str> = Vec::new();
    for t in &partitions.tables {
        out.push(Required::new(
            Need::TableOwner {
                table: t.table.clone(),
            },
            format!("partition DDL on {}", t.table),
        ));
        if !schemas.contains(&t.table.schema.as_str()) {
            schemas.push(&t.table.schema);
        }
    }
    for schema in schemas {
        out.push(Required::new(
            Need::SchemaCreate {
                schema: schema.to_string(),
            },
            format!("new partitions in schema {schema}"),
        ));
    }
    out
}
