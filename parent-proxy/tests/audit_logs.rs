//! Logs a peer cannot forge. A vsock peer puts a line break (newline,
//! carriage return, U+2028, ANSI cursor and erase sequences) followed by a
//! fake `request ... outcome=ok` audit line into every string of its own that
//! the proxy logs: the client id of `Hello`, a key id (in the denial reason
//! and the audit line), a certificate subject and a payload field name of
//! an attestation document (quoted by denial reasons), a message variant name
//! (quoted by the protocol error) and the message of its `Error`. In both log
//! formats, captured in-process with the production subscriber, no forged
//! line appears: every line is one real event, the only audit lines are the
//! real (denied) ones, and no control or non-ASCII character reaches the
//! output, so a terminal cannot be made to overwrite a line either.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use keybroker_common::attestation::AttestationDocument;
use keybroker_common::kms::*;
use keybroker_common::protocol::{ErrorCode, Message, WireError};
use keybroker_proxy::audit::LogFormat;
use keybroker_proxy::backend::FnBackend;
use keybroker_proxy::measurements::AllowedImage;
use keybroker_proxy::server::{Proxy, ProxyConfig};
use keybroker_test_support::pki::{TestPki, pcrs_filled, sign_with};
use support::{Client, Logs, describe, described, random};

/// The fake line in the text format. Its timestamp is in 1999, so no real
/// line has it.
const FORGED_TEXT: &str = "1999-12-31T23:59:59.000000Z  INFO keybroker_proxy::audit: request \
     conn=1 id=1 operation=\"Decrypt\" key_id=\"alias/app\" caller_pcr0=- attestation=- \
     outcome=ok latency_ms=0.100";

/// The fake line in the JSON format.
const FORGED_JSON: &str = r#"{"timestamp":"1999-12-31T23:59:59.000000Z","level":"INFO","conn":1,"id":1,"operation":"Decrypt","key_id":"alias/app","outcome":"ok","message":"request","target":"keybroker_proxy::audit"}"#;

/// Ways to start a new line, or to overwrite the current one on a terminal.
const BREAKS: [&str; 6] = [
    "\n",
    "\r\n",
    "\r",
    "\u{2028}",
    "\x1b[2K\r",
    "\x1b[1A\x1b[2K\x1b[31m",
];

/// Strings the peer sends: `x`, a break, a forged line.
fn payloads() -> Vec<String> {
    BREAKS
        .iter()
        .flat_map(|b| [format!("x{b}{FORGED_TEXT}"), format!("x{b}{FORGED_JSON}")])
        .collect()
}

/// Each payload is logged this many times: client id, key id in the denial
/// reason and in the audit line, certificate subject, payload field name,
/// variant name, `Error` message.
const SITES: usize = 7;
/// Audit lines per payload: the three requests, each denied.
const REQUESTS: usize = 3;

/// A signed document whose leaf certificate, named `CN=<common_name>`,
/// expired in 2001: the proxy's refusal quotes its subject.
fn expired_document(pki: &TestPki, common_name: &str) -> Vec<u8> {
    let leaf = pki.leaf(common_name, (2000, 1, 1), (2001, 1, 1));
    let doc = AttestationDocument {
        certificate: leaf.der,
        ..pki.payload(
            pcrs_filled(0xAA, &[]),
            Some(vec![0x30; 294]),
            keybroker_proxy::clock::now(),
        )
    };
    sign_with(&leaf.key, &doc)
}

fn cbor(value: &ciborium::Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).unwrap();
    out
}

/// A COSE_Sign1 whose payload's one key is `field`: the parser refuses it,
/// quoting the field name.
fn unknown_field_document(field: &str) -> Vec<u8> {
    use ciborium::Value;
    let protected = cbor(&Value::Map(vec![(
        Value::Integer(1.into()),
        Value::Integer((-35).into()),
    )]));
    let payload = cbor(&Value::Map(vec![(Value::Text(field.into()), Value::Null)]));
    cbor(&Value::Array(vec![
        Value::Bytes(protected),
        Value::Map(vec![]),
        Value::Bytes(payload),
        Value::Bytes(vec![0; 96]),
    ]))
}

