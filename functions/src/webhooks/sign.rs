//! Webhook signatures: `X-SPLAI-Signature: t=<unix seconds>,v1=<hex>`, where the hex is
//! HMAC-SHA256 over `"<t>.<body>"` with the tenant's (or the global) secret. The timestamp is
//! signed with the body, so a receiver that rejects old timestamps stops replays.

use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The signature header's name.
pub const SIGNATURE_HEADER: &str = "x-splai-signature";

/// The hex HMAC-SHA256 of `"<timestamp>.<body>"` under `secret`.
fn mac(secret: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `X-SPLAI-Signature` value for `body` sent at `timestamp` (Unix seconds).
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let tag = mac(secret, timestamp, body).finalize().into_bytes();
    format!("t={timestamp},v1={}", hex::encode(tag))
}

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The header is not `t=<int>,v1=<hex>`.
    #[error("malformed signature header")]
    Malformed,
    /// The timestamp is further from now than the tolerance.
    #[error("timestamp outside the tolerance")]
    Stale,
    /// No `v1` matches the body under the secret.
    #[error("signature does not match")]
    Mismatch,
}

/// Checks a `X-SPLAI-Signature` header against `body` the way a receiver should: the
/// timestamp within `tolerance` of `now` (Unix seconds), then any `v1` matching in constant
/// time. Several `v1` entries are accepted (a sender rotating secrets may send two).
///
/// # Errors
/// [`VerifyError`] saying which check failed.
pub fn verify(
    secret: &str,
    header: &str,
    body: &[u8],
    now: i64,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    let mut timestamp = None;
    let mut tags = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => {
                timestamp = Some(t.parse::<i64>().map_err(|_| VerifyError::Malformed)?)
            }
            Some(("v1", v)) => tags.push(hex::decode(v).map_err(|_| VerifyError::Malformed)?),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(VerifyError::Malformed)?;
    if tags.is_empty() {
        return Err(VerifyError::Malformed);
    }
    let skew = now.abs_diff(timestamp);
    if skew > tolerance.as_secs() {
        return Err(VerifyError::Stale);
    }
    let expected = mac(secret, timestamp, body);
    if tags
        .iter()
        .any(|tag| expected.clone().verify_slice(tag).is_ok())
    {
        Ok(())
    } else {
        Err(VerifyError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIVE_MIN: Duration = Duration::from_secs(300);

    /// A known vector, computed independently:
    /// `printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac s3cret`.
    #[test]
    fn signature_matches_an_independent_hmac() {
        let header = sign("s3cret", 1_700_000_000, br#"{"a":1}"#);
        assert_eq!(
            header,
            "t=1700000000,v1=1698a50bc74d1ff1db85c4e0a5297c2ad9fdba245d5737cdb789e4cc6e098940"
        );
    }

    #[test]
    fn verify_accepts_its_own_signature_and_refuses_changes() {
        let body = br#"{"id":"whd-1"}"#;
        let header = sign("s3cret", 1_000, body);
        assert_eq!(verify("s3cret", &header, body, 1_010, FIVE_MIN), Ok(()));
        assert_eq!(
            verify("other", &header, body, 1_010, FIVE_MIN),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify("s3cret", &header, br#"{"id":"whd-2"}"#, 1_010, FIVE_MIN),
            Err(VerifyError::Mismatch)
        );
        // The timestamp is signed: moving it breaks the signature.
        let moved = header.replace("t=1000", "t=1005");
        assert_eq!(
            verify("s3cret", &moved, body, 1_010, FIVE_MIN),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify("s3cret", &header, body, 1_301, FIVE_MIN),
            Err(VerifyError::Stale)
        );
        for bad in ["", "t=1000", "v1=00", "t=x,v1=00", "t=1000,v1=zz"] {
            assert_eq!(
                verify("s3cret", bad, body, 1_000, FIVE_MIN),
                Err(VerifyError::Malformed),
                "{bad}"
            );
        }
    }
}
