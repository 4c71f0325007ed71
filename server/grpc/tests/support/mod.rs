//! Test-only backend and server start-up shared by this crate's integration tests.
#![allow(dead_code, clippy::unwrap_used)]

pub mod backend;
// The server's tests' rule for missing dependencies, shared rather than copied.
#[path = "../../../tests/common/deps.rs"]
pub mod deps;

use std::sync::Arc;
use std::time::Duration;

use backend::{Entered, LocalBackend};
use tollgate_grpc::GrpcHandle;
use tollgate_policy::Engine;

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

/// A server started with [`tollgate_grpc::start`] on 127.0.0.1:0.
pub struct LocalServer {
    pub handle: GrpcHandle,
    /// Checks that reached the backend.
    pub entered: Arc<Entered>,
    /// The backend, to observe its queues.
    pub backend: Arc<LocalBackend>,
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
    grpc_connections: tollgate_grpc::ConnectionConfig,
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
        connections: server.grpc_connections,
        ..Default::default()
    };
    (policies, settings)
}

/// Parses `yaml`, starts the gRPC port with a [`LocalBackend`]; cache entries limited to 1 KiB.
pub fn start_local(yaml: &str, delay: Option<Duration>) -> LocalServer {
    let cache = tollgate_grpc::CacheConfig {
        max_entry_bytes: 1024,
        ..Default::default()
    };
    start_local_with_cache(yaml, delay, cache)
}

/// [`start_local`] with the cache bounds `cache`.
pub fn start_local_with_cache(
    yaml: &str,
    delay: Option<Duration>,
    cache: tollgate_grpc::CacheConfig,
) -> LocalServer {
    let (policies, mut settings) = split_config(yaml);
    settings.cache = cache;
    let engine = Arc::new(Engine::new(&policies));
    let backend = Arc::new(LocalBackend::new(engine, delay));
    let entered = backend.entered.clone();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let handle = tollgate_grpc::start(vec![listener], &settings, backend.clone()).unwrap();
    LocalServer {
        handle,
        entered,
        backend,
    }
}
