//! The enclave's KMS settings: mode, region, endpoint and allowed keys, from
//! the image only: its command line (`--mode`, `--region`, `--kms-endpoint`,
//! `--allow-key`) or a TOML file inside it (`--config FILE`), command-line
//! values overriding the file's. None of them is read from the environment
//! or from anything the parent supplies at run time (DESIGN.md "Trust
//! model": what PCR0 measures is trusted, what arrives later is not).
//!
//! The file holds the same settings under the flags' names:
//!
//! ```toml
//! mode = "e2e"
//! region = "us-east-1"
//! # kms-endpoint = "https://kms-fips.us-east-1.amazonaws.com"
//! allow-key = [
//!     "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
//!     "arn:aws:kms:us-east-1:111122223333:alias/app",
//! ]
//! # With AWS's stock vsock-proxy on the parent instead of keybroker-proxy
//! # (see `super::vsock_proxy`): the relays to KMS and to IMDS.
//! # vsock-proxy-kms = "vsock://3:8000"
//! # vsock-proxy-imds = "vsock://3:8002"
//! ```

use std::path::Path;
use std::sync::Arc;

use keybroker_common::address::Address;
use keybroker_common::key_allowlist::KeyAllowlist;

use super::{E2eConfig, KmsUrl, Mode, ParentLink, ProxyLink, TrustRoots, VsockProxyLink};
use crate::Error;

/// Largest settings file read.
pub const MAX_CONFIG_FILE_LEN: u64 = 64 * 1024;

/// KMS settings as written on the command line or in the image's file; see
/// the [module docs](self).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct KmsSettings {
    /// `broker` or `e2e`.
    pub mode: Option<Mode>,
    /// The SigV4 region (and of the default endpoint).
    pub region: Option<String>,
    /// `https://HOST[:PORT]` instead of `https://kms.REGION.amazonaws.com`.
    pub kms_endpoint: Option<String>,
    /// Allowlist entries (key ARN, alias ARN, `arn:aws:kms:REGION:ACCOUNT:*`).
    #[serde(default, alias = "allow-keys")]
    pub allow_key: Vec<String>,
    /// E2e with the stock `vsock-proxy`: the relay to the KMS endpoint.
    pub vsock_proxy_kms: Option<String>,
    /// E2e with the stock `vsock-proxy`: the relay to IMDS (credentials).
    pub vsock_proxy_imds: Option<String>,
}

impl KmsSettings {
    /// Parses a settings file's text.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the TOML error (unknown keys too).
    pub fn from_toml(text: &str) -> Result<Self, Error> {
        toml::from_str(text).map_err(|e| Error::InvalidArgument(format!("KMS settings file: {e}")))
    }

    /// Reads and parses the settings file at `path` (at most
    /// [`MAX_CONFIG_FILE_LEN`] bytes).
    ///
    /// # Errors
    /// [`Error::Io`] reading it; [`Error::InvalidArgument`] for its content.
    pub fn load(path: &Path) -> Result<Self, Error> {
        use std::io::Read as _;
        let ctx = || format!("read {}", path.display());
        let file = std::fs::File::open(path).map_err(|e| Error::io(ctx(), e))?;
        let mut text = String::new();
        file.take(MAX_CONFIG_FILE_LEN + 1)
            .read_to_string(&mut text)
            .map_err(|e| Error::io(ctx(), e))?;
        if text.len() as u64 > MAX_CONFIG_FILE_LEN {
            return Err(Error::InvalidArgument(format!(
                "{}: larger than {MAX_CONFIG_FILE_LEN} bytes",
                path.display()
            )));
        }
        Self::from_toml(&text)
    }

    /// `self` (the command line) over `file`: each value given here wins;
    /// a non-empty `allow_key` list replaces the file's.
    #[must_use]
    pub fn over(self, file: KmsSettings) -> Self {
        Self {
            mode: self.mode.or(file.mode),
            region: self.region.or(file.region),
            kms_endpoint: self.kms_endpoint.or(file.kms_endpoint),
            allow_key: if self.allow_key.is_empty() {
                file.allow_key
            } else {
                self.allow_key
            },
            vsock_proxy_kms: self.vsock_proxy_kms.or(file.vsock_proxy_kms),
            vsock_proxy_imds: self.vsock_proxy_imds.or(file.vsock_proxy_imds),
        }
    }

