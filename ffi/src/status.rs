//! Failures of this layer: a status code and a message, the mapping from the client library's
//! errors and the relay's error names, and the per-thread last error message.

use crate::types::rc_status;
use roomcast::client::ClientError;
use roomcast::protocol::{CloseCode, ErrorCode, WireError};
use std::cell::RefCell;
use std::ffi::CString;

/// A failed call or request: the status code and what went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    /// The code the ABI returns.
    pub status: rc_status,
    /// For humans.
    pub message: String,
}

impl Failure {
    /// A failure with `status` and `message`.
    pub fn new(status: rc_status, message: impl Into<String>) -> Self {
        Failure {
            status,
            message: message.into(),
        }
    }

    /// A null pointer where `what` was expected.
    pub fn null(what: &str) -> Self {
        Failure::new(rc_status::RC_INVALID_ARGUMENT, format!("{what} is null"))
    }

    /// A failure of a request or of the connection, from the client library.
    pub fn from_client(err: &ClientError) -> Self {
        let status = match err {
            ClientError::Refused(w) => return Failure::from_wire(w),
            ClientError::Tls(_) | ClientError::Certificate { .. } => rc_status::RC_TLS,
            ClientError::Endpoint(_) | ClientError::Connect(_) | ClientError::NoAnswer { .. } => {
                rc_status::RC_CONNECT
            }
            ClientError::Closed {
                code: Some(CloseCode::Unauthorized),
                ..
            } => rc_status::RC_UNAUTHORIZED,
            ClientError::Closed { .. } => rc_status::RC_CLOSED,
            ClientError::Protocol(_) => rc_status::RC_PROTOCOL,
        };
        Failure::new(status, err.to_string())
    }

    /// The relay's refusal.
    pub fn from_wire(w: &WireError) -> Self {
        Failure::new(relay_status(w.code), format!("{}: {}", w.code, w.message))
    }
}

/// The status for one of the relay's stable error names.
pub fn relay_status(code: ErrorCode) -> rc_status {
    use rc_status::*;
    match code {
        ErrorCode::BadRequest => RC_BAD_REQUEST,
        ErrorCode::Unauthorized => RC_UNAUTHORIZED,
        ErrorCode::Forbidden => RC_FORBIDDEN,
        ErrorCode::RateLimited => RC_RATE_LIMITED,
        ErrorCode::TooLarge => RC_TOO_LARGE,
        ErrorCode::RoomNotFound => RC_ROOM_NOT_FOUND,
        ErrorCode::RoomExists => RC_ROOM_EXISTS,
        ErrorCode::NotInRoom => RC_NOT_IN_ROOM,
        ErrorCode::Banned => RC_BANNED,
        ErrorCode::Muted => RC_MUTED,
        ErrorCode::TooManyRooms => RC_TOO_MANY_ROOMS,
        ErrorCode::AttrLimit => RC_ATTR_LIMIT,
        ErrorCode::AttrNotOwner => RC_ATTR_NOT_OWNER,
        ErrorCode::AttrNotFound => RC_ATTR_NOT_FOUND,
        ErrorCode::BatchTooLarge => RC_BATCH_TOO_LARGE,
        ErrorCode::MessageNotFound => RC_MESSAGE_NOT_FOUND,
        ErrorCode::RecallForbidden => RC_RECALL_FORBIDDEN,
        ErrorCode::Shed => RC_SHED,
        ErrorCode::Unavailable => RC_UNAVAILABLE,
        ErrorCode::Internal => RC_INTERNAL,
    }
}

