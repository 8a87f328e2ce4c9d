//! Unit tests of the metrics: what each series counts, that no label can
//! carry a peer's string or key material, readiness, the HTTP endpoints.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use keybroker_common::attestation::VerificationCache;
use keybroker_common::kms::{KmsError, KmsErrorCode, Operation};
use keybroker_common::protocol::{ErrorCode, WireError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::http::MetricsServer;
use super::ready::{Readiness, ReadinessConfig, Upstream};
use super::*;
use crate::admission::{Denial, Rule};
use crate::audit::Outcome;
use crate::refusal::Refusal;

/// The value of the sample `name{labels}` (labels as rendered, e.g.
/// `operation="Decrypt",outcome="ok"`; empty for none).
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let key = if labels.is_empty() {
        name.to_owned()
    } else {
        format!("{name}{{{labels}}}")
    };
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(&key)?.strip_prefix(' ')?.parse().ok())
}

/// Every label value in the text, across all samples.
fn label_values(text: &str) -> BTreeSet<String> {
    let mut values = BTreeSet::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((_, rest)) = line.split_once('{') else {
            continue;
        };
        let labels = rest.split_once('}').map_or("", |(l, _)| l);
        for pair in labels.split(',').filter(|p| !p.is_empty()) {
            let (_, value) = pair.split_once('=').unwrap();
            values.insert(value.trim_matches('"').to_owned());
        }
    }
    values
}

#[test]
fn requests_are_counted_by_operation_and_outcome() {
    let m = Metrics::new();
    let gdk = Operation::GenerateDataKey;
    m.request_finished(gdk, &Outcome::Ok, Duration::from_millis(3));
    m.request_finished(gdk, &Outcome::Ok, Duration::from_millis(30));
    m.request_finished(
        gdk,
        &Outcome::Denied(Rule::RecipientRequired),
        Duration::ZERO,
    );
    m.request_finished(
        Operation::Decrypt,
        &Outcome::Kms("NotFoundException".into()),
        Duration::ZERO,
    );
    m.request_finished(
        Operation::Decrypt,
        &Outcome::Error(ErrorCode::Busy),
        Duration::ZERO,
    );
    m.request_finished(Operation::Decrypt, &Outcome::Abandoned, Duration::ZERO);
    let text = m.encode().unwrap();
    let requests = "keybroker_proxy_requests_total";
    let count = |labels: &str| sample(&text, requests, labels);
    assert_eq!(
        count("operation=\"GenerateDataKey\",outcome=\"ok\""),
        Some(2.0)
    );
    assert_eq!(
        count("operation=\"GenerateDataKey\",outcome=\"denied\""),
        Some(1.0)
    );
    for outcome in ["kms_error", "error", "abandoned"] {
        assert_eq!(
            count(&format!("operation=\"Decrypt\",outcome=\"{outcome}\"")),
            Some(1.0),
            "{text}"
        );
    }
    let histogram = "keybroker_proxy_request_duration_seconds";
    let op = "operation=\"GenerateDataKey\"";
    assert_eq!(sample(&text, &format!("{histogram}_count"), op), Some(3.0));
    assert_eq!(
        sample(
            &text,
            &format!("{histogram}_bucket"),
            &format!("{op},le=\"0.005\"")
        ),
        Some(2.0),
        "{text}"
    );
    assert!(text.contains("# TYPE keybroker_proxy_requests_total counter"));
    assert!(text.contains("# TYPE keybroker_proxy_request_duration_seconds histogram"));
}

