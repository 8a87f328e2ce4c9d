//! A mock Nitro Secure Module for development and tests (cargo feature
//! `mock-nsm`, never enabled in the production enclave image).
//!
//! [`MockNsm`] answers the same requests as `/dev/nsm` (see [`crate::nsm`]):
//!
//! - `Attestation`: a document with the real NSM's layout
//!   ([`keybroker_common::attestation::build_signed_document`]: untagged
//!   COSE_Sign1, ES384, 16 PCRs of 48 bytes, absent optionals as `null`),
//!   signed by a per-process leaf certificate that chains
//!   `root -> intermediate -> leaf`, all P-384 like the AWS chain. The root is
//!   a [`MockCa`], which can be persisted to a directory so that separate
//!   processes (launcher, mock KMS, enclave) share one root of trust: the mock
//!   KMS pins `root.der` / `root.pem`.
//! - `DescribePCR` / `ExtendPCR` (`SHA-384(old || data)`) / `LockPCR` /
//!   `LockPCRs`: a bank of 32 SHA-384 PCRs. Like a booted enclave, PCRs
//!   0..=4 and 8 (image, kernel, application, IAM role, instance, signing
//!   certificate) start locked; the others start at zero and are extendable.
//!   Attestation documents carry PCRs 0..=15, as real documents do.
//! - `GetRandom` (256 bytes from AWS-LC's system RNG), `DescribeNSM`.
//!
//! By default PCR0 is SHA-384 of the running binary ([`default_pcr0`]), so it
//! changes whenever the enclave program changes, like a measurement; launchers
//! compute the same value with [`default_pcr0_for`] to write key policies.
//!
//! Nothing here is secure: the CA key sits in a file, and anyone with it can
//! forge documents. Trust the mock root only in development setups.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use der::Decode;
use keybroker_common::UnixMillis;
use keybroker_common::attestation::{AttestationDocument, Digest, build_signed_document};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P384_SHA384,
};
use time::OffsetDateTime;

use crate::Error;
use crate::nsm::{
    MAX_ATTESTATION_FIELD_LEN, MAX_PCRS, Nsm, NsmDigest, NsmErrorCode, PCR_LEN, Request, Response,
    extend, sha384_file,
};

/// File name of the root certificate (PEM) in a CA directory.
pub const ROOT_CERT_PEM_FILE: &str = "root.pem";
/// File name of the root certificate (DER) in a CA directory.
pub const ROOT_CERT_DER_FILE: &str = "root.der";
/// File name of the root private key (PKCS#8 PEM, mode 0600) in a CA directory.
pub const ROOT_KEY_FILE: &str = "root.key.pem";

/// Number of PCRs in attestation documents (real documents carry 0..=15).
pub const DOCUMENT_PCRS: u16 = 16;

/// PCRs locked at "boot" (measured by the Nitro hypervisor on real hardware):
/// 0 image, 1 kernel, 2 application, 3 IAM role, 4 instance id, 8 signing
/// certificate.
pub const BOOT_LOCKED_PCRS: [u16; 6] = [0, 1, 2, 3, 4, 8];

/// Bytes returned by one `GetRandom` (the real NSM returns up to 256).
pub const GET_RANDOM_LEN: usize = 256;

const ROOT_CN: &str = "Keybroker mock NSM root (development only)";
const INTERMEDIATE_CN: &str = "Keybroker mock NSM intermediate (development only)";
const ORGANIZATION: &str = "Keybroker development";

/// Lifetime of the development root.
const ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Lifetime of the per-process intermediate.
const INTERMEDIATE_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);
/// Back-dating of every certificate, for clock skew between processes.
const BACKDATE: Duration = Duration::from_secs(3600);
/// Real NSM leaf certificates live about three hours.
const LEAF_VALIDITY: Duration = Duration::from_secs(3 * 3600);
/// A leaf is reissued when it has less than this left.
const LEAF_RENEW_BEFORE: Duration = Duration::from_secs(30 * 60);