/// The stable name of a status, 0-terminated: the relay's error names as the relay spells
/// them (`"ROOM_NOT_FOUND"`), this library's own in the same style.
pub fn status_name(status: rc_status) -> &'static std::ffi::CStr {
    use rc_status::*;
    match status {
        RC_OK => c"OK",
        RC_EMPTY => c"EMPTY",
        RC_BAD_REQUEST => c"BAD_REQUEST",
        RC_UNAUTHORIZED => c"UNAUTHORIZED",
        RC_FORBIDDEN => c"FORBIDDEN",
        RC_RATE_LIMITED => c"RATE_LIMITED",
        RC_TOO_LARGE => c"TOO_LARGE",
        RC_ROOM_NOT_FOUND => c"ROOM_NOT_FOUND",
        RC_ROOM_EXISTS => c"ROOM_EXISTS",
        RC_NOT_IN_ROOM => c"NOT_IN_ROOM",
        RC_BANNED => c"BANNED",
        RC_MUTED => c"MUTED",
        RC_TOO_MANY_ROOMS => c"TOO_MANY_ROOMS",
        RC_ATTR_LIMIT => c"ATTR_LIMIT",
        RC_ATTR_NOT_OWNER => c"ATTR_NOT_OWNER",
        RC_ATTR_NOT_FOUND => c"ATTR_NOT_FOUND",
        RC_BATCH_TOO_LARGE => c"BATCH_TOO_LARGE",
        RC_MESSAGE_NOT_FOUND => c"MESSAGE_NOT_FOUND",
        RC_RECALL_FORBIDDEN => c"RECALL_FORBIDDEN",
        RC_SHED => c"SHED",
        RC_UNAVAILABLE => c"UNAVAILABLE",
        RC_INTERNAL => c"INTERNAL",
        RC_INVALID_ARGUMENT => c"INVALID_ARGUMENT",
        RC_INVALID_UTF8 => c"INVALID_UTF8",
        RC_INVALID_HANDLE => c"INVALID_HANDLE",
        RC_CLOSED => c"CLOSED",
        RC_BUSY => c"BUSY",
        RC_TIMEOUT => c"TIMEOUT",
        RC_CONNECT => c"CONNECT",
        RC_TLS => c"TLS",
        RC_PROTOCOL => c"PROTOCOL",
        RC_PANIC => c"PANIC",
    }
}

thread_local! {
    /// The message of this thread's most recent failed call.
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Records `message` as this thread's last error.
pub fn set_last_error(message: &str) {
    // A message with a 0 byte would be cut there by C; replace it rather than lose the message.
    let text = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|slot| *slot.borrow_mut() = text);
}

/// This thread's last error message; valid until the next failed call on this thread.
pub fn last_error_ptr() -> *const std::os::raw::c_char {
    LAST_ERROR.with(|slot| slot.borrow().as_ptr())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_names_match_the_relay_spelling() {
        // Every relay status (100..=119) whose name the relay knows maps back to itself.
        let mut known = 0;
        for v in 100..120 {
            let Some(status) = crate::abi::status_from(v) else {
                panic!("{v} is not a status");
            };
            let name = status_name(status).to_str().expect("ASCII");
            if let Ok(code) = serde_json::from_str::<ErrorCode>(&format!("\"{name}\"")) {
                assert_eq!(relay_status(code), status, "{name}");
                assert_eq!(code.as_str(), name);
                known += 1;
            }
        }
        // Every name of SPEC §9, UNAVAILABLE (a store that cannot write) among them.
        assert_eq!(known, 20);
    }

    #[test]
    fn a_refusal_keeps_its_code_and_message() {
        let f = Failure::from_client(&ClientError::Refused(WireError::new(
            ErrorCode::NotInRoom,
            "join first",
        )));
        assert_eq!(f.status, rc_status::RC_NOT_IN_ROOM);
        assert_eq!(f.message, "NOT_IN_ROOM: join first");
        let closed = Failure::from_client(&ClientError::Closed {
            code: Some(CloseCode::Unauthorized),
            reason: "token expired".into(),
        });
        assert_eq!(closed.status, rc_status::RC_UNAUTHORIZED);
    }

    #[test]
    fn the_last_error_survives_a_zero_byte() {
        set_last_error("bad\0value");
        let got = LAST_ERROR.with(|s| s.borrow().to_str().expect("UTF-8").to_owned());
        assert_eq!(got, "bad value");
    }
}
