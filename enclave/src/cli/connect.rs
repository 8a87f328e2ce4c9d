//! The NSM and the client a subcommand uses: the real `/dev/nsm` or the
//! development mock, and a [`Client`] in the mode the image's settings give.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::args::BrokerArgs;
use crate::e2e::{KmsSettings, Mode};
use crate::nsm::{Nsm, NsmDevice};
use crate::{Client, ClientConfig, Error, RecipientKeys, RecipientKeysConfig};

/// The client for a subcommand: NSM, recipient keys, connection. The NSM
/// is opened and the connection made while the first recipient key is
/// being generated ([`RecipientKeys::open`], [`Client::connect_while`]), so
/// the first request waits for one key generation, not for the sum.
pub(super) async fn connect(args: &BrokerArgs) -> Result<Client, Error> {
    let mock_ca = args.nsm.mock_nsm_ca.clone();
    let keys = RecipientKeys::open(
        move || open_nsm(mock_ca.as_ref()).map(|(nsm, _)| nsm),
        RecipientKeysConfig::default(),
    );
    connect_while(args, keys).await
}

/// The connection for a subcommand, with `keys` already made: waits up to
/// the connect timeout for the first connection (broker mode) or the first
/// credentials (e2e mode).
pub(super) async fn connect_with(args: &BrokerArgs, keys: RecipientKeys) -> Result<Client, Error> {
    connect_while(args, std::future::ready(Ok(keys))).await
}

/// The connection for a subcommand in the mode the image's settings give,
/// made while `keys` completes; waits up to the connect timeout as
/// [`connect_with`].
async fn connect_while<F>(args: &BrokerArgs, keys: F) -> Result<Client, Error>
where
    F: Future<Output = Result<RecipientKeys, Error>>,
{
    let config = client_config(args);
    let settings = args.kms_settings()?;
    match settings.mode() {
        Mode::Broker => {
            // Refuses vsock-proxy relays given in broker mode.
            settings.parent_link(&args.proxy)?;
            Client::connect_while(config, keys).await
        }
        Mode::E2e => {
            let e2e = settings.e2e_config(args.trust_roots()?)?;
            let link = settings.parent_link(&args.proxy)?;
            Client::connect_e2e_while(config, e2e, link, keys).await
        }
    }
}

/// A client in the mode of `settings` (the image's, from
/// [`BrokerArgs::kms_settings`]), connecting in the background.
pub(super) fn new_client(
    args: &BrokerArgs,
    settings: &KmsSettings,
    keys: RecipientKeys,
) -> Result<Client, Error> {
    let config = client_config(args);
    match settings.mode() {
        Mode::Broker => {
            // Refuses vsock-proxy relays given in broker mode.
            settings.parent_link(&args.proxy)?;
            Client::new(config, keys)
        }
        Mode::E2e => {
            let e2e = settings.e2e_config(args.trust_roots()?)?;
            let link = settings.parent_link(&args.proxy)?;
            Client::new_e2e(config, e2e, link, keys)
        }
    }
}

/// The deadlines of the command line.
fn client_config(args: &BrokerArgs) -> ClientConfig {
    let mut config = ClientConfig::new(args.proxy.clone());
    config.request_timeout = Duration::from_millis(args.timeout_ms);
    config.connect_timeout = config.connect_timeout.min(config.request_timeout);
    config
}

#[cfg(not(feature = "mock-nsm"))]
pub(super) fn no_mock() -> Error {
    Error::InvalidArgument(
        "this build has no mock NSM; rebuild keybroker-enclave with `--features mock-nsm`".into(),
    )
}

/// The NSM: the mock one under the CA in `mock_ca`, or `/dev/nsm`.
pub(super) fn open_nsm(mock_ca: Option<&PathBuf>) -> Result<(Arc<dyn Nsm>, &'static str), Error> {
    match mock_ca {
        None => Ok((Arc::new(NsmDevice::open()?), "/dev/nsm")),
        #[cfg(feature = "mock-nsm")]
        Some(dir) => {
            let ca = crate::MockNsm::load_or_create_ca(dir)?;
            let nsm = crate::MockNsm::new(&ca, crate::MockNsmConfig::default())?;
            Ok((Arc::new(nsm), "mock"))
        }
        #[cfg(not(feature = "mock-nsm"))]
        Some(_) => Err(no_mock()),
    }
}
