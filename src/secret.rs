//! The admin secret: 32 random bytes, hex-encoded, that every `/admin/` request carries in the
//! `X-Wharf-Admin-Token` header. Owns the secret's format and its file,
//! `<data_dir>/admin.token`; must not decide who may ask (the admin guard does).
//!
//! Why a secret as well as the loopback checks: a reverse proxy on this machine that rewrites
//! `Host` and adds no forwarding header (a bare nginx `proxy_pass`) makes a remote client look
//! local in every other respect. Only a process that can read the data directory (the user
//! wharf runs as, or root) can read the file. And a custom header makes every admin request one
//! a browser sends only after a CORS preflight, which wharf never grants, so neither a form post
//! nor a `no-cors` fetch from a web page gets through.
//!
//! Every process that opens the data directory to serve it (`AppState::new`: `wharf serve`, or a
//! command working in-process when no server runs) makes a fresh secret and `publish`es it, and
//! never reads an old one: a copy taken earlier (for instance by a process that held the port
//! while wharf was down and answered the CLI) is worthless once the real server runs.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use wharf_storage::Layout;

/// The request header that carries the secret.
pub const HEADER: &str = "x-wharf-admin-token";

/// Random bytes in a secret (64 hex digits).
const BYTES: usize = 32;

/// A secret: `2 * BYTES` lowercase hex digits.
#[derive(Clone)]
pub struct AdminSecret(String);

impl std::fmt::Debug for AdminSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminSecret(..)")
    }
}

impl AdminSecret {
    /// A new secret from the operating system's random source (through rustls's provider).
    pub fn generate() -> std::io::Result<AdminSecret> {
        let mut bytes = [0u8; BYTES];
        rustls::crypto::aws_lc_rs::default_provider()
            .secure_random
            .fill(&mut bytes)
            .map_err(|_| std::io::Error::other("the system's random source failed"))?;
        Ok(AdminSecret(hex::encode(bytes)))
    }

    /// A random name of `len` lowercase hex digits (at most 64), for ids that must not collide.
    pub fn random_hex(len: usize) -> std::io::Result<String> {
        let s = AdminSecret::generate()?;
        Ok(s.0[..len.min(s.0.len())].to_string())
    }

    /// The file's text (one trailing newline allowed), if it is a secret.
    pub fn parse(text: &str) -> Option<AdminSecret> {
        let s = text.strip_suffix('\n').unwrap_or(text);
        let well_formed = s.len() == 2 * BYTES
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        well_formed.then(|| AdminSecret(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this secret, in time that does not depend on where they differ.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let ours = self.0.as_bytes();
        if presented.len() != ours.len() {
            return false;
        }
        let diff = ours
            .iter()
            .zip(presented)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }

    /// Writes the secret to `admin.token`, replacing any older one atomically: a temp file
    /// created with mode 0600 (never readable by anyone else, not even for a moment), synced,
    /// then renamed over the old name. One process at a time serves a data directory (sled's
    /// lock), so the temp file's fixed name is its own; one a crash left is replaced.
    pub fn publish(&self, layout: &Layout) -> std::io::Result<()> {
        let temp = layout.admin_token_temp_path();
        match std::fs::remove_file(&temp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let written = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temp)?;
            f.write_all(format!("{}\n", self.0).as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&temp, layout.admin_token_path())
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        written
    }

    /// The secret the server running on `layout`'s data directory published, for the CLI. The
    /// error is one line saying what to do.
    pub fn read(layout: &Layout) -> Result<AdminSecret, String> {
        let path = layout.admin_token_path();
        let text = std::fs::read_to_string(&path).map_err(|e| unreadable(&path, &e))?;
        AdminSecret::parse(&text).ok_or_else(|| {
            format!(
                "{} does not hold an admin secret (restarting wharf writes a new one)",
                path.display()
            )
        })
    }
}

fn unreadable(path: &Path, e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => format!(
            "cannot read the admin secret {}: permission denied; run this command as the user \
             wharf runs as, or as root",
            path.display()
        ),
        std::io::ErrorKind::NotFound => format!(
            "no admin secret at {}: the wharf answering is not serving this data directory \
             (give --data-dir or --config as the server has them)",
            path.display()
        ),
        _ => format!("cannot read the admin secret {}: {e}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn a_secret_matches_only_itself() {
        let s = AdminSecret::generate().unwrap();
        let t = AdminSecret::generate().unwrap();
        assert_ne!(s.as_str(), t.as_str());
        assert!(s.matches(s.as_str().as_bytes()));
        assert!(!s.matches(t.as_str().as_bytes()));
        assert!(!s.matches(&s.as_str().as_bytes()[..63]));
        assert!(!s.matches(b""));
    }

    #[test]
    fn only_64_lowercase_hex_digits_parse() {
        let s = "0123456789abcdef".repeat(4);
        assert!(AdminSecret::parse(&s).is_some());
        assert!(AdminSecret::parse(&format!("{s}\n")).is_some());
        for bad in [
            String::new(),
            s[..63].to_string(),
            format!("{s}0"),
            s.to_uppercase(),
            format!("{s}\n\n"),
            format!(" {}", &s[1..]),
        ] {
            assert!(AdminSecret::parse(&bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn a_published_secret_is_private_to_its_owner_and_replaces_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        // What a crash between create and rename leaves: replaced, not an error.
        std::fs::write(layout.admin_token_temp_path(), "stale").unwrap();
        let old = AdminSecret::generate().unwrap();
        old.publish(&layout).unwrap();
        let new = AdminSecret::generate().unwrap();
        new.publish(&layout).unwrap();
        let read = AdminSecret::read(&layout).unwrap();
        assert_eq!(read.as_str(), new.as_str());
        let mode = std::fs::metadata(layout.admin_token_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!layout.admin_token_temp_path().exists());
    }

    #[test]
    fn a_missing_secret_is_explained_in_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let e = AdminSecret::read(&Layout::new(dir.path())).unwrap_err();
        assert!(e.contains("no admin secret") && !e.contains('\n'), "{e}");
    }
}
