//! The listening sockets: bound from `listen` (TCP addresses and Unix socket paths), or taken
//! from systemd socket activation (`LISTEN_FDS`). Owns a Unix socket's file: a stale socket
//! left by an earlier run is replaced, anything else at the path is refused, and the new
//! socket gets `server.socket_mode` and `server.socket_group`. Must not serve: `server.rs`
//! accepts from what this hands back.

use std::fmt;
use std::io;
use std::os::unix::fs::FileTypeExt as _;
use std::path::Path;

use crate::config::{Config, ListenAddr};

/// One listening socket, blocking-mode std types (each event loop makes its own tokio handle).
#[derive(Debug)]
pub enum Listener {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

impl Listener {
    pub fn try_clone(&self) -> io::Result<Listener> {
        Ok(match self {
            Listener::Tcp(l) => Listener::Tcp(l.try_clone()?),
            Listener::Unix(l) => Listener::Unix(l.try_clone()?),
        })
    }

    /// Where it listens, for the log: `127.0.0.1:5000`, `unix:/run/wharf/wharf.sock`.
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map_or_else(|_| "tcp:?".into(), |a| a.to_string()),
            Listener::Unix(l) => match l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
            {
                Some(p) => format!("unix:{p}"),
                None => "unix:(unnamed)".into(),
            },
        }
    }

    /// Non-blocking, as an event loop needs it (sockets from systemd come blocking).
    pub fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.set_nonblocking(true),
            Listener::Unix(l) => l.set_nonblocking(true),
        }
    }

    /// The TCP address, if it is a TCP listener.
    pub fn tcp_addr(&self) -> Option<std::net::SocketAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok(),
            Listener::Unix(_) => None,
        }
    }
}

/// Sockets systemd passed (socket activation), each with its `FileDescriptorName`.
pub type Activated = Vec<(Listener, Option<String>)>;

/// Why a listener could not be set up; the message names the address and what to do.
#[derive(Debug)]
pub struct ListenError(pub String);

impl fmt::Display for ListenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ListenError {}

/// Binds every `listen` address of `config`, in order.
pub fn bind(config: &Config) -> Result<Vec<Listener>, ListenError> {
    let mode = config.server.socket_mode_bits().map_err(ListenError)?;
    let group = match config.server.socket_group.as_str() {
        "" => None,
        g => Some(group_id(g).map_err(ListenError)?),
    };
    config
        .listen
        .0
        .iter()
        .map(|addr| match addr {
            ListenAddr::Tcp(a) => std::net::TcpListener::bind(a)
                .map(Listener::Tcp)
                .map_err(|e| ListenError(format!("cannot listen on {a}: {e}"))),
            ListenAddr::Unix(path) => bind_unix(path, mode, group).map(Listener::Unix),
        })
        .collect()
}

/// Binds a Unix socket at `path`: a socket already there is removed only when nothing answers
/// on it (a stale one); any other file is left alone and refused.
pub fn bind_unix(
    path: &Path,
    mode: u32,
    group: Option<u32>,
) -> Result<std::os::unix::net::UnixListener, ListenError> {
    let shown = path.display();
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ListenError(format!(
                    "cannot listen on unix:{shown}: another process is serving on that socket"
                )));
            }
            std::fs::remove_file(path).map_err(|e| {
                ListenError(format!(
                    "cannot remove the stale socket {shown} to listen there: {e}"
                ))
            })?;
            tracing::info!(path = %shown, "removed a stale socket");
        }
        Ok(_) => {
            return Err(ListenError(format!(
                "cannot listen on unix:{shown}: a file that is not a socket is there; wharf removes only a stale socket, so move it away or choose another path"
            )));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(ListenError(format!("cannot listen on unix:{shown}: {e}"))),
    }
    let listener = std::os::unix::net::UnixListener::bind(path)
        .map_err(|e| ListenError(format!("cannot listen on unix:{shown}: {e}")))?;
    let set = || -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        if let Some(gid) = group {
            rustix::fs::chown(path, None, Some(rustix::fs::Gid::from_raw(gid)))?;
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
    };
    if let Err(e) = set() {
        let _ = std::fs::remove_file(path);
        return Err(ListenError(format!(
            "cannot set mode {mode:o}{} on the socket {shown}: {e}",
            group.map(|g| format!(" and group {g}")).unwrap_or_default()
        )));
    }
    Ok(listener)
}

/// A group's id: a number, or a name looked up in `/etc/group`.
fn group_id(group: &str) -> Result<u32, String> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let text = std::fs::read_to_string("/etc/group")
        .map_err(|e| format!("server.socket_group {group:?}: cannot read /etc/group: {e}"))?;
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let gid = f.nth(1)?.parse::<u32>().ok()?;
            (name == group).then_some(gid)
        })
        .next()
        .ok_or_else(|| format!("server.socket_group {group:?}: no such group in /etc/group"))
}

/// Sockets passed by systemd socket activation (`sd_listen_fds`): `None` unless `LISTEN_PID`
/// names this process and `LISTEN_FDS` is set. Each descriptor (from 3 on) must be a listening
/// TCP or Unix stream socket; they are marked close-on-exec, and `LISTEN_PID`/`LISTEN_FDS`
/// are removed from the environment (by `listenfd`). Call before any thread starts.
pub fn from_systemd() -> Result<Option<Activated>, ListenError> {
    let for_us = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id());
    if !for_us || std::env::var_os("LISTEN_FDS").is_none() {
        return Ok(None);
    }
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|n| n.split(':').map(str::to_string).collect())
        .unwrap_or_default();
    let mut fds = listenfd::ListenFd::from_env();
    let mut out = Vec::with_capacity(fds.len());
    for i in 0..fds.len() {
        let listener = match fds.take_tcp_listener(i) {
            Ok(Some(l)) => Listener::Tcp(l),
            Ok(None) => continue,
            Err(_) => match fds.take_unix_listener(i) {
                Ok(Some(l)) => Listener::Unix(l),
                Ok(None) => continue,
                Err(e) => {
                    return Err(ListenError(format!(
                        "socket activation: descriptor {} is neither a TCP nor a Unix stream socket: {e}",
                        i + 3
                    )));
                }
            },
        };
        out.push((listener, names.get(i).cloned().filter(|n| !n.is_empty())));
    }
    if out.is_empty() {
        return Err(ListenError(
            "socket activation: LISTEN_FDS passed no socket".into(),
        ));
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_socket_is_replaced_and_any_other_file_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.sock");
        // Stale: bound, then its listener gone.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let l = bind_unix(&path, 0o600, None).expect("stale socket replaced");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Live: refused, and left in place.
        let e = bind_unix(&path, 0o600, None).unwrap_err();
        assert!(e.0.contains("another process is serving"), "{e}");
        drop(l);
        let file = dir.path().join("plain");
        std::fs::write(&file, b"keep me").unwrap();
        let e = bind_unix(&file, 0o600, None).unwrap_err();
        assert!(e.0.contains("not a socket"), "{e}");
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    }

    #[test]
    fn groups_are_numbers_or_names() {
        assert_eq!(group_id("0").unwrap(), 0);
        assert_eq!(group_id("root").unwrap(), 0);
        assert!(group_id("no-such-group-here").is_err());
    }
}
