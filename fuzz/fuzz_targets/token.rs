//! Client tokens as the relay checks them. The input is split at its first `\n` into a JWT header
//! and claims (raw bytes, base64url-encoded here) and signed with the relay's secret, so the
//! fuzzer reaches the claim checks behind the signature; the raw input is also tried as a token.

#![no_main]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use roomcast::auth::TokenAuth;
use std::sync::LazyLock;

const SECRET: &[u8] = b"fuzz-secret";

static AUTH: LazyLock<[TokenAuth; 2]> = LazyLock::new(|| {
    [
        TokenAuth::new(SECRET, 30, false),
        TokenAuth::new(SECRET, 30, true),
    ]
});

fn check(token: &str) {
    for auth in AUTH.iter() {
        if let Ok(user) = auth.verify(token) {
            assert!(roomcast::room::validate_id("user id", &user).is_ok(), "{user:?}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check(&String::from_utf8_lossy(data));
    let (header, claims) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (&br#"{"alg":"HS256","typ":"JWT"}"#[..], data),
    };
    let signed = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims));
    let key = EncodingKey::from_secret(SECRET);
    if let Ok(signature) = jsonwebtoken::crypto::sign(signed.as_bytes(), &key, Algorithm::HS256) {
        check(&format!("{signed}.{signature}"));
    }
});
