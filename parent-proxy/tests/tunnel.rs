//! Protocol version 2 on the proxy: tunnels and credentials, end to end over
//! 127.0.0.1, with the enclave's own `parent` functions where they fit and
//! raw frames where a hostile or old peer is needed. The proxy's log output
//! is captured to check the audit lines and that secrets never appear.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use keybroker_common::address::Address;
use keybroker_common::protocol::{
    AwsCredentialsWire, ErrorCode, Message, ProtocolError, VersionRange, WireError,
};
use keybroker_common::secret::SecretString;
use keybroker_enclave::parent::{fetch_credentials, open_tunnel};
use keybroker_proxy::backend::FnBackend;
use keybroker_proxy::credentials::StaticCredentials;
use keybroker_proxy::server::{Proxy, ProxyConfig, ProxyHandle};
use keybroker_proxy::tunnel::TunnelTarget;
use support::{Client, Logs, describe, described, echoed};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
const TOKEN: &str = "IQoJb3JpZ2luX2VjEXAMPLETOKEN/verySecretSessionToken+==";
const T: Duration = Duration::from_secs(5);

/// An echo server: every connection gets back what it sends, and is closed
/// when the client closes. Returns its port and a counter of connections.
async fn echo_server() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    (port, accepted)
}

fn target(s: &str) -> TunnelTarget {
    s.parse().unwrap()
}

fn config(targets: &[TunnelTarget]) -> ProxyConfig {
    let mut c = ProxyConfig::new("tcp://127.0.0.1:0".parse().unwrap());
    c.tunnels.allowed.extend(targets.iter().cloned());
    c.tunnels.connect_timeout = Duration::from_secs(2);
    c.limits.drain_timeout = Duration::from_millis(300);
    c
}

async fn start(config: ProxyConfig, credentials: Option<AwsCredentialsWire>) -> ProxyHandle {
    let backend = FnBackend(|req: keybroker_common::kms::KmsRequest| async move {
        let key = req.key_id().unwrap_or_default().to_owned();
        if let Some(ms) = key.strip_prefix("sleep:") {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
        }
        Ok::<_, WireError>(described(&key))
    });
    let mut proxy = Proxy::bind(config, backend).await.unwrap();
    if let Some(c) = credentials {
        proxy = proxy.with_credentials(Arc::new(StaticCredentials(c)));
    }
    proxy.spawn()
}

fn credentials() -> AwsCredentialsWire {
    AwsCredentialsWire {
        access_key_id: "ASIAIOSFODNN7EXAMPLE".into(),
        secret_access_key: SecretString::from_str_copy(SECRET),
        session_token: Some(SecretString::from_str_copy(TOKEN)),
        expiration_ms: Some(1_900_000_000_000),
    }
}

/// A handshake offering only version 1, as a proxy-v1-era enclave does.
async fn v1_client(addr: &Address) -> Client {
    let mut c = Client::connect(addr).await;
    c.send(&Message::Hello {
        versions: VersionRange::new(1, 1),
        client: "old-enclave/0.0.1".into(),
    })
    .await;
    match c.recv().await {
        Some(Message::HelloAck { version: 1, .. }) => c,
        other => panic!("{other:?}"),
    }
}

fn fatal_code(msg: Option<Message>) -> ErrorCode {
    match msg {
        Some(Message::Error { error }) => error.code(),
        other => panic!("expected Error, got {other:?}"),
    }
}

fn remote_code(e: &keybroker_enclave::Error) -> ErrorCode {
    e.remote_error()
        .map(|(c, _)| c)
        .unwrap_or_else(|| panic!("not a proxy error: {e}"))
}

#[tokio::test]
async fn a_tunnel_relays_bytes_both_ways_and_is_audited() {
    let logs = Logs::default();
    let _guard = logs.install();
    let (port, accepted) = echo_server().await;
    let proxy = start(config(&[target(&format!("127.0.0.1:{port}"))]), None).await;

    let mut s = open_tunnel(proxy.local_addr(), "127.0.0.1", port, T)
        .await
        .unwrap();
    // Bytes that look like frames are relayed as they are: never parsed.
    let payload: Vec<u8> = [&[0, 0, 0, 3, 0x82, 0x06, 0xA0][..], &[0xFF; 4096], b"end"].concat();
    s.write_all(&payload).await.unwrap();
    let mut back = vec![0u8; payload.len()];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(back, payload);
    s.write_all(b"more").await.unwrap();
    let mut more = [0u8; 4];
    s.read_exact(&mut more).await.unwrap();
    assert_eq!(&more, b"more");
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);

    let lines = logs.wait_tunnel_lines(1).await;
    let n = payload.len() + 4;
    let line = &lines[0];
    assert!(line.contains("host=\"127.0.0.1\""), "{line}");
    assert!(line.contains(&format!("port={port}")), "{line}");
    assert!(line.contains(&format!("bytes_to_target={n}")), "{line}");
    assert!(line.contains(&format!("bytes_from_target={n}")), "{line}");
    assert!(line.contains("outcome=closed"), "{line}");
    assert!(line.contains("duration_ms="), "{line}");
    proxy.shutdown_and_wait().await.unwrap();
}

