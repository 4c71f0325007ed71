//! The configuration file: `server:` (this crate), `policies:` (tollgate-policy) and
//! `cluster:` (the cluster layer), or an Aperture `rate-limiting/base` blueprint values
//! file (which may carry `server:` and `cluster:` too).
//!
//! The document is read once; each owner deserializes and validates its own section, and
//! every problem is reported, each as `file: field.path: reason`.
//!
//! # Layout
//! - [`server`]: the `server:` section ([`ServerConfig`]).
//! - the `cluster:` section lives with the cluster core ([`ClusterConfig`], in
//!   `tollgate-cluster`).

pub mod server;

pub use server::{check_shards, BucketCap, ServerConfig};
pub use tollgate_cluster::ClusterConfig;
pub use tollgate_policy::config::{ConfigError, FieldError, Problems};

use std::path::Path;
use tollgate_cluster::node_id::MAX_NODE_ID_LEN;
use tollgate_policy::config::{deserialize_section, policies_from_document, yaml_document};
use tollgate_policy::PolicyConfig;

/// The whole configuration file, validated.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Config {
    /// Listeners and limits of this node.
    pub server: ServerConfig,
    /// The policies. An empty list admits everything.
    pub policies: Vec<PolicyConfig>,
    /// Cluster membership and replication; absent = this node runs alone.
    pub cluster: Option<ClusterConfig>,
}

/// Top-level sections other than the policies.
const OTHER_SECTIONS: [&str; 2] = ["server", "cluster"];

/// Reads and validates a config file.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::one(&origin, "", format!("cannot read file: {e}")))?;
    parse_str(&text, &origin)
}

