//! PostgreSQL plumbing shared by every subsystem. One job per child:
//!
//! - [`error`]: [`PgError`] and the classification of server errors;
//! - [`conninfo`]: connection strings parsed in both forms, rendered, redacted;
//! - [`libpq`]: libpq's environment defaults and password file;
//! - [`spec`]: a parsed connection string ([`ConnSpec`]) with its `sslmode` and IAM settings;
//! - [`connect`]: connecting with a deadline, one connection or a pool;
//! - [`tls`]: TLS per `sslmode`; [`iam`]: RDS IAM tokens;
//! - [`ident`]: identifier and literal quoting, qualified names, name hashing;
//! - [`retry`]: retrying statements that lost a lock race (classifier, backoff, cancellation);
//! - [`sql`]: the statements this plumbing runs.

mod connect;
pub mod conninfo;
pub mod error;
pub mod iam;
pub mod ident;
pub mod libpq;
pub mod retry;
pub mod spec;
pub mod sql;
pub mod tls;

pub use connect::is_password_missing;
pub use conninfo::{redact, without_password};
pub use error::{
    error_chain, is_connection_error, is_transient_lock_error, server_message, PgError,
};
pub use ident::{
    fnv1a_32, fnv1a_64, quote_ident, quote_literal, NameError, QualifiedName,
    QUALIFIED_NAME_EXPECTED,
};
pub use libpq::{PasswordLookup, PgEnv};
pub use retry::{Backoff, Cancelled, Retry};
pub use spec::{ConnSpec, IamAuth, SslMode};
pub use sql::DDL_SESSION_SETUP;
pub use tls::TlsSetupError;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn conn_spec_takes_out_tls_settings() {
        let spec =
            ConnSpec::parse("postgres://u:pw@db:6543/app?sslmode=verify-full&sslrootcert=/ca.pem")
                .unwrap();
        assert_eq!(spec.ssl_mode, SslMode::VerifyFull);
        assert_eq!(
            spec.ssl_root_cert.as_deref(),
            Some(std::path::Path::new("/ca.pem"))
        );
        assert_eq!(spec.display, "u@db:6543/app");
        let err = ConnSpec::parse("postgres://u:pw@db/app?sslmode=sometimes")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sslmode=sometimes") && !err.contains("pw@"),
            "{err}"
        );
    }

    #[test]
    fn iam_auth_needs_tls_and_a_user() {
        let spec = ConnSpec::parse(
            "postgres://steward@db:5432/app?sslmode=verify-full&aws_iam=true&aws_region=eu-west-1",
        )
        .unwrap();
        assert_eq!(
            spec.aws_iam,
            Some(IamAuth {
                region: Some("eu-west-1".into())
            })
        );
        for bad in [
            "postgres://steward@db/app?aws_iam=true",
            "postgres://steward@db/app?aws_iam=true&sslmode=disable",
            "host=db dbname=app sslmode=require aws_iam=true",
            "postgres://steward@db/app?aws_iam=true&sslmode=require",
            "postgres://steward@db/app?aws_iam=maybe&sslmode=verify-full",
        ] {
            assert!(ConnSpec::parse(bad).is_err(), "{bad} must be refused");
        }
        let err = ConnSpec::parse("host=db user=s sslmode=require aws_iam=true")
            .unwrap_err()
            .to_string();
        assert!(err.contains("sslmode=verify-full"), "{err}");
        assert!(
            ConnSpec::parse("host=db user=s sslmode=verify-ca aws_iam=true")
                .unwrap()
                .aws_iam
                .is_some()
        );
    }

    #[test]
    fn libpq_environment_fills_the_gaps() {
        let env = PgEnv::with_vars([
            ("PGHOST", "envhost"),
            ("PGPORT", "6543"),
            ("PGUSER", "envuser"),
            ("PGDATABASE", "envdb"),
            ("PGSSLMODE", "require"),
            ("PGCONNECT_TIMEOUT", "1"),
            ("PGAPPNAME", "envapp"),
            ("PGPASSWORD", "envpw"),
        ]);
        let spec = ConnSpec::parse_with("dbname=own", &env).unwrap();
        assert_eq!(spec.display, "envuser@envhost:6543/own");
        assert_eq!(spec.ssl_mode, SslMode::Require);
        assert_eq!(spec.connect_timeout, Some(Duration::from_secs(2)));
        assert_eq!(spec.config.get_application_name(), Some("envapp"));
        assert_eq!(spec.password(), Some("envpw"));
        assert_eq!(spec.password_source.as_deref(), Some("PGPASSWORD"));
        // Explicit settings win over the environment, in both forms.
        let spec = ConnSpec::parse_with(
            "postgres://u:p%20w@h:1/d?sslmode=disable&application_name=mine&connect_timeout=9",
            &env,
        )
        .unwrap();
        assert_eq!(spec.display, "u@h:1/d");
        assert_eq!(spec.ssl_mode, SslMode::Disable);
        assert_eq!(spec.password(), Some("p w"));
        assert_eq!(spec.config.get_application_name(), Some("mine"));
        assert_eq!(spec.connect_timeout, Some(Duration::from_secs(9)));
        let spec = ConnSpec::parse_with("host=h user=u password='a \\'' b'", &PgEnv::with_vars([]))
            .unwrap_err();
        assert!(!spec.to_string().contains(" b"), "{spec}");
        let spec =
            ConnSpec::parse_with(r"host=h user=u password='a \\ \' b'", &PgEnv::with_vars([]))
                .unwrap();
        assert_eq!(spec.password(), Some(r"a \ ' b"));
        // Without a password anywhere, every place is named; dbname defaults to the user.
        let spec = ConnSpec::parse_with("host=h user=u", &PgEnv::with_vars([])).unwrap();
        assert_eq!(spec.dbname(), "u");
        let e = spec.password_missing().to_string();
        assert!(
            e.contains("PGPASSWORD: not set") && e.contains("u@h:5432/u"),
            "{e}"
        );
        assert!(spec.password_missing().is_usage());
    }

    #[test]
    fn an_unencoded_at_or_slash_in_a_password_is_explained() {
        for url in [
            "postgres://steward:p@ss@db:5432/app",
            "postgres://steward:pa/ss@db:5432/app",
        ] {
            let e = conninfo::ConnParams::parse(url).unwrap_err().to_string();
            assert!(e.contains("percent-encoded as %40"), "{url}: {e}");
            assert!(
                !e.contains("ss@") && !e.contains("pa/"),
                "no part of the password in {e}"
            );
        }
        let e = conninfo::ConnParams::parse("postgres://steward@db:x/app")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("%40"), "{e}");
        assert!(conninfo::ConnParams::parse("postgres://steward:p%40ss@db:5432/app").is_ok());
    }
}
