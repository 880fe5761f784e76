//! Admin routes for room policy: lifecycle, keepalive, bans, mutes, mute-all, whitelists and the
//! app-wide message-type lists.

use super::{AdminState, ApiError, ApiErrorBody, parse, path, query};
use crate::policy::DestroyPolicy;
use crate::server::moderation::{TypeList, UserUntil};
use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post, put};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

type Done = Result<StatusCode, ApiError>;

pub(super) fn routes() -> Router<AdminState> {
    Router::new()
        .route("/v1/rooms/{id}/destroy-policy", put(put_destroy_policy))
        .route(
            "/v1/rooms/{id}/destroy-at",
            put(put_destroy_at).delete(delete_destroy_at),
        )
        .route(
            "/v1/rooms/{id}/keepalive",
            put(put_keepalive).delete(delete_keepalive),
        )
        .route("/v1/keepalive", get(get_keepalive))
        .route("/v1/rooms/{id}/bans", post(post_bans).get(get_bans))
        .route("/v1/rooms/{id}/bans/{user}", delete(delete_ban))
        .route("/v1/rooms/{id}/mutes", post(post_mutes).get(get_mutes))
        .route("/v1/rooms/{id}/mutes/{user}", delete(delete_mute))
        .route(
            "/v1/rooms/{id}/mute-all",
            put(put_mute_all).delete(delete_mute_all),
        )
        .route(
            "/v1/rooms/{id}/mute-all-whitelist",
            post(post_mute_all_whitelist).get(get_mute_all_whitelist),
        )
        .route(
            "/v1/rooms/{id}/mute-all-whitelist/{user}",
            delete(delete_mute_all_whitelist),
        )
        .route(
            "/v1/rooms/{id}/user-whitelist",
            post(post_user_whitelist).get(get_user_whitelist),
        )
        .route(
            "/v1/rooms/{id}/user-whitelist/{user}",
            delete(delete_user_whitelist),
        )
        .route(
            "/v1/global-mutes",
            post(post_global_mutes).get(get_global_mutes),
        )
        .route("/v1/global-mutes/{user}", delete(delete_global_mute))
        .route(
            "/v1/message-types/whitelist",
            post(post_type_whitelist).get(get_type_whitelist),
        )
        .route(
            "/v1/message-types/whitelist/{type}",
            delete(delete_type_whitelist),
        )
        .route(
            "/v1/message-types/low-priority",
            post(post_low_types).get(get_low_types),
        )
        .route(
            "/v1/message-types/low-priority/{type}",
            delete(delete_low_type),
        )
}

// ---------------- lifecycle ----------------

#[utoipa::path(put, path = "/v1/rooms/{id}/destroy-policy", request_body = DestroyPolicy,
    params(("id" = String, Path, description = "Room id")),
    responses((status = 204), (status = 400, body = ApiErrorBody), (status = 404, body = ApiErrorBody)),
    security(("admin_key" = [])))]