/// The development root CA of the mock NSM: a self-signed P-384 certificate
/// and its key.
pub struct MockCa {
    root_der: Vec<u8>,
    root_pem: String,
    key: KeyPair,
    dir: Option<PathBuf>,
}

impl core::fmt::Debug for MockCa {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MockCa")
            .field("root_der_len", &self.root_der.len())
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl MockCa {
    /// A fresh root, in memory only.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if rcgen fails to build the certificate.
    pub fn generate() -> Result<Self, Error> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).map_err(rcgen_error)?;
        let now = OffsetDateTime::now_utc();
        let mut params = root_params();
        params.not_before = now - BACKDATE;
        params.not_after = now + ROOT_VALIDITY;
        let cert = params.self_signed(&key).map_err(rcgen_error)?;
        Ok(Self {
            root_der: cert.der().to_vec(),
            root_pem: cert.pem(),
            key,
            dir: None,
        })
    }

    /// Loads the root from `dir` ([`ROOT_CERT_PEM_FILE`], [`ROOT_KEY_FILE`]),
    /// or creates it there (also writing [`ROOT_CERT_DER_FILE`]) if the
    /// directory holds none. Safe to call from several processes at once:
    /// the key file is published with an atomic link, and the loser of a race
    /// loads the winner's root.
    ///
    /// # Errors
    /// [`Error::Io`] for file system failures; [`Error::InvalidArgument`] if
    /// the files do not hold a matching P-384 certificate and key.
    pub fn load_or_create(dir: &Path) -> Result<Self, Error> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        let key_path = dir.join(ROOT_KEY_FILE);
        if !key_path.exists() {
            let ca = Self::generate()?;
            match ca.publish(dir) {
                Ok(()) => {
                    return Ok(Self {
                        dir: Some(dir.to_path_buf()),
                        ..ca
                    });
                }
                // Another process won the race; load its root below.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::io(format!("write CA to {}", dir.display()), e)),
            }
        }
        Self::load(dir)
    }

    /// Loads the root from `dir`, waiting up to two seconds for a root that
    /// another process is writing right now.
    ///
    /// # Errors
    /// As [`MockCa::load_or_create`], and [`Error::Io`] if the files are absent.
    pub fn load(dir: &Path) -> Result<Self, Error> {
        let pem_path = dir.join(ROOT_CERT_PEM_FILE);
        let key_path = dir.join(ROOT_KEY_FILE);
        let mut tries = 0;
        let (root_pem, key_pem) = loop {
            match (
                std::fs::read_to_string(&pem_path),
                std::fs::read_to_string(&key_path),
            ) {
                (Ok(c), Ok(k)) => break (c, k),
                (Err(e), _) | (_, Err(e)) => {
                    tries += 1;
                    if tries > 40 || e.kind() != std::io::ErrorKind::NotFound {
                        return Err(Error::io(format!("read mock CA in {}", dir.display()), e));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| Error::InvalidArgument(format!("{ROOT_KEY_FILE}: {e}")))?;
        let root_der = pem_to_der(&root_pem, "CERTIFICATE")?;
        let cert = x509_cert::Certificate::from_der(&root_der)
            .map_err(|e| Error::InvalidArgument(format!("{ROOT_CERT_PEM_FILE}: {e}")))?;
        let spki_key = cert
            .tbs_certificate()
            .subject_public_key_info()
            .subject_public_key
            .as_bytes();
        if spki_key != Some(key.public_key_raw()) {
            return Err(Error::InvalidArgument(format!(
                "{ROOT_KEY_FILE} does not match {ROOT_CERT_PEM_FILE} in {}",
                dir.display()
            )));
        }
        Ok(Self {
            root_der,
            root_pem,
            key,
            dir: Some(dir.to_path_buf()),
        })
    }

    /// Writes the files, publishing the key last-writer-loses: the key file
    /// is hard-linked into place (fails with `AlreadyExists` if present), and
    /// the certificate renamed in only by the winner. Readers wait for both.
    fn publish(&self, dir: &Path) -> std::io::Result<()> {
        let tag = format!("{}.{}", std::process::id(), unique_suffix());
        let tmp_key = dir.join(format!(".{ROOT_KEY_FILE}.{tag}"));
        let tmp_pem = dir.join(format!(".{ROOT_CERT_PEM_FILE}.{tag}"));
        let tmp_der = dir.join(format!(".{ROOT_CERT_DER_FILE}.{tag}"));
        write_private(&tmp_key, self.key.serialize_pem().as_bytes())?;
        std::fs::write(&tmp_pem, &self.root_pem)?;
        std::fs::write(&tmp_der, &self.root_der)?;
        let linked = std::fs::hard_link(&tmp_key, dir.join(ROOT_KEY_FILE));
        let _ = std::fs::remove_file(&tmp_key);
        if let Err(e) = linked {
            let _ = std::fs::remove_file(&tmp_pem);
            let _ = std::fs::remove_file(&tmp_der);
            return Err(e);
        }
        std::fs::rename(&tmp_der, dir.join(ROOT_CERT_DER_FILE))?;
        std::fs::rename(&tmp_pem, dir.join(ROOT_CERT_PEM_FILE))
    }

    /// The root certificate, DER: what a verifier pins
    /// (`Verifier::add_trusted_root`).
    pub fn root_der(&self) -> &[u8] {
        &self.root_der
    }

    /// The root certificate, PEM.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// The directory the root was loaded from or written to, if any.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Path of the root certificate PEM, for a persisted root.
    pub fn root_pem_path(&self) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(ROOT_CERT_PEM_FILE))
    }

    /// An issuer for certificates under this root. The issuer name is rebuilt
    /// from the fixed root parameters; [`MockNsm::new`] checks that it matches
    /// the stored certificate's subject.
    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, Error> {
        let key = KeyPair::from_pem(&self.key.serialize_pem()).map_err(rcgen_error)?;
        Ok(Issuer::new(root_params(), key))
    }
}

