//! The exit codes of `keybroker-enclave`: one table (the `exit_codes!` macro) gives
//! the constants, the `--help` text ([`HELP`]) and [`TABLE`]; [`exit_code`]
//! maps an [`Error`] to its code.

use keybroker_common::key_allowlist::KeyPinError;

use crate::Error;

/// Defines the exit-code constants and, from the same rows, [`HELP`] and
/// [`TABLE`], so that the numbers, their documentation and `--help` cannot
/// disagree.
macro_rules! exit_codes {
    ($first_doc:literal $first:ident = $first_code:literal, $first_help:literal;
     $($doc:literal $name:ident = $code:literal, $help:literal;)*) => {
        #[doc = $first_doc]
        pub const $first: u8 = $first_code;
        $(#[doc = $doc] pub const $name: u8 = $code;)*

        /// The exit codes as `--help` shows them (`after_help`).
        pub const HELP: &str = concat!(
            "Exit codes: ", stringify!($first_code), " ", $first_help,
            $(", ", stringify!($code), " ", $help,)* "."
        );

        /// Every exit code with its `--help` description, in order.
        pub const TABLE: &[(u8, &str)] = &[($first_code, $first_help), $(($code, $help),)*];
    };
}

exit_codes! {
    "Exit code for success."
    EXIT_OK = 0, "success";
    "Exit code: KMS, the proxy's policy or the image's key allowlist refused
    the request."
    EXIT_REFUSED = 1, "refused by KMS, proxy policy or the key allowlist";
    "Exit code: usage error or invalid input."
    EXIT_USAGE = 2, "usage or invalid input";
    "Exit code: the proxy or KMS is unavailable, throttled or timed out
    (retry later)."
    EXIT_UNAVAILABLE = 3, "proxy/KMS unavailable or throttled (retry)";
    "Exit code: the NSM failed."
    EXIT_NSM = 4, "NSM failure";
    "Exit code: a local file could not be read or written."
    EXIT_IO = 5, "local I/O error";
    "Exit code: data that does not authenticate or decode (a tampered
    envelope message, an answer that does not parse or is for a key that is
    not allowed, TLS that does not verify)."
    EXIT_UNAUTHENTIC = 6, "data that does not authenticate (tampered message, unusable answer, TLS that does not verify)";
    "Exit code: an internal error, not the caller's fault ([`Error::Internal`]:
    an output that cannot be encoded, a server task that failed, privileges
    that could not be dropped for good)."
    EXIT_INTERNAL = 7, "internal error";
}

/// The exit code for `e` (see [`TABLE`]).
pub fn exit_code(e: &Error) -> u8 {
    match e {
        Error::Common(keybroker_common::Error::Kms(k)) if k.retryable => EXIT_UNAVAILABLE,
        Error::Common(keybroker_common::Error::Kms(_)) => EXIT_REFUSED,
        Error::Common(keybroker_common::Error::Protocol(_)) if e.is_retryable() => EXIT_UNAVAILABLE,
        Error::Common(keybroker_common::Error::Protocol(_)) if e.remote_error().is_some() => {
            EXIT_REFUSED
        }
        Error::Common(keybroker_common::Error::InvalidArgument(_)) | Error::InvalidArgument(_) => {
            EXIT_USAGE
        }
        Error::Unavailable { .. } | Error::Timeout { .. } | Error::ConnectionLost { .. } => {
            EXIT_UNAVAILABLE
        }
        Error::KeyNotAllowed(KeyPinError::Invalid { .. }) => EXIT_USAGE,
        Error::KeyNotAllowed(
            KeyPinError::RequestKeyNotAllowed(_) | KeyPinError::Unresolvable { .. },
        ) => EXIT_REFUSED,
        Error::Nsm { .. } => EXIT_NSM,
        Error::Io { .. } => EXIT_IO,
        Error::Internal(_) => EXIT_INTERNAL,
        _ => EXIT_UNAUTHENTIC,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_pinning_and_tls_failures_have_their_own_exit_codes() {
        let refused = KeyPinError::RequestKeyNotAllowed("arn:aws:kms:x".into());
        assert_eq!(exit_code(&refused.into()), EXIT_REFUSED);
        let invalid = KeyPinError::Invalid {
            id: "x".into(),
            reason: "not an ARN",
        };
        assert_eq!(exit_code(&invalid.into()), EXIT_USAGE);
        // An answer for another key, or TLS that does not verify: data that
        // does not authenticate (a hostile parent), not a refusal to retry.
        let forged = KeyPinError::ResponseKeyNotAllowed("arn:aws:kms:y".into());
        assert_eq!(exit_code(&forged.into()), EXIT_UNAUTHENTIC);
        let tls = Error::Tls {
            reason: "invalid peer certificate".into(),
        };
        assert_eq!(exit_code(&tls), EXIT_UNAUTHENTIC);
    }

    #[test]
    fn internal_errors_are_not_usage_errors() {
        let e = Error::Internal("cannot encode the output".into());
        assert_eq!(exit_code(&e), EXIT_INTERNAL);
        assert_ne!(EXIT_INTERNAL, EXIT_USAGE);
    }

    #[test]
    fn the_help_text_lists_every_code_once_in_order() {
        let codes: Vec<u8> = TABLE.iter().map(|(c, _)| *c).collect();
        assert_eq!(codes, (0..=7).collect::<Vec<u8>>());
        assert!(
            HELP.starts_with("Exit codes: 0 success, 1 refused"),
            "{HELP}"
        );
        for (code, text) in TABLE {
            assert!(HELP.contains(&format!("{code} {text}")), "{HELP}");
        }
        assert!(HELP.ends_with("7 internal error."), "{HELP}");
    }
}