/// A `Request` frame whose KMS request is the unknown variant `name`, built
/// by hand (the encoder only writes known ones).
fn raw_request_with_variant(name: &str) -> Vec<u8> {
    use ciborium::Value;
    let body = cbor(&Value::Array(vec![
        Value::Integer(3.into()),
        Value::Map(vec![
            (Value::Text("id".into()), Value::Integer(4.into())),
            (
                Value::Text("request".into()),
                Value::Map(vec![(Value::Text(name.into()), Value::Map(vec![]))]),
            ),
        ]),
    ]));
    let mut frame = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

fn denied(msg: Option<Message>) -> WireError {
    match msg {
        Some(Message::Response { result: Err(e), .. }) => e,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Runs the attack against a proxy logging in `format`; returns the log.
async fn attack(format: LogFormat) -> String {
    let logs = Logs::default();
    let guard = logs.install_format(format);
    let root = TestPki::without_intermediate();
    let mut config = ProxyConfig::new("tcp://127.0.0.1:0".parse().unwrap());
    config.admission.allowed_keys = Some(["alias/app".to_owned()].into());
    config.admission.allowed_images =
        vec![AllowedImage::new([(0, vec![0xAA; 48])].into()).unwrap()];
    config
        .admission
        .verifier
        .add_trusted_root(&root.root_der)
        .unwrap();
    let backend = FnBackend(|req: KmsRequest| async move {
        Ok::<_, WireError>(described(req.key_id().unwrap_or_default()))
    });
    let proxy = Proxy::bind(config, backend).await.unwrap().spawn();
    let addr = proxy.local_addr().clone();

    for p in payloads() {
        let mut c = Client::connect(&addr).await;
        c.send(&Message::hello(p.as_str())).await;
        assert!(matches!(c.recv().await, Some(Message::HelloAck { .. })));
        c.request(1, None, describe(&p)).await;
        let e = denied(c.recv().await);
        assert!(e.message().starts_with("KeyNotAllowed: "), "{e}");
        c.request(2, None, random(expired_document(&root, &p)))
            .await;
        let e = denied(c.recv().await);
        assert!(e.message().contains("expired"), "{e}");
        c.request(3, None, random(unknown_field_document(&p))).await;
        let e = denied(c.recv().await);
        assert!(e.message().contains("unknown field"), "{e}");
        c.send_raw(&raw_request_with_variant(&p)).await;
        assert!(matches!(c.recv().await, Some(Message::Error { .. })));
        assert_eq!(c.recv().await, None);

        let mut c = Client::handshake(&addr).await;
        let error = WireError::new(ErrorCode::BadRequest, p.as_str());
        c.send(&Message::Error { error }).await;
        assert_eq!(c.recv().await, None);
    }
    proxy.shutdown_and_wait().await.unwrap();
    drop(guard);
    logs.text()
}

/// Nothing but printable ASCII and the line ends: no carriage return, ANSI
/// escape, U+2028 or other character a terminal or viewer would act on.
fn assert_inert(text: &str) {
    let odd: Vec<char> = text
        .chars()
        .filter(|c| *c != '\n' && !(' '..='~').contains(c))
        .collect();
    assert!(odd.is_empty(), "{odd:?} in:\n{text}");
}

/// Splits a text-format line into words, a quoted value (with its `\"`
/// escapes) staying inside its word.
fn words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let (mut quoted, mut escaped) = (false, false);
    for c in line.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                continue;
            }
            _ => {}
        }
        word.push(c);
    }
    assert!(!quoted, "unterminated quote: {line}");
    if !word.is_empty() {
        words.push(word);
    }
    words
}

#[tokio::test]
async fn peer_strings_cannot_forge_text_log_lines() {
    let text = attack(LogFormat::Text).await;
    assert_inert(&text);
    let mut audit = 0;
    for line in text.lines() {
        let words = words(line);
        // Every line is a real event: its own timestamp, level and target.
        assert!(!words[0].starts_with("1999"), "forged: {line}");
        assert!(words[2].starts_with("keybroker_proxy::"), "{line}");
        if words[2] == "keybroker_proxy::audit:" {
            audit += 1;
            let outcome = words.iter().find(|w| w.starts_with("outcome=")).unwrap();
            assert!(outcome.starts_with("outcome=denied:"), "{line}");
        }
    }
    assert_eq!(audit, payloads().len() * REQUESTS, "{text}");
    // The peer's strings are there, escaped and quoted: the test is not
    // vacuous.
    assert_eq!(
        text.matches("1999-12-31T23:59:59").count(),
        payloads().len() * SITES,
        "{text}"
    );
    assert!(text.contains("client=\"x\\\\u{1b}[2K\\\\r1999"), "{text}");
}

#[tokio::test]
async fn peer_strings_cannot_forge_json_log_lines() {
    let text = attack(LogFormat::Json).await;
    assert_inert(&text);
    let mut audit = 0;
    let mut sites = 0;
    for line in text.lines() {
        // Every line is one JSON object, a real event.
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let event = event.as_object().unwrap();
        assert!(
            !event["timestamp"].as_str().unwrap().starts_with("1999"),
            "forged: {line}"
        );
        if event["target"] == "keybroker_proxy::audit" {
            audit += 1;
            let outcome = event["outcome"].as_str().unwrap();
            assert!(outcome.starts_with("denied:"), "{line}");
        }
        // Decoded values are inert too: a viewer that prints a field's value
        // (jq -r, a log console) shows no line break or escape sequence.
        for value in event.values() {
            if let Some(s) = value.as_str() {
                assert_inert(s);
                sites += s.matches("1999-12-31T23:59:59").count();
            }
        }
    }
    assert_eq!(audit, payloads().len() * REQUESTS, "{text}");
    assert_eq!(sites, payloads().len() * SITES, "{text}");
    // The client id as logged: the peer's string, escaped.
    let client = format!("x\\n{FORGED_TEXT}");
    assert!(
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|v| v["client"] == client.as_str()),
        "{text}"
    );
}

/// The escaping itself: printable ASCII kept, the rest escaped, a peer's
/// own backslashes doubled so an escape cannot be faked.
#[test]
fn peer_escapes_everything_but_printable_ascii() {
    use keybroker_proxy::audit::peer;
    assert_eq!(peer("alias/app-1 \"x\""), "alias/app-1 \"x\"");
    assert_eq!(peer("a\nb\r\tc"), "a\\nb\\r\\tc");
    assert_eq!(peer("\x1b[2K\u{7f}\u{85}"), "\\u{1b}[2K\\u{7f}\\u{85}");
    assert_eq!(peer("\u{2028}\u{202e}é"), "\\u{2028}\\u{202e}\\u{e9}");
    assert_eq!(peer("a\\nb"), "a\\\\nb");
    assert_eq!(peer(format_args!("{}:{}", "k", 1)), "k:1");
}