/// The fixed parameters of the root (validity is set by the caller).
fn root_params() -> CertificateParams {
    ca_params(ROOT_CN, BasicConstraints::Unconstrained)
}

fn ca_params(cn: &str, constraints: BasicConstraints) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.distinguished_name
        .push(DnType::OrganizationName, ORGANIZATION);
    p.is_ca = IsCa::Ca(constraints);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

fn rcgen_error(e: rcgen::Error) -> Error {
    Error::InvalidArgument(format!("mock NSM certificate: {e}"))
}

fn unique_suffix() -> String {
    let mut b = [0u8; 8];
    let _ = SystemRandom::new().fill(&mut b);
    hex::encode(b)
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

/// The DER inside the first PEM block labelled `label`.
fn pem_to_der(pem: &str, label: &str) -> Result<Vec<u8>, Error> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let body = pem
        .split_once(&begin)
        .and_then(|(_, rest)| rest.split_once(&end))
        .map(|(body, _)| body)
        .ok_or_else(|| Error::InvalidArgument(format!("no PEM {label} block")))?;
    let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    STANDARD
        .decode(b64)
        .map_err(|_| Error::InvalidArgument(format!("PEM {label} block is not base64")))
}

/// SHA-384 of the running binary (`std::env::current_exe()`): the mock
/// NSM's default PCR0.
///
/// # Errors
/// [`Error::Io`] if the binary cannot be located or read.
pub fn default_pcr0() -> Result<[u8; PCR_LEN], Error> {
    let exe = std::env::current_exe().map_err(|e| Error::io("locate the running binary", e))?;
    default_pcr0_for(&exe)
}

