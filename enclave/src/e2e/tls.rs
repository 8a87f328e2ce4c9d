//! TLS to the KMS endpoint: rustls with the aws-lc-rs provider, TLS 1.2 or
//! 1.3, certificate and hostname verification against the Amazon Trust
//! Services roots built into the binary.
//!
//! KMS endpoints (regional, FIPS, and interface VPC endpoints with private
//! DNS) present certificates that chain to Amazon Root CA 1-4, or to the
//! Starfield Services Root Certificate Authority - G2 cross-sign (DESIGN.md
//! "End-to-end mode facts"). The roots come from the maintained
//! `webpki-root-certs` crate (Mozilla's root program), filtered by subject to
//! exactly those five, so an update of that crate cannot widen the set.
//!
//! A development CA (the mock KMS's) is accepted only in builds with the
//! `mock-nsm` feature, through [`TrustRoots::mock_with_dev_ca_pem`]; without the
//! feature that function does not exist.

use std::sync::Arc;

use der::Decode as _;
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;

use crate::Error;

/// Subjects (RFC 4514, as `x509_cert::name::Name` displays them) of the
/// built-in trust roots.
pub const AMAZON_TRUST_ROOT_SUBJECTS: [&str; 5] = [
    "CN=Amazon Root CA 1,O=Amazon,C=US",
    "CN=Amazon Root CA 2,O=Amazon,C=US",
    "CN=Amazon Root CA 3,O=Amazon,C=US",
    "CN=Amazon Root CA 4,O=Amazon,C=US",
    "CN=Starfield Services Root Certificate Authority - G2,O=Starfield Technologies\\, Inc.,L=Scottsdale,ST=Arizona,C=US",
];

/// The subject of a DER certificate, or `None` if it does not parse.
fn subject(der: &[u8]) -> Option<String> {
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    Some(cert.tbs_certificate().subject().to_string())
}

/// The Amazon Trust Services roots from `webpki-root-certs`, in the order of
/// [`AMAZON_TRUST_ROOT_SUBJECTS`] (each at most once).
pub fn amazon_trust_roots() -> Vec<CertificateDer<'static>> {
    let all: Vec<(String, &CertificateDer<'static>)> = webpki_root_certs::TLS_SERVER_ROOT_CERTS
        .iter()
        .filter_map(|c| subject(c).map(|s| (s, c)))
        .collect();
    AMAZON_TRUST_ROOT_SUBJECTS
        .iter()
        .filter_map(|want| {
            all.iter()
                .find(|(s, _)| s == want)
                .map(|(_, c)| (*c).clone())
        })
        .collect()
}

/// The certificate authorities the enclave trusts for the KMS endpoint.
#[derive(Clone)]
pub struct TrustRoots {
    store: Arc<RootCertStore>,
    dev_ca: bool,
}

impl core::fmt::Debug for TrustRoots {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TrustRoots")
            .field("roots", &self.store.len())
            .field("dev_ca", &self.dev_ca)
            .finish()
    }
}

impl TrustRoots {
    /// The Amazon Trust Services roots only: what production builds trust.
    ///
    /// # Errors
    /// [`Error::Tls`] if a root is missing from `webpki-root-certs` or does
    /// not load (a broken dependency update; the tests check all five).
    pub fn amazon() -> Result<Self, Error> {
        let roots = amazon_trust_roots();
        if roots.len() != AMAZON_TRUST_ROOT_SUBJECTS.len() {
            return Err(Error::Tls {
                reason: format!(
                    "{} of the {} Amazon Trust Services roots found in webpki-root-certs",
                    roots.len(),
                    AMAZON_TRUST_ROOT_SUBJECTS.len()
                ),
            });
        }
        let mut store = RootCertStore::empty();
        let (added, _) = store.add_parsable_certificates(roots);
        if added != AMAZON_TRUST_ROOT_SUBJECTS.len() {
            return Err(Error::Tls {
                reason: "an Amazon Trust Services root does not load".into(),
            });
        }
        Ok(Self {
            store: Arc::new(store),
            dev_ca: false,
        })
    }

    /// DEVELOPMENT ONLY (`mock-nsm` builds): the Amazon roots plus the CA
    /// certificates in `pem` (the mock KMS's test CA).
    ///
    /// # Errors
    /// [`Error::Tls`] if `pem` holds no certificate that loads.
    #[cfg(feature = "mock-nsm")]
    pub fn mock_with_dev_ca_pem(pem: &[u8]) -> Result<Self, Error> {
        use rustls_pki_types::pem::PemObject as _;
        let mut roots = Self::amazon()?;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<_, _>>()
            .map_err(|e| Error::Tls {
                reason: format!("development CA PEM: {e}"),
            })?;
        let mut store = (*roots.store).clone();
        let (added, _) = store.add_parsable_certificates(certs);
        if added == 0 {
            return Err(Error::Tls {
                reason: "development CA PEM holds no usable certificate".into(),
            });
        }
        tracing::warn!("trusting a development CA for the KMS endpoint (mock build)");
        roots.store = Arc::new(store);
        roots.dev_ca = true;
        Ok(roots)
    }

    /// Whether a development CA was added.
    pub fn has_dev_ca(&self) -> bool {
        self.dev_ca
    }

    /// The rustls client configuration: aws-lc-rs, TLS 1.3 and 1.2, these
    /// roots with hostname verification, ALPN `http/1.1`.
    pub(crate) fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, Error> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| Error::Tls {
                reason: format!("TLS configuration: {e}"),
            })?
            .with_root_certificates(self.store.clone())
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_five_amazon_roots_are_built_in_and_nothing_else() {
        let roots = amazon_trust_roots();
        let subjects: Vec<String> = roots.iter().filter_map(|c| subject(c)).collect();
        assert_eq!(subjects, AMAZON_TRUST_ROOT_SUBJECTS);
        let t = TrustRoots::amazon().unwrap();
        assert_eq!(t.store.len(), 5);
        assert!(!t.has_dev_ca());
        assert!(t.client_config().is_ok());
    }
}