/// Parses and validates config text; `origin` names it in errors.
pub fn parse_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
    let mut document = yaml_document(text, origin)?;
    let mut problems = Problems::new();
    let server = match document.remove("server") {
        None | Some(serde_yaml_ng::Value::Null) => ServerConfig::default(),
        Some(v) => deserialize_section(v, "server").unwrap_or_else(|e| {
            problems.push(e);
            ServerConfig::default()
        }),
    };
    let cluster: Option<ClusterConfig> = match document.remove("cluster") {
        None | Some(serde_yaml_ng::Value::Null) => None,
        Some(v) => deserialize_section(v, "cluster").unwrap_or_else(|e| {
            problems.push(e);
            None
        }),
    };
    let parsed_cleanly = problems.is_empty();
    let policies = policies_from_document(document, &OTHER_SECTIONS, &mut problems);
    // Rules across fields only make sense once every section deserialized.
    if parsed_cleanly {
        server.validate(&mut problems);
        if let Some(c) = &cluster {
            c.validate(&mut problems);
            c.validate_policies(&policies, &mut problems);
            // Without a cluster.node_id of its own, the cluster names the node by
            // server.node_id, which is then held to the cluster's bound.
            if let (None, Some(id)) = (&c.node_id, &server.node_id) {
                if id.len() > MAX_NODE_ID_LEN {
                    problems.at(
                        "server.node_id",
                        format!(
                            "is {} bytes; the cluster names the node by it (cluster.node_id is not set), and a cluster node id is at most {MAX_NODE_ID_LEN} bytes",
                            id.len()
                        ),
                    );
                }
            }
        }
    }
    problems.into_result(
        origin,
        Config {
            server,
            policies,
            cluster,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const SAMPLE: &str = r#"
server: { listen: 127.0.0.1:7070, shards: 2 }
policies:
  - policy_name: per_user
    rate_limiter:
      bucket_capacity: 60
      fill_amount: 60
      parameters: { interval: 3600s, limit_by_label_key: user, max_idle_time: 7200s,
                    lazy_sync: { enabled: true, num_sync: 4 } }
      request_parameters: { tokens_label_key: tokens, denied_response_status_code: 429 }
      overrides: [ { label_value: admin, limit_scale_factor: 10 } ]
      selectors:
        - control_point: checkout
          label_matcher:
            match_labels: { region: eu }
            match_expressions: [ { key: tier, operator: In, values: [premium] } ]
"#;

    fn errors_of(text: &str) -> Vec<String> {
        parse_str(text, "test.yaml")
            .unwrap_err()
            .errors
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn parses_the_documented_sample() {
        let c = parse_str(SAMPLE, "sample").unwrap();
        assert_eq!(c.server.shards, Some(2));
        let rl = c.policies[0].rate_limiter.as_ref().unwrap();
        assert_eq!(rl.parameters.interval.0, Duration::from_secs(3600));
        assert_eq!(rl.parameters.limit_by_label_key.as_deref(), Some("user"));
        assert_eq!(rl.overrides[0].limit_scale_factor, 10.0);
        assert_eq!(
            rl.request_parameters
                .denied_response_status_code
                .map(|c| c.0),
            Some(429)
        );
        assert_eq!(c.server.grpc, Some("127.0.0.1:8089".parse().unwrap()));
    }

    #[test]
    fn a_node_id_fits_the_hello_reply_and_the_cluster() {
        let with = |server_id: &str, cluster: &str| {
            SAMPLE.replace(
                "server: { listen: 127.0.0.1:7070, shards: 2 }",
                &format!("server: {{ listen: 127.0.0.1:7070, shards: 2, node_id: {server_id:?} }}\n{cluster}"),
            )
        };
        assert_eq!(
            errors_of(&with("", "")),
            ["server.node_id: must not be empty (omit it for the host name)"]
        );
        let long = "n".repeat(4097);
        assert_eq!(
            errors_of(&with(&long, "")),
            ["server.node_id: is 4097 bytes; at most 4096 (the binary protocol's longest string)"]
        );
        let sixty_five = "n".repeat(65);
        assert!(parse_str(&with(&sixty_five, ""), "t").is_ok(), "no cluster");
        let cluster = "cluster: { gossip: 127.0.0.1:7946 }";
        assert_eq!(
            errors_of(&with(&sixty_five, cluster)),
            ["server.node_id: is 65 bytes; the cluster names the node by it (cluster.node_id is not set), and a cluster node id is at most 64 bytes"]
        );
        let named = "cluster: { gossip: 127.0.0.1:7946, node_id: short }";
        assert!(
            parse_str(&with(&sixty_five, named), "t").is_ok(),
            "its own cluster.node_id"
        );
    }

    #[test]
    fn missing_interval_names_the_field() {
        let text = SAMPLE.replace("interval: 3600s, ", "");
        assert_eq!(
            errors_of(&text),
            vec!["policies[0].rate_limiter.parameters.interval: missing"]
        );
        let err = parse_str(&text, "p.yaml").unwrap_err().to_string();
        assert_eq!(
            err,
            "p.yaml: policies[0].rate_limiter.parameters.interval: missing"
        );
    }

    #[test]
    fn unknown_field_is_an_error_not_a_default() {
        let text = SAMPLE.replace("bucket_capacity", "bucket_capcity");
        let errs = errors_of(&text);
        assert!(
            errs[0].starts_with("policies[0].rate_limiter.bucket_capcity: unknown field"),
            "{errs:?}"
        );
        assert_eq!(
            errors_of("polices: []"),
            vec!["polices: unknown field (expected one of `policies`, `server`, `cluster`)"]
        );
        assert!(
            errors_of("server: { listn: 1.2.3.4:5 }")[0].starts_with("server.listn: unknown field")
        );
    }

    #[test]
    fn bad_duration_names_the_field_and_reason() {
        let text = SAMPLE.replace("interval: 3600s", "interval: 3600");
        let errs = errors_of(&text);
        assert!(
            errs[0].starts_with("policies[0].rate_limiter.parameters.interval: invalid duration"),
            "{errs:?}"
        );
    }

    #[test]
    fn validation_reports_every_problem() {
        let text = SAMPLE
            .replace("bucket_capacity: 60", "bucket_capacity: 0")
            .replace("values: [premium]", "values: []")
            .replace("shards: 2", "shards: 0");
        let errs = errors_of(&text);
        assert_eq!(
            errs,
            vec![
                "policies[0].rate_limiter.bucket_capacity: must be a finite number greater than 0",
                "policies[0].rate_limiter.selectors[0].label_matcher.match_expressions[0].values: In and NotIn need at least one value",
                "server.shards: must be between 1 and 1024",
            ]
        );
    }

    #[test]
    fn a_blueprint_may_carry_server_and_cluster_sections() {
        let text = r#"
blueprint: rate-limiting/base
policy:
  policy_name: api_limit
  rate_limiter:
    bucket_capacity: 40
    fill_amount: 2
    parameters: { interval: 1s, limit_by_label_key: user_id }
    selectors: [ { control_point: api } ]
server: { shards: 1 }
cluster: { gossip: 127.0.0.1:7999 }
"#;
        let c = parse_str(text, "bp").unwrap();
        assert_eq!(c.policies[0].policy_name, "api_limit");
        assert_eq!(c.server.shards, Some(1));
        assert_eq!(c.cluster.unwrap().gossip.port(), 7999);
        let rl = "{ bucket_capacity: 1, fill_amount: 1, parameters: { interval: 1s }, selectors: [ { control_point: a } ] }";
        let other = format!(
            "blueprint: load-scheduling/base\npolicy: {{ policy_name: x, rate_limiter: {rl} }}\n"
        );
        assert!(errors_of(&other)[0].starts_with("blueprint: unsupported blueprint"));
        let mismatch = format!(
            "blueprint: quota-scheduling/base\npolicy: {{ policy_name: x, rate_limiter: {rl} }}\n"
        );
        assert_eq!(
            errors_of(&mismatch),
            vec![
                "policy.quota_scheduler: missing",
                "policy.rate_limiter: not part of the quota-scheduling/base blueprint"
            ]
        );
    }

    #[test]
    fn shard_bounds_default_to_the_policy_crates_and_are_checked() {
        let c = parse_str("", "x").unwrap();
        assert_eq!(
            c.server.shard_limits(),
            tollgate_policy::ShardLimits::default()
        );
        let c = parse_str(
            "server: { max_waiters_per_shard: 10, max_flows_per_shard: 20, max_queue_wait: 1.5s }",
            "x",
        )
        .unwrap();
        let limits = c.server.shard_limits();
        assert_eq!(
            (limits.max_waiters, limits.max_flows, limits.max_wait_ns),
            (10, 20, 1_500_000_000)
        );
        assert_eq!(
            errors_of(
                "server: { max_waiters_per_shard: 0, max_flows_per_shard: 99999999, max_queue_wait: 2h }"
            ),
            vec![
                "server.max_waiters_per_shard: must be between 1 and 16777216",
                "server.max_flows_per_shard: must be between 1 and 16777216",
                "server.max_queue_wait: must be between 1ms and 3600s",
            ]
        );
        assert!(errors_of("server: { max_queue_wait: soon }")[0]
            .starts_with("server.max_queue_wait: invalid duration"));
    }

    #[test]
    fn connection_bounds_have_defaults_and_are_checked() {
        let limits = crate::node::Limits::from_config(&parse_str("", "x").unwrap().server);
        assert_eq!(limits.max_connections_per_peer, 1_000);
        assert_eq!(limits.idle_timeout, Some(Duration::from_secs(300)));
        let off = parse_str("server: { idle_timeout: 0s }", "x").unwrap();
        assert_eq!(
            crate::node::Limits::from_config(&off.server).idle_timeout,
            None
        );
        assert_eq!(
            errors_of("server: { max_connections_per_peer: 0, idle_timeout: 10ms }"),
            vec![
                "server.max_connections_per_peer: must be at least 1",
                "server.idle_timeout: must be between 1s and 86400s (or 0s to disable)",
            ]
        );
    }

    #[test]
    fn grpc_can_be_turned_off() {
        let c = parse_str("server: { grpc: off }", "x").unwrap();
        assert_eq!(c.server.grpc, None);
        assert!(errors_of("server: { grpc: nowhere }")[0].starts_with("server.grpc: "));
    }

    #[test]
    fn grpc_threads_default_to_one_and_are_checked() {
        assert_eq!(parse_str("", "x").unwrap().server.grpc_threads, 1);
        assert_eq!(
            parse_str("server: { grpc_threads: 4 }", "x")
                .unwrap()
                .server
                .grpc_threads,
            4
        );
        for bad in ["0", "65"] {
            assert_eq!(
                errors_of(&format!("server: {{ grpc_threads: {bad} }}")),
                vec!["server.grpc_threads: must be from 1 to 64"]
            );
        }
    }

    #[test]
    fn coop_taskrun_defaults_to_on_and_can_be_turned_off() {
        assert!(parse_str("", "x").unwrap().server.coop_taskrun);
        let c = parse_str("server: { coop_taskrun: false }", "x").unwrap();
        assert!(!c.server.coop_taskrun);
        assert!(errors_of("server: { coop_taskrun: sometimes }")[0]
            .starts_with("server.coop_taskrun: "));
    }

    #[test]
    fn admin_port_defaults_to_loopback_and_can_be_turned_off() {
        let c = parse_str("", "x").unwrap();
        assert_eq!(c.server.admin, Some("127.0.0.1:9090".parse().unwrap()));
        assert!(c.server.metrics);
        assert_eq!(c.server.admin_token, None);
        let c = parse_str("server: { admin: off, metrics: false }", "x").unwrap();
        assert_eq!((c.server.admin, c.server.metrics), (None, false));
        assert!(errors_of("server: { admin: 9090 }")[0].starts_with("server.admin: "));
        assert_eq!(
            errors_of("server: { admin_token: short }"),
            vec!["server.admin_token: must be at least 16 characters"]
        );
        assert_eq!(
            errors_of("server: { admin_token: \"sixteen chars or more\" }"),
            vec!["server.admin_token: must be printable ASCII without spaces (it is sent in an HTTP header)"]
        );
    }

    #[test]
    fn not_yaml_is_reported() {
        assert!(errors_of("policies: [")[0].starts_with("not valid YAML"));
        assert!(errors_of("- a\n- b\n")[0].starts_with("the file must be a YAML mapping"));
        assert!(parse_str("", "empty").unwrap().policies.is_empty());
    }
}
