//! Client tokens (HS256 JWT, `sub` = user id, `exp` required, `nbf` checked when present) and
//! the admin key.
//!
//! A refused token is told in words ("token expired", "token is not a JWT: ..."), never with the
//! decoder's internal error, and never echoes the token or a long user id back.

use crate::protocol::validate_id;
use crate::protocol::{ErrorCode, MAX_TOKEN_LEN, WireError};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    // Defaults, so a token without them is refused by the validation, which names the claim.
    #[serde(default)]
    sub: String,
    #[serde(default)]
    exp: u64,
    /// Not before (seconds since the epoch): refused until then, within the leeway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
}

/// Mints and checks client tokens.
#[derive(Clone)]
pub struct TokenAuth {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    dev_mode: bool,
}

impl std::fmt::Debug for TokenAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAuth")
            .field("dev_mode", &self.dev_mode)
            .finish_non_exhaustive()
    }
}

impl TokenAuth {
    /// A checker for tokens signed with `secret`, tolerating `leeway_secs` of clock skew.
    /// With `dev_mode`, the token `dev:<user id>` is accepted without a signature.
    pub fn new(secret: &[u8], leeway_secs: u64, dev_mode: bool) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = leeway_secs;
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        TokenAuth {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            dev_mode,
        }
    }

    /// A token for `user` that expires at `exp` (seconds since the epoch).
    pub fn mint(&self, user: &str, exp: u64) -> Result<String, WireError> {
        validate_id("user id", user)?;
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &Claims {
                sub: user.to_owned(),
                exp,
                nbf: None,
            },
            &self.encoding,
        )
        .map_err(|e| WireError::new(ErrorCode::Internal, format!("signing a token: {e}")))
    }

    /// The user id a token stands for.
    pub fn verify(&self, token: &str) -> Result<String, WireError> {
        if self.dev_mode
            && let Some(user) = token.strip_prefix("dev:")
        {
            validate_id("user id", user).map_err(unauthorized)?;
            return Ok(user.to_owned());
        }
        if token.is_empty() {
            return Err(WireError::new(ErrorCode::Unauthorized, "no token given"));
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(token_too_long(token.len() as u64));
        }
        // The header first, so a token of another kind is named as such rather than as a
        // signature or claims problem.
        use jsonwebtoken::errors::ErrorKind;
        let header = jsonwebtoken::decode_header(token).map_err(|e| {
            let why = match e.kind() {
                ErrorKind::InvalidToken => NOT_A_JWT,
                ErrorKind::Base64(_) => "token header is not base64url",
                ErrorKind::Utf8(_) => "token header is not UTF-8",
                _ => "token header is not a JSON JWT header naming HS256 as its algorithm",
            };
            unauthorized_because(why)
        })?;
        if header.alg != Algorithm::HS256 {
            return Err(unauthorized_because(format!(
                "token is signed with {:?}; only HS256 tokens are accepted",
                header.alg
            )));
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| {
                let why = match e.kind() {
                    ErrorKind::ExpiredSignature => "token expired".to_owned(),
                    ErrorKind::ImmatureSignature => {
                        "token is not valid yet (its nbf is in the future)".to_owned()
                    }
                    ErrorKind::InvalidSignature => "token signature is invalid".to_owned(),
                    ErrorKind::InvalidAlgorithm => "token must be signed with HS256".to_owned(),
                    ErrorKind::MissingRequiredClaim(c) => format!("token lacks the {c} claim"),
                    ErrorKind::InvalidToken => NOT_A_JWT.to_owned(),
                    ErrorKind::Base64(_) => "token claims or signature are not base64url".into(),
                    ErrorKind::Utf8(_) => "token claims are not UTF-8".to_owned(),
                    ErrorKind::Json(_) => {
                        "token claims must be a JSON object with sub (a string), \
                                           exp and optionally nbf (whole seconds since the epoch)"
                            .to_owned()
                    }
                    _ => "token is invalid".to_owned(),
                };
                unauthorized_because(why)
            })?;
        validate_id("token sub (user id)", &data.claims.sub).map_err(unauthorized)?;
        Ok(data.claims.sub)
    }
}

const NOT_A_JWT: &str = "token is not a JWT: expected three base64url parts separated by dots";

/// The refusal of a token of `len` bytes, longer than [`MAX_TOKEN_LEN`].
pub fn token_too_long(len: u64) -> WireError {
    unauthorized_because(format!(
        "token is {len} bytes; at most {MAX_TOKEN_LEN} are accepted"
    ))
}

fn unauthorized_because(why: impl Into<String>) -> WireError {
    WireError::new(ErrorCode::Unauthorized, why)
}

fn unauthorized(e: WireError) -> WireError {
    WireError::new(ErrorCode::Unauthorized, e.message)
}