    /// Whether the parent runs AWS's stock `vsock-proxy` relays instead of
    /// `keybroker-proxy` (either relay is set): then there is no proxy to
    /// ask for credentials or to send the enclave's metrics to.
    pub fn stock_vsock_proxy(&self) -> bool {
        self.vsock_proxy_kms.is_some() || self.vsock_proxy_imds.is_some()
    }

    /// How e2e mode reaches the parent: `keybroker-proxy` at `proxy`, or,
    /// when `vsock-proxy-kms` is set, two stock `vsock-proxy` relays
    /// ([`VsockProxyLink`]; `vsock-proxy-imds` is then required).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`]: an address that does not parse, one relay
    /// without the other, relays in broker mode.
    pub fn parent_link(&self, proxy: &Address) -> Result<Arc<dyn ParentLink>, Error> {
        let parse = |flag: &str, v: &Option<String>| {
            v.as_deref()
                .map(|a| {
                    a.parse::<Address>()
                        .map_err(|e| Error::InvalidArgument(format!("--{flag}: {e}")))
                })
                .transpose()
        };
        let kms = parse("vsock-proxy-kms", &self.vsock_proxy_kms)?;
        let imds = parse("vsock-proxy-imds", &self.vsock_proxy_imds)?;
        if self.stock_vsock_proxy() && self.mode() == Mode::Broker {
            return Err(Error::InvalidArgument(
                "--vsock-proxy-kms and --vsock-proxy-imds are for e2e mode".into(),
            ));
        }
        match (kms, imds) {
            (None, None) => Ok(Arc::new(ProxyLink::new(proxy.clone()))),
            (Some(kms), Some(imds)) => Ok(Arc::new(VsockProxyLink::new(kms, imds))),
            _ => Err(Error::InvalidArgument(
                "--vsock-proxy-kms and --vsock-proxy-imds go together (the stock \
                 vsock-proxy relays no credentials: they come from IMDS)"
                    .into(),
            )),
        }
    }

    /// The mode: the one set, else e2e.
    pub fn mode(&self) -> Mode {
        self.mode.unwrap_or_default()
    }

