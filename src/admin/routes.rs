//! Handlers, their request and response bodies, and the OpenAPI document built from them.

use super::{AdminState, ApiError, ApiErrorBody, parse, path, query};
use crate::protocol::{ErrorCode, RoomInfo, WireError};
use crate::room::MemberOrder;
use crate::server::moderation::RoomAdminView;
use crate::server::relay::{AdminMessage, NewRoom};
use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use axum::Json;
type ApiResult<T> = Result<Json<T>, ApiError>;

/// The routes of this file under `/v1` (tokens, rooms, members, messages).
pub(super) fn routes() -> Router<AdminState> {
    Router::new()
        .route("/v1/tokens", post(mint_token))
        .route("/v1/rooms", post(create_room).get(list_rooms))
        .route("/v1/rooms:destroy", post(destroy_rooms))
        .route("/v1/rooms/{id}", get(get_room).delete(destroy_room))
        .route("/v1/rooms/{id}/members", get(list_members))
        .route("/v1/rooms/{id}/members:check", post(check_members))
        .route("/v1/messages", post(send_messages))
        .route("/v1/broadcast", post(broadcast))
}

pub(super) fn open() -> Router<AdminState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(render_metrics))
        .route("/openapi.json", get(openapi_json))
}

/// `/healthz`: whether the relay can take changes, with the store's state.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok`, or `unavailable` while the store cannot write (changes are refused).
    pub status: &'static str,
    /// The store's state: `healthy`; `failing` with `since_ms`, `error` (the last write's) and
    /// `failures`; or `closed` while the relay stops.
    #[schema(value_type = Object)]
    pub store: crate::store::StoreHealth,
}

#[utoipa::path(get, path = "/healthz", responses(
    (status = 200, description = "The relay is serving and its store takes writes", body = Health),
    (status = 503, description = "The store cannot write (e.g. its disk is full): changes are refused until it recovers by itself", body = Health)))]
pub(super) async fn healthz(State(st): State<AdminState>) -> Response {
    let store = st.relay.store().health();
    let (status, word) = match store {
        crate::store::StoreHealth::Healthy => (StatusCode::OK, "ok"),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
    };
    (
        status,
        Json(Health {
            status: word,
            store,
        }),
    )
        .into_response()
}

#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "This document")))]
pub(super) async fn openapi_json(State(st): State<AdminState>) -> Json<serde_json::Value> {
    Json(super::openapi::document(&st.relay.config))
}

#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format", body = String)))]
pub(super) async fn render_metrics(State(st): State<AdminState>) -> Response {
    match &st.prometheus {
        Some(h) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            h.render(),
        )
            .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder not installed\n",
        )
            .into_response(),
    }
}

// ---------------- tokens ----------------

/// `POST /v1/tokens` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// User id the token stands for.
    pub user_id: String,
    /// Lifetime in seconds (1 ..= `auth.max_token_ttl_secs`); default 86400.
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

/// A minted token.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenResponse {
    /// HS256 JWT.
    pub token: String,
    /// Expiry, seconds since the Unix epoch.
    pub expires_at: u64,
}

#[utoipa::path(post, path = "/v1/tokens", request_body = TokenRequest,
    responses((status = 200, body = TokenResponse), (status = 400, body = ApiErrorBody)),
    security(("admin_key" = [])))]
pub(super) async fn mint_token(
    State(st): State<AdminState>,
    body: Bytes,
) -> ApiResult<TokenResponse> {
    let req: TokenRequest = parse(&body)?;
    let max = st.relay.config.auth.max_token_ttl_secs;
    let ttl = req.ttl_secs.unwrap_or(86_400);
    if ttl == 0 || ttl > max {
        return Err(ApiError::bad(format!(
            "ttl_secs must be 1..={max} (auth.max_token_ttl_secs), got {ttl}"
        )));
    }
    let expires_at = crate::auth::unix_secs() + ttl;
    let token = st.relay.auth.mint(&req.user_id, expires_at)?;
    Ok(Json(TokenResponse { token, expires_at }))
}

// ---------------- rooms ----------------

