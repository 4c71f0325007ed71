//! Test-only backend and server start-up shared by this crate's integration tests.
#![allow(dead_code, clippy::unwrap_used)]

pub mod deps;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use tollgate_grpc::{BackendError, DecisionBackend, DecisionFuture, GrpcHandle};
use tollgate_policy::{Engine, LocalLimiter, OwnedFlow};

/// Capacity 5 per user, refilling 5 per hour: effectively no refill during a test.
pub const POLICY_YAML: &str = r#"
server: { listen: 127.0.0.1:0, grpc: 127.0.0.1:0, shards: 2 }
policies:
  - policy_name: five_per_user
    rate_limiter:
      bucket_capacity: 5
      fill_amount: 5
      parameters: { interval: 3600s, limit_by_label_key: user }
      selectors: [ { control_point: checkout } ]
"#;

/// `LocalLimiter` behind a std Mutex (test-only; the real server routes to shards), real clock.
pub struct LocalBackend {
    engine: Arc<Engine>,
    limiter: Mutex<LocalLimiter>,
    epoch: Instant,
    /// Extra latency per decision, to test deadlines.
    delay: Option<Duration>,
    /// Checks that have reached the backend, so tests can wait for a call to be in flight.
    entered: Arc<Entered>,
}

/// A count of checks that reached the backend, with a wake-up for each.
#[derive(Default)]
pub struct Entered {
    count: AtomicUsize,
    notify: Notify,
}

impl Entered {
    fn record(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Waits until at least `n` checks have reached the backend (panics after 10 s).
    pub async fn wait_for(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            // Registered before the count is read, so a check entering in between still wakes it.
            let notified = self.notify.notified();
            if self.count.load(Ordering::SeqCst) >= n {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("{n} checks did not reach the backend within 10 s");
            }
        }
    }
}

impl DecisionBackend for LocalBackend {
    fn engine(&self) -> &Engine {
        &self.engine
    }

    fn check(&self, flow: OwnedFlow) -> DecisionFuture {
        self.entered.record();
        let now = self.epoch.elapsed().as_nanos() as u64;
        let result = self
            .limiter
            .lock()
            .unwrap()
            .check(&flow, now)
            .map_err(BackendError::Flow);
        let delay = self.delay;
        Box::pin(async move {
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            result
        })
    }
}

/// A server started with [`tollgate_grpc::start`] on 127.0.0.1:0.
pub struct LocalServer {
    pub handle: GrpcHandle,
    /// Checks that reached the backend.
    pub entered: Arc<Entered>,
}

impl LocalServer {
    pub fn url(&self) -> String {
        format!("http://{}", self.handle.local_addr())
    }

    pub async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(self.url())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub async fn fcs(
        &self,
    ) -> tollgate_grpc::proto::aperture::flowcontrol::check::v1::flow_control_service_client::FlowControlServiceClient<
        tonic::transport::Channel,
    >{
        tollgate_grpc::proto::aperture::flowcontrol::check::v1::flow_control_service_client::FlowControlServiceClient::new(
            self.channel().await,
        )
    }
}

/// The gRPC part of a test config's `server:` section (other server fields ignored).
#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct ServerPart {
    api_keys: Vec<String>,
    tls: Option<tollgate_grpc::TlsConfig>,
}

/// A test config as the server crate would split it: the policies and the gRPC settings.
fn split_config(
    yaml: &str,
) -> (
    Vec<tollgate_policy::PolicyConfig>,
    tollgate_grpc::GrpcSettings,
) {
    let mut document = tollgate_policy::config::yaml_document(yaml, "test.yaml").unwrap();
    let server: ServerPart = document
        .remove("server")
        .map(|v| serde_yaml_ng::from_value(v).unwrap())
        .unwrap_or_default();
    let mut problems = tollgate_policy::Problems::new();
    let policies =
        tollgate_policy::config::policies_from_document(document, &["server"], &mut problems);
    assert!(problems.is_empty(), "{problems:?}");
    let settings = tollgate_grpc::GrpcSettings {
        api_keys: server.api_keys,
        tls: server.tls,
        ..Default::default()
    };
    (policies, settings)
}

/// Parses `yaml`, starts the gRPC port with a [`LocalBackend`]; cache entries limited to 1 KiB.
pub fn start_local(yaml: &str, delay: Option<Duration>) -> LocalServer {
    let (policies, mut settings) = split_config(yaml);
    settings.cache.max_entry_bytes = 1024;
    let engine = Arc::new(Engine::new(&policies));
    let entered = Arc::new(Entered::default());
    let backend = Arc::new(LocalBackend {
        limiter: Mutex::new(LocalLimiter::new(engine.clone())),
        engine,
        epoch: Instant::now(),
        delay,
        entered: entered.clone(),
    });
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let handle = tollgate_grpc::start(listener, &settings, backend).unwrap();
    LocalServer { handle, entered }
}
