//! The AWS JSON 1.1 framing of the KMS API, shared by every KMS-speaking
//! HTTP server in Keybroker (the in-enclave endpoint, the mock KMS).
//!
//! A call is `POST /` with `X-Amz-Target: TrentService.<Operation>` and
//! `Content-Type: application/x-amz-json-1.1`; an error is a JSON object
//! `{"__type": <code>, "message": <text>}` with the error's HTTP status
//! (KMS API reference, "Common Errors"; AWS JSON 1.1 protocol).

use super::{KmsError, KmsErrorCode};

/// `Content-Type` of requests and responses.
pub const CONTENT_TYPE: &str = "application/x-amz-json-1.1";

/// Prefix of the `X-Amz-Target` header value (KMS's service name).
pub const TARGET_PREFIX: &str = "TrentService.";

/// Response header carrying the request id.
pub const REQUEST_ID_HEADER: &str = "x-amzn-RequestId";

/// The `n`th request id of a server, in the UUID shape KMS uses.
pub fn request_id(n: u64) -> String {
    format!("00000000-0000-4000-8000-{:012x}", n & 0xffff_ffff_ffff)
}

/// The operation name of an `X-Amz-Target` value, or the
/// `UnknownOperationException` AWS JSON services answer for a missing or
/// foreign target.
///
/// # Errors
/// `UnknownOperationException` (400).
pub fn operation_name(target: Option<&str>) -> Result<&str, KmsError> {
    let target = target.ok_or_else(|| {
        KmsError::new(
            KmsErrorCode::UnknownOperation,
            "Missing X-Amz-Target header",
        )
    })?;
    target
        .strip_prefix(TARGET_PREFIX)
        .filter(|op| !op.is_empty())
        .ok_or_else(|| {
            KmsError::new(
                KmsErrorCode::UnknownOperation,
                format!("Unknown operation {target}"),
            )
        })
}

/// The body of an error response: `{"__type": ..., "message": ...}`
/// (`message` omitted when empty, as KMS does for some errors).
pub fn error_body(e: &KmsError) -> String {
    let body = if e.message.is_empty() {
        serde_json::json!({ "__type": e.code })
    } else {
        serde_json::json!({ "__type": e.code, "message": e.message })
    };
    body.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_error_bodies() {
        assert_eq!(
            operation_name(Some("TrentService.GenerateDataKey")),
            Ok("GenerateDataKey")
        );
        for bad in [
            None,
            Some("TrentService."),
            Some("DynamoDB_20120810.GetItem"),
        ] {
            assert_eq!(
                operation_name(bad).map_err(|e| e.code),
                Err("UnknownOperationException".to_owned())
            );
        }
        let e = KmsError::new("NotFoundException", "Alias x is not found.");
        let v: serde_json::Value = serde_json::from_str(&error_body(&e)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"__type": "NotFoundException", "message": "Alias x is not found."})
        );
        assert_eq!(request_id(255), "00000000-0000-4000-8000-0000000000ff");
        let bare: serde_json::Value =
            serde_json::from_str(&error_body(&KmsError::new("X", ""))).unwrap();
        assert_eq!(bare, serde_json::json!({"__type": "X"}));
    }
}
