//! The AWS emulator the tests run against (see [`services`](super::services)): an SDK
//! configuration pointed at it, names of a test's own, and a serial emulator of a test's own
//! for tests of concurrent conditional writes.

use aws_config::{Region, SdkConfig};
use aws_sdk_sqs::config::Credentials;

use super::services::Service;

/// A test's view of the emulator.
#[derive(Debug, Clone)]
pub struct TestAws {
    /// The emulator's endpoint, as `AWS_ENDPOINT_URL` would name it.
    pub endpoint: String,
    /// An SDK configuration for it: region `us-east-1`, fixed test credentials.
    pub sdk: SdkConfig,
}

impl TestAws {
    /// The emulator (found as [`services`](super::services) says), or `None` after printing why
    /// `test` is skipped.
    ///
    /// # Panics
    /// When no emulator is found and `CI` is set: a missing service is never silently green.
    pub async fn find(test: &str) -> Option<Self> {
        let endpoint = super::services::locate(Service::Aws, test)?;
        let sdk = aws_config::defaults(crate::aws::behavior_version())
            .endpoint_url(&endpoint)
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
            .load()
            .await;
        Some(Self { endpoint, sdk })
    }

    /// `base` made unique to this call: queue, table and bucket names that no other test or
    /// run shares (lower case, within every service's naming rules).
    pub fn unique(base: &str) -> String {
        let id = uuid::Uuid::now_v7().simple().to_string();
        // The random tail of a v7 id; the time prefix is shared by tests started together.
        format!("{base}-{}", &id[id.len() - 12..])
    }
}

/// How a moto server that handles one request at a time is started.
const SERIAL_MOTO: &str = "import sys
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from moto.server import MotoRequestHandler
run_simple('127.0.0.1', int(sys.argv[1]), DomainDispatcherApplication(create_backend_app),
           threaded=False, request_handler=MotoRequestHandler)";

/// A moto server of the test's own that handles one request at a time, killed on drop.
///
/// The shared emulator is moto's threaded server, which checks a write's condition and applies
/// the write without a lock, so two concurrent conditional writes can both succeed there
/// (the DynamoDB store's `concurrent_*` tests failed about one run in two against it).
/// DynamoDB makes each conditional write atomic; the tests of concurrent writers need that.
pub struct SerialMoto {
    child: std::process::Child,
    /// Its endpoint, as `AWS_ENDPOINT_URL` would name it.
    pub endpoint: String,
    /// An SDK configuration for it, as [`TestAws::sdk`].
    pub sdk: SdkConfig,
}

impl SerialMoto {
    /// Starts one with the Python beside `moto_server` on `PATH`; `None` (skipped, or failed
    /// under `CI`) when there is no emulator or no such Python.
    pub async fn start(test: &str) -> Option<Self> {
        TestAws::find(test).await?;
        let python = std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .find(|dir| dir.join("moto_server").is_file())
                .map(|dir| dir.join("python3"))
        });
        let Some(python) = python.filter(|p| p.is_file()) else {
            assert!(
                std::env::var_os("CI").is_none(),
                "{test}: no moto_server on PATH to start a serial emulator"
            );
            eprintln!("{test}: skipped: no moto_server on PATH to start a serial emulator");
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = std::process::Command::new(python)
            .args(["-c", SERIAL_MOTO, &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start a serial moto");
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let endpoint = format!("http://127.0.0.1:{port}");
        let sdk = aws_config::defaults(crate::aws::behavior_version())
            .endpoint_url(&endpoint)
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
            .load()
            .await;
        Some(Self {
            child,
            endpoint,
            sdk,
        })
    }
}

impl Drop for SerialMoto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