/// The PCR0 a [`MockNsm`] with default configuration reports when running
/// the binary at `binary`: SHA-384 of the file. For launchers writing a key
/// policy (`kms:RecipientAttestation:ImageSha384`).
///
/// # Errors
/// [`Error::Io`] if the file cannot be read.
pub fn default_pcr0_for(binary: &Path) -> Result<[u8; PCR_LEN], Error> {
    sha384_file(binary)
}

/// Configuration of a [`MockNsm`].
#[derive(Clone, Debug, Default)]
pub struct MockNsmConfig {
    /// Initial PCR values by index (`0..32`); unlisted PCRs start at zero,
    /// except PCR0, which defaults to [`default_pcr0`].
    pub pcrs: BTreeMap<u16, [u8; PCR_LEN]>,
    /// The module id; default `i-mock…-enc<random hex>`.
    pub module_id: Option<String>,
}

impl MockNsmConfig {
    /// Sets the initial value of PCR `index`.
    pub fn with_pcr(mut self, index: u16, value: [u8; PCR_LEN]) -> Self {
        self.pcrs.insert(index, value);
        self
    }
}

struct Bank {
    values: [[u8; PCR_LEN]; MAX_PCRS as usize],
    locked: [bool; MAX_PCRS as usize],
}

struct Leaf {
    der: Vec<u8>,
    key: EcdsaKeyPair,
    not_after: SystemTime,
}

/// The mock NSM (see the [module docs](self)).
pub struct MockNsm {
    root_der: Vec<u8>,
    intermediate_der: Vec<u8>,
    intermediate: Issuer<'static, KeyPair>,
    module_id: String,
    bank: Mutex<Bank>,
    leaf: Mutex<Leaf>,
    rng: SystemRandom,
}

impl core::fmt::Debug for MockNsm {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MockNsm")
            .field("module_id", &self.module_id)
            .finish_non_exhaustive()
    }
}

impl MockNsm {
    /// [`MockCa::load_or_create`]: the shared development root in `dir`.
    ///
    /// # Errors
    /// As [`MockCa::load_or_create`].
    pub fn load_or_create_ca(dir: &Path) -> Result<MockCa, Error> {
        MockCa::load_or_create(dir)
    }

    /// A mock NSM under `ca`, with a fresh intermediate and leaf.
    ///
    /// # Errors
    /// [`Error::Io`] if the default PCR0 cannot be computed;
    /// [`Error::InvalidArgument`] for a PCR index out of range or a CA whose
    /// stored certificate does not match its parameters.
    pub fn new(ca: &MockCa, config: MockNsmConfig) -> Result<Self, Error> {
        let mut values = [[0u8; PCR_LEN]; MAX_PCRS as usize];
        if !config.pcrs.contains_key(&0) {
            values[0] = default_pcr0()?;
        }
        for (index, value) in &config.pcrs {
            let slot = values.get_mut(usize::from(*index)).ok_or_else(|| {
                Error::InvalidArgument(format!("PCR index {index} is not below {MAX_PCRS}"))
            })?;
            *slot = *value;
        }
        let mut locked = [false; MAX_PCRS as usize];
        for i in BOOT_LOCKED_PCRS {
            if let Some(l) = locked.get_mut(usize::from(i)) {
                *l = true;
            }
        }

        let now = OffsetDateTime::now_utc();
        let inter_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).map_err(rcgen_error)?;
        let mut inter_params = ca_params(INTERMEDIATE_CN, BasicConstraints::Constrained(0));
        inter_params.not_before = now - BACKDATE;
        inter_params.not_after = now + INTERMEDIATE_VALIDITY;
        let intermediate_der = inter_params
            .signed_by(&inter_key, &ca.issuer()?)
            .map_err(rcgen_error)?
            .der()
            .to_vec();
        check_issued_by(&intermediate_der, ca.root_der())?;
        let intermediate = Issuer::new(inter_params, inter_key);

