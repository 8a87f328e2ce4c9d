//! HTTPS for the mock KMS, under a **test CA** it makes itself.
//!
//! [`MockKmsTls::load_or_create`] keeps a test CA in a directory and issues
//! a fresh server certificate under it at every start:
//!
//! | file | what |
//! | --- | --- |
//! | `ca.pem` | the test CA's root certificate: what a client trusts (`boto3 verify=`, the enclave's development CA, `aws-smithy-http-client`'s trust store) |
//! | `ca-key.pem` | the CA's private key (mode 0600): whoever has it can impersonate any name to a client that trusts `ca.pem` |
//! | `server.pem`, `server-key.pem` | the server certificate of this run and its key (0600) |
//!
//! The CA is reused while it is valid (its key matches, it parses, it is
//! valid for at least another day), so a client configured with `ca.pem` keeps
//! working across restarts; otherwise it is replaced. The server certificate
//! names `localhost`, `127.0.0.1` and the extra DNS names asked for (e.g.
//! `kms.us-east-1.amazonaws.com`, so that a client that connects to the real
//! KMS host name through a tunnel verifies it as it would verify AWS's). Its
//! chain is checked with the same verifier rustls clients use before it is
//! served.
//!
//! Never trust `ca.pem` outside development: its subject says so
//! ([`MOCK_CA_COMMON_NAME`]).
//!
//! The listener ([`TlsListener`]) does the TLS handshakes (rustls with the
//! AWS-LC provider, TLS 1.2 and 1.3, ALPN `http/1.1`) off the accept loop,
//! each bounded by [`HANDSHAKE_TIMEOUT`], at most [`MAX_PENDING_HANDSHAKES`] at
//! once, and hands finished streams to axum.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use time::OffsetDateTime;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;

use crate::Error;

/// The start of the test CA's common name, which ends in a tag of the CA's
/// public key (so that two test CAs never share a subject, which would make
/// a client that trusts one of them report the other's certificates as
/// badly signed rather than unknown). Its organisation adds "never trust in
/// production".
pub const MOCK_CA_COMMON_NAME: &str = "Keybroker mock KMS test CA";
const MOCK_CA_ORGANIZATION: &str = "Keybroker development only - never trust in production";

/// The CA's root certificate file in the TLS directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA's private key file.
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// This run's server certificate.
pub const SERVER_CERT_FILE: &str = "server.pem";
/// This run's server key.
pub const SERVER_KEY_FILE: &str = "server-key.pem";

/// Names every server certificate carries.
const DEFAULT_NAMES: [&str; 2] = ["localhost", "127.0.0.1"];
/// Validity of a new test CA.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Validity of a server certificate (issued anew at every start).
const SERVER_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Certificates start this long ago (clients with a slow clock).
const BACKDATE: Duration = Duration::from_secs(24 * 3600);
/// A CA that expires sooner than this is replaced.
const MIN_REMAINING_CA_VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// Longest TLS handshake the listener waits for.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most handshakes in progress at once; accepting waits beyond that.
pub const MAX_PENDING_HANDSHAKES: usize = 256;

/// The mock KMS's TLS material: the test CA (certificate only; its key stays
/// in the directory) and this run's server certificate, ready to serve.
///
/// Put it in [`super::MockKmsConfig::tls`] to serve HTTPS.
#[derive(Clone)]
pub struct MockKmsTls {
    dir: PathBuf,
    ca_pem: String,
    names: Vec<String>,
    server_config: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for MockKmsTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockKmsTls")
            .field("dir", &self.dir)
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

fn rcgen_error(what: &str) -> impl Fn(rcgen::Error) -> Error + '_ {
    move |e| Error::Config(format!("mock KMS TLS: {what}: {e}"))
}

fn io_error(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::Io(format!("mock KMS TLS: {what}: {e}"))
}

