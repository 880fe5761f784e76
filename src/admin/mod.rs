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

mod data_routes;
mod openapi;
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
#[derive(Debug, Serialize, utoipa::ToSchema)]
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
        .layer(axum::middleware::from_fn(count_requests))
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// Parses a JSON body, answering `BAD_REQUEST` with serde's message on failure.
pub(crate) fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("invalid JSON body: {e}")))
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
    let method = req.method().as_str().to_owned();
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