/// `POST /v1/rooms` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRoom {
    /// Room id, 1–64 characters of `[A-Za-z0-9_.:@-]`.
    pub id: String,
    /// Display name; defaults to the id.
    #[serde(default)]
    pub name: Option<String>,
    /// Start with every member muted.
    #[serde(default)]
    pub mute_all: bool,
    /// Users who may send during mute-all (at most 20).
    #[serde(default)]
    pub mute_all_whitelist: Vec<String>,
    /// How the room ends by itself: `{"type":"idle","minutes":M}` (1..=1440; no minutes: the
    /// global default) or `{"type":"lifetime","minutes":M}` (60..=10080). Default: idle.
    #[serde(default)]
    pub destroy_policy: crate::policy::DestroyPolicy,
    /// Send join/leave events to members (a periodic member count above `member_events_max`).
    #[serde(default)]
    pub member_events: bool,
}

/// Room info.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RoomView {
    /// Room id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Changes every time the room is created anew.
    pub epoch: u64,
    /// Creation time, ms since the Unix epoch.
    pub created_ms: u64,
    /// Members now.
    pub member_count: u64,
    /// Whether mute-all is on.
    pub mute_all: bool,
}

impl From<RoomInfo> for RoomView {
    fn from(r: RoomInfo) -> Self {
        RoomView {
            id: r.id,
            name: r.name,
            epoch: r.epoch,
            created_ms: r.created_ms,
            member_count: r.member_count,
            mute_all: r.mute_all,
        }
    }
}

#[utoipa::path(post, path = "/v1/rooms", request_body = CreateRoom,
    responses((status = 201, body = RoomAdminView), (status = 409, description = "ROOM_EXISTS", body = ApiErrorBody)),
    security(("admin_key" = [])))]
pub(super) async fn create_room(
    State(st): State<AdminState>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: CreateRoom = parse(&body)?;
    let info = st.relay.create_room(NewRoom {
        id: req.id,
        name: req.name,
        mute_all: req.mute_all,
        mute_all_whitelist: req.mute_all_whitelist,
        destroy_policy: req.destroy_policy,
        member_events: req.member_events,
    })?;
    let info = info.wait().await?;
    let view = st.relay.room_admin_view(&info.id)?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// Paging of list endpoints.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Page size, 1..=500 (default 100).
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A page of rooms.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RoomList {
    /// Rooms in id order.
    pub rooms: Vec<RoomView>,
    /// Rooms in all.
    pub total: usize,
    /// Pass as `cursor` for the next page; absent on the last one.
    pub next_cursor: Option<String>,
}

#[utoipa::path(get, path = "/v1/rooms", params(ListParams),
    responses((status = 200, body = RoomList)), security(("admin_key" = [])))]
pub(super) async fn list_rooms(
    State(st): State<AdminState>,
    q: Result<Query<ListParams>, QueryRejection>,
) -> ApiResult<RoomList> {
    let q = query(q)?;
    let limit = page_limit(q.limit, 100, 500)?;
    let (rooms, total) = st.relay.list_rooms(limit, q.cursor.as_deref());
    let next_cursor = (rooms.len() == limit)
        .then(|| rooms.last().map(|r| r.id.clone()))
        .flatten();
    Ok(Json(RoomList {
        rooms: rooms.into_iter().map(RoomView::from).collect(),
        total,
        next_cursor,
    }))
}

fn page_limit(given: Option<usize>, default: usize, max: usize) -> Result<usize, ApiError> {
    let l = given.unwrap_or(default);
    if l == 0 || l > max {
        return Err(ApiError::bad(format!("limit must be 1..={max}, got {l}")));
    }
    Ok(l)
}

#[utoipa::path(get, path = "/v1/rooms/{id}", params(("id" = String, Path, description = "Room id")),
    responses((status = 200, body = RoomAdminView), (status = 404, description = "ROOM_NOT_FOUND", body = ApiErrorBody)),
    security(("admin_key" = [])))]
pub(super) async fn get_room(
    State(st): State<AdminState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<RoomAdminView> {
    let id = path(id)?;
    Ok(Json(st.relay.room_admin_view(&id)?))
}

/// Rooms destroyed.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Destroyed {
    /// Ids destroyed.
    pub destroyed: Vec<String>,
    /// Ids that did not exist.
    pub not_found: Vec<String>,
    /// Rooms that were not destroyed, each with why (absent when there are none); the others
    /// of the call were handled as the two lists say.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<DestroyFailure>,
}

/// A room a call to destroy several did not destroy.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DestroyFailure {
    /// Room id.
    pub id: String,
    /// Stable error name.
    pub error: ErrorCode,
    /// What went wrong.
    pub message: String,
}

#[utoipa::path(delete, path = "/v1/rooms/{id}", params(("id" = String, Path, description = "Room id")),
    responses((status = 200, body = Destroyed), (status = 404, body = ApiErrorBody)),
    security(("admin_key" = [])))]
