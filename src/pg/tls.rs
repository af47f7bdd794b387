//! TLS for PostgreSQL connections with rustls, following libpq's `sslmode`
//! semantics as far as a client without OpenSSL can:
//!
//! | sslmode | encrypted | chain checked | host name checked |
//! | --- | --- | --- | --- |
//! | `disable` | no | – | – |
//! | `prefer` | if the server offers it; plaintext when it refuses or the handshake fails | with `sslrootcert` only | no |
//! | `require` | yes | with `sslrootcert` only (as libpq) | no |
//! | `verify-ca` | yes | yes | no |
//! | `verify-full` | yes | yes | yes |
//!
//! Trust anchors: the PEM bundle named by `sslrootcert` (RDS endpoints are
//! signed by Amazon's RDS CA, which no OS store holds), `sslrootcert=system`
//! for the operating system's store, and the operating system's store when
//! `verify-ca`/`verify-full` name no bundle.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::SslMode;

/// Why no TLS client could be set up; reported before any connection attempt.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read sslrootcert {path}: {reason} (give the path of a PEM CA bundle readable by pgsteward; for RDS, AWS's global-bundle.pem)")]
    RootCertUnreadable { path: String, reason: String },
    #[error("sslrootcert {path} holds no usable PEM certificate{reason} (expected one or more -----BEGIN CERTIFICATE----- blocks)")]
    RootCertEmpty { path: String, reason: String },
    #[error("the operating system's certificate store is empty or unreadable ({0}); name a CA bundle with sslrootcert=/path/to/ca.pem")]
    NoSystemRoots(String),
    #[error("TLS client setup failed: {0}")]
    Rustls(String),
}

/// The crypto provider is chosen explicitly rather than through rustls'
/// process default, which the AWS SDK may or may not have installed.
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

/// The OS store is read once per process: it is a directory scan of hundreds of files.
fn system_roots() -> Result<Arc<RootCertStore>, TlsSetupError> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, TlsSetupError>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let loaded = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(loaded.certs);
            if added == 0 {
                let reasons: Vec<String> = loaded.errors.iter().map(|e| e.to_string()).collect();
                return Err(TlsSetupError::NoSystemRoots(if reasons.is_empty() {
                    "no certificates found".into()
                } else {
                    reasons.join("; ")
                }));
            }
            Ok(Arc::new(roots))
        })
        .clone()
}

fn bundle_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsSetupError> {
    let shown = path.display().to_string();
    let pem = std::fs::read(path).map_err(|e| TlsSetupError::RootCertUnreadable {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    let mut roots = RootCertStore::empty();
    let mut rejected = Vec::new();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        match cert {
            Ok(cert) => {
                if let Err(e) = roots.add(cert) {
                    rejected.push(e.to_string());
                }
            }
            Err(e) => rejected.push(e.to_string()),
        }
    }
    if roots.is_empty() {
        let reason = if rejected.is_empty() {
            String::new()
        } else {
            format!(": {}", rejected.join("; "))
        };
        return Err(TlsSetupError::RootCertEmpty {
            path: shown,
            reason,
        });
    }
    Ok(Arc::new(roots))
}

/// The trust anchors for `root_cert`: a PEM file, or the OS store for
/// `system` and for no setting at all.
fn roots(root_cert: Option<&Path>) -> Result<Arc<RootCertStore>, TlsSetupError> {
    match root_cert {
        Some(p) if p.as_os_str() == "system" => system_roots(),
        Some(p) => bundle_roots(p),
        None => system_roots(),
    }
}

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Encryption only: any certificate is accepted (the handshake signature
    /// is still verified, so the session key belongs to whoever holds the key).
    Nothing,
    /// The chain must lead to a trusted root; the name is not compared.
    Chain,
    /// Chain and host name (SAN DNS name or IP address).
    Full,
}

fn check_for(mode: SslMode, root_cert: Option<&Path>) -> Check {
    match mode {
        // libpq verifies the chain in these modes when a root certificate is
        // configured; doing the same keeps a copied connection string as strict.
        SslMode::Disable | SslMode::Prefer | SslMode::Require => {
            if root_cert.is_some() {
                Check::Chain
            } else {
                Check::Nothing
            }
        }
        SslMode::VerifyCa => Check::Chain,
        SslMode::VerifyFull => Check::Full,
    }
}

/// A rustls client configuration for `mode`; `None` for `disable`.
pub fn client_config(
    mode: SslMode,
    root_cert: Option<&Path>,
) -> Result<Option<ClientConfig>, TlsSetupError> {
    if mode == SslMode::Disable {
        return Ok(None);
    }
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Rustls(e.to_string()))?;
    let verifier: Arc<dyn ServerCertVerifier> = match check_for(mode, root_cert) {
        Check::Nothing => Arc::new(NameUnchecked {
            provider,
            chain: None,
        }),
        check => {
            let webpki =
                WebPkiServerVerifier::builder_with_provider(roots(root_cert)?, provider.clone())
                    .build()
                    .map_err(|e| TlsSetupError::Rustls(e.to_string()))?;
            if check == Check::Full {
                webpki
            } else {
                Arc::new(NameUnchecked {
                    provider,
                    chain: Some(webpki),
                })
            }
        }
    };
    Ok(Some(
        builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth(),
    ))
}

