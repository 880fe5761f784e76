//! Admin routes for room data: attributes, recall and history.

use super::{AdminState, ApiError, ApiErrorBody, parse, path, query};
use crate::protocol::{ErrorCode, HistoryEntry, WireError};
use crate::server::data::{Actor, AttrResults, MAX_VALUE};
use axum::Json;
use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::routing::{delete, get, post};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Refuses an attribute key outside its limits (1–128 characters of `[A-Za-z0-9+=_-]`) for the
/// whole call, naming it by its start and length only.
fn check_key(key: &str) -> Result<(), ApiError> {
    crate::server::data::validate_key(key).map_err(|_| {
        ApiError::bad(format!(
            "attribute key must be 1-128 characters from [A-Za-z0-9+=_-], got {}",
            super::shown(key)
        ))
    })
}

pub(super) fn routes() -> Router<AdminState> {
    Router::new()
        .route(
            "/v1/rooms/{id}/attributes",
            get(get_attributes).put(put_attributes),
        )
        .route("/v1/rooms/{id}/attributes/{key}", delete(delete_attribute))
        .route("/v1/rooms/{id}/attributes:delete", post(delete_attributes))
        .route("/v1/rooms/{id}/messages/{seq}/recall", post(recall))
}

/// One attribute as the admin API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AttributeView {
    /// Key.
    pub key: String,
    /// Value.
    pub value: String,
    /// The user who set it last.
    pub owner: String,
    /// Removed when the owner leaves.
    pub auto_delete: bool,
    /// When it was set, ms since the Unix epoch.
    pub set_ms: u64,
}

/// Attributes of a room.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AttributesView {
    /// The room's attribute version.
    pub version: u64,
    /// The attributes, in key order.
    pub attributes: Vec<AttributeView>,
}

/// `?keys=a,b,c` (absent: all).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct KeysParam {
    /// Comma-separated keys.
    pub keys: Option<String>,
}

#[utoipa::path(get, path = "/v1/rooms/{id}/attributes",
    params(("id" = String, Path, description = "Room id"), KeysParam),
    responses((status = 200, body = AttributesView), (status = 404, body = ApiErrorBody)),
    security(("admin_key" = [])))]
pub(super) async fn get_attributes(
    State(st): State<AdminState>,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<KeysParam>, QueryRejection>,
) -> Result<Json<AttributesView>, ApiError> {
    let id = path(id)?;
    let keys: Vec<String> = query(q)?
        .keys
        .map(|k| k.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    for k in &keys {
        check_key(k)?;
    }
    let (version, attrs) = st.relay.get_attributes(None, &id, &keys)?;
    Ok(Json(AttributesView {
        version,
        attributes: attrs
            .into_iter()
            .map(|a| AttributeView {
                key: a.key,
                value: a.value,
                owner: a.owner,
                auto_delete: a.auto_delete,
                set_ms: a.set_ms,
            })
            .collect(),
    }))
}

/// `PUT /v1/rooms/{id}/attributes` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetAttributes {
    /// The user the attributes are set as (their owner).
    pub owner: String,
    /// Key → value, 1..=20 entries.
    pub entries: BTreeMap<String, String>,
    /// Remove them when the owner leaves the room.
    #[serde(default)]
    pub auto_delete: bool,
    /// Overwrite keys owned by others and take them over.
    #[serde(default)]
    pub force: bool,
}

/// The outcome per key.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AttributeResultsView {
    /// The room's attribute version after the call.
    pub version: u64,
    /// One per key, in key order.
    pub results: Vec<KeyResult>,
}

/// One key's outcome.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeyResult {
    /// Key.
    pub key: String,
    /// Error name when refused.
    pub error: Option<ErrorCode>,
    /// Error message when refused.
    pub message: Option<String>,
}

fn results_view((version, results): AttrResults) -> AttributeResultsView {
    AttributeResultsView {
        version,
        results: results
            .into_iter()
            .map(|(key, e)| KeyResult {
                key,
                error: e.as_ref().map(|e| e.code),
                message: e.map(|e| e.message),
            })
            .collect(),
    }
}

#[utoipa::path(put, path = "/v1/rooms/{id}/attributes", request_body = SetAttributes,
    params(("id" = String, Path, description = "Room id")),
    responses((status = 200, body = AttributeResultsView), (status = 400, body = ApiErrorBody), (status = 404, body = ApiErrorBody)),
    security(("admin_key" = [])))]
pub(super) async fn put_attributes(
    State(st): State<AdminState>,
    id: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Result<Json<AttributeResultsView>, ApiError> {
    let id = path(id)?;
    let req: SetAttributes = parse(&body)?;
    // Outside the schema refuses the whole call; ownership and the room's key limit are per key.
    for (k, v) in &req.entries {
        check_key(k)?;
        if v.len() > MAX_VALUE {
            return Err(ApiError(WireError::new(
                ErrorCode::TooLarge,
                format!(
                    "the value of attribute {} is {} bytes, the most is {MAX_VALUE}",
                    super::shown(k),
                    v.len()
                ),
            )));
        }
    }
    let entries: Vec<(String, String)> = req.entries.into_iter().collect();
    let done = st
        .relay
        .set_attributes(
            Actor::Admin(&req.owner),
            &id,
            &entries,
            req.auto_delete,
            req.force,
        )?
        .wait()
        .await?;
    Ok(Json(results_view(done)))
}

#[utoipa::path(delete, path = "/v1/rooms/{id}/attributes/{key}",
    params(("id" = String, Path, description = "Room id"), ("key" = String, Path, description = "Attribute key")),
    responses((status = 200, body = AttributeResultsView), (status = 404, description = "ROOM_NOT_FOUND or ATTR_NOT_FOUND", body = ApiErrorBody)),
    security(("admin_key" = [])))]
