//! PgBouncer admin console. (Being built.)