#[test]
fn gauges_follow_their_guards() {
    let m = Metrics::new();
    let value = |m: &Metrics, name| sample(&m.encode().unwrap(), name, "");
    let request = m.request_started();
    let conn = m.connection_open();
    let tunnel = m.tunnel_opened();
    m.connection_accepted();
    assert_eq!(value(&m, "keybroker_proxy_requests_in_flight"), Some(1.0));
    assert_eq!(value(&m, "keybroker_proxy_connections_open"), Some(1.0));
    assert_eq!(m.open_connections(), 1);
    assert_eq!(value(&m, "keybroker_proxy_tunnels_open"), Some(1.0));
    drop((request, conn, tunnel));
    assert_eq!(value(&m, "keybroker_proxy_requests_in_flight"), Some(0.0));
    assert_eq!(value(&m, "keybroker_proxy_connections_open"), Some(0.0));
    assert_eq!(value(&m, "keybroker_proxy_tunnels_open"), Some(0.0));
    assert_eq!(
        value(&m, "keybroker_proxy_connections_accepted_total"),
        Some(1.0)
    );
    assert_eq!(value(&m, "keybroker_proxy_tunnels_opened_total"), Some(1.0));
    let (to, from) = m.tunnel_byte_counters();
    to.inc_by(100);
    from.inc_by(7);
    let text = m.encode().unwrap();
    let bytes = "keybroker_proxy_tunnel_bytes_total";
    assert_eq!(sample(&text, bytes, "direction=\"to_target\""), Some(100.0));
    assert_eq!(sample(&text, bytes, "direction=\"from_target\""), Some(7.0));
}

#[test]
fn denials_and_kms_errors_are_named() {
    let m = Metrics::new();
    m.denied_by(Rule::PcrMismatch);
    m.refused(&Refusal::Denied(Denial {
        rule: Rule::PcrMismatch,
        message: "no image".into(),
    }));
    m.refused(&Refusal::KmsBusy { limit: 3 });
    m.refused(&Refusal::TunnelNotAllowed);
    m.kms_error(&WireError::kms(KmsError::new(
        KmsErrorCode::Throttling,
        "slow down",
    )));
    m.kms_error(&WireError::new(ErrorCode::Unavailable, "no route"));
    m.kms_timeout();
    let text = m.encode().unwrap();
    let denials = "keybroker_proxy_denials_total";
    assert_eq!(sample(&text, denials, "reason=\"PcrMismatch\""), Some(2.0));
    assert_eq!(sample(&text, denials, "reason=\"KmsBusy\""), Some(1.0));
    assert_eq!(
        sample(&text, denials, "reason=\"TunnelNotAllowed\""),
        Some(1.0)
    );
    let errors = "keybroker_proxy_kms_errors_total";
    assert_eq!(
        sample(&text, errors, "code=\"ThrottlingException\""),
        Some(1.0)
    );
    assert_eq!(sample(&text, errors, "code=\"unreachable\""), Some(1.0));
    assert_eq!(sample(&text, errors, "code=\"timeout\""), Some(1.0));
}