/// Compares an admin key in constant time.
pub fn admin_key_matches(expected: &str, given: &str) -> bool {
    let (a, b) = (expected.as_bytes(), given.as_bytes());
    if a.len() != b.len() || a.is_empty() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A fresh random secret, 32 bytes as 64 hex characters.
pub fn random_secret() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Seconds since the Unix epoch.
pub fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_verify_and_name_their_user() {
        let auth = TokenAuth::new(b"secret", 0, false);
        let t = auth.mint("alice", unix_secs() + 60).expect("mints");
        assert_eq!(auth.verify(&t).expect("valid"), "alice");
    }

    #[test]
    fn expired_forged_and_empty_tokens_are_unauthorized() {
        let auth = TokenAuth::new(b"secret", 0, false);
        let old = auth.mint("alice", unix_secs() - 3600).expect("mints");
        let e = auth.verify(&old).unwrap_err();
        assert_eq!(e.code, ErrorCode::Unauthorized);
        assert!(e.message.contains("expired"), "{}", e.message);
        let forged = TokenAuth::new(b"other", 0, false)
            .mint("alice", unix_secs() + 60)
            .expect("mints");
        let e = auth.verify(&forged).unwrap_err();
        assert!(e.message.contains("signature"), "{}", e.message);
        assert_eq!(auth.verify("").unwrap_err().code, ErrorCode::Unauthorized);
        assert_eq!(
            auth.verify("a.b.c").unwrap_err().code,
            ErrorCode::Unauthorized
        );
    }

    fn signed(claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"secret"),
        )
        .expect("signs")
    }

    fn refusal(auth: &TokenAuth, token: &str) -> String {
        let e = auth.verify(token).expect_err("refused");
        assert_eq!(e.code, ErrorCode::Unauthorized, "{}", e.message);
        for internal in ["Json(", "Base64(", "Error(", "Utf8(", "{", "\\"] {
            assert!(!e.message.contains(internal), "{}", e.message);
        }
        e.message
    }

    #[test]
    fn nbf_in_the_future_is_refused_past_the_leeway() {
        let auth = TokenAuth::new(b"secret", 30, false);
        let now = unix_secs();
        let later =
            signed(serde_json::json!({"sub": "alice", "exp": now + 600, "nbf": now + 3600}));
        assert_eq!(
            refusal(&auth, &later),
            "token is not valid yet (its nbf is in the future)"
        );
        // Within the leeway, and in the past, it is fine.
        for nbf in [now + 10, now - 10] {
            let t = signed(serde_json::json!({"sub": "alice", "exp": now + 600, "nbf": nbf}));
            assert_eq!(auth.verify(&t).expect("valid"), "alice");
        }
    }

    #[test]
    fn malformed_tokens_are_refused_in_words() {
        use base64::Engine;
        let auth = TokenAuth::new(b"secret", 0, false);
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let exp = unix_secs() + 600;
        let claims = b64(&format!(r#"{{"sub":"alice","exp":{exp}}}"#));
        let none = format!("{}.{claims}.", b64(r#"{"alg":"none","typ":"JWT"}"#));
        assert_eq!(
            refusal(&auth, &none),
            "token header is not a JSON JWT header naming HS256 as its algorithm"
        );
        let rs256 = format!("{}.{claims}.c2ln", b64(r#"{"alg":"RS256","typ":"JWT"}"#));
        assert_eq!(
            refusal(&auth, &rs256),
            "token is signed with RS256; only HS256 tokens are accepted"
        );
        assert_eq!(refusal(&auth, "not-a-jwt"), NOT_A_JWT);
        assert_eq!(
            refusal(&auth, "!!!.@@@.###"),
            "token header is not base64url"
        );
        let header = b64(r#"{"alg":"HS256","typ":"JWT"}"#);
        assert_eq!(
            refusal(&auth, &format!("{header}.{claims}.@@@")),
            "token signature is invalid"
        );
        // Correctly signed, but the claims part is not base64url.
        let message = format!("{header}.@@@");
        let key = EncodingKey::from_secret(b"secret");
        let sig =
            jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).expect("signs");
        assert_eq!(
            refusal(&auth, &format!("{message}.{sig}")),
            "token claims or signature are not base64url"
        );
        let string_exp = signed(serde_json::json!({"sub": "alice", "exp": "tomorrow"}));
        assert!(
            refusal(&auth, &string_exp).starts_with("token claims must be a JSON object"),
            "{string_exp}"
        );
        let no_sub = signed(serde_json::json!({"exp": exp}));
        assert_eq!(refusal(&auth, &no_sub), "token lacks the sub claim");
        let no_exp = signed(serde_json::json!({"sub": "alice"}));
        assert_eq!(refusal(&auth, &no_exp), "token lacks the exp claim");
    }

    #[test]
    fn a_long_user_id_or_token_is_not_echoed() {
        let auth = TokenAuth::new(b"secret", 0, false);
        let long = "a".repeat(5000);
        let t = signed(serde_json::json!({"sub": long, "exp": unix_secs() + 600}));
        assert!(t.len() <= MAX_TOKEN_LEN);
        let why = refusal(&auth, &t);
        assert!(why.len() < 200 && !why.contains("aaaa"), "{why}");
        assert!(why.contains("5000 bytes"), "{why}");
        let huge = "x".repeat(MAX_TOKEN_LEN + 1);
        assert_eq!(
            refusal(&auth, &huge),
            format!(
                "token is {} bytes; at most 8192 are accepted",
                MAX_TOKEN_LEN + 1
            )
        );
        let dev = TokenAuth::new(b"secret", 0, true);
        let why = refusal(&dev, &format!("dev:{long}"));
        assert!(why.len() < 200, "{why}");
    }

    #[test]
    fn dev_tokens_only_in_dev_mode() {
        let strict = TokenAuth::new(b"s", 0, false);
        assert!(strict.verify("dev:bob").is_err());
        let dev = TokenAuth::new(b"s", 0, true);
        assert_eq!(dev.verify("dev:bob").expect("dev mode"), "bob");
        assert!(dev.verify("dev:bad id").is_err());
    }

    #[test]
    fn admin_key_comparison() {
        assert!(admin_key_matches("k1", "k1"));
        assert!(!admin_key_matches("k1", "k2"));
        assert!(!admin_key_matches("k1", "k10"));
        assert!(!admin_key_matches("", ""));
    }
}