pub(super) async fn put_destroy_policy(
    State(st): State<AdminState>,
    id: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Done {
    let id = path(id)?;
    let policy: DestroyPolicy = parse(&body)?;
    st.relay.set_destroy_policy(&id, policy)?.wait().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /v1/rooms/{id}/destroy-at` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DestroyAt {
    /// When to destroy the room, ms since the Unix epoch (in the future).
    pub at: u64,
}

#[utoipa::path(put, path = "/v1/rooms/{id}/destroy-at", request_body = DestroyAt,
    params(("id" = String, Path, description = "Room id")),
    responses((status = 204), (status = 400, body = ApiErrorBody), (status = 404, body = ApiErrorBody)),
    security(("admin_key" = [])))]
pub(super) async fn put_destroy_at(
    State(st): State<AdminState>,
    id: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Done {
    let id = path(id)?;
    let req: DestroyAt = parse(&body)?;
    if req.at > super::openapi::LATEST_MS {
        return Err(ApiError::bad(format!(
            "at must be at most {} (the end of year 9999), got {}",
            super::openapi::LATEST_MS,
            req.at
        )));
    }
    st.relay.set_destroy_at(&id, Some(req.at))?.wait().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, path = "/v1/rooms/{id}/destroy-at",
    params(("id" = String, Path, description = "Room id")),
    responses((status = 204), (status = 404, body = ApiErrorBody)), security(("admin_key" = [])))]
pub(super) async fn delete_destroy_at(
    State(st): State<AdminState>,
    id: Result<Path<String>, PathRejection>,
) -> Done {
    st.relay.set_destroy_at(&path(id)?, None)?.wait().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(put, path = "/v1/rooms/{id}/keepalive",
    params(("id" = String, Path, description = "Room id")),
    responses((status = 204), (status = 404, body = ApiErrorBody)), security(("admin_key" = [])))]
pub(super) async fn put_keepalive(
    State(st): State<AdminState>,
    id: Result<Path<String>, PathRejection>,
) -> Done {
    st.relay.set_keepalive(&path(id)?, true)?.wait().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, path = "/v1/rooms/{id}/keepalive",
    params(("id" = String, Path, description = "Room id")),
    responses((status = 204), (status = 404, body = ApiErrorBody)), security(("admin_key" = [])))]
pub(super) async fn delete_keepalive(
    State(st): State<AdminState>,
    id: Result<Path<String>, PathRejection>,
) -> Done {
    st.relay.set_keepalive(&path(id)?, false)?.wait().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A list of room ids.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RoomIds {
    /// Room ids.
    pub rooms: Vec<String>,
}

#[utoipa::path(get, path = "/v1/keepalive", responses((status = 200, body = RoomIds)),
    security(("admin_key" = [])))]
pub(super) async fn get_keepalive(State(st): State<AdminState>) -> axum::Json<RoomIds> {
    axum::Json(RoomIds {
        rooms: st.relay.keepalive_list(),
    })
}

// ---------------- bans and mutes ----------------

/// A moderation call: up to 20 users for 1..=43200 minutes.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Moderate {
    /// 1..=20 user ids.
    pub user_ids: Vec<String>,
    /// 1..=43200.
    pub minutes: u32,
    /// Tell the whole room (the affected users are always told).
    #[serde(default)]
    pub notify: bool,
}

/// When the ban or mute ends.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Until {
    /// ms since the Unix epoch.
    pub until_ms: u64,
}

/// `?notify=` on removals.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct NotifyParam {
    /// Tell the whole room (the affected user is always told).
    pub notify: Option<bool>,
}

/// Users with expiries.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UsersUntil {
    /// Live entries.
    pub users: Vec<UserUntil>,
}

#[utoipa::path(post, path = "/v1/rooms/{id}/bans", request_body = Moderate,
    params(("id" = String, Path, description = "Room id")),
    responses((status = 200, body = Until), (status = 400, body = ApiErrorBody), (status = 404, body = ApiErrorBody)),
    security(("admin_key" = [])))]
pub(super) async fn post_bans(
    State(st): State<AdminState>,
    id: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Result<axum::Json<Until>, ApiError> {
    let id = path(id)?;
    let req: Moderate = parse(&body)?;
    let until_ms = st
        .relay
        .ban(&id, &req.user_ids, req.minutes, req.notify)?
        .wait()
        .await?;
    Ok(axum::Json(Until { until_ms }))
}

#[utoipa::path(delete, path = "/v1/rooms/{id}/bans/{user}",
    params(("id" = String, Path, description = "Room id"), ("user" = String, Path, description = "User id"), NotifyParam),
    responses((status = 204), (status = 400, body = ApiErrorBody)), security(("admin_key" = [])))]
pub(super) async fn delete_ban(
    State(st): State<AdminState>,
    p: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<NotifyParam>, QueryRejection>,
) -> Done {
    let (id, user) = path(p)?;
    let notify = query(q)?.notify.unwrap_or(false);
    st.relay.unban(&id, &user, notify)?.wait().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/rooms/{id}/bans",
    params(("id" = String, Path, description = "Room id")),
    responses((status = 200, body = UsersUntil), (status = 404, body = ApiErrorBody)), security(("admin_key" = [])))]
pub(super) async fn get_bans(
    State(st): State<AdminState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<axum::Json<UsersUntil>, ApiError> {
    Ok(axum::Json(UsersUntil {
        users: st.relay.bans(&path(id)?)?,
    }))
}

#[utoipa::path(post, path = "/v1/rooms/{id}/mutes", request_body = Moderate,
    params(("id" = String, Path, description = "Room id")),
    responses((status = 200, body = Until), (status = 400, body = ApiErrorBody), (status = 404, body = ApiErrorBody)),
    security(("admin_key" = [])))]
pub(super) async fn post_mutes(
    State(st): State<AdminState>,
    id: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Result<axum::Json<Until>, ApiError> {
    let id = path(id)?;
    let req: Moderate = parse(&body)?;
    let until_ms = st
        .relay
        .mute(&id, &req.user_ids, req.minutes, req.notify)?
        .wait()
        .await?;
    Ok(axum::Json(Until { until_ms }))
}

#[utoipa::path(delete, path = "/v1/rooms/{id}/mutes/{user}",
    params(("id" = String, Path, description = "Room id"), ("user" = String, Path, description = "User id"), NotifyParam),
    responses((status = 204), (status = 400, body = ApiErrorBody)), security(("admin_key" = [])))]
pub(super) async fn delete_mute(
    State(st): State<AdminState>,
    p: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<NotifyParam>, QueryRejection>,
) -> Done {
    let (id, user) = path(p)?;
    let notify = query(q)?.notify.unwrap_or(false);
    st.relay.unmute(&id, &user, notify)?.wait().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/rooms/{id}/mutes",
    params(("id" = String, Path, description = "Room id")),
    responses((status = 200, body = UsersUntil), (status = 404, body = ApiErrorBody)), security(("admin_key" = [])))]
pub(super) async fn get_mutes(
    State(st): State<AdminState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<axum::Json<UsersUntil>, ApiError> {
    Ok(axum::Json(UsersUntil {
        users: st.relay.mutes(&path(id)?)?,
    }))
}

#[utoipa::path(put, path = "/v1/rooms/{id}/mute-all",
    params(("id" = String, Path, description = "Room id")),
    responses((status = 204), (status = 404, body = ApiErrorBody)), security(("admin_key" = [])))]
pub(super) async fn put_mute_all(
    State(st): State<AdminState>,
    id: Result<Path<String>, PathRejection>,
) -> Done {
    st.relay.set_mute_all(&path(id)?, true)?.wait().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, path = "/v1/rooms/{id}/mute-all",
    params(("id" = String, Path, description = "Room id")),
    responses((status = 204), (status = 404, body = ApiErrorBody)), security(("admin_key" = [])))]
pub(super) async fn delete_mute_all(
    State(st): State<AdminState>,
    id: Result<Path<String>, PathRejection>,
) -> Done {
    st.relay.set_mute_all(&path(id)?, false)?.wait().await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------- whitelists ----------------

/// Users to add to a list.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserIds {
    /// 1..=20 user ids.
    pub user_ids: Vec<String>,
}

/// A list of users.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UserList {
    /// User ids.
    pub user_ids: Vec<String>,
}

async fn add_whitelist(
    st: &AdminState,
    id: Result<Path<String>, PathRejection>,
    body: &Bytes,
    mute_all: bool,
) -> Done {
    let id = path(id)?;
    let req: UserIds = parse(body)?;
    st.relay
        .whitelist_add(&id, &req.user_ids, mute_all)?
        .wait()
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn remove_whitelist(
    st: &AdminState,
    p: Result<Path<(String, String)>, PathRejection>,
    mute_all: bool,
) -> Done {
    let (id, user) = path(p)?;
    st.relay
        .whitelist_remove(&id, &user, mute_all)?
        .wait()
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_whitelist(
    st: &AdminState,
    id: Result<Path<String>, PathRejection>,
    mute_all: bool,
) -> Result<axum::Json<UserList>, ApiError> {
    Ok(axum::Json(UserList {
        user_ids: st.relay.whitelist(&path(id)?, mute_all)?,
    }))
}

#[utoipa::path(post, path = "/v1/rooms/{id}/mute-all-whitelist", request_body = UserIds,
    params(("id" = String, Path, description = "Room id")),
    responses((status = 204), (status = 400, body = ApiErrorBody)), security(("admin_key" = [])))]
pub(super) async fn post_mute_all_whitelist(
    State(st): State<AdminState>,
    id: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Done {
    add_whitelist(&st, id, &body, true).await
}

#[utoipa::path(delete, path = "/v1/rooms/{id}/mute-all-whitelist/{user}",
    params(("id" = String, Path, description = "Room id"), ("user" = String, Path, description = "User id")),
    responses((status = 204), (status = 400, body = ApiErrorBody)), security(("admin_key" = [])))]
pub(super) async fn delete_mute_all_whitelist(
    State(st): State<AdminState>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Done {
    remove_whitelist(&st, p, true).await
}

#[utoipa::path(get, path = "/v1/rooms/{id}/mute-all-whitelist",
    params(("id" = String, Path, description = "Room id")),
    responses((status = 200, body = UserList)), security(("admin_key" = [])))]
pub(super) async fn get_mute_all_whitelist(
    State(st): State<AdminState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<axum::Json<UserList>, ApiError> {
    list_whitelist(&st, id, true).await
}

#[utoipa::path(post, path = "/v1/rooms/{id}/user-whitelist", request_body = UserIds,
    params(("id" = String, Path, description = "Room id")),
    responses((status = 204), (status = 400, body = ApiErrorBody)), security(("admin_key" = [])))]
pub(super) async fn post_user_whitelist(
    State(st): State<AdminState>,
    id: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Done {
    add_whitelist(&st, id, &body, false).await
}

#[utoipa::path(delete, path = "/v1/rooms/{id}/user-whitelist/{user}",
    params(("id" = String, Path, description = "Room id"), ("user" = String, Path, description = "User id")),
    responses((status = 204), (status = 400, body = ApiErrorBody)), security(("admin_key" = [])))]
pub(super) async fn delete_user_whitelist(
    State(st): State<AdminState>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Done {
    remove_whitelist(&st, p, false).await
}

#[utoipa::path(get, path = "/v1/rooms/{id}/user-whitelist",
    params(("id" = String, Path, description = "Room id")),
    responses((status = 200, body = UserList)), security(("admin_key" = [])))]
pub(super) async fn get_user_whitelist(
    State(st): State<AdminState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<axum::Json<UserList>, ApiError> {
    list_whitelist(&st, id, false).await
}

// ---------------- global ----------------

/// `POST /v1/global-mutes` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GlobalMute {
    /// 1..=20 user ids.
    pub user_ids: Vec<String>,
    /// 1..=43200.
    pub minutes: u32,
}

#[utoipa::path(post, path = "/v1/global-mutes", request_body = GlobalMute,
    responses((status = 200, body = Until), (status = 400, body = ApiErrorBody)), security(("admin_key" = [])))]
pub(super) async fn post_global_mutes(
    State(st): State<AdminState>,
    body: Bytes,
) -> Result<axum::Json<Until>, ApiError> {
    let req: GlobalMute = parse(&body)?;
    let until_ms = st
        .relay
        .global_mute(&req.user_ids, req.minutes)?
        .wait()
        .await?;
    Ok(axum::Json(Until { until_ms }))
}

#[utoipa::path(delete, path = "/v1/global-mutes/{user}",
    params(("user" = String, Path, description = "User id")),
    responses((status = 204), (status = 400, body = ApiErrorBody)), security(("admin_key" = [])))]
pub(super) async fn delete_global_mute(
    State(st): State<AdminState>,
    user: Result<Path<String>, PathRejection>,
) -> Done {
    st.relay.global_unmute(&path(user)?)?.wait().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/global-mutes", responses((status = 200, body = UsersUntil)),
    security(("admin_key" = [])))]
pub(super) async fn get_global_mutes(State(st): State<AdminState>) -> axum::Json<UsersUntil> {
    axum::Json(UsersUntil {
        users: st.relay.global_mutes(),
    })
}

/// Message types to add to a list.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Types {
    /// 1..=20 message types.
    pub types: Vec<String>,
}

/// A message-type list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TypeListView {
    /// Message types.
    pub types: Vec<String>,
}

async fn add_types(st: &AdminState, body: &Bytes, which: TypeList) -> Done {
    let req: Types = parse(body)?;
    st.relay.types_add(which, &req.types)?.wait().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/message-types/whitelist", request_body = Types,
    responses((status = 204), (status = 400, body = ApiErrorBody)), security(("admin_key" = [])))]
pub(super) async fn post_type_whitelist(State(st): State<AdminState>, body: Bytes) -> Done {
    add_types(&st, &body, TypeList::Whitelist).await
}

#[utoipa::path(delete, path = "/v1/message-types/whitelist/{type}",
    params(("type" = String, Path, description = "Message type")),
    responses((status = 204), (status = 400, body = ApiErrorBody)), security(("admin_key" = [])))]
pub(super) async fn delete_type_whitelist(
    State(st): State<AdminState>,
    t: Result<Path<String>, PathRejection>,
) -> Done {
    st.relay
        .types_remove(TypeList::Whitelist, &path(t)?)?
        .wait()
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/message-types/whitelist", responses((status = 200, body = TypeListView)),
    security(("admin_key" = [])))]
pub(super) async fn get_type_whitelist(State(st): State<AdminState>) -> axum::Json<TypeListView> {
    axum::Json(TypeListView {
        types: st.relay.types(TypeList::Whitelist),
    })
}

#[utoipa::path(post, path = "/v1/message-types/low-priority", request_body = Types,
    responses((status = 204), (status = 400, body = ApiErrorBody)), security(("admin_key" = [])))]
pub(super) async fn post_low_types(State(st): State<AdminState>, body: Bytes) -> Done {
    add_types(&st, &body, TypeList::LowPriority).await
}

#[utoipa::path(delete, path = "/v1/message-types/low-priority/{type}",
    params(("type" = String, Path, description = "Message type")),
    responses((status = 204), (status = 400, body = ApiErrorBody)), security(("admin_key" = [])))]
pub(super) async fn delete_low_type(
    State(st): State<AdminState>,
    t: Result<Path<String>, PathRejection>,
) -> Done {
    st.relay
        .types_remove(TypeList::LowPriority, &path(t)?)?
        .wait()
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/message-types/low-priority", responses((status = 200, body = TypeListView)),
    security(("admin_key" = [])))]
pub(super) async fn get_low_types(State(st): State<AdminState>) -> axum::Json<TypeListView> {
    axum::Json(TypeListView {
        types: st.relay.types(TypeList::LowPriority),
    })
}
