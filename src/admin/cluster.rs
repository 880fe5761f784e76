//! Cluster mode: an admin change of a room made through a relay that does not own it runs on
//! the room's owner, through the owner's own admin API, and its answer is the owner's; with no
//! owner, this relay takes the room's lease and makes the change itself. Either way the change
//! is written by the one relay that sequences the room, so the store's fence never refuses it,
//! and every relay learns it from the shared state.

use super::{AdminState, ApiError, ApiErrorBody};
use crate::protocol::{DestroyReason, ErrorCode, WireError};
use crate::server::cluster::{AdminAnswer, AdminCall, AdminHandler};
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use std::sync::Arc;
use tower_service::Service;

/// Marks a call forwarded by another relay: run here, never forwarded again.
const FORWARDED: &str = "roomcast-forwarded";

/// Largest answer body passed back to the relay that forwarded a call.
const ANSWER_MAX: usize = 32 << 20;

/// The room a call changes, when it is a change of one room that is not a message send (sends
/// are forwarded message by message): `POST|PUT|DELETE /v1/rooms/{id}[/...]`.
fn changed_room(method: &Method, path: &str) -> Option<String> {
    if *method == Method::GET || *method == Method::HEAD {
        return None;
    }
    let rest = path.strip_prefix("/v1/rooms/")?;
    let (id, tail) = rest.split_once('/').unwrap_or((rest, ""));
    if id.is_empty() || id.contains('%') || (*method == Method::POST && tail == "messages") {
        return None;
    }
    Some(id.to_owned())
}

/// The middleware: a change of a room another relay sequences goes to that relay.
pub(super) async fn forward_room_changes(
    State(st): State<AdminState>,
    req: Request,
    next: Next,
) -> Response {
    let Some(cluster) = st.relay.cluster().cloned() else {
        return next.run(req).await;
    };
    let room = match changed_room(req.method(), req.uri().path()) {
        Some(id) if !req.headers().contains_key(FORWARDED) && !cluster.sequences(&id) => {
            st.relay.room(&id).ok()
        }
        _ => None,
    };
    let Some(room) = room else {
        return next.run(req).await;
    };
    let (parts, body) = req.into_parts();
    let limit = st.relay.config.limits.admin_request_body;
    let body = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(e) => return ApiError::bad(format!("reading the body: {e}")).into_response(),
    };
    let call = AdminCall {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        content_type: parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body: body.clone(),
    };
    match cluster.forward_admin(&st.relay, &room, call).await {
        Ok(Some(answer)) => {
            let mut resp = Response::builder().status(answer.status);
            if let Some(ct) = answer.content_type {
                resp = resp.header(header::CONTENT_TYPE, ct);
            }
            resp.body(Body::from(answer.body)).unwrap_or_else(|e| {
                ApiError::bad(format!("the owner's answer: {e}")).into_response()
            })
        }
        // This relay owns the room now: the change is made here.
        Ok(None) => next.run(Request::from_parts(parts, Body::from(body))).await,
        Err(e) => ApiError(e).into_response(),
    }
}

/// Destroys room `id` as `DELETE /v1/rooms/{id}` would, for a call that names several rooms:
/// through the room's owner when another relay sequences it (its answer is the truth), else
/// here. `Ok(false)` when there is no such room.
pub(super) async fn destroy_room(st: &AdminState, id: &str) -> Result<bool, WireError> {
    let relay = &st.relay;
    let here = || async {
        match relay.destroy_room(id, DestroyReason::Manual) {
            Ok(d) => d.wait().await.map(|()| true),
            Err(e) if e.code == ErrorCode::RoomNotFound => Ok(false),
            Err(e) => Err(e),
        }
    };
    let Some(cluster) = relay.cluster().cloned() else {
        return here().await;
    };
    let room = match relay.room(id) {
        Ok(room) if !cluster.sequences(id) => room,
        _ => return here().await,
    };
    let call = AdminCall {
        method: Method::DELETE.to_string(),
        path: format!("/v1/rooms/{id}"),
        content_type: None,
        body: Bytes::new(),
    };
    let Some(answer) = cluster.forward_admin(relay, &room, call).await? else {
        return here().await;
    };
    if answer.status == 200 {
        return Ok(true);
    }
    let refusal: ApiErrorBody = serde_json::from_slice(&answer.body).map_err(|e| {
        WireError::new(
            ErrorCode::Unavailable,
            format!(
                "room {id:?}'s owner answered {} unreadably: {e}",
                answer.status
            ),
        )
    })?;
    match refusal.error {
        ErrorCode::RoomNotFound => Ok(false),
        code => Err(WireError::new(code, refusal.message)),
    }
}

/// Runs calls forwarded by other relays through `router` (this relay's admin API), with its
/// admin key.
pub fn handler(router: Router, admin_key: String) -> AdminHandler {
    Arc::new(move |call: AdminCall| {
        let mut router = router.clone();
        let key = admin_key.clone();
        Box::pin(async move {
            let mut req = Request::builder()
                .method(call.method.as_str())
                .uri(&call.path)
                .header(header::AUTHORIZATION, format!("Bearer {key}"))
                .header(FORWARDED, "1");
            if let Some(ct) = &call.content_type {
                req = req.header(header::CONTENT_TYPE, ct);
            }
            let req = match req.body(Body::from(call.body)) {
                Ok(r) => r,
                Err(e) => {
                    return AdminAnswer::error(
                        ErrorCode::BadRequest,
                        format!("a forwarded call that is not a request: {e}"),
                    );
                }
            };
            let resp = match router.call(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            let status = resp.status().as_u16();
            let content_type = resp
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = axum::body::to_bytes(resp.into_body(), ANSWER_MAX)
                .await
                .unwrap_or_default();
            AdminAnswer {
                status,
                content_type,
                body,
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changes_of_one_room_other_than_sends_are_forwarded() {
        let room = |m: Method, p: &str| changed_room(&m, p);
        assert_eq!(room(Method::POST, "/v1/rooms/r/bans").as_deref(), Some("r"));
        assert_eq!(room(Method::DELETE, "/v1/rooms/r").as_deref(), Some("r"));
        assert_eq!(
            room(Method::PUT, "/v1/rooms/eu.hall/attributes").as_deref(),
            Some("eu.hall")
        );
        assert_eq!(
            room(Method::POST, "/v1/rooms/r/messages/4/recall").as_deref(),
            Some("r")
        );
        assert_eq!(room(Method::POST, "/v1/rooms/r/messages"), None, "a send");
        assert_eq!(room(Method::GET, "/v1/rooms/r/bans"), None, "a read");
        assert_eq!(room(Method::POST, "/v1/rooms"), None, "a creation");
        assert_eq!(
            room(Method::POST, "/v1/rooms:destroy"),
            None,
            "several rooms"
        );
        assert_eq!(room(Method::POST, "/v1/rooms/a%2Fb/bans"), None, "encoded");
    }
}
