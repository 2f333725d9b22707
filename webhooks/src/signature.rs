//! The `Surge-Signature` header: `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
//!
//! The timestamp is signed with the body, so a receiver that refuses old timestamps also
//! refuses a captured request replayed later; the receiver's side is [`verify`] (and
//! `docs/webhooks.md` shows it in Python and Rust).

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

/// The header that carries the signature.
pub const SIGNATURE_HEADER: &str = "surge-signature";
/// Prefix of every signing secret (so a leaked one is recognisable in a scan).
pub const SECRET_PREFIX: &str = "whsec_";

type HmacSha256 = Hmac<Sha256>;

/// A new signing secret: 32 random bytes from the OS, hex, after [`SECRET_PREFIX`].
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{SECRET_PREFIX}{}", hex::encode(bytes))
}

fn mac(secret: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
    // HMAC takes a key of any length: new_from_slice cannot fail.
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC accepts any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The header value for `body` sent at `timestamp` (unix seconds).
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let tag = mac(secret, timestamp, body).finalize().into_bytes();
    format!("t={timestamp},v1={}", hex::encode(tag))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signature header is not `t=<secs>,v1=<hex>`")]
    Malformed,
    #[error("the timestamp is {0} s away from now, more than the tolerance")]
    Stale(i64),
    #[error("no v1 signature matches the body")]
    Mismatch,
}

/// The receiver's check: the header parses, its timestamp is within `tolerance_secs` of `now`
/// (unix seconds), and one of its `v1` signatures is the body's (compared in constant time).
pub fn verify(secret: &str, header: &str, body: &[u8], now: i64, tolerance_secs: i64) -> Result<(), SignatureError> {
    let mut timestamp = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = Some(t.parse::<i64>().map_err(|_| SignatureError::Malformed)?),
            Some(("v1", v)) => candidates.push(hex::decode(v).map_err(|_| SignatureError::Malformed)?),
            // Other schemes (a future v2) are ignored, not refused.
            Some(_) => {}
            None => return Err(SignatureError::Malformed),
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if candidates.is_empty() {
        return Err(SignatureError::Malformed);
    }
    let skew = now.saturating_sub(timestamp);
    if skew.abs() > tolerance_secs {
        return Err(SignatureError::Stale(skew));
    }
    let matches = candidates
        .iter()
        .any(|tag| mac(secret, timestamp, body).verify_slice(tag).is_ok());
    if matches {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_is_hmac_sha256_over_timestamp_dot_body() {
        // RFC 4231-independent check: the same computation spelled out by hand.
        let header = sign("whsec_test", 1_700_000_000, b"{\"a\":1}");
        let mut expected = HmacSha256::new_from_slice(b"whsec_test").unwrap();
        expected.update(b"1700000000.{\"a\":1}");
        let expected = hex::encode(expected.finalize().into_bytes());
        assert_eq!(header, format!("t=1700000000,v1={expected}"));
        assert_eq!(expected.len(), 64);
    }

    #[test]
    fn the_receiver_accepts_its_own_signature_and_nothing_else() {
        let body = br#"{"type":"order.paid"}"#;
        let header = sign("whsec_a", 1_000, body);
        assert_eq!(verify("whsec_a", &header, body, 1_010, 300), Ok(()));
        assert_eq!(
            verify("whsec_b", &header, body, 1_010, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify("whsec_a", &header, br#"{"type":"order.refunded"}"#, 1_010, 300),
            Err(SignatureError::Mismatch)
        );
        // The timestamp is signed too: moving it breaks the signature.
        let moved = header.replace("t=1000", "t=1005");
        assert_eq!(
            verify("whsec_a", &moved, body, 1_010, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify("whsec_a", &header, body, 2_000, 300),
            Err(SignatureError::Stale(1_000))
        );
        for malformed in ["", "v1=00", "t=1000", "t=x,v1=00", "t=1000,v1=zz", "garbage"] {
            assert_eq!(
                verify("whsec_a", malformed, body, 1_000, 300),
                Err(SignatureError::Malformed),
                "{malformed}"
            );
        }
    }

    #[test]
    fn secrets_are_random_and_prefixed() {
        let (a, b) = (new_secret(), new_secret());
        assert!(a.starts_with(SECRET_PREFIX) && a.len() == SECRET_PREFIX.len() + 64);
        assert_ne!(a, b);
    }
}
