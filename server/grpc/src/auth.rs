//! Optional API-key check (`server.api_keys`).
//!
//! When the key list is non-empty every call to a guarded service must carry metadata
//! `x-api-key` equal to one of the keys, else it is answered `UNAUTHENTICATED` before any handler
//! runs. `grpc.health.v1.Health` stays open so load balancers and probes need no key.
//!
//! Aperture's SDKs attach `x-api-key` through gRPC *call credentials*, which gRPC only sends over
//! TLS: with `insecure=True` (py) or `createInsecure()` (js) the key never reaches the server.
//! Configure `server.tls` together with `server.api_keys`.

use std::sync::Arc;

use tonic::{Request, Status};

/// Metadata key the SDKs send the API key under.
pub const API_KEY_HEADER: &str = "x-api-key";

/// A cloneable interceptor holding the accepted keys.
#[derive(Clone, Debug)]
pub struct ApiKeyCheck {
    keys: Arc<[Vec<u8>]>,
}

impl ApiKeyCheck {
    /// Accepts calls carrying any of `keys`; accepts every call when `keys` is empty.
    pub fn new(keys: &[String]) -> Self {
        Self {
            keys: keys.iter().map(|k| k.as_bytes().to_vec()).collect(),
        }
    }

    /// Whether any key is configured.
    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Whether `presented` is one of the keys (also the binary port's `HELLO` check).
    pub fn accepts(&self, presented: &[u8]) -> bool {
        // Every configured key is compared in full, in constant time per key, so timing tells
        // nothing about which prefix matched.
        self.keys
            .iter()
            .fold(false, |ok, k| ok | constant_time_eq(k, presented))
    }
}

impl tonic::service::Interceptor for ApiKeyCheck {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        if !self.enabled() {
            return Ok(req);
        }
        match req.metadata().get(API_KEY_HEADER) {
            Some(v) if self.accepts(v.as_bytes()) => Ok(req),
            Some(_) => Err(Status::unauthenticated("invalid x-api-key")),
            None => Err(Status::unauthenticated("missing x-api-key metadata")),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

    fn call(check: &mut ApiKeyCheck, key: Option<&str>) -> Result<(), tonic::Code> {
        let mut req = Request::new(());
        if let Some(k) = key {
            req.metadata_mut()
                .insert(API_KEY_HEADER, k.parse().unwrap());
        }
        check.call(req).map(|_| ()).map_err(|s| s.code())
    }

    #[test]
    fn empty_list_accepts_all_and_keys_are_checked() {
        let mut open = ApiKeyCheck::new(&[]);
        assert_eq!(call(&mut open, None), Ok(()));
        let mut guarded = ApiKeyCheck::new(&["alpha".into(), "beta".into()]);
        assert_eq!(call(&mut guarded, Some("beta")), Ok(()));
        assert_eq!(
            call(&mut guarded, Some("bet")),
            Err(tonic::Code::Unauthenticated)
        );
        assert_eq!(
            call(&mut guarded, Some("gamma")),
            Err(tonic::Code::Unauthenticated)
        );
        assert_eq!(call(&mut guarded, None), Err(tonic::Code::Unauthenticated));
    }
}
