//! The first frame of a connection as the relay handles it: a `ClientFrame` that must be a
//! `Hello` of the right version, whose token is then checked (with and without development mode).

#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use roomcast::auth::TokenAuth;
use roomcast::protocol::{ClientFrame, PROTOCOL_VERSION, decode_body};
use std::sync::LazyLock;

static AUTH: LazyLock<[TokenAuth; 2]> = LazyLock::new(|| {
    [
        TokenAuth::new(b"fuzz-secret", 30, false),
        TokenAuth::new(b"fuzz-secret", 30, true),
    ]
});

fuzz_target!(|data: &[u8]| {
    if let Ok(ClientFrame::Hello { version, token }) = decode_body::<ClientFrame>(data) {
        let _ = version == PROTOCOL_VERSION;
        for auth in AUTH.iter() {
            if let Ok(user) = auth.verify(&token) {
                assert!(roomcast::room::validate_id("user id", &user).is_ok(), "{user:?}");
            }
        }
    }
});