pub(super) async fn delete_attribute(
    State(st): State<AdminState>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<AttributeResultsView>, ApiError> {
    let (id, key) = path(p)?;
    check_key(&key)?;
    let done = st
        .relay
        .delete_attributes(Actor::Admin("admin"), &id, std::slice::from_ref(&key), true)?
        .wait()
        .await?;
    if let Some((_, Some(e))) = done.1.first() {
        return Err(ApiError(e.clone()));
    }
    Ok(Json(results_view(done)))
}

/// `POST /v1/rooms/{id}/attributes:delete` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteAttributes {
    /// 1..=20 keys.
    pub keys: Vec<String>,
}

#[utoipa::path(post, path = "/v1/rooms/{id}/attributes:delete", request_body = DeleteAttributes,
    params(("id" = String, Path, description = "Room id")),
    responses((status = 200, body = AttributeResultsView), (status = 400, body = ApiErrorBody)),
    security(("admin_key" = [])))]
pub(super) async fn delete_attributes(
    State(st): State<AdminState>,
    id: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Result<Json<AttributeResultsView>, ApiError> {
    let id = path(id)?;
    let req: DeleteAttributes = parse(&body)?;
    for k in &req.keys {
        check_key(k)?;
    }
    let done = st
        .relay
        .delete_attributes(Actor::Admin("admin"), &id, &req.keys, true)?
        .wait()
        .await?;
    Ok(Json(results_view(done)))
}

#[utoipa::path(post, path = "/v1/rooms/{id}/messages/{seq}/recall",
    params(("id" = String, Path, description = "Room id"), ("seq" = u64, Path, description = "Sequence number")),
    responses((status = 204), (status = 404, description = "ROOM_NOT_FOUND or MESSAGE_NOT_FOUND", body = ApiErrorBody)),
    security(("admin_key" = [])))]
pub(super) async fn recall(
    State(st): State<AdminState>,
    p: Result<Path<(String, u64)>, PathRejection>,
) -> Result<axum::http::StatusCode, ApiError> {
    let (id, seq) = path(p)?;
    st.relay.recall(None, &id, seq)?.wait().await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// History paging.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HistoryParams {
    /// Only messages with a lower sequence number (absent: the newest).
    pub before_seq: Option<u64>,
    /// Page size, 1..=200 (default 50).
    pub limit: Option<usize>,
}

/// One history item.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HistoryItem {
    /// Sequence number.
    pub seq: u64,
    /// Server timestamp, ms.
    pub ts: u64,
    /// Sender; empty for the system.
    pub from: String,
    /// Message type.
    #[serde(rename = "type")]
    pub msg_type: String,
    /// UTF-8 body, when it is UTF-8 (absent when recalled).
    pub body: Option<String>,
    /// Base64 body, when it is not UTF-8.
    pub body_b64: Option<String>,
    /// `protected`, `normal` or `low`.
    pub class: String,
    /// Recalled: the body is gone.
    pub recalled: bool,
}

/// A page of history, oldest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HistoryPage {
    /// Messages, oldest first.
    pub messages: Vec<HistoryItem>,
    /// Pass as `before_seq` for the previous page; absent when this page is the oldest.
    pub next_before_seq: Option<u64>,
}

fn item(h: HistoryEntry) -> HistoryItem {
    use base64::Engine;
    let m = h.message;
    let (body, body_b64) = if h.recalled {
        (None, None)
    } else {
        match String::from_utf8(m.body.to_vec()) {
            Ok(s) => (Some(s), None),
            Err(_) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(&m.body)),
            ),
        }
    };
    HistoryItem {
        seq: m.seq,
        ts: m.ts,
        from: m.from,
        msg_type: m.msg_type,
        body,
        body_b64,
        class: m.class.as_str().to_owned(),
        recalled: h.recalled,
    }
}

#[utoipa::path(get, path = "/v1/rooms/{id}/messages",
    params(("id" = String, Path, description = "Room id"), HistoryParams),
    responses((status = 200, body = HistoryPage), (status = 400, body = ApiErrorBody), (status = 404, body = ApiErrorBody)),
    security(("admin_key" = [])))]
pub(super) async fn history(
    State(st): State<AdminState>,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<HistoryParams>, QueryRejection>,
) -> Result<Json<HistoryPage>, ApiError> {
    let id = path(id)?;
    let q = query(q)?;
    let limit = q.limit.unwrap_or(50);
    let page = st.relay.history(&id, q.before_seq, limit)?;
    let next_before_seq = (page.len() == limit)
        .then(|| page.first().map(|h| h.message.seq))
        .flatten()
        .filter(|s| *s > 1);
    Ok(Json(HistoryPage {
        messages: page.into_iter().map(item).collect(),
        next_before_seq,
    }))
}
