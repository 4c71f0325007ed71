#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report
//! The loadgen against a Tollgate node that requires an API key and TLS on its binary ports
//! (`server.api_keys`, `server.binary_tls`): the `--api-key` / `--tls-ca` flags of the binary,
//! and the same settings through [`RunConfig`].

use std::process::{Command, Stdio};
use std::time::Duration;

use tollgate_loadgen::access::AccessArgs;
use tollgate_loadgen::target::Target;
use tollgate_loadgen::{run_blocking, RunConfig, Stop};

const KEY: &str = "loadgen-key-0123";

struct Node {
    server: Option<tollgate_server::runtime::RunningServer>,
    dir: std::path::PathBuf,
    ca: std::path::PathBuf,
}

impl Node {
    /// Two shards, an API key and TLS with a fresh self-signed certificate.
    fn start(tag: &str) -> Node {
        let dir = std::env::temp_dir().join(format!("loadgen-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let made = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, made.cert.pem()).unwrap();
        std::fs::write(&key, made.key_pair.serialize_pem()).unwrap();
        let yaml = format!(
            "server: {{ listen: 127.0.0.1:0, grpc: off, shards: 2, api_keys: [{KEY}], \
             binary_tls: {{ cert: {}, key: {} }} }}\n\
             policies:\n  - policy_name: bench\n    rate_limiter:\n      bucket_capacity: 100\n      \
             fill_amount: 10\n      parameters: {{ interval: 1s, limit_by_label_key: user }}\n      \
             selectors: [ {{ control_point: bench }} ]\n",
            cert.display(),
            key.display()
        );
        let config = tollgate_server::config::parse_str(&yaml, "test").unwrap();
        let server = tollgate_server::runtime::start(
            &config,
            tollgate_server::runtime::StartOptions::default(),
        )
        .unwrap();
        Node {
            server: Some(server),
            dir,
            ca: cert,
        }
    }

    fn target(&self) -> Target {
        let listen = self.server.as_ref().map(|s| s.listen).unwrap();
        format!("tollgate://{listen}").parse().unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            let _ = s.shutdown();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn short(node: &Node) -> RunConfig {
    let mut cfg = RunConfig::new(vec![node.target()]);
    cfg.warmup = Duration::ZERO;
    cfg.stop = Stop::Requests(300);
    cfg.connections = 2;
    cfg.pipeline = 2;
    cfg.threads = 1;
    cfg
}

#[test]
fn runs_with_the_key_over_tls_and_not_without() {
    let node = Node::start("access-run");
    let mut cfg = short(&node);
    cfg.access = AccessArgs {
        api_key: Some(KEY.into()),
        tls_ca: Some(node.ca.clone()),
        tls_server_name: None,
    }
    .to_access()
    .unwrap();
    let report = run_blocking(cfg).expect("run with key and TLS");
    assert!(report.requests >= 300, "{}", report.requests);
    assert_eq!(report.errors, 0, "{:?}", report.first_error);

    // TLS without the key: the node refuses the connections.
    let mut cfg = short(&node);
    cfg.access = AccessArgs {
        api_key: None,
        tls_ca: Some(node.ca.clone()),
        tls_server_name: None,
    }
    .to_access()
    .unwrap();
    let refused = run_blocking(cfg).map(|r| r.errors);
    assert!(
        !matches!(refused, Ok(0)),
        "a run without the key must fail: {refused:?}"
    );
}

#[test]
fn the_binary_takes_api_key_and_tls_ca() {
    let node = Node::start("access-cli");
    let json = node.dir.join("out.json");
    let status = Command::new(env!("CARGO_BIN_EXE_tollgate-loadgen"))
        .args(["--target", &node.target().to_string()])
        .args(["--requests", "200", "--warmup", "0s", "-c", "2", "-d", "2"])
        .args(["--threads", "1", "--quiet", "--api-key", KEY, "--tls-ca"])
        .arg(&node.ca)
        .arg("--json")
        .arg(&json)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(v["requests"].as_u64().unwrap_or(0) >= 200, "{v}");
    assert_eq!(v["errors"], 0, "{v}");
}