        let module_id = config
            .module_id
            .unwrap_or_else(|| format!("i-mock0000000000000-enc{}", unique_suffix()));
        let leaf = issue_leaf(&intermediate, &module_id)?;
        Ok(Self {
            root_der: ca.root_der().to_vec(),
            intermediate_der,
            intermediate,
            module_id,
            bank: Mutex::new(Bank { values, locked }),
            leaf: Mutex::new(leaf),
            rng: SystemRandom::new(),
        })
    }

    /// The root certificate (DER) that documents chain to.
    pub fn root_der(&self) -> &[u8] {
        &self.root_der
    }

    /// The module id put into documents.
    pub fn module_id(&self) -> &str {
        &self.module_id
    }

    /// The current value of PCR `index`, if it exists.
    pub fn pcr(&self, index: u16) -> Option<[u8; PCR_LEN]> {
        let bank = self.bank.lock().unwrap_or_else(|p| p.into_inner());
        bank.values.get(usize::from(index)).copied()
    }

    fn attest(
        &self,
        public_key: Option<Vec<u8>>,
        user_data: Option<Vec<u8>>,
        nonce: Option<Vec<u8>>,
    ) -> Response {
        let too_large = [&public_key, &user_data, &nonce].iter().any(|f| {
            f.as_ref()
                .is_some_and(|v| v.len() > MAX_ATTESTATION_FIELD_LEN)
        });
        if too_large {
            return Response::Error(NsmErrorCode::InputTooLarge);
        }
        let pcrs = {
            let bank = self.bank.lock().unwrap_or_else(|p| p.into_inner());
            bank.values
                .iter()
                .take(usize::from(DOCUMENT_PCRS))
                .zip(0u8..)
                .map(|(v, i)| (i, v.to_vec()))
                .collect()
        };
        let mut leaf = self.leaf.lock().unwrap_or_else(|p| p.into_inner());
        let now = SystemTime::now();
        if now + LEAF_RENEW_BEFORE > leaf.not_after {
            match issue_leaf(&self.intermediate, &self.module_id) {
                Ok(fresh) => *leaf = fresh,
                Err(_) => return Response::Error(NsmErrorCode::InternalError),
            }
        }
        let doc = AttestationDocument {
            module_id: self.module_id.clone(),
            digest: Digest::Sha384,
            timestamp: UnixMillis(unix_millis(now)),
            pcrs,
            certificate: leaf.der.clone(),
            cabundle: vec![self.root_der.clone(), self.intermediate_der.clone()],
            public_key,
            user_data,
            nonce,
        };
        match build_signed_document(&doc, &leaf.key, &self.rng) {
            Ok(document) => Response::Attestation { document },
            Err(keybroker_common::Error::InvalidArgument(_)) => {
                Response::Error(NsmErrorCode::InvalidArgument)
            }
            Err(_) => Response::Error(NsmErrorCode::InternalError),
        }
    }
}

