//! RDS IAM database authentication: the password is a token signed with the
//! process's AWS credentials (aws-config's default chain), valid for 15
//! minutes and checked only at login. A fresh token is made for every
//! connection attempt, pools included, so a long-running pool never logs in
//! with an expired one.

use tokio::sync::OnceCell;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why no login token was made.
#[derive(Debug, thiserror::Error)]
pub enum IamError {
    /// The signer's settings (host, port, user, region) were refused.
    #[error("{0}")]
    Settings(BoxError),
    #[error("cannot make an RDS IAM auth token ({0}); the AWS credentials chain (environment, profile, web identity) must be available and allow rds-db:connect")]
    Sign(BoxError),
}

/// The AWS configuration (credentials chain, region) loaded once per process;
/// its credentials provider caches and refreshes credentials itself.
async fn sdk_config() -> &'static aws_config::SdkConfig {
    static SDK: OnceCell<aws_config::SdkConfig> = OnceCell::const_new();
    SDK.get_or_init(|| aws_config::load_defaults(aws_config::BehaviorVersion::latest()))
        .await
}

/// A login token for `user` at `host:port`, signed with `sdk`'s credentials;
/// `region` overrides `sdk`'s.
pub async fn auth_token_with(
    sdk: &aws_config::SdkConfig,
    host: &str,
    port: u16,
    user: &str,
    region: Option<&str>,
) -> Result<String, IamError> {
    let mut builder = aws_sdk_rds::auth_token::Config::builder()
        .hostname(host)
        .port(u64::from(port))
        .username(user);
    if let Some(r) = region {
        builder = builder.region(aws_config::Region::new(r.to_string()));
    }
    let config = builder.build().map_err(IamError::Settings)?;
    aws_sdk_rds::auth_token::AuthTokenGenerator::new(config)
        .auth_token(sdk)
        .await
        .map(|t| t.as_str().to_string())
        .map_err(IamError::Sign)
}

/// [`auth_token_with`] using the process's default AWS configuration.
pub async fn auth_token(
    host: &str,
    port: u16,
    user: &str,
    region: Option<&str>,
) -> Result<String, IamError> {
    auth_token_with(sdk_config().await, host, port, user, region).await
}