/// The CA's parameters: a function of its key, so that a CA loaded from
/// its key file can issue certificates again.
fn ca_params(key: &KeyPair) -> CertificateParams {
    let tag = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key.public_key_raw());
    let tag = hex::encode(tag.as_ref().get(..4).unwrap_or_default());
    let mut p = CertificateParams::default();
    p.distinguished_name
        .push(DnType::CommonName, format!("{MOCK_CA_COMMON_NAME} {tag}"));
    p.distinguished_name
        .push(DnType::OrganizationName, MOCK_CA_ORGANIZATION);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p
}

impl MockKmsTls {
    /// Loads the test CA in `dir` (creating `dir` and the CA if absent, or
    /// replacing a CA that is not valid), issues a server certificate for
    /// `localhost`, `127.0.0.1` and `extra_names` (DNS names or IP
    /// addresses), writes it to `server.pem` / `server-key.pem`, and checks
    /// that it verifies under `ca.pem` for every name.
    ///
    /// # Errors
    /// [`Error::Io`] for file system failures; [`Error::Config`] for a name
    /// that cannot be put in a certificate.
    pub fn load_or_create(dir: &Path, extra_names: &[String]) -> Result<Self, Error> {
        std::fs::create_dir_all(dir).map_err(io_error(format!("create {}", dir.display())))?;
        let mut names: Vec<String> = DEFAULT_NAMES.iter().map(|n| (*n).to_owned()).collect();
        for n in extra_names {
            let n = n.trim().to_owned();
            // Checked before the CA is touched: a bad name must not look
            // like a bad CA (which would be replaced).
            let bare = n.strip_prefix("*.").unwrap_or(&n);
            if ServerName::try_from(bare).is_err() {
                return Err(Error::Config(format!(
                    "mock KMS TLS: `{n}` is not a DNS name or IP address"
                )));
            }
            if !names.contains(&n) {
                names.push(n);
            }
        }

        let loaded = match load_ca(dir) {
            Ok(Some(ca)) => Some(ca),
            Ok(None) => None,
            Err(why) => {
                tracing::warn!(dir = %dir.display(), "replacing the mock KMS test CA: {why}");
                remove_ca(dir)?;
                None
            }
        };
        let issued = match loaded {
            Some((ca_der, ca_key)) => {
                match issue_and_check(ca_der, ca_key, &names) {
                    Ok(issued) => Some(issued),
                    // A CA another program (or version) left behind, with
                    // another subject than ours for its key.
                    Err(e) => {
                        tracing::warn!(dir = %dir.display(), "replacing the mock KMS test CA: {e}");
                        remove_ca(dir)?;
                        None
                    }
                }
            }
            None => None,
        };
        let (ca_der, server_der, server_key) = match issued {
            Some(issued) => issued,
            None => {
                let (ca_der, ca_key) = create_ca(dir)?;
                issue_and_check(ca_der, ca_key, &names)?
            }
        };
        let server_cert = CertificateDer::from(server_der);
        write_atomic(
            &dir.join(SERVER_CERT_FILE),
            keybroker_common::pem::encode(keybroker_common::pem::CERTIFICATE, &server_cert)
                .as_bytes(),
            false,
        )?;
        write_atomic(
            &dir.join(SERVER_KEY_FILE),
            server_key.serialize_pem().as_bytes(),
            true,
        )?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));
        let mut server_config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .and_then(|b| {
                b.with_no_client_auth()
                    .with_single_cert(vec![server_cert], key)
            })
            .map_err(|e| Error::Config(format!("mock KMS TLS: server config: {e}")))?;
        server_config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            dir: dir.to_path_buf(),
            ca_pem: keybroker_common::pem::encode(keybroker_common::pem::CERTIFICATE, &ca_der),
            names,
            server_config: Arc::new(server_config),
        })
    }

    /// `DIR/ca.pem`: the test CA's root certificate, what clients trust.
    pub fn ca_pem_path(&self) -> PathBuf {
        self.dir.join(CA_CERT_FILE)
    }

    /// The test CA's root certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// `DIR/server.pem`: this run's server certificate.
    pub fn server_cert_path(&self) -> PathBuf {
        self.dir.join(SERVER_CERT_FILE)
    }

    /// The TLS directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The names the server certificate is valid for.
    pub fn server_names(&self) -> &[String] {
        &self.names
    }

    pub(crate) fn server_config(&self) -> Arc<rustls::ServerConfig> {
        Arc::clone(&self.server_config)
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// `Ok(None)`: no CA yet. `Err(why)`: a CA that must be replaced.
fn load_ca(dir: &Path) -> Result<Option<(Vec<u8>, KeyPair)>, String> {
    let key_path = dir.join(CA_KEY_FILE);
    let cert_path = dir.join(CA_CERT_FILE);
    let key_pem = match std::fs::read_to_string(&key_path) {
        Ok(k) => k,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {CA_KEY_FILE}: {e}")),
    };
    // The key is published first (see `create_ca`): wait a little for a
    // certificate another process is renaming into place right now.
    let mut tries = 0;
    let cert_pem = loop {
        match std::fs::read(&cert_path) {
            Ok(c) => break c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && tries < 40 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(format!("cannot read {CA_CERT_FILE}: {e}")),
        }
    };
    let key = KeyPair::from_pem(&key_pem).map_err(|e| format!("{CA_KEY_FILE}: {e}"))?;
    let der = CertificateDer::from_pem_slice(&cert_pem)
        .map_err(|e| format!("{CA_CERT_FILE}: {e}"))?
        .to_vec();
    use x509_cert::der::Decode as _;
    let cert =
        x509_cert::Certificate::from_der(&der).map_err(|e| format!("{CA_CERT_FILE}: {e}"))?;
    let tbs = cert.tbs_certificate();
    if tbs.subject_public_key_info().subject_public_key.as_bytes() != Some(key.public_key_raw()) {
        return Err(format!("{CA_KEY_FILE} does not match {CA_CERT_FILE}"));
    }
    let not_after = tbs.validity().not_after.to_system_time();
    if not_after < SystemTime::now() + MIN_REMAINING_CA_VALIDITY {
        return Err(format!(
            "{CA_CERT_FILE} expires (or expired) on {not_after:?}"
        ));
    }
    Ok(Some((der, key)))
}

fn remove_ca(dir: &Path) -> Result<(), Error> {
    for f in [CA_KEY_FILE, CA_CERT_FILE] {
        match std::fs::remove_file(dir.join(f)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(format!("remove {f}"))(e)),
        }
    }
    Ok(())
}

