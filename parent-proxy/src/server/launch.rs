//! `serve`'s start-up: the AWS configuration (region, credentials), the
//! KMS backend, the signal handlers, binding (and the metrics listener,
//! `metrics: URL`), `listening: ADDRESS` on standard output, then serving
//! until SIGINT or SIGTERM, reloading the configuration on SIGHUP.

use std::io::Write;
use std::sync::Arc;

use aws_config::Region;
use tokio::signal::unix::{Signal, SignalKind, signal};

use super::{Proxy, Reloader, shutdown_signal};
use crate::admission::AdmissionPolicy;
use crate::backend::{SdkKmsBackend, load_sdk_config};
use crate::credentials::AwsConfigCredentials;
use crate::error::Result;
use crate::metrics::http::MetricsServer;
use crate::metrics::ready::{Readiness, ReadinessConfig, Upstream};
use crate::settings::{KmsSettings, ServeSettings};
use crate::tunnel::{TunnelSettings, TunnelTarget};

/// How `serve` reads its settings again on SIGHUP: the same file and flags
/// as at start ([`ServeSettings::resolve`]).
pub type ReloadSettings = Arc<dyn Fn() -> Result<ServeSettings> + Send + Sync>;

/// Runs the proxy with `settings` until SIGINT/SIGTERM, printing
/// `listening: ADDRESS` on `stdout` once bound (the launcher and tests read
/// the real address from there), after `metrics: http://ADDRESS/metrics`
/// when the metrics listener is on. Installs the log subscriber first.
///
/// On SIGHUP it calls `reload` and serves with the result from the next
/// request on ([`Reloader::reload`]: the admission policy, allowlists,
/// allowed images, tunnel targets and limits). Settings that are invalid are
/// logged and the current ones kept. The listening address, `[kms]`, the
/// log format, `[credentials]` and the metrics listener need a restart.
pub fn serve_until_signal(
    settings: ServeSettings,
    reload: ReloadSettings,
    stdout: &mut dyn Write,
) -> Result<()> {
    // A subscriber may already be installed (tests calling `run` twice).
    let _ = crate::audit::init_logging(settings.log_format);
    log_allowed_images(&settings.proxy.admission);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let ServeSettings {
        mut proxy,
        kms,
        credentials,
        metrics_listen,
        ready_requires_enclave,
        ..
    } = settings;
    let bound = runtime.block_on(async {
        let sdk_config = load_sdk_config(&kms).await;
        let region = sdk_config.region().cloned();
        add_region_kms_target(&mut proxy.tunnels, region.as_ref());
        let backend = SdkKmsBackend::from_sdk_config(&sdk_config);
        let stop = shutdown_signal()?;
        let hangup = signal(SignalKind::hangup())?;
        let upstreams = upstreams(&kms, region.as_ref(), &proxy.tunnels);
        let mut proxy = Proxy::bind(proxy, backend).await?;
        let (metrics, readiness) = match metrics_listen {
            None => (None, None),
            Some(addr) => {
                let readiness = Arc::new(Readiness::new(
                    ReadinessConfig {
                        requires_enclave: ready_requires_enclave,
                        ..ReadinessConfig::new(upstreams)
                    },
                    proxy.metrics(),
                ));
                let server = MetricsServer::bind(addr, proxy.metrics(), readiness.clone()).await?;
                (Some(server), Some(readiness))
            }
        };
        if credentials {
            match AwsConfigCredentials::from_sdk_config(&sdk_config) {
                Some(source) => proxy = proxy.with_credentials(Arc::new(source)),
                None => tracing::warn!("no AWS credential provider: GetCredentials is refused"),
            }
        }
        let reloading = Reloading {
            reloader: proxy.reloader(),
            reload,
            kms,
            region,
            readiness,
        };
        Ok::<_, crate::Error>((proxy, metrics, stop, hangup, reloading))
    });
    let (proxy, metrics, stop, hangup, reloading) =
        bound.inspect_err(|e| tracing::error!(error = %e, "cannot start"))?;
    if let Some(server) = metrics {
        writeln!(stdout, "metrics: http://{}/metrics", server.local_addr())?;
        // Ends with the runtime, once the proxy has stopped.
        runtime.spawn(server.run());
    }
    runtime.spawn(reloading.on_hangup(hangup));
    writeln!(stdout, "listening: {}", proxy.local_addr())?;
    stdout.flush()?;
    runtime
        .block_on(proxy.run_until(stop))
        .inspect_err(|e| tracing::error!(error = %e, "server failed"))
}

/// Allows tunnels to the KMS endpoint of the region the proxy runs in (from
/// `--region`, `[kms] region` or the AWS chain), if it knows one.
fn add_region_kms_target(tunnels: &mut TunnelSettings, region: Option<&Region>) {
    let Some(region) = region else {
        tracing::warn!("no AWS region: no default tunnel target (add one with --tunnel)");
        return;
    };
    match TunnelTarget::region_kms(region.as_ref()) {
        Some(target) => {
            tunnels.allowed.insert(target);
        }
        None => {
            tracing::warn!(region = ?region.as_ref(), "the AWS region is not a plausible region name: no default tunnel target")
        }
    }
}

