//! The HTTP admin API (JSON, `Authorization: Bearer <admin key>`), metrics and health.
//!
//! Endpoints (every one is in `/openapi.json`):
//! ```text
//! POST   /v1/tokens                          {user_id, ttl_secs} -> {token, expires_at}
//! POST   /v1/rooms                           create {id, name?, mute_all?}
//! GET    /v1/rooms?limit=&cursor=            list, in id order
//! GET    /v1/rooms/{id}                      info
//! DELETE /v1/rooms/{id}                      destroy; members get RoomDestroyed{manual}
//! POST   /v1/rooms:destroy                   {ids} destroy several
//! GET    /v1/rooms/{id}/members?limit=&order=asc|desc&cursor=
//! POST   /v1/rooms/{id}/members:check        {user_ids}
//! POST   /v1/rooms/{id}/messages             {from?, type, body | body_b64, store?, low?} -> {seq, ts}
//! POST   /v1/messages                        {rooms, from?, type, body | body_b64, store?}
//! POST   /v1/broadcast                       {from?, type, body | body_b64}
//! GET    /metrics  /healthz  /openapi.json   (no key)
//! ```
//! Errors are `{"error": NAME, "message": text}` with the status of [`ErrorCode::http_status`].

// ---- cluster ----
mod cluster;
pub use cluster::handler as cluster_handler;
// ---- end cluster ----
mod data_routes;
pub mod openapi;
mod policy_routes;
mod routes;
pub mod serve;

pub use openapi::ApiDoc;

use crate::auth::admin_key_matches;
use crate::metrics as m;
use crate::protocol::{ErrorCode, WireError};
use crate::server::Relay;
use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;

/// Shared state of the admin handlers.
#[derive(Clone)]
pub struct AdminState {
    /// The relay core.
    pub relay: Arc<Relay>,
    /// Renders `/metrics`.
    pub prometheus: Option<PrometheusHandle>,
    /// The admin key's rate limit.
    pub bucket: Arc<std::sync::Mutex<crate::policy::TokenBucket>>,
}

/// An admin API error body.
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ApiErrorBody {
    /// Stable error name.
    pub error: ErrorCode,
    /// What went wrong.
    pub message: String,
}

/// An error answered as JSON with a fitting status.
#[derive(Debug)]
pub struct ApiError(pub WireError);

impl From<WireError> for ApiError {
    fn from(e: WireError) -> Self {
        ApiError(e)
    }
}

impl ApiError {
    /// A `BAD_REQUEST` with `message`.
    pub fn bad(message: impl Into<String>) -> Self {
        ApiError(WireError::new(ErrorCode::BadRequest, message))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (
            status,
            axum::Json(ApiErrorBody {
                error: self.0.code,
                message: self.0.message,
            }),
        )
            .into_response()
    }
}

/// The admin router.
pub fn router(relay: Arc<Relay>, prometheus: Option<PrometheusHandle>) -> Router {
    let body_limit = relay.config.limits.admin_request_body;
    let limits = &relay.config.limits;
    let bucket = crate::policy::TokenBucket::new(
        limits.admin_rate_per_sec,
        limits.admin_burst,
        crate::server::relay::now_ms(),
    );
    let state = AdminState {
        relay,
        prometheus,
        bucket: Arc::new(std::sync::Mutex::new(bucket)),
    };
    let v1 = Router::new()
        .route(
            "/v1/rooms/{id}/messages",
            post(routes::send_room_message).get(data_routes::history),
        )
        .merge(routes::routes())
        .merge(policy_routes::routes())
        .merge(data_routes::routes())
        // ---- cluster: a room's changes run on its owner ----
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            cluster::forward_room_changes,
        ))
        // ---- end cluster ----
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_admin_key,
        ));
    Router::new()
        .merge(v1)
        .merge(routes::open())
        .fallback(|| async {
            ApiError(WireError::new(ErrorCode::BadRequest, "no such route")).into_response()
        })
        .method_not_allowed_fallback(|| async {
            let e = ApiErrorBody {
                error: ErrorCode::BadRequest,
                message: "this route does not take that method".into(),
            };
            (StatusCode::METHOD_NOT_ALLOWED, axum::Json(e)).into_response()
        })
        .layer(axum::middleware::from_fn(limit_request_head))
        .layer(axum::middleware::from_fn(count_requests))
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// Parses a JSON body, answering `BAD_REQUEST` with serde's message on failure. A number with
/// a zero fraction (`60.0`, `6e1`) is an integer, as JSON Schema counts it.
pub(crate) fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let bad = |e: serde_json::Error| ApiError::bad(format!("invalid JSON body: {e}"));
    let mut value: serde_json::Value = serde_json::from_slice(body).map_err(bad)?;
    whole_numbers(&mut value);
    serde_json::from_value(value).map_err(bad)
}

