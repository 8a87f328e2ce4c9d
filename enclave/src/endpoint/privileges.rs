//! Running the endpoint as an unprivileged user (`serve --user`): a Nitro
//! Enclave's init starts the image's command as root whatever its `USER`,
//! so the server binds as root, gives its Unix socket (and the socket's
//! directory, when it makes it) to the user, then drops to it for good.
//!
//! Ownership is changed through an `O_PATH | O_NOFOLLOW` descriptor of the
//! very file checked (`chown_no_follow`), never by name, so a symbolic
//! link put in the socket's place is refused rather than followed.

use std::path::Path;

use crate::Error;

/// A numeric user and group to run as (no name lookups: the enclave has no
/// user database, and the binary is static).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunAs {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

impl std::str::FromStr for RunAs {
    type Err = String;

    /// Parses `UID:GID` (numeric ids only).
    fn from_str(s: &str) -> Result<Self, String> {
        let (uid, gid) = s.split_once(':').ok_or("expected UID:GID")?;
        let id = |v: &str| {
            v.parse::<u32>()
                .map_err(|_| format!("{v:?} is not a numeric id"))
        };
        Ok(RunAs {
            uid: id(uid)?,
            gid: id(gid)?,
        })
    }
}

/// Drops to `to` for good: supplementary groups cleared, then group, then
/// user, then a check that root cannot be regained. A process already
/// running as `to.uid` is left as it is.
pub(crate) fn drop_privileges(to: RunAs) -> Result<(), Error> {
    use nix::unistd::{Gid, Uid, geteuid, setgid, setgroups, setuid};
    if geteuid().as_raw() == to.uid {
        return Ok(());
    }
    let fail = |what: &str, e: nix::Error| Error::io(format!("drop privileges: {what}"), e.into());
    setgroups(&[]).map_err(|e| fail("setgroups", e))?;
    setgid(Gid::from_raw(to.gid)).map_err(|e| fail("setgid", e))?;
    setuid(Uid::from_raw(to.uid)).map_err(|e| fail("setuid", e))?;
    if to.uid != 0 && setuid(Uid::from_raw(0)).is_ok() {
        return Err(Error::Internal(
            "drop privileges: root could be regained after setuid".into(),
        ));
    }
    Ok(())
}

/// Creates the Unix socket's directory when it does not exist, owned by
/// `user`: inside an enclave `/run` is a fresh tmpfs at boot, so whatever the
/// image had under it is hidden. An existing directory is left as it is.
pub(crate) fn create_socket_dir(socket: &Path, user: Option<RunAs>) -> Result<(), Error> {
    let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    if dir.exists() {
        return Ok(());
    }
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    match user {
        Some(to) => chown_no_follow(dir, nix::sys::stat::SFlag::S_IFDIR, to),
        None => Ok(()),
    }
}

/// Gives the file at `path` to `to` through a descriptor of that file, not
/// by its name: it is opened with `O_PATH | O_NOFOLLOW`, checked through the
/// descriptor to be of type `kind` (the socket or directory just made), and
/// changed with `fchownat(fd, "", AT_EMPTY_PATH)`. A symbolic link put in its
/// place (by whoever can write the directory) is refused, never followed,
/// and the file checked is the file changed.
///
/// (`fchown` on the listening socket's own descriptor would not do: it
/// changes the socket's inode in sockfs, not the file a client connects to.)
pub(crate) fn chown_no_follow(
    path: &Path,
    kind: nix::sys::stat::SFlag,
    to: RunAs,
) -> Result<(), Error> {
    use nix::fcntl::{AtFlags, OFlag};
    use nix::sys::stat::{Mode, SFlag};
    let fail = |e: nix::Error| Error::io(format!("chown {}", path.display()), e.into());
    let fd = nix::fcntl::open(
        path,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(fail)?;
    let stat = nix::sys::stat::fstat(&fd).map_err(fail)?;
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != kind {
        return Err(Error::InvalidArgument(format!(
            "refusing to chown {}: not the {} it should be (replaced, or a symbolic link?)",
            path.display(),
            if kind == SFlag::S_IFDIR {
                "directory"
            } else {
                "socket"
            },
        )));
    }
    nix::unistd::fchownat(
        &fd,
        "",
        Some(nix::unistd::Uid::from_raw(to.uid)),
        Some(nix::unistd::Gid::from_raw(to.gid)),
        AtFlags::AT_EMPTY_PATH,
    )
    .map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::stat::SFlag;
    use std::os::unix::fs::{MetadataExt as _, symlink};

    fn me() -> RunAs {
        RunAs {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        }
    }

    /// `serve --user`: whoever can write the socket's directory may put a
    /// symbolic link where the socket was bound; the owner change must not
    /// follow it (as root it would give the link's target to `--user`).
    #[test]
    fn socket_ownership_is_set_on_the_socket_itself_never_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("kms.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"x").unwrap();
        let to_file = dir.path().join("to-file.sock");
        symlink(&victim, &to_file).unwrap();
        let to_socket = dir.path().join("to-socket.sock");
        symlink(&socket, &to_socket).unwrap();

        for link in [&to_file, &to_socket] {
            let e = chown_no_follow(link, SFlag::S_IFSOCK, me()).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
        }
        assert!(chown_no_follow(&victim, SFlag::S_IFSOCK, me()).is_err());
        assert!(chown_no_follow(&socket, SFlag::S_IFDIR, me()).is_err());
        chown_no_follow(&socket, SFlag::S_IFSOCK, me()).unwrap();
        chown_no_follow(dir.path(), SFlag::S_IFDIR, me()).unwrap();

        // Only root can give files away: there, check the owner really is
        // the socket file's (and the victim's is untouched).
        if nix::unistd::geteuid().is_root() {
            let other = RunAs {
                uid: 4321,
                gid: 4322,
            };
            let owner = |p: &Path| {
                let m = std::fs::symlink_metadata(p).unwrap();
                (m.uid(), m.gid())
            };
            let victim_owner = owner(&victim);
            chown_no_follow(&socket, SFlag::S_IFSOCK, other).unwrap();
            assert_eq!(owner(&socket), (4321, 4322));
            assert!(chown_no_follow(&to_file, SFlag::S_IFSOCK, other).is_err());
            assert_eq!(owner(&victim), victim_owner);
        }
    }
}