#[tokio::test]
async fn targets_not_on_the_list_are_refused_and_nothing_connects() {
    let logs = Logs::default();
    let _guard = logs.install();
    let (allowed_port, _) = echo_server().await;
    let (other_port, other_accepted) = echo_server().await;
    let proxy = start(
        config(&[target(&format!("localhost:{allowed_port}"))]),
        None,
    )
    .await;
    let addr = proxy.local_addr().clone();
    for (host, port) in [
        ("localhost", other_port),
        // The list names `localhost`; its address is another string.
        ("127.0.0.1", allowed_port),
        ("localhost.", allowed_port),
        ("kms.us-east-1.amazonaws.com", 443),
    ] {
        let e = open_tunnel(&addr, host, port, T).await;
        match e {
            Err(e) if host.ends_with('.') => {
                assert!(
                    matches!(e, keybroker_enclave::Error::InvalidArgument(_)),
                    "{e}"
                )
            }
            Err(e) => assert_eq!(remote_code(&e), ErrorCode::PolicyDenied, "{host}:{port}"),
            Ok(_) => panic!("{host}:{port} was opened"),
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(other_accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
    let lines = logs.wait_tunnel_lines(3).await;
    assert!(
        lines
            .iter()
            .all(|l| l.contains("outcome=refused:PolicyDenied")),
        "{lines:?}"
    );
    assert!(
        lines.iter().all(|l| l.contains("bytes_to_target=0")),
        "{lines:?}"
    );

    // The allowed name, in any case, resolves on the parent, per tunnel.
    for host in ["localhost", "LocalHost"] {
        let mut s = open_tunnel(&addr, host, allowed_port, T).await.unwrap();
        s.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"ping");
    }
    proxy.shutdown_and_wait().await.unwrap();
}

#[tokio::test]
async fn dns_and_connect_failures_are_unavailable() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_port = l.local_addr().unwrap().port();
    drop(l);
    let proxy = start(
        config(&[
            target("does-not-exist.invalid:443"),
            target(&format!("127.0.0.1:{closed_port}")),
        ]),
        None,
    )
    .await;
    for (host, port) in [("does-not-exist.invalid", 443), ("127.0.0.1", closed_port)] {
        let e = open_tunnel(proxy.local_addr(), host, port, T)
            .await
            .unwrap_err();
        assert_eq!(remote_code(&e), ErrorCode::Unavailable, "{host}: {e}");
        assert!(e.is_retryable());
    }
    proxy.shutdown_and_wait().await.unwrap();
}

#[tokio::test]
async fn the_tunnel_limit_answers_busy() {
    let logs = Logs::default();
    let _guard = logs.install();
    let (port, _) = echo_server().await;
    let mut c = config(&[target(&format!("127.0.0.1:{port}"))]);
    c.tunnels.max_tunnels = 2;
    let proxy = start(c, None).await;
    let addr = proxy.local_addr().clone();
    let first = open_tunnel(&addr, "127.0.0.1", port, T).await.unwrap();
    let second = open_tunnel(&addr, "127.0.0.1", port, T).await.unwrap();
    let e = open_tunnel(&addr, "127.0.0.1", port, T).await.unwrap_err();
    assert_eq!(remote_code(&e), ErrorCode::Busy);
    assert!(e.is_retryable());
    // Broker connections are not tunnels: still served.
    let mut broker = Client::handshake(&addr).await;
    broker.request(1, None, describe("alias/app")).await;
    assert!(matches!(
        broker.recv().await,
        Some(Message::Response {
            id: 1,
            result: Ok(_)
        })
    ));
    // A closed tunnel frees its slot.
    drop(first);
    let mut third = None;
    for _ in 0..50 {
        match open_tunnel(&addr, "127.0.0.1", port, T).await {
            Ok(s) => {
                third = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert!(third.is_some(), "the slot was not freed");
    drop((second, third));
    assert!(logs.text().contains("outcome=refused:Busy"));
    proxy.shutdown_and_wait().await.unwrap();
}

#[tokio::test]
async fn an_idle_tunnel_closes_at_its_idle_timeout() {
    let logs = Logs::default();
    let _guard = logs.install();
    let (port, _) = echo_server().await;
    let mut c = config(&[target(&format!("127.0.0.1:{port}"))]);
    let idle = Duration::from_millis(1000);
    c.tunnels.idle_timeout = idle;
    let proxy = start(c, None).await;
    let mut s = open_tunnel(proxy.local_addr(), "127.0.0.1", port, T)
        .await
        .unwrap();
    // Traffic keeps it open past the timeout...
    let started = tokio::time::Instant::now();
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        s.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
    }
    assert!(started.elapsed() >= idle + Duration::from_millis(500));
    // ... then silence closes it.
    let quiet = tokio::time::Instant::now();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(T, s.read_to_end(&mut rest))
        .await
        .unwrap();
    let waited = quiet.elapsed();
    assert!(waited >= idle - Duration::from_millis(100), "{waited:?}");
    assert!(waited < idle * 4, "{waited:?}");
    let lines = logs.wait_tunnel_lines(1).await;
    assert!(lines[0].contains("outcome=idle"), "{lines:?}");
    assert!(
        lines[0].contains("bytes_to_target=8 bytes_from_target=8"),
        "{lines:?}"
    );
    proxy.shutdown_and_wait().await.unwrap();
}

#[tokio::test]
async fn shutdown_closes_tunnels_at_the_drain_deadline() {
    let logs = Logs::default();
    let _guard = logs.install();
    let (port, _) = echo_server().await;
    let proxy = start(config(&[target(&format!("127.0.0.1:{port}"))]), None).await;
    let addr = proxy.local_addr().clone();
    let mut s = open_tunnel(&addr, "127.0.0.1", port, T).await.unwrap();
    let started = tokio::time::Instant::now();
    proxy.shutdown();
    // Still relaying during the drain...
    s.write_all(b"late").await.unwrap();
    let mut b = [0u8; 4];
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"late");
    // ... and closed at its deadline (300 ms); the proxy stops.
    tokio::time::timeout(T, proxy.join())
        .await
        .unwrap()
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(250));
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(T, s.read_to_end(&mut rest))
        .await
        .unwrap();
    let lines = logs.wait_tunnel_lines(1).await;
    assert!(lines[0].contains("outcome=shutdown"), "{lines:?}");
}

#[tokio::test]
async fn credentials_are_handed_over_and_never_logged() {
    let logs = Logs::default();
    let _guard = logs.install();
    let proxy = start(config(&[]), Some(credentials())).await;
    let c = fetch_credentials(proxy.local_addr(), T).await.unwrap();
    assert_eq!(c.access_key_id, "ASIAIOSFODNN7EXAMPLE");
    assert_eq!(c.secret_access_key.expose(), SECRET);
    assert_eq!(
        c.session_token.as_ref().map(SecretString::expose),
        Some(TOKEN)
    );
    assert_eq!(
        c.expiration,
        Some(std::time::UNIX_EPOCH + Duration::from_millis(1_900_000_000_000))
    );
    // Also on a connection that serves broker requests.
    let mut raw = Client::handshake(proxy.local_addr()).await;
    raw.request(1, None, describe("alias/app")).await;
    raw.send(&Message::GetCredentials { id: 2 }).await;
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(raw.recv().await.unwrap());
    }
    assert!(got.iter().any(|m| matches!(m, Message::Credentials { id: 2, result: Ok(c) } if c.secret_access_key.expose() == SECRET)));
    assert!(got.iter().any(|m| matches!(
        m,
        Message::Response {
            id: 1,
            result: Ok(_)
        }
    )));
    proxy.shutdown_and_wait().await.unwrap();

    let text = logs.text();
    assert!(text.contains("credentials"), "no audit line:\n{text}");
    assert!(text.contains("GetCredentials"), "{text}");
    for secret in [SECRET, TOKEN, "wJalr", "IQoJ"] {
        assert!(!text.contains(secret), "{secret} logged:\n{text}");
    }
}

