//! The NSM and the client a subcommand uses: the real `/dev/nsm` or the
//! development mock, and a [`Client`] in the mode the image's settings give.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::args::BrokerArgs;
use crate::e2e::Mode;
use crate::nsm::{Nsm, NsmDevice};
use crate::{Client, ClientConfig, Error, RecipientKeys, RecipientKeysConfig};

/// The client for a subcommand: NSM, recipient keys, connection.
pub(super) async fn connect(args: &BrokerArgs) -> Result<Client, Error> {
    let (nsm, _) = open_nsm(args.nsm.mock_nsm_ca.as_ref())?;
    let keys = RecipientKeys::new(nsm, RecipientKeysConfig::default()).await?;
    connect_with(args, keys).await
}

/// The connection for a subcommand, with `keys` already made: waits up to
/// the connect timeout for the first connection (broker mode) or the first
/// credentials (e2e mode).
pub(super) async fn connect_with(args: &BrokerArgs, keys: RecipientKeys) -> Result<Client, Error> {
    let client = new_client(args, keys)?;
    client
        .wait_connected(client.config().connect_timeout)
        .await?;
    Ok(client)
}

/// A client in the mode the image's settings give, connecting in the
/// background.
pub(super) fn new_client(args: &BrokerArgs, keys: RecipientKeys) -> Result<Client, Error> {
    let mut config = ClientConfig::new(args.proxy.clone());
    config.request_timeout = Duration::from_millis(args.timeout_ms);
    config.connect_timeout = config.connect_timeout.min(config.request_timeout);
    let settings = args.kms_settings()?;
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
