//! The admin port's router: every path it serves, in one place (docs/admin.md documents
//! them). Handlers translate; what a path reads lives in [`super::state`], the documents in
//! [`super::api`].
//!
//! | path | what | token |
//! |---|---|---|
//! | `GET /` | the status page (HTML; polls the API below) | never (the page holds no data) |
//! | `GET /healthz` | the process is alive: always 200 | never |
//! | `GET /readyz` | 200 once every shard serves, the cluster is joined and every port is up; 503 while starting, draining, or if a shard stops answering | yes |
//! | `GET /metrics` | Prometheus text format | yes |
//! | `GET /api/v1/status` | counters and gauges per policy, per shard, and the members | yes |
//! | `GET /api/v1/policies` | every policy's identity and effective parameters | yes |
//! | `GET /api/v1/bucket?policy=P&key=K` | one bucket, read on its owner shard | yes |
//! | `GET /api/v1/top?policy=P&n=N` | the N keys that consumed most in the last minute | yes |
//! | `POST /api/v1/limit` | change a policy's `bucket_capacity` / `fill_amount` now | yes |
//! | `POST /api/v1/reload` | reload the policies from the config file (as SIGHUP does) | yes |

use super::api::{self, BucketInfo, BucketReply, ErrorReply, SetLimitRequest, TopKey, TopReply};
use super::auth::require_token;
use super::readiness::Phase;
use super::state::AdminState;
use crate::clock;
use crate::metrics::collector;
use crate::metrics::top_keys::{Merged, CAPACITY};
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Json, Router};
use serde::Deserialize;
use std::sync::Arc;
use tollgate_policy::{ComponentKind, Engine, LimitChangeError, LimiterSpec};

/// Top keys returned when `n` is not given.
pub const DEFAULT_TOP_N: usize = 10;

/// The admin port's routes over `state`.
pub fn router(state: Arc<AdminState>) -> Router {
    let api = Router::new()
        .route("/api/v1/status", get(status))
        .route("/api/v1/policies", get(policies))
        .route("/api/v1/bucket", get(bucket))
        .route("/api/v1/top", get(top))
        .route("/api/v1/limit", post(set_limit))
        .route("/api/v1/reload", post(reload));
    let guarded = Router::new()
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(api)
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/", get(status_page))
        .merge(guarded)
        .fallback(not_found)
        .with_state(state)
}

/// An error answer: `{"error": message}` with `status`.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(ErrorReply {
            error: message.into(),
        }),
    )
        .into_response()
}

fn starting() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "the server is starting: shards are not serving yet",
    )
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no such path (see docs/admin.md: /healthz, /readyz, /metrics, /api/v1/...)",
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<Arc<AdminState>>) -> Response {
    let phase = state.readiness.phase();
    let unavailable = |text: String| (StatusCode::SERVICE_UNAVAILABLE, text + "\n").into_response();
    if phase != Phase::Ready {
        return unavailable(phase.describe().to_string());
    }
    let Some(shards) = state.shards() else {
        return unavailable(Phase::Starting.describe().to_string());
    };
    // Ready means serving now: every shard must still answer its inbox.
    let silent: Vec<String> = AdminState::shard_gauges(shards)
        .await
        .iter()
        .enumerate()
        .filter(|(_, g)| g.is_none())
        .map(|(i, _)| i.to_string())
        .collect();
    if !silent.is_empty() {
        return unavailable(format!(
            "not ready: shard {} did not answer within {:?}",
            silent.join(", "),
            super::state::SHARD_ANSWER_TIMEOUT
        ));
    }
    (StatusCode::OK, "ready\n").into_response()
}

async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    let Some(shards) = state.shards() else {
        return starting();
    };
    let gathered = state.gather(shards).await;
    match collector::encode(shards.node.clone(), gathered) {
        Ok(text) => ([(header::CONTENT_TYPE, collector::CONTENT_TYPE)], text).into_response(),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoding the metrics failed",
        ),
    }
}

async fn policies(State(state): State<Arc<AdminState>>) -> Response {
    match state.engine() {
        Some(engine) => Json(api::policies(&engine)).into_response(),
        None => starting(),
    }
}