/// Rewrites every float with a zero fraction that fits a `u64` or an `i64` as that integer.
fn whole_numbers(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Number(n) if n.is_f64() => {
            let Some(f) = n.as_f64() else { return };
            // `as` saturates: the round trip tells whether the value fits.
            if f.fract() == 0.0 && f >= 0.0 && f < u64::MAX as f64 && f as u64 as f64 == f {
                *v = Value::from(f as u64);
            } else if f.fract() == 0.0 && f < 0.0 && f >= i64::MIN as f64 && f as i64 as f64 == f {
                *v = Value::from(f as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(whole_numbers),
        Value::Object(fields) => fields.values_mut().for_each(whole_numbers),
        _ => {}
    }
}

pub(crate) fn path<T>(p: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    p.map(|Path(v)| v)
        .map_err(|e| ApiError::bad(format!("invalid path: {e}")))
}

pub(crate) fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(v)| v)
        .map_err(|e| ApiError::bad(format!("invalid query: {e}")))
}

async fn require_admin_key(State(state): State<AdminState>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !admin_key_matches(&state.relay.admin_key, given.trim()) {
        let why = if given.is_empty() {
            "missing admin key: send Authorization: Bearer <admin key>"
        } else {
            "wrong admin key"
        };
        return ApiError(WireError::new(ErrorCode::Unauthorized, why)).into_response();
    }
    let admitted = state
        .bucket
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .try_take(crate::server::relay::now_ms());
    if !admitted {
        let l = &state.relay.config.limits;
        return ApiError(WireError::new(
            ErrorCode::RateLimited,
            format!(
                "more than {} admin calls a second (burst {})",
                l.admin_rate_per_sec, l.admin_burst
            ),
        ))
        .into_response();
    }
    next.run(req).await
}

async fn count_requests(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = method_label(req.method());
    let mut resp = next.run(req).await;
    // axum's body limit answers in plain text; every error here is JSON.
    if resp.status() == StatusCode::PAYLOAD_TOO_LARGE
        && resp
            .headers()
            .get(header::CONTENT_TYPE)
            .is_none_or(|v| !v.as_bytes().starts_with(b"application/json"))
    {
        resp = ApiError(WireError::new(
            ErrorCode::TooLarge,
            "the request body is larger than limits.admin_request_body",
        ))
        .into_response();
    }
    metrics::counter!(
        m::ADMIN_REQUESTS,
        "route" => format!("{method} {route}"),
        "status" => resp.status().as_u16().to_string()
    )
    .increment(1);
    resp
}

/// The method as a metric label: one of the methods the API serves, or `OTHER`. HTTP lets a client
/// make up methods, and each new label value would be a new series kept for the life of the
/// process.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// Longest request target (path and query) the admin API reads, bytes; longer: 414.
pub const MAX_TARGET: usize = 8 * 1024;
/// Most header bytes (names and values) the admin API reads; more: 431.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Most headers the admin API reads; more: 431.
pub const MAX_HEADERS: usize = 64;

/// Refuses a request whose target or headers are larger than the admin API reads, with the JSON
/// error body (the HTTP library's own refusals, far above these limits, have none).
async fn limit_request_head(req: Request, next: Next) -> Response {
    let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    let headers = req.headers();
    let header_bytes: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    let refusal = if target > MAX_TARGET {
        Some((
            StatusCode::URI_TOO_LONG,
            format!("the request target is {target} bytes, the most is {MAX_TARGET}"),
        ))
    } else if headers.len() > MAX_HEADERS || header_bytes > MAX_HEADER_BYTES {
        Some((
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!(
                "the request has {} headers of {header_bytes} bytes, the most is {MAX_HEADERS} \
                 headers of {MAX_HEADER_BYTES} bytes",
                headers.len()
            ),
        ))
    } else {
        None
    };
    match refusal {
        Some((status, message)) => {
            let body = ApiErrorBody {
                error: ErrorCode::TooLarge,
                message,
            };
            (status, axum::Json(body)).into_response()
        }
        None => next.run(req).await,
    }
}

/// `text` for an error message: quoted, and cut after 40 characters (with its length), so that a
/// 60 KB value is not echoed back.
pub(crate) fn shown(text: &str) -> String {
    const SHOWN: usize = 40;
    match text.char_indices().nth(SHOWN) {
        None => format!("{text:?}"),
        Some((cut, _)) => format!("{:?}… ({} bytes)", &text[..cut], text.len()),
    }
}