impl Nsm for MockNsm {
    fn process(&self, request: Request) -> Response {
        match request {
            Request::Attestation {
                user_data,
                nonce,
                public_key,
            } => self.attest(
                public_key.map(|b| b.into_vec()),
                user_data.map(|b| b.into_vec()),
                nonce.map(|b| b.into_vec()),
            ),
            Request::DescribePCR { index } => {
                let bank = self.bank.lock().unwrap_or_else(|p| p.into_inner());
                let i = usize::from(index);
                match (bank.values.get(i), bank.locked.get(i)) {
                    (Some(v), Some(l)) => Response::DescribePCR {
                        lock: *l,
                        data: v.to_vec(),
                    },
                    _ => Response::Error(NsmErrorCode::InvalidIndex),
                }
            }
            Request::ExtendPCR { index, data } => {
                // The whole request must fit the NSM's 0x1000-byte limit.
                if data.len() > 0x1000 - 64 {
                    return Response::Error(NsmErrorCode::InputTooLarge);
                }
                let mut bank = self.bank.lock().unwrap_or_else(|p| p.into_inner());
                let i = usize::from(index);
                if bank.locked.get(i).copied().unwrap_or(false) {
                    return Response::Error(NsmErrorCode::ReadOnlyIndex);
                }
                match bank.values.get_mut(i) {
                    Some(v) => {
                        *v = extend(v.as_slice(), &data);
                        Response::ExtendPCR { data: v.to_vec() }
                    }
                    None => Response::Error(NsmErrorCode::InvalidIndex),
                }
            }
            Request::LockPCR { index } => {
                let mut bank = self.bank.lock().unwrap_or_else(|p| p.into_inner());
                match bank.locked.get_mut(usize::from(index)) {
                    Some(l) => {
                        *l = true;
                        Response::LockPCR
                    }
                    None => Response::Error(NsmErrorCode::InvalidIndex),
                }
            }
            Request::LockPCRs { range } => {
                if range > MAX_PCRS {
                    return Response::Error(NsmErrorCode::InvalidIndex);
                }
                let mut bank = self.bank.lock().unwrap_or_else(|p| p.into_inner());
                for l in bank.locked.iter_mut().take(usize::from(range)) {
                    *l = true;
                }
                Response::LockPCRs
            }
            Request::DescribeNSM => {
                let bank = self.bank.lock().unwrap_or_else(|p| p.into_inner());
                Response::DescribeNSM {
                    version_major: 1,
                    version_minor: 0,
                    version_patch: 0,
                    module_id: self.module_id.clone(),
                    max_pcrs: MAX_PCRS,
                    locked_pcrs: (0..MAX_PCRS)
                        .filter(|i| bank.locked.get(usize::from(*i)).copied().unwrap_or(false))
                        .collect(),
                    digest: NsmDigest::SHA384,
                }
            }
            Request::GetRandom => {
                let mut random = vec![0u8; GET_RANDOM_LEN];
                match self.rng.fill(&mut random) {
                    Ok(()) => Response::GetRandom { random },
                    Err(_) => Response::Error(NsmErrorCode::InternalError),
                }
            }
            _ => Response::Error(NsmErrorCode::InvalidOperation),
        }
    }
}

/// A leaf certificate for `module_id`, valid for [`LEAF_VALIDITY`], without
/// CA rights (like the NSM's instance certificates).
fn issue_leaf(issuer: &Issuer<'static, KeyPair>, module_id: &str) -> Result<Leaf, Error> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).map_err(rcgen_error)?;
    let now = SystemTime::now();
    let now_odt = OffsetDateTime::now_utc();
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, module_id);
    p.distinguished_name
        .push(DnType::OrganizationName, ORGANIZATION);
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.not_before = now_odt - Duration::from_secs(300);
    p.not_after = now_odt + LEAF_VALIDITY;
    let der = p
        .signed_by(&key, issuer)
        .map_err(rcgen_error)?
        .der()
        .to_vec();
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &key.serialize_der())
        .map_err(|_| Error::InvalidArgument("mock NSM leaf key does not load".into()))?;
    Ok(Leaf {
        der,
        key,
        not_after: now + LEAF_VALIDITY,
    })
}

/// Checks that `child`'s issuer name is `parent`'s subject name.
fn check_issued_by(child: &[u8], parent: &[u8]) -> Result<(), Error> {
    let parse = |der: &[u8]| {
        x509_cert::Certificate::from_der(der)
            .map_err(|e| Error::InvalidArgument(format!("mock NSM certificate: {e}")))
    };
    let (child, parent) = (parse(child)?, parse(parent)?);
    if child.tbs_certificate().issuer() != parent.tbs_certificate().subject() {
        return Err(Error::InvalidArgument(
            "mock CA root certificate does not match the mock NSM root parameters".into(),
        ));
    }
    Ok(())
}

fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keybroker_common::attestation::Verifier;

    fn now() -> UnixMillis {
        UnixMillis(unix_millis(SystemTime::now()))
    }

    #[test]
    fn documents_verify_against_the_exported_root_and_carry_the_fields() {
        let ca = MockCa::generate().unwrap();
        let nsm = MockNsm::new(&ca, MockNsmConfig::default()).unwrap();
        let doc = nsm
            .attestation(
                Some(vec![0x30; 294]),
                Some(b"ud".to_vec()),
                Some(vec![7; 16]),
            )
            .unwrap();
        assert_eq!(
            doc.get(..7),
            Some(&[0x84, 0x44, 0xA1, 0x01, 0x38, 0x22, 0xA0][..])
        );
        let verifier = Verifier::from_trusted_roots([ca.root_der()]).unwrap();
        let verified = verifier.verify(&doc, now()).unwrap();
        let d = verified.document();
        assert_eq!(d.public_key.as_deref(), Some(&[0x30; 294][..]));
        assert_eq!(d.user_data.as_deref(), Some(&b"ud"[..]));
        assert_eq!(d.nonce.as_deref(), Some(&[7; 16][..]));
        assert_eq!(d.pcrs.len(), 16);
        assert!(d.pcrs.values().all(|v| v.len() == 48));
        assert_eq!(
            d.pcrs.get(&0).map(Vec::as_slice),
            Some(&default_pcr0().unwrap()[..])
        );
        assert_eq!(d.module_id, nsm.module_id());
        assert_eq!(d.cabundle.len(), 2);
        // The AWS root does not trust it.
        assert!(Verifier::aws_nitro().verify(&doc, now()).is_err());
        // Nor does another development root.
        let other = MockCa::generate().unwrap();
        assert!(
            Verifier::from_trusted_roots([other.root_der()])
                .unwrap()
                .verify(&doc, now())
                .is_err()
        );
    }

    #[test]
    fn oversized_fields_are_refused() {
        let ca = MockCa::generate().unwrap();
        let nsm = MockNsm::new(&ca, MockNsmConfig::default()).unwrap();
        let err = nsm
            .attestation(None, Some(vec![0; 1025]), None)
            .unwrap_err();
        assert!(err.to_string().contains("InputTooLarge"), "{err}");
        assert!(nsm.attestation(None, Some(vec![0; 1024]), None).is_ok());
    }

    #[test]
    fn pcrs_extend_lock_and_describe_like_the_nsm() {
        let ca = MockCa::generate().unwrap();
        let pcr0 = [0xAB; PCR_LEN];
        let nsm = MockNsm::new(&ca, MockNsmConfig::default().with_pcr(0, pcr0)).unwrap();
        assert_eq!(nsm.describe_pcr(0).unwrap(), (true, pcr0.to_vec()));
        // Boot-locked PCRs refuse extension.
        assert!(
            nsm.extend_pcr(0, b"x".to_vec())
                .unwrap_err()
                .to_string()
                .contains("ReadOnlyIndex")
        );
        // A user PCR starts at zero and extends as SHA-384(old || data).
        assert_eq!(nsm.describe_pcr(16).unwrap(), (false, vec![0; PCR_LEN]));
        let once = nsm.extend_pcr(16, b"hello".to_vec()).unwrap();
        assert_eq!(once, extend(&[0; PCR_LEN], b"hello").to_vec());
        let twice = nsm.extend_pcr(16, b"world".to_vec()).unwrap();
        assert_eq!(twice, extend(&once, b"world").to_vec());
        assert_eq!(nsm.describe_pcr(16).unwrap(), (false, twice.clone()));
        nsm.lock_pcr(16).unwrap();
        assert!(nsm.extend_pcr(16, b"more".to_vec()).is_err());
        assert_eq!(nsm.describe_pcr(16).unwrap(), (true, twice));
        // PCR 7 is in documents; extend it and see it there.
        let seven = nsm.extend_pcr(7, b"app".to_vec()).unwrap();
        let doc = nsm.attestation(None, None, None).unwrap();
        let verified = Verifier::from_trusted_roots([ca.root_der()])
            .unwrap()
            .verify(&doc, now())
            .unwrap();
        assert_eq!(verified.document().pcrs.get(&7), Some(&seven));
        assert_eq!(
            verified.document().pcrs.get(&0).map(Vec::as_slice),
            Some(&pcr0[..])
        );
        // LockPCRs locks a prefix; indices past the bank are errors.
        nsm.lock_pcrs(10).unwrap();
        assert!(nsm.extend_pcr(9, b"x".to_vec()).is_err());
        assert!(nsm.extend_pcr(10, b"x".to_vec()).is_ok());
        assert!(nsm.describe_pcr(32).is_err());
        assert!(nsm.extend_pcr(40, b"x".to_vec()).is_err());
        assert!(nsm.lock_pcrs(33).is_err());
        let d = nsm.describe_nsm().unwrap();
        assert_eq!(d.max_pcrs, 32);
        assert_eq!(d.digest, NsmDigest::SHA384);
        assert!(d.locked_pcrs.contains(&16) && d.locked_pcrs.contains(&9));
        assert!(!d.locked_pcrs.contains(&10));
        assert_eq!(d.module_id, nsm.module_id());
    }

    #[test]
    fn random_is_random() {
        let ca = MockCa::generate().unwrap();
        let nsm = MockNsm::new(&ca, MockNsmConfig::default()).unwrap();
        let (a, b) = (nsm.get_random().unwrap(), nsm.get_random().unwrap());
        assert_eq!(a.len(), GET_RANDOM_LEN);
        assert_ne!(a, b);
    }

    #[test]
    fn ca_persists_and_is_shared() {
        let dir = tempfile::tempdir().unwrap();
        let a = MockNsm::load_or_create_ca(dir.path()).unwrap();
        let b = MockNsm::load_or_create_ca(dir.path()).unwrap();
        assert_eq!(a.root_der(), b.root_der());
        assert_eq!(
            std::fs::read(dir.path().join(ROOT_CERT_DER_FILE)).unwrap(),
            a.root_der()
        );
        assert_eq!(a.root_pem_path(), Some(dir.path().join(ROOT_CERT_PEM_FILE)));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(ROOT_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "key file is private");
        }
        // A document from an NSM under the reloaded CA verifies with the
        // root the first process wrote.
        let nsm = MockNsm::new(&b, MockNsmConfig::default()).unwrap();
        let doc = nsm.attestation(None, None, None).unwrap();
        let root = std::fs::read(dir.path().join(ROOT_CERT_DER_FILE)).unwrap();
        Verifier::from_trusted_roots([root.as_slice()])
            .unwrap()
            .verify(&doc, now())
            .unwrap();
    }

    #[test]
    fn concurrent_creation_agrees_on_one_root() {
        let dir = tempfile::tempdir().unwrap();
        let roots: Vec<Vec<u8>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        MockCa::load_or_create(dir.path())
                            .unwrap()
                            .root_der()
                            .to_vec()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(roots.windows(2).all(|w| w[0] == w[1]));
    }

    #[test]
    fn mismatched_key_and_certificate_are_rejected() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        MockCa::load_or_create(d1.path()).unwrap();
        MockCa::load_or_create(d2.path()).unwrap();
        std::fs::copy(d2.path().join(ROOT_KEY_FILE), d1.path().join(ROOT_KEY_FILE)).unwrap();
        assert!(matches!(
            MockCa::load(d1.path()),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn default_pcr0_is_the_binary_hash() {
        let exe = std::env::current_exe().unwrap();
        assert_eq!(default_pcr0().unwrap(), default_pcr0_for(&exe).unwrap());
        assert_eq!(
            default_pcr0_for(&exe).unwrap(),
            crate::nsm::sha384(&std::fs::read(&exe).unwrap())
        );
    }
}
