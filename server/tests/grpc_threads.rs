//! `server.grpc_threads`: the gRPC port served by several threads, each with its own listener
//! on the same port. What they share must stay one thing: the buckets behind the port (a
//! limit holds across connections, whichever thread serves them) and the connection cap
//! (`server.grpc_connections.max_connections` is the node's, not each thread's).

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::start_server;
use tollgate_grpc::proto::envoy::extensions::common::ratelimit::v3::{
    rate_limit_descriptor::Entry, RateLimitDescriptor,
};
use tollgate_grpc::proto::envoy::service::ratelimit::v3 as rls;
use tollgate_grpc::tonic::transport::{Channel, Endpoint};

/// Threads serving the port in these tests, and the node's cap on its connections.
const THREADS: usize = 3;
const CAP: usize = 4;

fn config() -> String {
    format!(
        r#"
server: {{ listen: 127.0.0.1:0, grpc: 127.0.0.1:0, admin: off, shards: 2,
          grpc_threads: {THREADS}, grpc_connections: {{ max_connections: {CAP} }} }}
policies:
  - policy_name: per_user
    rate_limiter:
      bucket_capacity: 5
      fill_amount: 5
      parameters: {{ interval: 3600s, limit_by_label_key: user }}
      selectors: [ {{ control_point: api }} ]
"#
    )
}

fn request(user: &str) -> rls::RateLimitRequest {
    rls::RateLimitRequest {
        domain: "api".into(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![Entry {
                key: "user".into(),
                value: user.into(),
            }],
            limit: None,
        }],
        hits_addend: 1,
    }
}

/// One HTTP/2 connection (a tonic channel connects once, eagerly).
async fn connection(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("url")
        .connect()
        .await
        .expect("connect")
}

/// Whether a raw TCP connection to `addr` is closed by the server before it sends anything:
/// what a connection beyond the cap meets.
fn refused(addr: SocketAddr) -> bool {
    let mut s = TcpStream::connect(addr).expect("tcp connect");
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let mut buf = [0u8; 1];
    // Closed at once: EOF or a reset. Served: nothing to read until the timeout (the server
    // waits for our HTTP/2 preface).
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// The names of the server process's threads.
fn thread_names(pid: u32) -> Vec<String> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc task dir");
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect()
}

#[test]
fn threads_share_the_buckets_and_the_connection_cap() {
    let server = start_server(&config());
    let addr = server.grpc.expect("grpc port in the ready line");
    let mut names: Vec<String> = thread_names(server.child.id())
        .into_iter()
        .filter(|n| n.starts_with("tollgate-grpc"))
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["tollgate-grpc-0", "tollgate-grpc-1", "tollgate-grpc-2"]
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        // As many connections as the cap allows: the kernel spreads them over the threads.
        let mut clients = Vec::new();
        for _ in 0..CAP {
            clients.push(rls::rate_limit_service_client::RateLimitServiceClient::new(
                connection(addr).await,
            ));
        }
        // Two checks on each, in turn, for one user whose bucket holds 5: exactly 5 pass,
        // whichever threads the connections landed on.
        let mut codes = Vec::new();
        for _ in 0..2 {
            for c in &mut clients {
                let resp = c.should_rate_limit(request("erin")).await.expect("rls");
                codes.push(resp.into_inner().overall_code);
            }
        }
        let ok = rls::rate_limit_response::Code::Ok as i32;
        let over = rls::rate_limit_response::Code::OverLimit as i32;
        assert_eq!(codes.iter().filter(|&&c| c == ok).count(), 5, "{codes:?}");
        assert_eq!(codes.iter().filter(|&&c| c == over).count(), 3, "{codes:?}");

        // One connection more is refused, whichever thread accepts it: the cap is the
        // node's. (Per thread, each of the three would still have room.)
        assert!(
            refused(addr),
            "a connection beyond the node's cap was served"
        );

        // A connection that closes gives its slot back: a new one is served again (once the
        // server has seen the close).
        drop(clients.pop());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut again =
                rls::rate_limit_service_client::RateLimitServiceClient::new(connection(addr).await);
            if let Ok(resp) = again.should_rate_limit(request("frank")).await {
                assert_eq!(resp.into_inner().overall_code, ok);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the closed connection's slot never came back"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}