/// The two checks webpki does not make as such. Without `chain`,
/// `sslmode=require` without a CA: no certificate check, encryption against
/// passive listeners only. With it, `sslmode=verify-ca`: everything webpki
/// checks except the name; webpki compares the name last, after the chain,
/// validity and revocation, so a name mismatch means everything else passed.
/// Handshake signatures are checked alike in both, with the provider's
/// algorithms, exactly as webpki checks them for `verify-full`.
#[derive(Debug)]
struct NameUnchecked {
    provider: Arc<CryptoProvider>,
    chain: Option<Arc<WebPkiServerVerifier>>,
}

impl ServerCertVerifier for NameUnchecked {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The connector handed to tokio-postgres. A setup failure is carried along
/// and reported by the first connection attempt, so that a pool can be built
/// infallibly and every connection still fails with the reason.
#[derive(Clone)]
pub struct Connector {
    inner: Result<MakeRustlsConnect, TlsSetupError>,
}

impl Connector {
    pub fn new(mode: SslMode, root_cert: Option<&Path>) -> Connector {
        let inner = match client_config(mode, root_cert) {
            Ok(Some(config)) => Ok(MakeRustlsConnect::new(config)),
            // Never used with NoTls modes; an empty verifier keeps the type simple.
            Ok(None) => client_config(SslMode::Require, None)
                .and_then(|c| c.ok_or_else(|| TlsSetupError::Rustls("no TLS config".into())))
                .map(MakeRustlsConnect::new),
            Err(e) => Err(e),
        };
        Connector { inner }
    }

    pub fn setup_error(&self) -> Option<&TlsSetupError> {
        self.inner.as_ref().err()
    }
}

impl<S> MakeTlsConnect<S> for Connector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = <MakeRustlsConnect as MakeTlsConnect<S>>::Stream;
    type TlsConnect = <MakeRustlsConnect as MakeTlsConnect<S>>::TlsConnect;
    type Error = TlsSetupError;

    fn make_tls_connect(&mut self, hostname: &str) -> Result<Self::TlsConnect, Self::Error> {
        match &mut self.inner {
            Ok(make) => match MakeTlsConnect::<S>::make_tls_connect(make, hostname) {
                Ok(c) => Ok(c),
                Err(never) => match never {},
            },
            Err(e) => Err(e.clone()),
        }
    }
}

/// The rustls error inside a failed connection attempt, if the failure was
/// the TLS handshake (io::Error hides its payload from `source()`, so each
/// link is unwrapped by hand).
pub fn handshake_error<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    let mut cur: Option<&'a (dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(r) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return Some(r);
            }
        }
        cur = e.source();
    }
    None
}

/// What to do about a certificate the server presented and we refused.
pub fn verify_hint(err: &rustls::Error) -> &'static str {
    match err {
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => "connect by a host name the server certificate lists, or use sslmode=verify-ca to check the chain only",
        rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ) => "sslrootcert must name the CA bundle that signed the server certificate (for RDS: AWS's global-bundle.pem)",
        rustls::Error::InvalidCertificate(
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. },
        ) => "the server certificate is outside its validity period; renew it or check this host's clock",
        _ => "check the server's TLS configuration and sslmode",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_map_to_checks() {
        let ca = Some(Path::new("/ca.pem"));
        assert_eq!(check_for(SslMode::Prefer, None), Check::Nothing);
        assert_eq!(check_for(SslMode::Require, None), Check::Nothing);
        assert_eq!(check_for(SslMode::Require, ca), Check::Chain);
        assert_eq!(check_for(SslMode::VerifyCa, None), Check::Chain);
        assert_eq!(check_for(SslMode::VerifyFull, ca), Check::Full);
    }

    #[test]
    fn unreadable_and_empty_bundles_name_the_file() {
        let err = client_config(SslMode::VerifyFull, Some(Path::new("/nonexistent/ca.pem")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = client_config(SslMode::VerifyCa, Some(&empty))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no usable PEM certificate"), "{err}");
        assert!(client_config(SslMode::Disable, None).unwrap().is_none());
        assert!(client_config(SslMode::Require, None).unwrap().is_some());
    }
}
