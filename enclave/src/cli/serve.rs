//! `serve`: the KMS endpoint ([`crate::endpoint`]) until SIGINT or SIGTERM.

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::args::ServeArgs;
use super::connect::{new_client, open_nsm};
use crate::endpoint::KmsEndpoint;
use crate::endpoint::server::termination_signal;
use crate::nsm::Nsm;
use crate::telemetry::{NsmTimings, Reporter, TimedNsm};
use crate::{Client, Error, RecipientKeys, RecipientKeysConfig};

/// How long the report at shutdown may take.
const LAST_REPORT_WITHIN: Duration = Duration::from_secs(2);

/// `serve`: the KMS endpoint until SIGINT/SIGTERM. Prints one
/// `listening: URL` line per listener on stdout once it accepts.
///
/// Start-up follows what a Nitro Enclave gives the program (DESIGN.md, "How
/// an enclave starts"): it runs as root with a fresh tmpfs on `/run` and
/// `lo` down, and when it exits the enclave is gone. So, in this order:
/// 1. the NSM and the first recipient key pair, the NSM opened while the
///    key is being generated (a missing NSM is fatal: exit code 4); the
///    spare pair follows in the background;
/// 2. the connection to the parent proxy starts in the background and is
///    retried with backoff for as long as it takes; until it is up, requests
///    wait within their deadline and then get `DependencyTimeoutException`
///    (503, which SDKs retry). Readiness is logged;
/// 3. while still root: `lo` is brought up when a TCP listener is on a
///    loopback address ([`crate::loopback`]), the Unix socket's directory
///    is created (owned by `--user`) when it does not exist, the listeners
///    are bound and the socket given to `--user`;
/// 4. privileges are dropped, then requests are served
///    ([`crate::endpoint::server`] does 3, 4 and the serving);
/// 5. every `--metrics-interval-ms`, and once more at shutdown, the
///    enclave's counters go to the proxy ([`crate::telemetry`]), unless the
///    parent runs the stock vsock-proxy (which has nowhere to put them).
///
/// # Errors
/// NSM and binding failures; a non-loopback address without
/// `allow_non_loopback`.
pub async fn serve(args: &ServeArgs) -> Result<(), Error> {
    let listen = match (args.listen, &args.unix) {
        (None, None) => Some(std::net::SocketAddr::from(([127, 0, 0, 1], 8000))),
        (listen, _) => listen,
    };
    let mock_ca = args.broker.nsm.mock_nsm_ca.clone();
    let timings = Arc::new(NsmTimings::default());
    let open = {
        let timings = timings.clone();
        move || {
            let (nsm, _) = open_nsm(mock_ca.as_ref())?;
            Ok::<Arc<dyn Nsm>, Error>(Arc::new(TimedNsm::new(nsm, timings)))
        }
    };
    let keys = RecipientKeys::open(open, RecipientKeysConfig::default()).await?;
    let settings = args.broker.kms_settings()?;
    let client = new_client(&args.broker, &settings, keys)?;
    let readiness = tokio::spawn(log_readiness(client.clone()));
    let endpoint = KmsEndpoint::new(client.clone());
    let reporter = match args.metrics_interval_ms {
        0 => None,
        _ if settings.stock_vsock_proxy() => None,
        ms => Some(
            Reporter::new(client)?
                .nsm(timings)
                .endpoint(endpoint.stats())
                .interval(Duration::from_millis(ms)),
        ),
    };
    let reporting = reporter.clone().map(Reporter::spawn);
    let mut builder = endpoint
        .server()
        .allow_non_loopback(args.allow_non_loopback)
        .loopback_up(true)
        .run_as(args.user);
    if let Some(addr) = listen {
        builder = builder.tcp(addr);
    }
    if let Some(path) = &args.unix {
        builder = builder.unix(path);
    }
    let server = builder.bind().await?;
    if let Some(local) = server.local_addr()? {
        println!("listening: http://{local}");
    }
    if let Some(path) = server.unix_path() {
        println!("listening: unix://{}", path.display());
    }
    let _ = std::io::stdout().flush();
    let result = server.run_until(termination_signal()?).await;
    readiness.abort();
    drop(reporting);
    if let Some(reporter) = reporter {
        // The counts since the last report: best effort, and briefly (the
        // proxy may be going away too).
        match tokio::time::timeout(LAST_REPORT_WITHIN, reporter.send()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "last enclave metrics report failed"),
            Err(_) => tracing::debug!("last enclave metrics report timed out"),
        }
    }
    result
}

/// Logs once when the proxy connection is first up, and a warning while it
/// is not: first after one connection attempt's time limit, then at doubling
/// intervals, at most every 5 minutes.
async fn log_readiness(client: Client) {
    let proxy = client.config().address.clone();
    // First report after one connection attempt's time limit.
    let mut wait = client.config().connect_timeout;
    let started = Instant::now();
    loop {
        match client.wait_connected(wait).await {
            Ok(()) => {
                tracing::info!(%proxy, after_ms = started.elapsed().as_millis(), "ready: connected to the parent proxy");
                return;
            }
            Err(e) => {
                tracing::warn!(%proxy, waited_s = started.elapsed().as_secs(), error = %e, "not ready: the parent proxy is not reachable yet; retrying, requests get DependencyTimeoutException until it is");
                wait = (wait * 2).min(Duration::from_secs(300));
            }
        }
    }
}