    /// The end-to-end configuration these settings describe, trusting
    /// `trust`. The region is `region`, else the one in an AWS endpoint name
    /// (`kms[-fips].REGION.amazonaws.com`).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`]: no region, an invalid endpoint, an
    /// allowlist entry that does not parse, no allowed key.
    pub fn e2e_config(&self, trust: TrustRoots) -> Result<E2eConfig, Error> {
        let endpoint = self
            .kms_endpoint
            .as_deref()
            .map(KmsUrl::parse)
            .transpose()?;
        let region = match (&self.region, &endpoint) {
            (Some(r), _) => r.clone(),
            (None, Some(e)) => e.aws_region().map(str::to_owned).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "--region is needed with --kms-endpoint {e} (not an AWS KMS endpoint name)"
                ))
            })?,
            (None, None) => {
                return Err(Error::InvalidArgument("e2e mode needs --region".into()));
            }
        };
        let allowlist = KeyAllowlist::parse(&self.allow_key)
            .map_err(|e| Error::InvalidArgument(format!("--allow-key: {e}")))?;
        let mut config = E2eConfig::new(&region, allowlist)?.with_trust(trust);
        if let Some(e) = endpoint {
            config = config.with_endpoint(e);
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";

    #[test]
    fn file_settings_parse_and_the_command_line_overrides_them() {
        let file = KmsSettings::from_toml(&format!(
            "mode = \"e2e\"\nregion = \"eu-west-1\"\nallow-key = [\"{KEY}\"]\n"
        ))
        .unwrap();
        assert_eq!(file.mode, Some(Mode::E2e));
        assert_eq!(file.allow_key, [KEY]);
        let cli = KmsSettings {
            region: Some("us-east-1".into()),
            ..Default::default()
        };
        let merged = cli.over(file.clone());
        assert_eq!(merged.mode(), Mode::E2e);
        assert_eq!(merged.region.as_deref(), Some("us-east-1"));
        assert_eq!(merged.allow_key, [KEY]);
        let other = "arn:aws:kms:us-east-1:111122223333:alias/x".to_owned();
        let cli = KmsSettings {
            allow_key: vec![other.clone()],
            ..Default::default()
        };
        assert_eq!(cli.over(file).allow_key, [other]);
        assert_eq!(KmsSettings::default().mode(), Mode::E2e);
    }

    #[test]
    fn the_shipped_e2e_settings_file_parses_to_a_usable_configuration() {
        let text = include_str!("../../../deploy/enclave-e2e.toml");
        let s = KmsSettings::from_toml(text).unwrap();
        assert_eq!(s.mode(), Mode::E2e);
        let c = s.e2e_config(TrustRoots::amazon().unwrap()).unwrap();
        assert_eq!(
            c.endpoint.to_string(),
            "https://kms.us-east-1.amazonaws.com"
        );
        assert!(c.allowlist.resolve("alias/keybroker").is_ok());
        // The commented-out relays, switched on, make a vsock-proxy link.
        let on = text.replace("# vsock-proxy-", "vsock-proxy-");
        let s = KmsSettings::from_toml(&on).unwrap();
        let link = format!(
            "{:?}",
            s.parent_link(&"vsock://3:5000".parse().unwrap()).unwrap()
        );
        assert!(link.contains("VsockProxyLink"), "{link}");
    }

    #[test]
    fn stock_vsock_proxy_relays_come_in_pairs_and_only_in_e2e_mode() {
        let proxy: Address = "vsock://3:5000".parse().unwrap();
        let file = KmsSettings::from_toml(
            "vsock-proxy-kms = \"vsock://3:8000\"\nvsock-proxy-imds = \"vsock://3:8002\"\n",
        )
        .unwrap();
        let link = format!("{:?}", file.parent_link(&proxy).unwrap());
        assert!(link.contains("VsockProxyLink"), "{link}");
        assert!(link.contains("8002"), "{link}");
        let plain = format!("{:?}", KmsSettings::default().parent_link(&proxy).unwrap());
        assert!(
            plain.contains("ProxyLink") && plain.contains("5000"),
            "{plain}"
        );
        let half = KmsSettings {
            vsock_proxy_imds: None,
            ..file.clone()
        };
        assert!(half.parent_link(&proxy).is_err());
        let broker = KmsSettings {
            mode: Some(Mode::Broker),
            ..file.clone()
        };
        assert!(broker.parent_link(&proxy).is_err());
        let bad = KmsSettings {
            vsock_proxy_kms: Some("kms.us-east-1.amazonaws.com:443".into()),
            ..file
        };
        assert!(bad.parent_link(&proxy).is_err());
    }

    #[test]
    fn bad_files_are_refused() {
        for bad in [
            "mode = \"tunnel\"",
            "regoin = \"us-east-1\"",
            "allow-key = \"not a list\"",
            "[mode]",
        ] {
            assert!(KmsSettings::from_toml(bad).is_err(), "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.toml");
        std::fs::write(&big, "#".repeat(100_000)).unwrap();
        assert!(KmsSettings::load(&big).is_err());
        assert!(KmsSettings::load(&dir.path().join("missing.toml")).is_err());
    }

    #[test]
    fn e2e_config_needs_a_region_and_keys_and_derives_the_endpoint() {
        let trust = TrustRoots::amazon().unwrap();
        let s = KmsSettings {
            mode: Some(Mode::E2e),
            region: Some("us-east-1".into()),
            allow_key: vec![KEY.into()],
            ..Default::default()
        };
        let c = s.e2e_config(trust.clone()).unwrap();
        assert_eq!(
            c.endpoint.to_string(),
            "https://kms.us-east-1.amazonaws.com"
        );
        assert_eq!(c.region, "us-east-1");

        let fips = KmsSettings {
            region: None,
            kms_endpoint: Some("https://kms-fips.us-east-2.amazonaws.com".into()),
            ..s.clone()
        };
        assert_eq!(fips.e2e_config(trust.clone()).unwrap().region, "us-east-2");

        let vpce = KmsSettings {
            region: None,
            kms_endpoint: Some("https://vpce-1.kms.us-east-1.vpce.amazonaws.com".into()),
            ..s.clone()
        };
        assert!(vpce.e2e_config(trust.clone()).is_err(), "region needed");
        let none = KmsSettings {
            allow_key: vec![],
            ..s.clone()
        };
        assert!(none.e2e_config(trust.clone()).is_err(), "no allowed key");
        let bad = KmsSettings {
            allow_key: vec!["alias/app".into()],
            ..s
        };
        assert!(
            bad.e2e_config(trust).is_err(),
            "short alias is not an entry"
        );
    }
}
