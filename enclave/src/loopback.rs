//! Bringing the loopback interface up, as `serve` must inside a Nitro
//! Enclave.
//!
//! An enclave has no network interface but `lo`, and the enclave's init
//! (aws-nitro-enclaves-sdk-bootstrap) leaves it down; nothing else in the
//! image brings it up (there is no `ip`, no init system). A listener on
//! `127.0.0.1` would then be bound but unreachable, and AWS SDKs, which take
//! `http(s)://` endpoints only, could not reach the in-enclave endpoint
//! (DESIGN.md, "How an enclave starts"). `serve` therefore calls
//! [`ensure_up`] while it still runs as root, before it binds and drops
//! privileges.
//!
//! This is `ip link set lo up` over rtnetlink (the `rtnetlink` crate of the
//! rust-netlink project; no `unsafe` here). Reading the link state needs no
//! privilege, so an interface that is already up (any ordinary host, a
//! container) is left alone and an unprivileged `serve` keeps working there.

use futures_util::TryStreamExt as _;
use rtnetlink::LinkUnspec;
use rtnetlink::packet_route::link::LinkFlags;

use crate::Error;

/// The loopback interface's name on Linux.
pub const LOOPBACK: &str = "lo";

/// What [`ensure_up`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoopbackState {
    /// It was up already; nothing was changed.
    AlreadyUp,
    /// It was down and has been brought up.
    BroughtUp,
}

/// Brings `lo` up unless it is up already.
///
/// # Errors
/// [`Error::Io`] when the netlink socket cannot be opened, `lo` does not
/// exist, or setting it up is refused (no `CAP_NET_ADMIN`: run `serve` as
/// root and let `--user` drop privileges after this).
pub async fn ensure_up() -> Result<LoopbackState, Error> {
    let (connection, handle, _) =
        rtnetlink::new_connection().map_err(|e| Error::io("open a netlink socket", e))?;
    let connection = tokio::spawn(connection);
    let result = async {
        let link = handle
            .link()
            .get()
            .match_name(LOOPBACK)
            .execute()
            .try_next()
            .await
            .map_err(|e| netlink_error("read the state of lo", e))?
            .ok_or_else(|| {
                Error::io(
                    "read the state of lo",
                    std::io::Error::new(std::io::ErrorKind::NotFound, "no interface lo"),
                )
            })?;
        if link.header.flags.contains(LinkFlags::Up) {
            return Ok(LoopbackState::AlreadyUp);
        }
        handle
            .link()
            .change(LinkUnspec::new_with_index(link.header.index).up().build())
            .execute()
            .await
            .map_err(|e| netlink_error("bring lo up (needs CAP_NET_ADMIN)", e))?;
        Ok(LoopbackState::BroughtUp)
    }
    .await;
    connection.abort();
    result
}

fn netlink_error(context: &str, e: rtnetlink::Error) -> Error {
    let source = match e {
        rtnetlink::Error::NetlinkError(msg) => msg
            .code
            .map(|code| std::io::Error::from_raw_os_error(code.get().abs()))
            .unwrap_or_else(|| std::io::Error::other("netlink error")),
        other => std::io::Error::other(other.to_string()),
    };
    Error::io(context, source)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On any ordinary host (and in CI) `lo` is up: the check reads it
    /// without privileges and changes nothing. The down-to-up path is
    /// exercised in a fresh network namespace by `.ci/enclave-boot.sh`.
    #[tokio::test]
    async fn an_interface_that_is_up_is_left_alone() {
        assert_eq!(ensure_up().await.unwrap(), LoopbackState::AlreadyUp);
    }
}
