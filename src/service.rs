//! `pgsteward run`. (Being built.)

use crate::config::Config;
use crate::Outcome;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

pub async fn run_until_signal(_cfg: Config) -> Result<Outcome, ServiceError> {
    Ok(Outcome::Healthy)
}