pub(super) async fn destroy_room(
    State(st): State<AdminState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Destroyed> {
    let id = path(id)?;
    st.relay
        .destroy_room(&id, crate::protocol::DestroyReason::Manual)?
        .wait()
        .await?;
    Ok(Json(Destroyed {
        destroyed: vec![id],
        not_found: vec![],
        failed: vec![],
    }))
}

/// `POST /v1/rooms:destroy` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DestroyMany {
    /// Room ids, 1..=`limits.rooms_per_destroy`.
    pub ids: Vec<String>,
}

#[utoipa::path(post, path = "/v1/rooms:destroy", request_body = DestroyMany,
    responses((status = 200, body = Destroyed), (status = 400, body = ApiErrorBody)),
    security(("admin_key" = [])))]
pub(super) async fn destroy_rooms(
    State(st): State<AdminState>,
    body: Bytes,
) -> ApiResult<Destroyed> {
    let req: DestroyMany = parse(&body)?;
    let max = st.relay.config.limits.rooms_per_destroy;
    if req.ids.is_empty() || req.ids.len() > max {
        return Err(WireError::new(
            ErrorCode::BatchTooLarge,
            format!("ids must hold 1..={max} room ids, got {}", req.ids.len()),
        )
        .into());
    }
    for id in &req.ids {
        crate::room::validate_id("room id", id)?;
    }
    let mut out = Destroyed {
        destroyed: vec![],
        not_found: vec![],
        failed: vec![],
    };
    // Each room by itself (in cluster mode by its owner): one that fails does not hide what
    // happened to the others.
    for id in req.ids {
        match super::cluster::destroy_room(&st, &id).await {
            Ok(true) => out.destroyed.push(id),
            Ok(false) => out.not_found.push(id),
            Err(e) => out.failed.push(DestroyFailure {
                id,
                error: e.code,
                message: e.message,
            }),
        }
    }
    Ok(Json(out))
}

// ---------------- members ----------------

/// Member listing parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct MemberParams {
    /// Page size, 1..=500 (default 100).
    pub limit: Option<usize>,
    /// `asc` (oldest joins first, default) or `desc`.
    pub order: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<u64>,
}

/// One member.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MemberView {
    /// User id.
    pub user_id: String,
    /// Join time, ms since the Unix epoch.
    pub joined_ms: u64,
}

/// A page of members.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MemberList {
    /// Members in the asked order.
    pub members: Vec<MemberView>,
    /// Members in the room.
    pub total: usize,
    /// Pass as `cursor` for the next page; absent on the last one. In cluster mode it is the
    /// join time (ms since the Unix epoch) of the page's last member: pages are in join-time
    /// order across relays and end where the join time changes.
    pub next_cursor: Option<u64>,
    /// Cluster mode: present and `true` when a relay with members of the room did not answer
    /// in time, so its members are missing from the page and from `total`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
    /// Cluster mode: the node ids of the relays that did not answer (with `partial`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unanswered: Vec<String>,
}

#[utoipa::path(get, path = "/v1/rooms/{id}/members",
    params(("id" = String, Path, description = "Room id"), MemberParams),
    responses((status = 200, body = MemberList), (status = 404, body = ApiErrorBody)),
    security(("admin_key" = [])))]
pub(super) async fn list_members(
    State(st): State<AdminState>,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<MemberParams>, QueryRejection>,
) -> ApiResult<MemberList> {
    let id = path(id)?;
    let q = query(q)?;
    let order = match q.order.as_deref() {
        None | Some("asc") => MemberOrder::Asc,
        Some("desc") => MemberOrder::Desc,
        Some(o) => {
            return Err(ApiError::bad(format!(
                "order must be asc or desc, got {o:?}"
            )));
        }
    };
    let limit = q.limit.unwrap_or(100);
    // ---- cluster: the members on every relay ----
    if let Some(cluster) = st.relay.cluster() {
        let desc = order == MemberOrder::Desc;
        let page =
            crate::server::cluster::members::page(&st.relay, cluster, &id, desc, q.cursor, limit)
                .await?;
        return Ok(Json(MemberList {
            members: views(page.members),
            total: page.total,
            next_cursor: page.next,
            partial: !page.unanswered.is_empty(),
            unanswered: page.unanswered,
        }));
    }
    // ---- end cluster ----
    let page = st.relay.members(&id, order, limit, q.cursor)?;
    Ok(Json(MemberList {
        members: views(page.members),
        total: page.total,
        next_cursor: page.next,
        partial: false,
        unanswered: vec![],
    }))
}