#[test]
fn labels_never_carry_peer_strings_or_secrets() {
    // Everything a peer or KMS controls, and secret-looking values, go in
    // through every recording method; none may come out.
    let secrets = [
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "AKIAIOSFODNN7EXAMPLE",
        "AQICAHhSECRETCIPHERTEXT==",
        "evil\"}injected",
    ];
    let m = Metrics::new();
    for secret in secrets {
        m.request_finished(
            Operation::Decrypt,
            &Outcome::Kms(secret.to_owned()),
            Duration::ZERO,
        );
        m.kms_error(&WireError::kms(KmsError::new(secret, secret)));
        m.kms_error(&WireError::new(ErrorCode::Internal, secret));
        m.refused(&Refusal::Denied(Denial {
            rule: Rule::AttestationInvalid,
            message: secret.to_owned(),
        }));
        m.refused(&Refusal::TunnelUnreachable {
            reason: secret.to_owned(),
        });
        m.refused(&Refusal::CredentialsUnusable {
            reason: secret.to_owned(),
        });
    }
    m.credentials_fetched(Ok(Some(1)));
    m.credentials_fetched(Err(()));
    let (to, from) = m.tunnel_byte_counters();
    to.inc();
    from.inc();
    m.observe_verification_cache(Arc::new(VerificationCache::new(4)));
    let text = m.encode().unwrap();
    for secret in secrets {
        assert!(!text.contains(secret), "{secret} in\n{text}");
    }
    // Every label value is a name from a fixed table.
    let mut known: BTreeSet<String> = [
        "ok",
        "kms_error",
        "denied",
        "error",
        "abandoned",
        "other",
        "timeout",
        "unreachable",
        "success",
        "failure",
        "hit",
        "miss",
        "to_target",
        "from_target",
        "AttestationInvalid",
        "TunnelUnreachable",
        "CredentialsUnusable",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    known.extend(Operation::ALL.iter().map(|o| o.as_str().to_owned()));
    known.extend(LATENCY_BUCKETS.iter().map(|b| b.to_string()));
    known.insert("+Inf".to_owned());
    for value in label_values(&text) {
        let number = value.parse::<f64>().ok();
        assert!(
            known.contains(&value) || number.is_some_and(|n| LATENCY_BUCKETS.contains(&n)),
            "unexpected label value {value:?} in\n{text}"
        );
    }
    assert_eq!(
        sample(&text, "keybroker_proxy_kms_errors_total", "code=\"other\""),
        Some(8.0)
    );
}

#[test]
fn a_credentials_refresh_is_new_credentials() {
    let m = Metrics::new();
    m.credentials_fetched(Ok(Some(1_000)));
    m.credentials_fetched(Ok(Some(1_000)));
    m.credentials_fetched(Ok(Some(2_000)));
    m.credentials_fetched(Err(()));
    m.credentials_fetched(Ok(Some(2_000)));
    let text = m.encode().unwrap();
    let name = "keybroker_proxy_credential_refreshes_total";
    assert_eq!(sample(&text, name, "result=\"success\""), Some(2.0));
    assert_eq!(sample(&text, name, "result=\"failure\""), Some(1.0));
}

#[test]
fn the_verification_cache_reports_its_counts() {
    let m = Metrics::new();
    let text = m.encode().unwrap();
    let lookups = "keybroker_proxy_attestation_cache_lookups_total";
    assert_eq!(sample(&text, lookups, "result=\"hit\""), Some(0.0));
    m.observe_verification_cache(Arc::new(VerificationCache::new(4)));
    let text = m.encode().unwrap();
    assert_eq!(sample(&text, lookups, "result=\"miss\""), Some(0.0));
    assert_eq!(
        sample(&text, "keybroker_proxy_attestation_cache_entries", ""),
        Some(0.0)
    );
    assert!(text.contains("# TYPE keybroker_proxy_attestation_cache_lookups_total counter"));
}

#[test]
fn upstreams_come_from_urls() {
    let u = |s| Upstream::from_url(s).map(|u| u.to_string());
    assert_eq!(
        u("http://127.0.0.1:4566").as_deref(),
        Some("127.0.0.1:4566")
    );
    assert_eq!(
        u("https://kms.us-east-1.amazonaws.com").as_deref(),
        Some("kms.us-east-1.amazonaws.com:443")
    );
    assert_eq!(u("http://localhost/path").as_deref(), Some("localhost:80"));
    assert_eq!(u("https://[::1]:8443/").as_deref(), Some("[::1]:8443"));
    for bad in [
        "localhost:4566",
        "ftp://host",
        "http://",
        "http://user:pw@host",
        "http://host:0",
        "http://host:x",
    ] {
        assert_eq!(u(bad), None, "{bad}");
    }
}

/// A loopback port nothing listens on (bound, then released).
async fn closed_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

fn config(upstreams: Vec<Upstream>) -> ReadinessConfig {
    ReadinessConfig {
        cache_for: Duration::ZERO,
        ..ReadinessConfig::new(upstreams)
    }
}

#[tokio::test]
async fn ready_needs_a_reachable_upstream() {
    let metrics = Arc::new(Metrics::new());
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = Upstream::new("127.0.0.1", upstream.local_addr().unwrap().port());
    let down = Upstream::new("127.0.0.1", closed_port().await);

    let ready = Readiness::new(config(vec![down.clone(), up.clone()]), metrics.clone());
    assert_eq!(ready.check().await, Ok(()));

    let not_ready = Readiness::new(config(vec![down.clone()]), metrics.clone());
    let reason = not_ready.check().await.unwrap_err();
    assert!(reason.starts_with("upstream unreachable"), "{reason}");
    assert!(reason.contains(&down.to_string()), "{reason}");

    let nothing = Readiness::new(config(Vec::new()), metrics.clone());
    assert!(
        nothing
            .check()
            .await
            .unwrap_err()
            .contains("no upstream configured")
    );

    // The answer is kept for `cache_for`: the upstream going away is seen
    // only after that.
    let cached = Readiness::new(
        ReadinessConfig {
            cache_for: Duration::from_secs(3600),
            ..ReadinessConfig::new(vec![up.clone()])
        },
        metrics.clone(),
    );
    assert_eq!(cached.check().await, Ok(()));
    let uncached = Readiness::new(config(vec![up]), metrics);
    drop(upstream);
    assert_eq!(cached.check().await, Ok(()));
    assert!(uncached.check().await.is_err());
}

/// A reload that changes the tunnel targets changes what `/readyz` checks,
/// at once (a cached answer about the old targets is dropped).
#[tokio::test]
async fn a_reload_replaces_the_upstreams() {
    let metrics = Arc::new(Metrics::new());
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = Upstream::new("127.0.0.1", upstream.local_addr().unwrap().port());
    let down = Upstream::new("127.0.0.1", closed_port().await);
    let readiness = Readiness::new(
        ReadinessConfig {
            cache_for: Duration::from_secs(3600),
            ..ReadinessConfig::new(vec![down])
        },
        metrics,
    );
    assert!(readiness.check().await.is_err());
    readiness.set_upstreams(vec![up]).await;
    assert_eq!(readiness.check().await, Ok(()));
}

#[tokio::test]
async fn ready_can_require_an_enclave_connection() {
    let metrics = Arc::new(Metrics::new());
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = Upstream::new("127.0.0.1", upstream.local_addr().unwrap().port());
    let ready = Readiness::new(
        ReadinessConfig {
            requires_enclave: true,
            ..config(vec![up])
        },
        metrics.clone(),
    );
    assert_eq!(ready.check().await, Err("no enclave connected".to_owned()));
    let connection = metrics.connection_open();
    assert_eq!(ready.check().await, Ok(()));
    drop(connection);
    assert!(ready.check().await.is_err());
    let _connection = metrics.connection_open();
    metrics.set_draining();
    assert_eq!(ready.check().await, Err("shutting down".to_owned()));
}

/// One HTTP/1.1 request; returns the status and the body.
async fn get(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).await.unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn the_listener_serves_metrics_health_and_readiness() {
    let metrics = Arc::new(Metrics::new());
    metrics.request_finished(Operation::DescribeKey, &Outcome::Ok, Duration::ZERO);
    let down = Upstream::new("127.0.0.1", closed_port().await);
    let readiness = Readiness::new(config(vec![down]), metrics.clone());
    let server = MetricsServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        metrics.clone(),
        Arc::new(readiness),
    )
    .await
    .unwrap();
    let addr = server.local_addr();
    assert!(addr.ip().is_loopback() && addr.port() != 0);
    let task = tokio::spawn(server.run());

    let (status, body) = get(addr, "GET", "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(
        sample(
            &body,
            "keybroker_proxy_requests_total",
            "operation=\"DescribeKey\",outcome=\"ok\""
        ),
        Some(1.0),
        "{body}"
    );
    assert_eq!(get(addr, "GET", "/healthz").await, (200, "ok".to_owned()));
    let (status, body) = get(addr, "GET", "/readyz").await;
    assert_eq!(status, 503);
    assert!(
        body.starts_with("not ready: upstream unreachable"),
        "{body}"
    );
    assert_eq!(get(addr, "GET", "/nope").await.0, 404);
    assert_eq!(get(addr, "GET", "/metrics/x").await.0, 404);
    assert_eq!(get(addr, "POST", "/metrics").await.0, 405);
    task.abort();
}