/// The limiter of `policy`, or the error answer.
fn find_policy<'a>(
    engine: &'a Engine,
    policy: Option<&str>,
) -> Result<&'a LimiterSpec, Box<Response>> {
    let Some(name) = policy.filter(|p| !p.is_empty()) else {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "missing query parameter `policy`",
        )));
    };
    engine
        .limiters()
        .iter()
        .find(|l| l.policy_name == name)
        .ok_or_else(|| {
            Box::new(error(
                StatusCode::NOT_FOUND,
                format!("no policy named {name:?}"),
            ))
        })
}

/// The status page (no data in it: served without the token; its script sends one).
async fn status_page() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        super::status::PAGE,
    )
        .into_response()
}

async fn status(State(state): State<Arc<AdminState>>) -> Response {
    match state.shards() {
        Some(shards) => Json(super::status::status(shards).await).into_response(),
        None => starting(),
    }
}

/// `?policy=P&key=K`.
#[derive(Debug, Deserialize)]
struct BucketQuery {
    policy: Option<String>,
    key: Option<String>,
}

async fn bucket(State(state): State<Arc<AdminState>>, Query(q): Query<BucketQuery>) -> Response {
    let (Some(shards), Some(engine)) = (state.shards(), state.engine()) else {
        return starting();
    };
    let spec = match find_policy(&engine, q.policy.as_deref()) {
        Ok(spec) => spec,
        Err(answer) => return *answer,
    };
    let key = match (&spec.limit_by_label_key, q.key) {
        (Some(_), Some(key)) => key,
        (Some(label), None) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                "missing query parameter `key`: policy {:?} keys its buckets by label {label:?}",
                spec.policy_name
            ),
            )
        }
        // One shared bucket, keyed "".
        (None, None) => String::new(),
        (None, Some(key)) if key.is_empty() => key,
        (None, Some(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "policy {:?} has one shared bucket (no limit_by_label_key): leave `key` out",
                    spec.policy_name
                ),
            )
        }
    };
    let owner = shards.node.owner_of(&key);
    let params = spec.params_for(&key);
    let view = match AdminState::bucket(shards, owner, spec.id, key.clone()).await {
        Ok(view) => view,
        Err(()) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("shard {owner} did not answer"),
            )
        }
    };
    let now_s = clock::now_ns() / 1_000_000_000;
    let reply = BucketReply {
        policy: spec.policy_name.clone(),
        key,
        owner_shard: owner,
        exists: view.is_some(),
        tokens: view.map_or(params.capacity, |v| v.tokens),
        bucket: BucketInfo::of(&params),
        next_fill_in_seconds: view
            .and_then(|v| v.refill.next_fill_in_ns)
            .map(api::seconds),
        full_in_seconds: view.and_then(|v| v.refill.full_in_ns).map(api::seconds),
        last_used_seconds_ago: view.map(|v| now_s.saturating_sub(u64::from(v.last_used_s))),
    };
    Json(reply).into_response()
}

/// `?policy=P&n=N`.
#[derive(Debug, Deserialize)]
struct TopQuery {
    policy: Option<String>,
    n: Option<String>,
}

async fn top(State(state): State<Arc<AdminState>>, Query(q): Query<TopQuery>) -> Response {
    let (Some(shards), Some(engine)) = (state.shards(), state.engine()) else {
        return starting();
    };
    let spec = match find_policy(&engine, q.policy.as_deref()) {
        Ok(spec) => spec,
        Err(answer) => return *answer,
    };
    let n = match q.n.as_deref().map(str::parse::<usize>) {
        None => DEFAULT_TOP_N,
        Some(Ok(n)) if (1..=CAPACITY).contains(&n) => n,
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("`n` must be a whole number from 1 to {CAPACITY}"),
            )
        }
    };
    if !shards.node.metrics.enabled() {
        return error(
            StatusCode::CONFLICT,
            "server.metrics is false: top keys are not recorded",
        );
    }
    let answers = AdminState::top_keys(shards, spec.id).await;
    let shards_answered = answers.iter().filter(|a| a.is_some()).count();
    let mut merged = Merged::default();
    let mut since: Option<u64> = None;
    for (counted, from) in answers.into_iter().flatten().flatten() {
        merged.add(counted);
        since = Some(since.map_or(from, |s| s.min(from)));
    }
    let now = clock::now_ns();
    let keys = merged
        .into_vec()
        .into_iter()
        .take(n)
        .map(|c| TopKey {
            key: c.key,
            tokens: c.count,
            error: c.error,
        })
        .collect();
    Json(TopReply {
        policy: spec.policy_name.clone(),
        window_seconds: since.map_or(0.0, |s| api::seconds(now.saturating_sub(s))),
        keys,
        shards_answered,
    })
    .into_response()
}