fn views(members: Vec<(String, u64)>) -> Vec<MemberView> {
    members
        .into_iter()
        .map(|(user_id, joined_ms)| MemberView { user_id, joined_ms })
        .collect()
}

/// `POST /v1/rooms/{id}/members:check` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckMembers {
    /// Up to 1000 user ids.
    pub user_ids: Vec<String>,
}

/// Membership of each asked user.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MemberCheck {
    /// `{user_id, member}` in the asked order.
    pub results: Vec<MemberCheckItem>,
    /// Cluster mode: present and `true` when a relay with members of the room did not answer
    /// in time, so a `false` may be wrong for its members.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
    /// Cluster mode: the node ids of the relays that did not answer (with `partial`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unanswered: Vec<String>,
}

/// One membership answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MemberCheckItem {
    /// User id.
    pub user_id: String,
    /// Whether it is in the room.
    pub member: bool,
}

#[utoipa::path(post, path = "/v1/rooms/{id}/members:check", request_body = CheckMembers,
    params(("id" = String, Path, description = "Room id")),
    responses((status = 200, body = MemberCheck), (status = 400, body = ApiErrorBody)),
    security(("admin_key" = [])))]
pub(super) async fn check_members(
    State(st): State<AdminState>,
    id: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> ApiResult<MemberCheck> {
    let id = path(id)?;
    let req: CheckMembers = parse(&body)?;
    for u in &req.user_ids {
        crate::room::validate_id("user id", u)?;
    }
    // ---- cluster: the members on every relay ----
    let (flags, unanswered) = match st.relay.cluster() {
        Some(cluster) => {
            let checked =
                crate::server::cluster::members::check(&st.relay, cluster, &id, &req.user_ids)
                    .await?;
            (checked.member, checked.unanswered)
        }
        None => (st.relay.check_members(&id, &req.user_ids)?, vec![]),
    };
    // ---- end cluster ----
    Ok(Json(MemberCheck {
        results: req
            .user_ids
            .into_iter()
            .zip(flags)
            .map(|(user_id, member)| MemberCheckItem { user_id, member })
            .collect(),
        partial: !unanswered.is_empty(),
        unanswered,
    }))
}

// ---------------- messages ----------------

/// A message body: `body` (UTF-8) or `body_b64` (binary), exactly one.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoomMessage {
    /// Sender user id; absent for the system (protected class).
    #[serde(default)]
    pub from: Option<String>,
    /// Message type.
    #[serde(rename = "type")]
    pub msg_type: String,
    /// UTF-8 payload.
    #[serde(default)]
    pub body: Option<String>,
    /// Base64 payload.
    #[serde(default)]
    pub body_b64: Option<String>,
    /// Keep it in history (default true).
    #[serde(default)]
    pub store: Option<bool>,
    /// Low-priority class.
    #[serde(default)]
    pub low: bool,
}

fn body_bytes(body: &Option<String>, b64: &Option<String>) -> Result<Bytes, ApiError> {
    use base64::Engine;
    match (body, b64) {
        (Some(b), None) => Ok(Bytes::from(b.clone().into_bytes())),
        // Padded standard base64; stray bits in the last symbol are ignored, as most encoders
        // never set them and the schema's pattern cannot tell them apart.
        (None, Some(b)) => base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
        )
        .decode(b)
        .map(Bytes::from)
        .map_err(|e| ApiError::bad(format!("body_b64 is not base64: {e}"))),
        _ => Err(ApiError::bad("give exactly one of body and body_b64")),
    }
}

/// A stamped message.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Sent {
    /// Room sequence number.
    pub seq: u64,
    /// Server timestamp, ms since the Unix epoch.
    pub ts: u64,
}

#[utoipa::path(post, path = "/v1/rooms/{id}/messages", request_body = RoomMessage,
    params(("id" = String, Path, description = "Room id")),
    responses((status = 200, body = Sent), (status = 404, body = ApiErrorBody), (status = 413, body = ApiErrorBody)),
    security(("admin_key" = [])))]
