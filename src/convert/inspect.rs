//! Reading what a table has: one query (`sql/convert_table_info.sql`) returning
//! one JSON document, decoded into [`TableInfo`]. The same read serves
//! `convert plan` and, under the swap's locks, the swap itself, so the swap
//! acts on what it observed, not on what the plan saw minutes earlier.

use serde::{Deserialize, Serialize};
use tokio_postgres::GenericClient;

use super::{sql, ConvertError};
use crate::pg::QualifiedName;

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct TableInfo {
    pub oid: i64,
    pub relkind: String,
    pub persistence: String,
    pub is_partition: bool,
    pub typed: bool,
    pub inherits: bool,
    pub inherited: bool,
    /// Schema and name as the server quotes them (`quote_ident`), which is how
    /// `pg_get_indexdef` and friends print them.
    pub quoted_schema: String,
    pub quoted_name: String,
    pub owner: String,
    pub current_user: String,
    /// The steward may act as the owner (renaming, creating the parent).
    pub owner_member: bool,
    pub schema_create: bool,
    pub in_recovery: bool,
    pub server_version_num: i32,
    pub row_security: bool,
    pub force_row_security: bool,
    pub replica_identity: String,
    pub reloptions: Vec<String>,
    pub comment: Option<String>,
    pub bytes: i64,
    pub table_bytes: i64,
    pub rows_estimate: f64,
    pub grants: Vec<GrantInfo>,
    pub columns: Vec<ColumnInfo>,
    pub constraints: Vec<ConstraintInfo>,
    pub indexes: Vec<IndexInfo>,
    pub triggers: Vec<TriggerInfo>,
    pub policies: Vec<PolicyInfo>,
    pub rules: Vec<String>,
    pub referencing_fks: Vec<String>,
    pub views: Vec<ViewInfo>,
    pub publications: Vec<PublicationInfo>,
    /// Privileges and ownerships the swap needs that the steward lacks, in words.
    pub foreign_needs: Vec<String>,
    pub other_dependents: Vec<String>,
    pub key_indexed: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct GrantInfo {
    pub grantee: String,
    pub privilege: String,
    pub grantable: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ColumnInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub type_name: String,
    pub not_null: bool,
    /// `a` (ALWAYS), `d` (BY DEFAULT) or empty.
    pub identity: String,
    pub generated: String,
    pub stattarget: i32,
    pub column_acl: bool,
    pub default: Option<String>,
    /// The identity or owned (serial) sequence, schema-qualified.
    pub sequence: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ConstraintInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub validated: bool,
    pub deferrable: bool,
    pub def: String,
    pub columns: Option<Vec<String>>,
    pub index: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct IndexInfo {
    pub name: String,
    pub quoted_name: String,
    pub def: String,
    pub unique: bool,
    pub primary: bool,
    pub valid: bool,
    pub partial: bool,
    pub expressions: bool,
    pub constraint: Option<String>,
    pub columns: Option<Vec<String>>,
    pub key_count: i32,
    pub comment: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct TriggerInfo {
    pub name: String,
    pub def: String,
    pub enabled: String,
    pub transition: bool,
    pub constraint_trigger: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct PolicyInfo {
    pub name: String,
    pub permissive: bool,
    pub cmd: String,
    pub roles: Vec<String>,
    pub using: Option<String>,
    pub check: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ViewInfo {
    pub schema: String,
    pub name: String,
    pub kind: String,
    pub quoted: String,
    pub def: String,
    pub options: Vec<String>,
    pub triggers: bool,
    pub rules: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct PublicationInfo {
    pub name: String,
    pub filtered: bool,
    /// Lists the table by name (`FOR TABLE`): the swap adds the parent.
    pub listed: bool,
    pub via_root: bool,
    pub owner: String,
    /// The steward acts as the publication's owner (ALTER PUBLICATION).
    pub owner_member: bool,
}

impl TableInfo {
    pub fn column(&self, name: &str) -> Option<&ColumnInfo> {
        self.columns.iter().find(|c| c.name == name)
    }
    /// How `pg_get_*def` prints this table's name (search_path is empty).
    pub fn printed_name(&self) -> String {
        format!("{}.{}", self.quoted_schema, self.quoted_name)
    }
}

/// Reads the table; `None` when it does not exist. The session must have
/// `search_path = ''` (see the SQL file).
pub async fn read(
    client: &impl GenericClient,
    table: &QualifiedName,
    key: &str,
) -> Result<Option<TableInfo>, ConvertError> {
    let row = client
        .query_opt(sql::TABLE_INFO, &[&table.schema, &table.name, &key])
        .await
        .map_err(|e| ConvertError::query("read the table's catalog", e))?;
    let Some(row) = row else { return Ok(None) };
    let text: String = row.get(0);
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| ConvertError::Catalog(e.to_string()))
}

/// Which of `names` are taken by some relation in `schema`.
pub async fn taken(
    client: &impl GenericClient,
    schema: &str,
    names: &[String],
) -> Result<Vec<String>, ConvertError> {
    let rows = client
        .query(sql::RELATIONS_TAKEN, &[&schema, &names])
        .await
        .map_err(|e| ConvertError::query("look up relation names", e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
