//! Client tokens (HS256 JWT, `sub` = user id, `exp` required) and the admin key.

use crate::protocol::{ErrorCode, WireError};
use crate::room::validate_id;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
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
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                let why = match e.kind() {
                    ErrorKind::ExpiredSignature => "token expired".to_owned(),
                    ErrorKind::InvalidSignature => "token signature is invalid".to_owned(),
                    ErrorKind::InvalidAlgorithm => "token must be signed with HS256".to_owned(),
                    ErrorKind::MissingRequiredClaim(c) => format!("token lacks the {c} claim"),
                    other => format!("token is invalid: {other:?}"),
                };
                WireError::new(ErrorCode::Unauthorized, why)
            })?;
        validate_id("token sub (user id)", &data.claims.sub).map_err(unauthorized)?;
        Ok(data.claims.sub)
    }
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