pub(super) async fn send_room_message(
    State(st): State<AdminState>,
    id: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> ApiResult<Sent> {
    let id = path(id)?;
    let req: RoomMessage = parse(&body)?;
    let msg = AdminMessage {
        body: body_bytes(&req.body, &req.body_b64)?,
        from: req.from,
        msg_type: req.msg_type,
        store: req.store.unwrap_or(true),
        low: req.low,
    };
    let (seq, ts) = st.relay.admin_send(&id, &msg)?.wait().await?;
    Ok(Json(Sent { seq, ts }))
}

/// `POST /v1/messages` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MultiMessage {
    /// Up to 10 room ids.
    pub rooms: Vec<String>,
    /// Sender user id; absent for the system.
    #[serde(default)]
    pub from: Option<String>,
    /// Message type.
    #[serde(rename = "type")]
    pub msg_type: String,
    /// UTF-8 payload.
    #[serde(default)]
    pub body: Option<String>,
    /// Base64 payload.
    #[serde(default)]
    pub body_b64: Option<String>,
    /// Keep it in history (default true).
    #[serde(default)]
    pub store: Option<bool>,
}

/// The outcome in one room.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RoomOutcome {
    /// Room id.
    pub room: String,
    /// Sequence number, when sent.
    pub seq: Option<u64>,
    /// Timestamp, when sent.
    pub ts: Option<u64>,
    /// Error name, when refused.
    pub error: Option<ErrorCode>,
    /// Error message, when refused.
    pub message: Option<String>,
}

/// Outcomes per room.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MultiSent {
    /// One per asked room, in order.
    pub results: Vec<RoomOutcome>,
}

#[utoipa::path(post, path = "/v1/messages", request_body = MultiMessage,
    responses((status = 200, body = MultiSent), (status = 400, body = ApiErrorBody)),
    security(("admin_key" = [])))]
pub(super) async fn send_messages(
    State(st): State<AdminState>,
    body: Bytes,
) -> ApiResult<MultiSent> {
    let req: MultiMessage = parse(&body)?;
    for r in &req.rooms {
        crate::room::validate_id("room id", r)?;
    }
    let msg = AdminMessage {
        body: body_bytes(&req.body, &req.body_b64)?,
        from: req.from,
        msg_type: req.msg_type,
        store: req.store.unwrap_or(true),
        low: false,
    };
    let mut results = Vec::new();
    for r in st.relay.admin_send_many(&req.rooms, &msg)? {
        results.push(match r {
            Ok(d) => d.wait().await,
            Err(e) => Err(e),
        });
    }
    Ok(Json(MultiSent {
        results: req
            .rooms
            .into_iter()
            .zip(results)
            .map(|(room, r)| match r {
                Ok((seq, ts)) => RoomOutcome {
                    room,
                    seq: Some(seq),
                    ts: Some(ts),
                    error: None,
                    message: None,
                },
                Err(e) => RoomOutcome {
                    room,
                    seq: None,
                    ts: None,
                    error: Some(e.code),
                    message: Some(e.message),
                },
            })
            .collect(),
    }))
}

/// `POST /v1/broadcast` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Broadcast {
    /// Sender user id; absent for the system.
    #[serde(default)]
    pub from: Option<String>,
    /// Message type.
    #[serde(rename = "type")]
    pub msg_type: String,
    /// UTF-8 payload.
    #[serde(default)]
    pub body: Option<String>,
    /// Base64 payload.
    #[serde(default)]
    pub body_b64: Option<String>,
}

/// How many rooms a broadcast reached.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Broadcasted {
    /// Rooms that got it.
    pub rooms: usize,
}

/// Rooms' sends of one broadcast waited for at once.
const BROADCAST_AT_ONCE: usize = 64;

#[utoipa::path(post, path = "/v1/broadcast", request_body = Broadcast,
    responses((status = 200, body = Broadcasted), (status = 400, body = ApiErrorBody)),
    security(("admin_key" = [])))]
pub(super) async fn broadcast(State(st): State<AdminState>, body: Bytes) -> ApiResult<Broadcasted> {
    let req: Broadcast = parse(&body)?;
    let msg = AdminMessage {
        body: body_bytes(&req.body, &req.body_b64)?,
        from: req.from,
        msg_type: req.msg_type,
        store: false,
        low: false,
    };
    // Each room's send is waited for (forwarded to its owner in cluster mode), a few at once.
    let sends = st.relay.broadcast(&msg)?;
    let rooms = futures_util::stream::iter(sends.into_iter().map(|d| d.wait()))
        .buffer_unordered(BROADCAST_AT_ONCE)
        .filter(|sent| std::future::ready(sent.is_ok()))
        .count()
        .await;
    Ok(Json(Broadcasted { rooms }))
}
