//! deploy/grafana/tollgate.json is a valid Grafana dashboard whose queries name only
//! metrics a running node exposes: every `tollgate_*` and `process_*` series in its
//! expressions must be a family in a real `/metrics` scrape of a clustered node (so the
//! cluster families are there too).

mod common;

use common::{start_server, RunningServer};
use std::collections::BTreeSet;
use std::time::Duration;
use tollgate_server::admin::client::AdminClient;

const DASHBOARD: &str = include_str!("../../deploy/grafana/tollgate.json");

fn clustered_node() -> RunningServer {
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let gossip = udp.local_addr().expect("addr");
    drop(udp);
    start_server(&format!(
        r#"
server: {{ listen: 127.0.0.1:0, grpc: 127.0.0.1:0, shards: 1 }}
policies:
  - policy_name: p
    rate_limiter:
      bucket_capacity: 3
      fill_amount: 1
      parameters: {{ interval: 1s, limit_by_label_key: user }}
      selectors: [{{ control_point: api }}]
cluster:
  gossip: {gossip}
  seeds: [{gossip}]
  secret: a-test-cluster-secret
"#
    ))
}

/// The metric names in a PromQL expression: identifiers that start with a known prefix.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts = (expr[i..].starts_with("tollgate_") || expr[i..].starts_with("process_"))
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'));
        if starts {
            let end = expr[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(expr.len(), |n| i + n);
            names.push(expr[i..end].to_string());
            i = end;
        } else {
            i += 1;
        }
    }
    names
}

/// The family a series name belongs to: histograms' `_bucket`/`_sum`/`_count` and
/// counters' `_total` are named after their family in `# TYPE` lines.
fn family(series: &str, families: &BTreeSet<String>) -> Option<String> {
    if families.contains(series) {
        return Some(series.to_string());
    }
    ["_total", "_bucket", "_sum", "_count"]
        .iter()
        .filter_map(|suffix| series.strip_suffix(suffix))
        .find(|base| families.contains(*base))
        .map(str::to_string)
}

#[test]
fn the_dashboard_is_valid_and_queries_only_metrics_that_exist() {
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).expect("valid JSON");
    assert_eq!(dashboard["uid"], "tollgate");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut exprs = Vec::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate panel id"
        );
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{} has no query", p["title"]);
        for t in targets {
            exprs.push(t["expr"].as_str().expect("expr").to_string());
        }
    }
    let server = clustered_node();
    let admin = server.admin.expect("admin port").to_string();
    let client = AdminClient::new(&admin, None, Duration::from_secs(10));
    let (code, scrape) = client.get("/metrics").expect("scrape");
    assert_eq!(code, 200);
    let families: BTreeSet<String> = scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    let mut used = BTreeSet::new();
    for expr in &exprs {
        for name in metric_names(expr) {
            let f = family(&name, &families).unwrap_or_else(|| {
                panic!("{name} (in `{expr}`) is not a metric the node exposes: {families:?}")
            });
            used.insert(f);
        }
    }
    // The headline families are on the dashboard.
    for needed in [
        "tollgate_decisions",
        "tollgate_checks",
        "tollgate_check_duration_seconds",
        "tollgate_buckets",
        "tollgate_cluster_members",
        "process_resident_memory_bytes",
    ] {
        assert!(
            used.iter()
                .any(|u| u == needed || u.strip_suffix("_total") == Some(needed)),
            "the dashboard does not show {needed}: {used:?}"
        );
    }
}

#[test]
fn metric_names_are_read_from_expressions() {
    assert_eq!(
        metric_names("histogram_quantile(0.99, sum by (le) (rate(tollgate_check_duration_seconds_bucket{x=\"y\"}[1m])))"),
        ["tollgate_check_duration_seconds_bucket"]
    );
    assert_eq!(
        metric_names("process_resident_memory_bytes + my_tollgate_x"),
        ["process_resident_memory_bytes"]
    );
}
