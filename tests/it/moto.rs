//! moto's RDS server (`python3 -m moto.server`) on a free loopback port, one
//! per test (its state is global to the process), stopped on drop and by a
//! watchdog when the test process dies.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pgsteward::provider::rds::SdkSettings;

pub const REGION: &str = "us-east-1";
pub const KEY: &str = "testing";

pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Moto {
    pub fn start() -> Moto {
        let probe = Command::new("python3")
            .args(["-c", "import moto.server"])
            .output();
        match probe {
            Ok(o) if o.status.success() => {}
            _ => panic!(
                "moto's server is not installed; install it with: pip install 'moto[server]'"
            ),
        }
        let port = pgsteward::localpg::free_port().unwrap();
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .env("AWS_ACCESS_KEY_ID", KEY)
            .env("AWS_SECRET_ACCESS_KEY", KEY)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn python3 -m moto.server");
        watch_and_wait(&child, port, "moto server");
        Moto { child, port }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Settings for pgsteward's own client: static test credentials.
    pub fn settings(&self) -> SdkSettings {
        SdkSettings {
            region: Some(REGION.into()),
            endpoint_url: Some(self.url()),
            static_credentials: Some((KEY.into(), KEY.into())),
        }
    }

    /// An SDK client for test setup and for checking what pgsteward did.
    pub async fn client(&self) -> aws_sdk_rds::Client {
        let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(REGION))
            .endpoint_url(self.url())
            .credentials_provider(aws_sdk_rds::config::Credentials::new(
                KEY, KEY, None, None, "test",
            ))
            .load()
            .await;
        aws_sdk_rds::Client::new(&conf)
    }
}

/// Arms a watchdog that stops `child` when this test process is gone, even
/// if it was killed (Drop does not run then), and waits up to 30 s for
/// `child` (`what`, for the failure) to listen on 127.0.0.1:`port`.
fn watch_and_wait(child: &Child, port: u16, what: &str) {
    let _ = Command::new("/bin/sh")
        .args([
            "-c",
            &format!(
                "while [ -d /proc/{} ] && [ -d /proc/{} ]; do sleep 1; done; kill {} 2>/dev/null",
                std::process::id(),
                child.id(),
                child.id()
            ),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what} did not listen on 127.0.0.1:{port} within 30s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The CBOR adapter in front of moto's CloudWatch
/// (`tests/it/capacity/cloudwatch_cbor_proxy.py` says why), stopped on drop.
pub struct CloudWatchCbor {
    child: Child,
    pub port: u16,
}

impl Moto {
    /// Starts the adapter for this moto: the endpoint the AWS SDK for Rust's
    /// CloudWatch client (Smithy RPC v2 CBOR) talks to.
    pub fn cloudwatch_cbor(&self) -> CloudWatchCbor {
        let port = pgsteward::localpg::free_port().unwrap();
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/it/capacity/cloudwatch_cbor_proxy.py"
        );
        let child = Command::new("python3")
            .args([script, &port.to_string(), &self.url()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn python3 cloudwatch_cbor_proxy.py");
        watch_and_wait(&child, port, "the CloudWatch CBOR adapter");
        CloudWatchCbor { child, port }
    }
}

impl CloudWatchCbor {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for CloudWatchCbor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
