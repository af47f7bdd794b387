//! The local provider's SQL on running servers, apart from `local.rs`:
//! the new server's slot dropped on the source once nothing streams through
//! it (`delete_replica`), and one replica repointed at the new primary
//! (`follow_new_primary`).

use std::time::Duration;

use super::{pg_err, LocalProvider, FOLLOW_TIMEOUT};
use crate::config::ConnString;
use crate::provider::sql::{
    alter_primary_conninfo, DROP_STANDBY_SLOT, IN_RECOVERY, PRIMARY_CONNINFO, RELOAD_CONF,
    STANDBY_SLOT_ACTIVE,
};
use crate::provider::{with_address, Follow, ProviderError};

impl LocalProvider {
    /// Drops the new server's slot on the source once its walsender is gone
    /// (it ends shortly after the server stopped); bounded.
    pub(super) async fn drop_standby_slot(&self, slot: &str) -> Result<(), ProviderError> {
        let client = self.connect(&self.primary).await?;
        let deadline = tokio::time::Instant::now() + FOLLOW_TIMEOUT;
        loop {
            let row = client
                .query_opt(STANDBY_SLOT_ACTIVE, &[&slot])
                .await
                .map_err(|e| pg_err(&self.primary, e))?;
            match row.map(|r| r.get::<_, bool>(0)) {
                None => return Ok(()),
                Some(false) => {
                    client
                        .query_one(DROP_STANDBY_SLOT, &[&slot])
                        .await
                        .map_err(|e| pg_err(&self.primary, e))?;
                    return Ok(());
                }
                Some(true) if tokio::time::Instant::now() >= deadline => {
                    return Err(ProviderError::WrongState {
                        id: slot.to_string(),
                        state: "still streamed from".into(),
                        hint: format!(
                            "the deleted server's slot keeps WAL on the primary: end its walsender, \
                             then SELECT pg_drop_replication_slot('{slot}')"
                        ),
                    });
                }
                Some(true) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// One replica of [`Provider::follow_new_primary`].
    pub(super) async fn follow_one(
        &self,
        replica: &ConnString,
        host: &str,
        port: u16,
    ) -> Result<Follow, ProviderError> {
        let client = self.connect(replica).await?;
        let in_recovery: bool = client
            .query_one(IN_RECOVERY, &[])
            .await
            .map_err(|e| pg_err(replica, e))?
            .get(0);
        if !in_recovery {
            return Ok(Follow::NotAReplica);
        }
        let conninfo: String = client
            .query_one(PRIMARY_CONNINFO, &[])
            .await
            .map_err(|e| pg_err(replica, e))?
            .get(0);
        let wanted = with_address(&conninfo, host, port);
        if wanted != conninfo {
            client
                .batch_execute(&alter_primary_conninfo(&wanted))
                .await
                .map_err(|e| pg_err(replica, e))?;
            client
                .query_one(RELOAD_CONF, &[])
                .await
                .map_err(|e| pg_err(replica, e))?;
        }
        Ok(Follow::Repointed)
    }
}