/// Makes a CA and publishes it: the key is hard-linked into place (fails
/// if another process got there first, whose CA is then loaded), the
/// certificate renamed in after it.
fn create_ca(dir: &Path) -> Result<(Vec<u8>, KeyPair), Error> {
    let key = KeyPair::generate().map_err(rcgen_error("CA key"))?;
    let now = OffsetDateTime::now_utc();
    let mut params = ca_params(&key);
    params.not_before = now - BACKDATE;
    params.not_after = now + CA_VALIDITY;
    let cert = params.self_signed(&key).map_err(rcgen_error("CA"))?;
    let tag = unique_suffix();
    let tmp_key = dir.join(format!(".{CA_KEY_FILE}.{tag}"));
    let tmp_cert = dir.join(format!(".{CA_CERT_FILE}.{tag}"));
    write_file(&tmp_key, key.serialize_pem().as_bytes(), true)?;
    write_file(&tmp_cert, cert.pem().as_bytes(), false)?;
    let linked = std::fs::hard_link(&tmp_key, dir.join(CA_KEY_FILE));
    let _ = std::fs::remove_file(&tmp_key);
    match linked {
        Ok(()) => {
            std::fs::rename(&tmp_cert, dir.join(CA_CERT_FILE))
                .map_err(io_error(format!("publish {CA_CERT_FILE}")))?;
            tracing::info!(dir = %dir.display(), "created a mock KMS test CA");
            Ok((cert.der().to_vec(), key))
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp_cert);
            if e.kind() != std::io::ErrorKind::AlreadyExists {
                return Err(io_error(format!("publish {CA_KEY_FILE}"))(e));
            }
            match load_ca(dir) {
                Ok(Some(ca)) => Ok(ca),
                Ok(None) => Err(Error::Io(format!(
                    "mock KMS TLS: {CA_KEY_FILE} in {} vanished",
                    dir.display()
                ))),
                Err(why) => Err(Error::Config(format!(
                    "mock KMS TLS: the CA another process wrote in {} is not valid: {why}",
                    dir.display()
                ))),
            }
        }
    }
}

