//! The identifier rules of the protocol: room and user ids, message types.

use super::{ErrorCode, WireError};

/// Checks a room or user id: 1–64 characters from `[A-Za-z0-9_.:@-]`.
pub fn validate_id(what: &str, id: &str) -> Result<(), WireError> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(is_id_byte) {
        // A long id is not echoed back (it may be kilobytes): its length says enough.
        let got = if id.len() > 64 {
            format!("{} bytes", id.len())
        } else {
            format!("{id:?}")
        };
        return Err(WireError::new(
            ErrorCode::BadRequest,
            format!("{what} must be 1-64 characters from [A-Za-z0-9_.:@-], got {got}"),
        ));
    }
    Ok(())
}

/// Checks a client message type: 1–32 characters from the id set, not starting with `rc:`.
pub fn validate_msg_type(t: &str) -> Result<(), WireError> {
    if t.is_empty() || t.len() > 32 || !t.bytes().all(is_id_byte) {
        return Err(WireError::new(
            ErrorCode::BadRequest,
            format!("message type must be 1-32 characters from [A-Za-z0-9_.:@-], got {t:?}"),
        ));
    }
    if t.starts_with("rc:") {
        return Err(WireError::new(
            ErrorCode::BadRequest,
            "message types starting with \"rc:\" are reserved for system messages",
        ));
    }
    Ok(())
}

fn is_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'@' | b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_spec_charset_and_length() {
        assert!(validate_id("room id", "lobby-1_a.b:c@d").is_ok());
        assert!(validate_id("room id", "").is_err());
        assert!(validate_id("room id", &"a".repeat(64)).is_ok());
        assert!(validate_id("room id", &"a".repeat(65)).is_err());
        assert!(validate_id("room id", "a b").is_err());
        assert!(validate_id("room id", "ü").is_err());
    }

    #[test]
    fn message_types_are_short_and_not_reserved() {
        assert!(validate_msg_type("chat").is_ok());
        assert!(validate_msg_type(&"t".repeat(32)).is_ok());
        assert!(validate_msg_type(&"t".repeat(33)).is_err());
        let err = validate_msg_type("rc:kick").unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest);
    }
}