#[tokio::test]
async fn a_proxy_without_credentials_answers_policy_denied() {
    let proxy = start(config(&[]), None).await;
    let e = fetch_credentials(proxy.local_addr(), T).await.unwrap_err();
    assert_eq!(remote_code(&e), ErrorCode::PolicyDenied);
    assert!(!e.is_retryable());
    proxy.shutdown_and_wait().await.unwrap();
}

#[tokio::test]
async fn a_v1_client_keeps_broker_service_but_gets_no_v2_messages() {
    let (port, accepted) = echo_server().await;
    let proxy = start(
        config(&[target(&format!("127.0.0.1:{port}"))]),
        Some(credentials()),
    )
    .await;
    let addr = proxy.local_addr().clone();

    let mut c = v1_client(&addr).await;
    c.request(5, None, describe("alias/v1")).await;
    match c.recv().await {
        Some(Message::Response { id: 5, result }) => {
            assert_eq!(echoed(&result.unwrap()), "alias/v1")
        }
        other => panic!("{other:?}"),
    }
    c.send(&Message::Goodbye).await;
    assert_eq!(c.recv().await, None);

    for msg in [
        Message::OpenTunnel {
            host: "127.0.0.1".into(),
            port,
        },
        Message::GetCredentials { id: 1 },
    ] {
        let mut c = v1_client(&addr).await;
        c.send(&msg).await;
        assert_eq!(fatal_code(c.recv().await), ErrorCode::BadRequest, "{msg:?}");
        assert_eq!(c.recv().await, None, "closed after the error");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
    // The mapping names the cause for the operator.
    let e = ProtocolError::NotInVersion {
        kind: keybroker_common::protocol::MessageKind::OpenTunnel,
        version: 1,
    };
    assert_eq!(
        WireError::from(&keybroker_common::Error::Protocol(e)).code(),
        ErrorCode::BadRequest
    );
    proxy.shutdown_and_wait().await.unwrap();
}

#[tokio::test]
async fn open_tunnel_is_only_the_first_message() {
    let (port, accepted) = echo_server().await;
    let proxy = start(config(&[target(&format!("127.0.0.1:{port}"))]), None).await;
    let mut c = Client::handshake(proxy.local_addr()).await;
    c.request(1, None, describe("alias/app")).await;
    assert!(matches!(
        c.recv().await,
        Some(Message::Response { id: 1, .. })
    ));
    c.send(&Message::OpenTunnel {
        host: "127.0.0.1".into(),
        port,
    })
    .await;
    assert_eq!(fatal_code(c.recv().await), ErrorCode::BadRequest);
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
    proxy.shutdown_and_wait().await.unwrap();
}

#[tokio::test]
async fn broker_requests_and_tunnels_share_one_proxy() {
    let logs = Logs::default();
    let _guard = logs.install();
    let (port, _) = echo_server().await;
    let proxy = start(
        config(&[target(&format!("127.0.0.1:{port}"))]),
        Some(credentials()),
    )
    .await;
    let addr = proxy.local_addr().clone();

    let broker = {
        let addr = addr.clone();
        tokio::spawn(async move {
            let mut c = Client::handshake(&addr).await;
            for i in 0..20u64 {
                c.request(i, None, describe(&format!("sleep:{}", 5 * (i % 4))))
                    .await;
            }
            let mut ids = Vec::new();
            for _ in 0..20 {
                match c.recv().await {
                    Some(Message::Response { id, result: Ok(_) }) => ids.push(id),
                    other => panic!("{other:?}"),
                }
            }
            ids.sort_unstable();
            ids
        })
    };
    let tunnels: Vec<_> = (0..8u8)
        .map(|i| {
            let addr = addr.clone();
            tokio::spawn(async move {
                let mut s = open_tunnel(&addr, "127.0.0.1", port, T).await.unwrap();
                let msg = vec![i; 1000 + usize::from(i)];
                s.write_all(&msg).await.unwrap();
                let mut back = vec![0u8; msg.len()];
                s.read_exact(&mut back).await.unwrap();
                assert_eq!(back, msg);
                s.shutdown().await.unwrap();
                let mut rest = Vec::new();
                s.read_to_end(&mut rest).await.unwrap();
            })
        })
        .collect();
    let creds = fetch_credentials(&addr, T).await.unwrap();
    assert_eq!(creds.secret_access_key.expose(), SECRET);
    assert_eq!(broker.await.unwrap(), (0..20).collect::<Vec<_>>());
    for t in tunnels {
        t.await.unwrap();
    }
    let lines = logs.wait_tunnel_lines(8).await;
    assert!(
        lines.iter().all(|l| l.contains("outcome=closed")),
        "{lines:?}"
    );
    assert_eq!(
        logs.text()
            .lines()
            .filter(|l| l.contains("keybroker_proxy::audit") && l.contains(" request "))
            .count(),
        20
    );
    proxy.shutdown_and_wait().await.unwrap();
}

/// `[9, {"host": host, "port": port}]`, built by hand: the encoder refuses
/// a host like this.
fn raw_open_tunnel(host: &str, port: u16) -> Vec<u8> {
    use ciborium::Value;
    let mut body = Vec::new();
    ciborium::into_writer(
        &Value::Array(vec![
            Value::Integer(9.into()),
            Value::Map(vec![
                (Value::Text("host".into()), Value::Text(host.into())),
                (Value::Text("port".into()), Value::Integer(port.into())),
            ]),
        ]),
        &mut body,
    )
    .unwrap();
    let mut frame = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

#[tokio::test]
async fn a_host_name_cannot_forge_an_audit_line() {
    let logs = Logs::default();
    let _guard = logs.install();
    let (port, accepted) = echo_server().await;
    let proxy = start(config(&[target(&format!("127.0.0.1:{port}"))]), None).await;
    let forged = "FORGED keybroker_proxy::audit: tunnel host=\"kms\" outcome=closed";
    for host in [
        format!("127.0.0.1\n{forged}"),
        format!("127.0.0.1\r\n{forged}"),
        format!("kms\u{2028}{forged}"),
    ] {
        let mut c = Client::handshake(proxy.local_addr()).await;
        c.send_raw(&raw_open_tunnel(&host, port)).await;
        assert_eq!(fatal_code(c.recv().await), ErrorCode::BadRequest);
        assert_eq!(c.recv().await, None);
    }
    proxy.shutdown_and_wait().await.unwrap();
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
    let text = logs.text();
    assert!(
        !text.lines().any(|l| l.starts_with("FORGED")),
        "a forged line:\n{text}"
    );
    assert!(logs.tunnel_lines().is_empty(), "{text}");
}

/// The value of the sample `series` (name and labels as rendered) in a
/// scrape of `metrics`.
fn scraped(metrics: &keybroker_proxy::metrics::Metrics, series: &str) -> Option<f64> {
    let text = metrics.encode().unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn tunnels_bytes_refusals_and_credentials_are_counted() {
    let logs = Logs::default();
    let _guard = logs.install();
    let metrics = Arc::new(keybroker_proxy::metrics::Metrics::new());
    let (port, _) = echo_server().await;
    let backend = FnBackend(|req: keybroker_common::kms::KmsRequest| async move {
        Ok::<_, WireError>(described(req.key_id().unwrap_or_default()))
    });
    let proxy = Proxy::bind(config(&[target(&format!("127.0.0.1:{port}"))]), backend)
        .await
        .unwrap()
        .with_credentials(Arc::new(StaticCredentials(credentials())))
        .with_metrics(metrics.clone())
        .spawn();

    let mut s = open_tunnel(proxy.local_addr(), "127.0.0.1", port, T)
        .await
        .unwrap();
    assert_eq!(scraped(&metrics, "keybroker_proxy_tunnels_open"), Some(1.0));
    s.write_all(&[7u8; 1000]).await.unwrap();
    let mut back = [0u8; 1000];
    s.read_exact(&mut back).await.unwrap();
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.unwrap();
    // The audit line is written once the tunnel has ended.
    logs.wait_tunnel_lines(1).await;
    let bytes = "keybroker_proxy_tunnel_bytes_total";
    assert_eq!(
        scraped(&metrics, &format!("{bytes}{{direction=\"to_target\"}}")),
        Some(1000.0)
    );
    assert_eq!(
        scraped(&metrics, &format!("{bytes}{{direction=\"from_target\"}}")),
        Some(1000.0)
    );
    assert_eq!(
        scraped(&metrics, "keybroker_proxy_tunnels_opened_total"),
        Some(1.0)
    );
    assert_eq!(scraped(&metrics, "keybroker_proxy_tunnels_open"), Some(0.0));

    // A target not on the list: refused, counted by reason, never opened.
    let e = open_tunnel(proxy.local_addr(), "127.0.0.1", 9, T)
        .await
        .unwrap_err();
    assert_eq!(remote_code(&e), ErrorCode::PolicyDenied);
    assert_eq!(
        scraped(
            &metrics,
            "keybroker_proxy_denials_total{reason=\"TunnelNotAllowed\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        scraped(&metrics, "keybroker_proxy_tunnels_opened_total"),
        Some(1.0)
    );

    // The same credentials twice: one refresh.
    for _ in 0..2 {
        fetch_credentials(proxy.local_addr(), T).await.unwrap();
    }
    assert_eq!(
        scraped(
            &metrics,
            "keybroker_proxy_credential_refreshes_total{result=\"success\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        scraped(&metrics, "keybroker_proxy_connections_accepted_total"),
        Some(4.0)
    );
    let text = metrics.encode().unwrap();
    for secret in [SECRET, TOKEN, "ASIAIOSFODNN7EXAMPLE"] {
        assert!(!text.contains(secret), "{secret} in the metrics:\n{text}");
    }
    proxy.shutdown_and_wait().await.unwrap();
}