/// A server certificate for `names` under the CA, verified under it.
fn issue_and_check(
    ca_der: Vec<u8>,
    ca_key: KeyPair,
    names: &[String],
) -> Result<(Vec<u8>, Vec<u8>, KeyPair), Error> {
    let issuer = Issuer::new(ca_params(&ca_key), ca_key);
    let (server_der, server_key) = issue_server_cert(&issuer, names)?;
    check_chain(&ca_der, &server_der, names)?;
    Ok((ca_der, server_der, server_key))
}

fn issue_server_cert(
    issuer: &Issuer<'_, KeyPair>,
    names: &[String],
) -> Result<(Vec<u8>, KeyPair), Error> {
    let key = KeyPair::generate().map_err(rcgen_error("server key"))?;
    let mut params = CertificateParams::new(names.to_vec()).map_err(rcgen_error("server names"))?;
    params
        .distinguished_name
        .push(DnType::CommonName, "keybroker-mock-kms");
    params
        .distinguished_name
        .push(DnType::OrganizationName, MOCK_CA_ORGANIZATION);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + SERVER_VALIDITY;
    let cert = params
        .signed_by(&key, issuer)
        .map_err(rcgen_error("server certificate"))?;
    Ok((cert.der().to_vec(), key))
}

/// Verifies `server_der` under `ca_der` for every name, as a rustls client
/// would (wildcard names are skipped: they are not server names).
fn check_chain(ca_der: &[u8], server_der: &[u8], names: &[String]) -> Result<(), Error> {
    use rustls::client::danger::ServerCertVerifier as _;
    let fail = |e: String| Error::Config(format!("mock KMS TLS: certificate check: {e}"));
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca_der.to_vec()))
        .map_err(|e| fail(e.to_string()))?;
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| fail(e.to_string()))?;
    let leaf = CertificateDer::from(server_der.to_vec());
    for name in names.iter().filter(|n| !n.starts_with("*.")) {
        let server_name =
            ServerName::try_from(name.as_str()).map_err(|e| fail(format!("{name}: {e}")))?;
        verifier
            .verify_server_cert(&leaf, &[], &server_name, &[], UnixTime::now())
            .map_err(|e| fail(format!("{name}: {e}")))?;
    }
    Ok(())
}

fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{}.{}.{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn write_file(path: &Path, bytes: &[u8], private: bool) -> Result<(), Error> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .map_err(io_error(format!("create {}", path.display())))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io_error(format!("write {}", path.display())))
}

/// Writes a temporary file beside `path` and renames it over `path`.
fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> Result<(), Error> {
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(".{name}.{}", unique_suffix()));
    write_file(&tmp, bytes, private)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io_error(format!("rename into {}", path.display()))(e)
    })
}

/// A TCP listener whose accepted connections come out TLS-terminated.
///
/// A background task accepts TCP connections and runs each handshake in its
/// own task (bounded by [`HANDSHAKE_TIMEOUT`] and [`MAX_PENDING_HANDSHAKES`]),
/// so a client that stalls its handshake holds up nobody else. Dropping the
/// listener stops the task.
pub(crate) struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, std::net::SocketAddr)>,
    local_addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub(crate) fn new(
        tcp: TcpListener,
        config: Arc<rustls::ServerConfig>,
    ) -> std::io::Result<Self> {
        let local_addr = tcp.local_addr()?;
        let (tx, ready) = tokio::sync::mpsc::channel(64);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let pending = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_HANDSHAKES));
        let task = tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    r = tcp.accept() => r,
                    () = tx.closed() => return,
                };
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = Arc::clone(&pending).acquire_owned().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self {
            ready,
            local_addr,
            task,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept task is gone (it only stops when this listener is
            // dropped, or if it panicked): accept nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}
