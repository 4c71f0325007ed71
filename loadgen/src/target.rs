//! Target URLs (`tollgate://`, `grpc://`, `redis://`, `echo://`) and how requests spread over
//! several of them.

use std::fmt;
use std::str::FromStr;

/// What a target speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Tollgate's binary protocol through `tollgate_protocol::client::Client` (shard-aware).
    Tollgate,
    /// Aperture's `FlowControlService/Check` over gRPC (Tollgate's compat port, or Aperture).
    Grpc,
    /// Redis: `EVALSHA` of the loadgen's Lua token bucket (the do-it-yourself baseline).
    Redis,
    /// A raw TCP echo server (`tollgate-loadgen echo-server`): the loopback floor.
    Echo,
}

/// One target: protocol and `host:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// What it speaks.
    pub protocol: Protocol,
    /// `host:port`.
    pub addr: String,
}

impl FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| format!("{s:?}: expected SCHEME://HOST:PORT"))?;
        let protocol = match scheme {
            "tollgate" => Protocol::Tollgate,
            "grpc" => Protocol::Grpc,
            "redis" => Protocol::Redis,
            "echo" => Protocol::Echo,
            _ => {
                return Err(format!(
                    "{s:?}: unknown scheme {scheme:?} (tollgate, grpc, redis or echo)"
                ))
            }
        };
        let addr = rest.trim_end_matches('/');
        let port_ok = addr
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !port_ok {
            return Err(format!("{s:?}: expected HOST:PORT after {scheme}://"));
        }
        Ok(Target {
            protocol,
            addr: addr.to_string(),
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.protocol {
            Protocol::Tollgate => "tollgate",
            Protocol::Grpc => "grpc",
            Protocol::Redis => "redis",
            Protocol::Echo => "echo",
        };
        write!(f, "{scheme}://{}", self.addr)
    }
}

/// How requests spread over several targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Spread {
    /// Each connection's requests cycle through the targets in turn, whatever the key.
    RoundRobin,
    /// A key always goes to the same target (key index modulo the number of targets).
    Key,
}

impl Spread {
    /// The target index for the `seq`-th request of a task, about key `key`.
    pub fn pick(self, targets: usize, seq: u64, key: usize) -> usize {
        if targets <= 1 {
            return 0;
        }
        match self {
            Spread::RoundRobin => (seq % targets as u64) as usize,
            Spread::Key => key % targets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let t: Target = "tollgate://127.0.0.1:7070"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.protocol, Protocol::Tollgate);
        assert_eq!(t.addr, "127.0.0.1:7070");
        assert_eq!(t.to_string(), "tollgate://127.0.0.1:7070");
        assert!("redis://localhost:6379/".parse::<Target>().is_ok());
        assert!("grpc://[::1]:8089".parse::<Target>().is_ok());
        assert!("http://x:1".parse::<Target>().is_err());
        assert!("tollgate://nohost".parse::<Target>().is_err());
        assert!("127.0.0.1:7070".parse::<Target>().is_err());
    }

    #[test]
    fn spreads() {
        assert_eq!(Spread::RoundRobin.pick(1, 5, 5), 0);
        assert_eq!(Spread::RoundRobin.pick(3, 4, 0), 1);
        assert_eq!(Spread::Key.pick(3, 0, 7), 1);
        assert_eq!(Spread::Key.pick(3, 9, 7), 1);
    }
}