async fn set_limit(State(state): State<Arc<AdminState>>, body: Bytes) -> Response {
    let Some(shards) = state.shards() else {
        return starting();
    };
    if state.clustered() {
        return error(
            StatusCode::CONFLICT,
            "this node is clustered: a limit changed on one node would make the nodes \
             disagree on shared buckets; change the policy file and roll it out (docs/admin.md)",
        );
    }
    let request: SetLimitRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("the body is not a limit change: {e}"),
            )
        }
    };
    if let Err(message) = check_limits(&request) {
        return error(StatusCode::BAD_REQUEST, message);
    }
    let policy = request.policy.clone();
    let changed = state
        .change_engine(shards, move |engine| {
            let spec = find_policy(engine, Some(&request.policy))?;
            if !matches!(
                spec.kind,
                ComponentKind::RateLimiter | ComponentKind::QuotaScheduler
            ) {
                return Err(Box::new(error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "policy {:?} is a {}: only rate_limiter and quota_scheduler policies \
                         have buckets whose limits change",
                        spec.policy_name,
                        api::kind_name(spec.kind)
                    ),
                )));
            }
            let mut params = spec.params;
            params.capacity = request.bucket_capacity.unwrap_or(params.capacity);
            params.fill_amount = request.fill_amount.unwrap_or(params.fill_amount);
            engine
                .with_bucket_params(spec.id, params)
                .map_err(|e| match e {
                    LimitChangeError::NoLimiter(_) => {
                        Box::new(error(StatusCode::NOT_FOUND, "the policy is gone"))
                    }
                    LimitChangeError::Override { .. } => Box::new(error(
                        StatusCode::BAD_REQUEST,
                        format!("policy {:?}: {e}", spec.policy_name),
                    )),
                })
        })
        .await;
    let engine = match changed {
        Err(answer) => return *answer,
        Ok(Err(silent)) => {
            let silent: Vec<String> = silent.iter().map(usize::to_string).collect();
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "shard {} did not confirm the change within {:?}: the others apply it \
                     already; send it again",
                    silent.join(", "),
                    super::state::SHARD_ANSWER_TIMEOUT
                ),
            );
        }
        Ok(Ok(engine)) => engine,
    };
    match find_policy(&engine, Some(&policy)) {
        Ok(spec) => {
            tracing::info!(
                policy = %spec.policy_name,
                bucket_capacity = spec.params.capacity,
                fill_amount = spec.params.fill_amount,
                "limit changed at runtime (until restart)"
            );
            Json(api::policy(spec)).into_response()
        }
        Err(answer) => *answer,
    }
}

/// The new values must make a bucket ([`api::check_capacity`], [`api::check_fill_amount`]).
fn check_limits(request: &SetLimitRequest) -> Result<(), String> {
    if request.bucket_capacity.is_none() && request.fill_amount.is_none() {
        return Err("nothing to change: give `bucket_capacity`, `fill_amount` or both".into());
    }
    if let Some(c) = request.bucket_capacity {
        api::check_capacity(c)?;
    }
    if let Some(f) = request.fill_amount {
        api::check_fill_amount(f)?;
    }
    Ok(())
}

/// Reloads the policies as SIGHUP does ([`crate::reload::Reloader`]): the report of what
/// changed, or why nothing did.
async fn reload(State(state): State<Arc<AdminState>>) -> Response {
    let Some(reloader) = state.reloader() else {
        return starting();
    };
    // The reloader waits for the shards with blocking calls: off the port's only thread.
    let done = tokio::task::spawn_blocking(move || reloader.reload_and_log("admin API")).await;
    match done {
        Ok(Ok(report)) => Json(report).into_response(),
        Ok(Err(e)) => {
            let status = match e {
                crate::reload::ReloadError::NoFile => StatusCode::CONFLICT,
                crate::reload::ReloadError::Invalid(_) => StatusCode::BAD_REQUEST,
                crate::reload::ReloadError::Incomplete { .. } => StatusCode::SERVICE_UNAVAILABLE,
            };
            error(status, e.to_string())
        }
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the reload did not finish",
        ),
    }
}
