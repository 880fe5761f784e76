//! Stable error names and connection close codes.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The stable error names of roomcast, the same on QUIC and HTTP.
///
/// On the wire (postcard) a code is its variant index, in the order below, starting at 0;
/// in JSON it is the name, e.g. `"ROOM_NOT_FOUND"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// 0: the request is malformed or a value is out of its documented range.
    BadRequest,
    /// 1: missing, expired or forged token or admin key.
    Unauthorized,
    /// 2: the caller may not do this.
    Forbidden,
    /// 3: the per-connection or per-key rate limit was hit.
    RateLimited,
    /// 4: a body, frame or value is larger than its limit.
    TooLarge,
    /// 5: no room with that id.
    RoomNotFound,
    /// 6: a room with that id already exists.
    RoomExists,
    /// 7: the sender has not joined the room.
    NotInRoom,
    /// 8: the user is banned from the room.
    Banned,
    /// 9: the user is muted.
    Muted,
    /// 10: the user is already in the most rooms allowed.
    TooManyRooms,
    /// 11: the room has the most attribute keys allowed.
    AttrLimit,
    /// 12: the attribute key belongs to another user.
    AttrNotOwner,
    /// 13: no attribute with that key.
    AttrNotFound,
    /// 14: too many items in one call.
    BatchTooLarge,
    /// 15: no message with that sequence number.
    MessageNotFound,
    /// 16: the message may not be recalled by this user or any more.
    RecallForbidden,
    /// 17: the room's ingress budget refused the message.
    Shed,
    /// 18: a fault inside the relay.
    Internal,
    /// 19: a dependency the change needs is down (the store cannot write, e.g. its disk is full):
    /// nothing was changed or sent; retry later.
    Unavailable,
}

impl ErrorCode {
    /// The stable name, e.g. `ROOM_NOT_FOUND`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "BAD_REQUEST",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::TooLarge => "TOO_LARGE",
            ErrorCode::RoomNotFound => "ROOM_NOT_FOUND",
            ErrorCode::RoomExists => "ROOM_EXISTS",
            ErrorCode::NotInRoom => "NOT_IN_ROOM",
            ErrorCode::Banned => "BANNED",
            ErrorCode::Muted => "MUTED",
            ErrorCode::TooManyRooms => "TOO_MANY_ROOMS",
            ErrorCode::AttrLimit => "ATTR_LIMIT",
            ErrorCode::AttrNotOwner => "ATTR_NOT_OWNER",
            ErrorCode::AttrNotFound => "ATTR_NOT_FOUND",
            ErrorCode::BatchTooLarge => "BATCH_TOO_LARGE",
            ErrorCode::MessageNotFound => "MESSAGE_NOT_FOUND",
            ErrorCode::RecallForbidden => "RECALL_FORBIDDEN",
            ErrorCode::Shed => "SHED",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::Unavailable => "UNAVAILABLE",
        }
    }

    /// The HTTP status the admin API answers with for this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest | ErrorCode::BatchTooLarge => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden
            | ErrorCode::Banned
            | ErrorCode::Muted
            | ErrorCode::NotInRoom
            | ErrorCode::AttrNotOwner
            | ErrorCode::RecallForbidden => 403,
            ErrorCode::RoomNotFound | ErrorCode::AttrNotFound | ErrorCode::MessageNotFound => 404,
            ErrorCode::RoomExists | ErrorCode::TooManyRooms | ErrorCode::AttrLimit => 409,
            ErrorCode::TooLarge => 413,
            ErrorCode::RateLimited | ErrorCode::Shed => 429,
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable => 503,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refusal: a stable code and a message for humans.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct WireError {
    /// The stable name.
    pub code: ErrorCode,
    /// What went wrong, for humans.
    pub message: String,
}

impl WireError {
    /// A refusal with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        WireError {
            code,
            message: message.into(),
        }
    }
}

/// Application close codes the server uses when it closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum CloseCode {
    /// 0: closed on request, nothing wrong.
    Normal = 0,
    /// 1: the server is shutting down.
    Shutdown = 1,
    /// 2: the hello carried a missing, expired or forged token.
    Unauthorized = 2,
    /// 3: the peer broke the protocol (bad frame, oversized frame, wrong first frame, timeout).
    Protocol = 3,
    /// 4: the connection could not keep up with its protected traffic.
    TooSlow = 4,
    /// 5: an internal fault.
    Internal = 5,
}

impl CloseCode {
    /// The numeric code.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// The code for a number, if it is one of ours.
    pub fn from_code(code: u64) -> Option<Self> {
        Some(match code {
            0 => CloseCode::Normal,
            1 => CloseCode::Shutdown,
            2 => CloseCode::Unauthorized,
            3 => CloseCode::Protocol,
            4 => CloseCode::TooSlow,
            5 => CloseCode::Internal,
            _ => return None,
        })
    }
}

impl From<CloseCode> for quinn::VarInt {
    fn from(c: CloseCode) -> Self {
        quinn::VarInt::from_u32(c.code())
    }
}
