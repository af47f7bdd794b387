//! The SQL that setting up clusters here runs through `psql`.

/// Starts a non-exclusive base backup (15 and later).
pub const BACKUP_START: &str = "SELECT pg_backup_start('pgsteward', true);";
/// Ends it: the contents of the backup_label file.
pub const BACKUP_STOP_LABEL: &str = "SELECT labelfile FROM pg_backup_stop(false);";
/// [`BACKUP_START`] before 15.
pub const BACKUP_START_BEFORE_15: &str = "SELECT pg_start_backup('pgsteward', true, false);";
/// [`BACKUP_STOP_LABEL`] before 15.
pub const BACKUP_STOP_LABEL_BEFORE_15: &str = "SELECT labelfile FROM pg_stop_backup(false, false);";
/// One row once the server accepts connections.
pub const READY: &str = "SELECT 1";