/// What `/readyz` connects to: the KMS endpoint broker mode calls
/// (`--kms-endpoint`, else the region's), then every tunnel target (end-to-end
/// mode), without repeats.
fn upstreams(
    kms: &KmsSettings,
    region: Option<&Region>,
    tunnels: &TunnelSettings,
) -> Vec<Upstream> {
    let mut upstreams = Vec::new();
    match &kms.endpoint {
        Some(endpoint) => match Upstream::from_url(endpoint) {
            Some(upstream) => upstreams.push(upstream),
            None => {
                tracing::warn!("the KMS endpoint is not an http(s) URL: /readyz does not check it")
            }
        },
        None => {
            if let Some(target) = region.and_then(|r| TunnelTarget::region_kms(r.as_ref())) {
                upstreams.push(Upstream::new(target.host(), target.port()));
            }
        }
    }
    for target in &tunnels.allowed {
        let upstream = Upstream::new(target.host(), target.port());
        if !upstreams.contains(&upstream) {
            upstreams.push(upstream);
        }
    }
    upstreams
}

/// What a reload needs: how to read the settings again, what of the start
/// stays (the KMS settings, the region), and what follows the new settings
/// (the proxy, the readiness check's upstreams).
struct Reloading {
    reloader: Reloader,
    reload: ReloadSettings,
    kms: KmsSettings,
    region: Option<Region>,
    readiness: Option<Arc<Readiness>>,
}

impl Reloading {
    /// Reloads on every SIGHUP until the runtime stops (see
    /// [`serve_until_signal`]).
    async fn on_hangup(self, mut hangup: Signal) {
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP received: reloading the configuration");
            self.reload_once().await;
        }
    }

    async fn reload_once(&self) {
        let reload = self.reload.clone();
        // Reads files: off the async workers.
        let settings = tokio::task::spawn_blocking(move || reload())
            .await
            .map_err(|e| crate::Error::Task(e.to_string()))
            .and_then(|settings| settings);
        let settings = match settings {
            Ok(settings) => settings,
            Err(e) => {
                tracing::error!(error = %e, "configuration reload failed; keeping the current configuration");
                return;
            }
        };
        let mut proxy = settings.proxy;
        add_region_kms_target(&mut proxy.tunnels, self.region.as_ref());
        log_allowed_images(&proxy.admission);
        if let Some(readiness) = &self.readiness {
            let upstreams = upstreams(&self.kms, self.region.as_ref(), &proxy.tunnels);
            readiness.set_upstreams(upstreams).await;
        }
        self.reloader.reload(proxy);
        tracing::info!("configuration reloaded");
    }
}

/// Logs, at start and on reload, which enclave images the proxy admits (one line per
/// image, with its full PCR values), so that the journal shows what a
/// `denied:PcrMismatch` was checked against.
fn log_allowed_images(policy: &AdmissionPolicy) {
    if policy.allowed_images.is_empty() {
        tracing::warn!(
            "no allowed enclave images: the proxy does not check attestation documents \
             (the KMS key policy alone decides)"
        );
    }
    for image in &policy.allowed_images {
        let pcrs: Vec<String> = image
            .pcrs()
            .iter()
            .map(|(index, value)| format!("PCR{index}={}", hex::encode(value)))
            .collect();
        tracing::info!(
            image = %image.label(),
            pcrs = %pcrs.join(" "),
            "admitting enclave image"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_region_adds_its_kms_endpoint_as_a_tunnel_target() {
        let mut tunnels = TunnelSettings::default();
        add_region_kms_target(&mut tunnels, None);
        assert!(tunnels.allowed.is_empty(), "no region, no default target");
        add_region_kms_target(&mut tunnels, Some(&Region::new("eu-west-1")));
        assert!(tunnels.allows("kms.eu-west-1.amazonaws.com", 443));
        assert_eq!(tunnels.allowed.len(), 1);
        add_region_kms_target(&mut tunnels, Some(&Region::new("eu-west-1.evil.example")));
        assert_eq!(tunnels.allowed.len(), 1);
    }

    #[test]
    fn readiness_checks_the_kms_endpoint_and_the_tunnel_targets() {
        let eu = Some(Region::new("eu-west-1"));
        let eu = eu.as_ref();
        let mut tunnels = TunnelSettings::default();
        add_region_kms_target(&mut tunnels, eu);
        tunnels
            .allowed
            .insert("kms-fips.eu-west-1.amazonaws.com:443".parse().unwrap());
        let names = |u: Vec<Upstream>| u.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(
            names(upstreams(&KmsSettings::default(), eu, &tunnels)),
            [
                "kms.eu-west-1.amazonaws.com:443",
                "kms-fips.eu-west-1.amazonaws.com:443"
            ]
        );
        let mock = KmsSettings {
            endpoint: Some("http://127.0.0.1:4566".into()),
            ..KmsSettings::default()
        };
        assert_eq!(
            names(upstreams(&mock, eu, &TunnelSettings::default())),
            ["127.0.0.1:4566"]
        );
        assert!(upstreams(&KmsSettings::default(), None, &TunnelSettings::default()).is_empty());
    }
}
