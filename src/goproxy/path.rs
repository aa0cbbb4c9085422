//! The `/go/` URL grammar as a pure function: the go command's case encoding (`!x` for `X`),
//! module path and version checks (golang.org/x/mod/module rules), and the route. Everything a
//! client sends is checked here before any disk or upstream work.

use std::fmt;

/// Longest module path accepted.
const MAX_PATH_LEN: usize = 512;
/// Longest version or query accepted.
const MAX_VERSION_LEN: usize = 256;

/// Decodes the go command's case encoding strictly: no upper-case letters, `!` only before
/// `a`-`z`, ASCII only.
pub fn unescape(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut bang = false;
    for c in s.chars() {
        if !c.is_ascii() {
            return Err(format!("{s:?}: non-ASCII character in escaped path"));
        }
        if bang {
            if !c.is_ascii_lowercase() {
                return Err(format!(
                    "{s:?}: \"!\" must be followed by a lower-case letter"
                ));
            }
            out.push(c.to_ascii_uppercase());
            bang = false;
        } else if c == '!' {
            bang = true;
        } else if c.is_ascii_uppercase() {
            return Err(format!(
                "{s:?}: upper-case letters must be escaped as \"!\" + lower case"
            ));
        } else {
            out.push(c);
        }
    }
    if bang {
        return Err(format!("{s:?}: trailing \"!\""));
    }
    Ok(out)
}

/// The inverse of `unescape`.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        if c.is_ascii_uppercase() {
            out.push('!');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// A module path that passes the go command's `CheckPath` (golang.org/x/mod/module): the
/// element rules of every path, a dotted lower-case first element, and a major-version suffix
/// that means something. Requests carry the escaped form (`!a` for `A`); it is unescaped
/// (`unescape`) before it is checked here.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModulePath(String);

impl ModulePath {
    pub fn parse(p: &str) -> Result<ModulePath, String> {
        if p.len() > MAX_PATH_LEN {
            return Err(format!("module path longer than {MAX_PATH_LEN} bytes"));
        }
        check_path(p).map_err(|why| format!("malformed module path {p:?}: {why}"))?;
        Ok(ModulePath(p.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ModulePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `CheckPath`, in its order; the reason without the path (the caller names it).
fn check_path(p: &str) -> Result<(), String> {
    // Any path: not empty, no leading dash, no empty element, each element valid.
    if p.is_empty() {
        return Err("empty string".into());
    }
    if p.starts_with('-') {
        return Err("leading dash".into());
    }
    if p.contains("//") {
        return Err("double slash".into());
    }
    if p.ends_with('/') {
        return Err("trailing slash".into());
    }
    for e in p.split('/') {
        check_elem(e)?;
    }
    // A module path: the first element is a host-like name with a dot (a leading slash is an
    // empty first element, refused above).
    let first = p.split('/').next().unwrap_or("");
    if !first.contains('.') {
        return Err("missing dot in first path element".into());
    }
    if let Some(c) = first
        .chars()
        .find(|&c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.'))
    {
        return Err(format!("invalid char {c:?} in first path element"));
    }
    // A trailing major-version element must be one the go command can select.
    if split_path_version(p).is_none() {
        return Err(if p.starts_with("gopkg.in/") {
            "invalid version: a gopkg.in path ends in .vN (.v0, .v1, .v2, ...)".into()
        } else {
            "invalid version: a major-version suffix is /v2 or higher, without leading zeros or dots"
                .into()
        });
    }
    Ok(())
}

/// One path element (`checkElem` for module paths).
fn check_elem(e: &str) -> Result<(), String> {
    if e.is_empty() {
        return Err("empty path element".into());
    }
    if e.bytes().all(|b| b == b'.') {
        return Err(format!("invalid path element {e:?}"));
    }
    if e.starts_with('.') {
        return Err("leading dot in path element".into());
    }
    if e.ends_with('.') {
        return Err("trailing dot in path element".into());
    }
    // ASCII letters, digits and `-._~` only.
    if let Some(c) = e
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || "-._~".contains(c)))
    {
        return Err(format!("invalid char {c:?}"));
    }
    // Names Windows reserves, whatever the case, up to the first dot.
    let short = e.split('.').next().unwrap_or("");
    const WINDOWS: &[&str] = &[
        "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8",
        "COM9", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
    ];
    if WINDOWS.iter().any(|w| w.eq_ignore_ascii_case(short)) {
        return Err(format!(
            "{short:?} disallowed as path element component on Windows"
        ));
    }
    // Nor what looks like a Windows short name: `~` and only digits after it.
    if let Some(t) = short.rfind('~')
        && t + 1 < short.len()
        && short[t + 1..].bytes().all(|b| b.is_ascii_digit())
    {
        return Err("trailing tilde and digits in path element".into());
    }
    Ok(())
}

/// `SplitPathVersion`: the path without its major-version suffix, and the suffix (`/vN` for
/// N >= 2, or a gopkg.in `.vN` for any N, `""` when there is none); `None` when the last element
/// looks like a suffix the go command cannot select (`/v0`, `/v1`, `/v02`, `/v2.0`).
fn split_path_version(p: &str) -> Option<(&str, &str)> {
    if p.starts_with("gopkg.in/") {
        return split_gopkg_in(p);
    }
    let b = p.as_bytes();
    let mut i = b.len();
    let mut dot = false;
    while i > 0 && (b[i - 1].is_ascii_digit() || b[i - 1] == b'.') {
        dot |= b[i - 1] == b'.';
        i -= 1;
    }
    if i <= 1 || i == b.len() || b[i - 1] != b'v' || b[i - 2] != b'/' {
        return Some((p, ""));
    }
    let (prefix, major) = p.split_at(i - 2);
    if dot || major.len() <= 2 || major.as_bytes()[2] == b'0' || major == "/v1" {
        return None;
    }
    Some((prefix, major))
}

/// gopkg.in paths end in `.vN` (any N, `.v0` included, no leading zeros), optionally followed
/// by `-unstable`.
fn split_gopkg_in(p: &str) -> Option<(&str, &str)> {
    let b = p.as_bytes();
    let mut i = p.strip_suffix("-unstable").unwrap_or(p).len();
    while i > 0 && b[i - 1].is_ascii_digit() {
        i -= 1;
    }
    if i <= 1 || b[i - 1] != b'v' || b[i - 2] != b'.' {
        return None;
    }
    let (prefix, major) = p.split_at(i - 2);
    if major.len() <= 2 || (major.as_bytes()[2] == b'0' && major != ".v0") {
        return None;
    }
    Some((prefix, major))
}

/// A version as requested: canonical semver (immutable content) or a query such as a branch
/// name or commit (only meaningful for `.info`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Version {
    Canonical(String),
    Query(String),
}

impl Version {
    pub fn parse(v: &str) -> Result<Version, String> {
        if v.is_empty() || v.len() > MAX_VERSION_LEN {
            return Err("empty or overlong version".into());
        }
        if is_canonical(v) {
            return Ok(Version::Canonical(v.to_string()));
        }
        // Queries are passed to upstream; refuse anything that is not a plain file name
        // (CVE-2025-68119: versions starting with '-' or '/').
        let ok = !v.starts_with(['-', '.'])
            && v != "latest"
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._+~".contains(&b));
        if !ok {
            return Err(format!("invalid version {v:?}"));
        }
        Ok(Version::Query(v.to_string()))
    }

    pub fn as_str(&self) -> &str {
        match self {
            Version::Canonical(s) | Version::Query(s) => s,
        }
    }
}

/// `vMAJOR.MINOR.PATCH[-prerelease][+incompatible]` with no leading zeros, as `semver.Canonical`
/// produces (build metadata other than `+incompatible` is not canonical).
pub fn is_canonical(v: &str) -> bool {
    let Some(rest) = v.strip_prefix('v') else {
        return false;
    };
    let rest = rest.strip_suffix("+incompatible").unwrap_or(rest);
    let (core, pre) = match rest.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (rest, None),
    };
    let nums: Vec<&str> = core.split('.').collect();
    let num_ok = |n: &str| {
        !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && (n == "0" || !n.starts_with('0'))
    };
    if nums.len() != 3 || !nums.iter().all(|n| num_ok(n)) {
        return false;
    }
    if let Some(pre) = pre {
        for id in pre.split('.') {
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                return false;
            }
            if id.bytes().all(|b| b.is_ascii_digit()) && id.len() > 1 && id.starts_with('0') {
                return false;
            }
        }
    }
    true
}

/// Semantic-version precedence of two canonical versions (`+incompatible` ignored).
pub fn semver_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    fn parts(v: &str) -> (Vec<u64>, Option<&str>) {
        let v = v.trim_start_matches('v');
        let v = v.strip_suffix("+incompatible").unwrap_or(v);
        let (core, pre) = match v.split_once('-') {
            Some((c, p)) => (c, Some(p)),
            None => (v, None),
        };
        (
            core.split('.').map(|n| n.parse().unwrap_or(0)).collect(),
            pre,
        )
    }
    let ((ca, pa), (cb, pb)) = (parts(a), parts(b));
    ca.cmp(&cb).then_with(|| match (pa, pb) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(x), Some(y)) => {
            let (mut xs, mut ys) = (x.split('.'), y.split('.'));
            loop {
                match (xs.next(), ys.next()) {
                    (None, None) => return Ordering::Equal,
                    (None, Some(_)) => return Ordering::Less,
                    (Some(_), None) => return Ordering::Greater,
                    (Some(i), Some(j)) => {
                        let o = match (i.parse::<u64>(), j.parse::<u64>()) {
                            (Ok(m), Ok(n)) => m.cmp(&n),
                            (Ok(_), Err(_)) => Ordering::Less,
                            (Err(_), Ok(_)) => Ordering::Greater,
                            (Err(_), Err(_)) => i.cmp(j),
                        };
                        if o != Ordering::Equal {
                            return o;
                        }
                    }
                }
            }
        }
    })
}

/// A pseudo-version (`vX.Y.Z-[pre.]yyyymmddhhmmss-abcdefabcdef`), which `@latest` takes last.
fn is_pseudo(v: &str) -> bool {
    let v = v.strip_suffix("+incompatible").unwrap_or(v);
    let mut tail = v.rsplit('-');
    let (Some(rev), Some(time)) = (tail.next(), tail.next()) else {
        return false;
    };
    let time = time.rsplit('.').next().unwrap_or(time);
    rev.len() == 12
        && rev.bytes().all(|b| b.is_ascii_hexdigit())
        && time.len() == 14
        && time.bytes().all(|b| b.is_ascii_digit())
}

/// What the go command picks from an `@v/list` for `query` when the proxy has no `@latest` (or
/// no `.info` for a query like `v1.2`): `latest`, `vX` or `vX.Y` (newest matching); among the
/// matches, the newest release, else the newest pre-release, else the newest pseudo-version.
pub fn newest_in_list(list: &str, query: &str) -> Option<String> {
    let matches = |v: &&str| {
        query == "latest" || (v.starts_with(query) && v[query.len()..].starts_with(['.', '-', '+']))
    };
    let candidates: Vec<&str> = list
        .lines()
        .map(str::trim)
        .filter(|v| is_canonical(v))
        .filter(matches)
        .collect();
    let newest = |pick: &dyn Fn(&str) -> bool| {
        candidates
            .iter()
            .copied()
            .filter(|v| pick(v))
            .max_by(|a, b| semver_cmp(a, b))
    };
    let release = |v: &str| !v.trim_end_matches("+incompatible").contains('-');
    newest(&release)
        .or_else(|| newest(&|v| !release(v) && !is_pseudo(v)))
        .or_else(|| newest(&is_pseudo))
        .map(str::to_string)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    Info,
    Mod,
    Zip,
}

impl FileKind {
    pub fn ext(self) -> &'static str {
        match self {
            FileKind::Info => "info",
            FileKind::Mod => "mod",
            FileKind::Zip => "zip",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            FileKind::Info => "application/json",
            FileKind::Mod => "text/plain; charset=utf-8",
            FileKind::Zip => "application/zip",
        }
    }

    /// The largest file accepted (golang.org/x/mod/zip limits; `.info` is small JSON).
    pub fn max_size(self) -> u64 {
        match self {
            FileKind::Info => 1 << 20,
            FileKind::Mod => 16 << 20,
            FileKind::Zip => 500 << 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GoRoute {
    List(ModulePath),
    Latest(ModulePath),
    File(ModulePath, Version, FileKind),
    SumdbSupported(String),
    /// `lookup/<mod>@<ver>` or `tile/...`: the path below the database name, validated.
    SumdbPath(String, SumdbPath),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SumdbPath {
    Lookup {
        module: ModulePath,
        version: String,
        /// The escaped form as it appears in the URL.
        raw: String,
    },
    Tile {
        raw: String,
        partial: bool,
    },
}

impl SumdbPath {
    pub fn raw(&self) -> String {
        match self {
            SumdbPath::Lookup { raw, .. } => format!("lookup/{raw}"),
            SumdbPath::Tile { raw, .. } => raw.clone(),
        }
    }
}

/// Why a `/go/` request was refused before any work: 400 or 404, with a reason for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathError {
    pub status: u16,
    pub message: String,
}

fn bad(status: u16, message: impl Into<String>) -> PathError {
    PathError {
        status,
        message: message.into(),
    }
}

/// Parses the raw path after `/go/`. The go command percent-encodes `!` (`%21`), so the path is
/// percent-decoded exactly once, to printable ASCII only; the checks then run on the decoded
/// text, so encoded traversal (`%2e%2e`, `%2f`) fails them like the plain form.
pub fn parse(rest: &str) -> Result<GoRoute, PathError> {
    let decoded = percent_decode_once(rest)
        .ok_or_else(|| bad(400, "invalid percent-encoding in request path"))?;
    let rest = decoded.as_str();
    if rest.contains(['%', '\\'])
        || rest.contains("//")
        || rest.split('/').any(|e| e == ".." || e == ".")
    {
        return Err(bad(
            400,
            "invalid characters or path elements in request path",
        ));
    }
    if let Some(db_rest) = rest.strip_prefix("sumdb/") {
        return parse_sumdb(db_rest);
    }
    if let Some(m) = rest.strip_suffix("/@latest") {
        return Ok(GoRoute::Latest(module(m)?));
    }
    let Some((m, file)) = rest.rsplit_once("/@v/") else {
        return Err(bad(
            404,
            "not a GOPROXY path: expected <module>/@v/... or <module>/@latest",
        ));
    };
    let module = module(m)?;
    if file == "list" {
        return Ok(GoRoute::List(module));
    }
    let (ver, kind) = match file.rsplit_once('.') {
        Some((v, "info")) => (v, FileKind::Info),
        Some((v, "mod")) => (v, FileKind::Mod),
        Some((v, "zip")) => (v, FileKind::Zip),
        _ => {
            return Err(bad(
                404,
                format!("unknown file {file:?}: expected .info, .mod or .zip"),
            ));
        }
    };
    let ver = unescape(ver).map_err(|m| bad(400, format!("bad version: {m}")))?;
    let version = Version::parse(&ver).map_err(|m| bad(400, m))?;
    if kind != FileKind::Info && matches!(version, Version::Query(_)) {
        return Err(bad(
            400,
            format!("{ver:?} is not a canonical version; .mod and .zip need one such as v1.2.3"),
        ));
    }
    Ok(GoRoute::File(module, version, kind))
}

/// `%XX` -> byte, once; `None` for a malformed escape or one that decodes to anything but
/// printable ASCII.
pub fn percent_decode_once(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            let v = u8::from_str_radix(hex, 16).ok()?;
            if !(0x21..=0x7e).contains(&v) {
                return None;
            }
            out.push(v as char);
            i += 3;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    s.is_ascii().then_some(out)
}

fn module(escaped: &str) -> Result<ModulePath, PathError> {
    let p = unescape(escaped).map_err(|m| bad(400, format!("bad module path: {m}")))?;
    ModulePath::parse(&p).map_err(|m| bad(400, m))
}

fn parse_sumdb(rest: &str) -> Result<GoRoute, PathError> {
    let (name, path) = rest
        .split_once('/')
        .ok_or_else(|| bad(404, "no such sumdb path"))?;
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    {
        return Err(bad(400, "invalid checksum database name"));
    }
    if path == "supported" {
        return Ok(GoRoute::SumdbSupported(name.into()));
    }
    if let Some(lk) = path.strip_prefix("lookup/") {
        let (m, v) = lk
            .rsplit_once('@')
            .ok_or_else(|| bad(400, "lookup needs <module>@<version>"))?;
        let module = module(m)?;
        let version = unescape(v).map_err(|e| bad(400, format!("bad version: {e}")))?;
        if !is_canonical(&version) {
            return Err(bad(400, format!("{version:?} is not a canonical version")));
        }
        return Ok(GoRoute::SumdbPath(
            name.into(),
            SumdbPath::Lookup {
                module,
                version,
                raw: lk.to_string(),
            },
        ));
    }
    if path.starts_with("tile/") {
        let partial = check_tile_path(path).ok_or_else(|| bad(400, "invalid tile path"))?;
        return Ok(GoRoute::SumdbPath(
            name.into(),
            SumdbPath::Tile {
                raw: path.to_string(),
                partial,
            },
        ));
    }
    Err(bad(
        404,
        "no such sumdb path: only supported, lookup/ and tile/ are proxied",
    ))
}

/// `tile/<H>/<L or data>/[x<ddd>/...]<ddd>[.p/<W>]`; returns whether it is a partial tile.
fn check_tile_path(p: &str) -> Option<bool> {
    let parts: Vec<&str> = p.split('/').collect();
    if parts.len() < 4 || parts[0] != "tile" {
        return None;
    }
    let small = |s: &str| !s.is_empty() && s.len() <= 2 && s.bytes().all(|b| b.is_ascii_digit());
    if !small(parts[1]) || !(parts[2] == "data" || small(parts[2])) {
        return None;
    }
    let mut rest = &parts[3..];
    let mut partial = false;
    if rest.len() >= 2 && rest[rest.len() - 2].ends_with(".p") {
        let w = rest[rest.len() - 1];
        if !(small(w) || (w.len() == 3 && w.bytes().all(|b| b.is_ascii_digit()))) {
            return None;
        }
        partial = true;
        rest = &rest[..rest.len() - 1];
    }
    let n = rest.len();
    for (i, seg) in rest.iter().enumerate() {
        let seg = if i + 1 == n && partial {
            seg.strip_suffix(".p")?
        } else {
            seg
        };
        let digits = if i + 1 < n {
            seg.strip_prefix('x')?
        } else {
            seg
        };
        if digits.len() != 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
    }
    Some(partial)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_encoding_round_trips_and_rejects_bad_escapes() {
        for (esc, dec) in [
            ("github.com/!azure/azure-sdk", "github.com/Azure/azure-sdk"),
            ("v1.0.0-!r!c1", "v1.0.0-RC1"),
            ("plain", "plain"),
        ] {
            assert_eq!(unescape(esc).unwrap(), dec);
            assert_eq!(escape(dec), esc);
        }
        for bad in ["Upper", "a!", "a!1", "a!!b", "a!B", "é", "x/!"] {
            assert!(unescape(bad).is_err(), "{bad}");
        }
    }

    /// golang.org/x/mod/module's `checkPathTests` (the `CheckPath` column), then more major-version
    /// and gopkg.in cases, each answered by x/mod's `CheckPath` when it was written down here.
    const CHECK_PATH: &[(&str, bool)] = &[
        ("x.y/z", true),
        ("x.y", true),
        ("", false),
        ("x.y/\u{FFFD}z", false), // x/mod has "\xFF": invalid UTF-8 cannot be a &str
        ("/x.y/z", false),
        ("x./z", false),
        (".x/z", false),
        ("-x/z", false),
        ("x..y/z", true),
        ("x.y/z/../../w", false),
        ("x.y//z", false),
        ("x.y/z//w", false),
        ("x.y/z/", false),
        ("x.y/z/v0", false),
        ("x.y/z/v1", false),
        ("x.y/z/v2", true),
        ("x.y/z/v2.0", false),
        ("X.y/z", false),
        ("!x.y/z", false),
        ("_x.y/z", false),
        ("x.y!/z", false),
        ("x.y\"/z", false),
        ("x.y#/z", false),
        ("x.y$/z", false),
        ("x.y%/z", false),
        ("x.y&/z", false),
        ("x.y'/z", false),
        ("x.y(/z", false),
        ("x.y)/z", false),
        ("x.y*/z", false),
        ("x.y+/z", false),
        ("x.y,/z", false),
        ("x.y-/z", true),
        ("x.y./zt", false),
        ("x.y:/z", false),
        ("x.y;/z", false),
        ("x.y</z", false),
        ("x.y=/z", false),
        ("x.y>/z", false),
        ("x.y?/z", false),
        ("x.y@/z", false),
        ("x.y[/z", false),
        ("x.y\\/z", false),
        ("x.y]/z", false),
        ("x.y^/z", false),
        ("x.y_/z", false),
        ("x.y`/z", false),
        ("x.y{/z", false),
        ("x.y}/z", false),
        ("x.y~/z", false),
        ("x.y/z!", false),
        ("x.y/z\"", false),
        ("x.y/z#", false),
        ("x.y/z$", false),
        ("x.y/z%", false),
        ("x.y/z&", false),
        ("x.y/z'", false),
        ("x.y/z(", false),
        ("x.y/z)", false),
        ("x.y/z*", false),
        ("x.y/z++", false),
        ("x.y/z,", false),
        ("x.y/z-", true),
        ("x.y/z.t", true),
        ("x.y/z/t", true),
        ("x.y/z:", false),
        ("x.y/z;", false),
        ("x.y/z<", false),
        ("x.y/z=", false),
        ("x.y/z>", false),
        ("x.y/z?", false),
        ("x.y/z@", false),
        ("x.y/z[", false),
        ("x.y/z\\", false),
        ("x.y/z]", false),
        ("x.y/z^", false),
        ("x.y/z_", true),
        ("x.y/z`", false),
        ("x.y/z{", false),
        ("x.y/z}", false),
        ("x.y/z~", true),
        ("x.y/x.foo", true),
        ("x.y/aux.foo", false),
        ("x.y/prn", false),
        ("x.y/prn2", true),
        ("x.y/com", true),
        ("x.y/com1", false),
        ("x.y/com1.txt", false),
        ("x.y/calm1", true),
        ("x.y/z~0", false),
        ("x.y/z~09", false),
        ("x.y/z09", true),
        ("x.y/z09~", true),
        ("x.y/z09~09z", true),
        ("x.y/z09~09z~09", false),
        ("github.com/!123/logrus", false),
        ("github.com/user/unicode/испытание", false),
        ("../x", false),
        ("./y", false),
        ("x:y", false),
        ("\\temp\\foo", false),
        (".gitignore", false),
        (".github/ISSUE_TEMPLATE", false),
        ("x☺y", false),
        // Beyond x/mod's table.
        ("example.com/m/v01", false),
        ("example.com/m/v10", true),
        ("example.com/v2", true),
        ("example.com/v1/m", true),
        ("example.com/m/V1", true),
        ("example.com/m/v", true),
        ("example.com/m/v1.2", false),
        ("example.com/m/v2.", false),
        ("gopkg.in/yaml.v0", true),
        ("gopkg.in/yaml.v1", true),
        ("gopkg.in/yaml.v1-unstable", true),
        ("gopkg.in/yaml.v0-unstable", false),
        ("gopkg.in/yaml.v01", false),
        ("gopkg.in/yaml.v", false),
        ("gopkg.in/yaml", false),
        ("gopkg.in/yaml.v2/sub", false),
        ("gopkg.in/v2", false),
        ("x.y/z.v1", true),
        ("x.y/z~1a", true),
        ("x.y/CON.txt", false),
        ("x.y/lpt9", false),
        ("x.y/com0", true),
        ("a.com/b@v", false),
        ("golang.org/x/text", true),
        ("github.com/Azure/go-autorest", true),
    ];

    #[test]
    fn module_paths_follow_check_path() {
        for &(p, ok) in CHECK_PATH {
            let got = ModulePath::parse(p);
            assert_eq!(got.is_ok(), ok, "{p:?}: {got:?}");
            if let Err(why) = got {
                assert!(why.starts_with("malformed module path "), "{p:?}: {why}");
            }
        }
        assert!(ModulePath::parse(&format!("x.y/{}", "a".repeat(MAX_PATH_LEN))).is_err());
    }

    #[test]
    fn major_version_suffixes_split_like_split_path_version() {
        for (prefix, major) in [
            ("x.y/z", ""),
            ("x.y/z", "/v2"),
            ("x.y/z", "/v3"),
            ("x.y/v", ""),
            ("gopkg.in/yaml", ".v0"),
            ("gopkg.in/yaml", ".v1"),
            ("gopkg.in/yaml", ".v2"),
            ("gopkg.in/yaml", ".v3"),
            ("gopkg.in/yaml", ".v1-unstable"),
        ] {
            let p = format!("{prefix}{major}");
            assert_eq!(split_path_version(&p), Some((prefix, major)), "{p}");
        }
        for &(p, _) in CHECK_PATH {
            if let Some((prefix, major)) = split_path_version(p) {
                assert_eq!(format!("{prefix}{major}"), p);
            }
        }
        let why = ModulePath::parse("example.com/m/v1").unwrap_err();
        assert!(why.contains("/v2 or higher"), "{why}");
        let why = ModulePath::parse("gopkg.in/yaml").unwrap_err();
        assert!(why.contains(".vN"), "{why}");
    }

    #[test]
    fn escaped_paths_are_unescaped_before_the_check() {
        assert_eq!(
            parse("github.com/!azure/go-autorest/v2/@v/list"),
            Ok(GoRoute::List(
                ModulePath::parse("github.com/Azure/go-autorest/v2").unwrap()
            ))
        );
        for (escaped, why) in [
            ("example.com/m/v1/@v/list", "invalid version"),
            ("gopkg.in/yaml/@v/list", "invalid version"),
            ("example.com/!c!o!n/@v/list", "disallowed as path element"),
            ("example.com/m~1/@v/list", "trailing tilde and digits"),
        ] {
            let e = parse(escaped).unwrap_err();
            assert_eq!(e.status, 400, "{escaped}");
            assert!(e.message.contains(why), "{escaped}: {}", e.message);
        }
    }

    #[test]
    fn canonical_versions() {
        for ok in [
            "v0.0.0",
            "v1.2.3",
            "v1.2.3-pre.1",
            "v2.0.0+incompatible",
            "v0.0.0-20230101120000-abcdef123456",
            "v1.0.0-rc.1",
        ] {
            assert!(is_canonical(ok), "{ok}");
        }
        for not in [
            "1.2.3",
            "v1.2",
            "v01.2.3",
            "v1.2.3+build",
            "v1.2.3-",
            "v1.2.3-01",
            "v1.2.3-a..b",
            "latest",
        ] {
            assert!(!is_canonical(not), "{not}");
        }
        assert_eq!(
            Version::parse("master").unwrap(),
            Version::Query("master".into())
        );
        for bad in ["-x", "/etc", "../x", "latest", ".hidden", "a b"] {
            assert!(Version::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn routes_parse() {
        let m = || ModulePath::parse("github.com/Azure/sdk").unwrap();
        assert_eq!(
            parse("github.com/!azure/sdk/@v/list"),
            Ok(GoRoute::List(m()))
        );
        assert_eq!(
            parse("github.com/!azure/sdk/@latest"),
            Ok(GoRoute::Latest(m()))
        );
        assert_eq!(
            parse("github.com/!azure/sdk/@v/v1.0.0-!r!c1.zip"),
            Ok(GoRoute::File(
                m(),
                Version::Canonical("v1.0.0-RC1".into()),
                FileKind::Zip
            ))
        );
        assert_eq!(
            parse("github.com/!azure/sdk/@v/main.info"),
            Ok(GoRoute::File(
                m(),
                Version::Query("main".into()),
                FileKind::Info
            ))
        );
        assert_eq!(
            parse("sumdb/sum.golang.org/supported"),
            Ok(GoRoute::SumdbSupported("sum.golang.org".into()))
        );
        assert!(matches!(
            parse("sumdb/sum.golang.org/lookup/golang.org/x/text@v0.14.0"),
            Ok(GoRoute::SumdbPath(_, SumdbPath::Lookup { .. }))
        ));
        assert!(matches!(
            parse("sumdb/sum.golang.org/tile/8/0/x001/234"),
            Ok(GoRoute::SumdbPath(
                _,
                SumdbPath::Tile { partial: false, .. }
            ))
        ));
        assert!(matches!(
            parse("sumdb/sum.golang.org/tile/8/1/005.p/37"),
            Ok(GoRoute::SumdbPath(_, SumdbPath::Tile { partial: true, .. }))
        ));
        assert!(matches!(
            parse("sumdb/sum.golang.org/tile/8/data/000"),
            Ok(GoRoute::SumdbPath(..))
        ));
        // The go command sends `!` percent-encoded.
        assert_eq!(
            parse("github.com/%21azure/sdk/@v/list"),
            Ok(GoRoute::List(m()))
        );
    }

    #[test]
    fn hostile_routes_are_refused() {
        let cases = [
            ("example.com/m/@v/../../etc/passwd", 400),
            ("example.com/m/@v/%2e%2e.zip", 400),
            ("example.com/M/@v/list", 400),
            ("example.com/!m!/@v/list", 400),
            ("example.com/m/@v/main.zip", 400),
            ("example.com/m/@v/-x.info", 400),
            ("example.com/m/@v/v1.0.0.tar", 404),
            ("example.com/m", 404),
            ("example.com\\m/@v/list", 400),
            ("example.com/m/%2e%2e/@v/list", 400),
            ("example.com%2fm/@v/../list", 400),
            ("example.com/m/@v/%252e.info", 400),
            ("example.com/m/@v/%zz.info", 400),
            ("example.com/m/@v/%00.info", 400),
            ("example.com/%c3%a9/@v/list", 400),
            ("sumdb/sum.golang.org/latest", 404),
            ("sumdb/sum.golang.org/tile/8/0/1234", 400),
            ("sumdb/sum.golang.org/tile/8/0/../x", 400),
            ("sumdb/sum.golang.org/lookup/example.com/m@master", 400),
        ];
        for (p, status) in cases {
            assert_eq!(parse(p).map_err(|e| e.status), Err(status), "{p}");
        }
    }

    #[test]
    fn a_list_without_latest_resolves_as_the_go_command_would() {
        let list = "v1.1.0\nv1.10.0-rc.1\nv1.2.0\nv1.2.1\nv0.0.0-20240102030405-abcdefabcdef\nnot-a-version\n";
        assert_eq!(newest_in_list(list, "latest").as_deref(), Some("v1.2.1"));
        assert_eq!(newest_in_list(list, "v1.1").as_deref(), Some("v1.1.0"));
        assert_eq!(
            newest_in_list(list, "v1.10").as_deref(),
            Some("v1.10.0-rc.1")
        );
        assert_eq!(newest_in_list(list, "v1").as_deref(), Some("v1.2.1"));
        assert_eq!(newest_in_list(list, "v2"), None);
        let pre = "v1.0.0-rc.2\nv1.0.0-rc.10\nv0.0.0-20240102030405-abcdefabcdef\n";
        assert_eq!(
            newest_in_list(pre, "latest").as_deref(),
            Some("v1.0.0-rc.10")
        );
        let pseudo = "v0.0.0-20240102030405-abcdefabcdef\nv0.0.0-20250102030405-abcdefabcdef\n";
        assert_eq!(
            newest_in_list(pseudo, "latest").as_deref(),
            Some("v0.0.0-20250102030405-abcdefabcdef")
        );
        assert_eq!(newest_in_list("", "latest"), None);
        assert_eq!(
            semver_cmp("v1.0.0-alpha", "v1.0.0-alpha.1"),
            std::cmp::Ordering::Less
        );
        assert_eq!(
            semver_cmp("v1.0.0-beta", "v1.0.0-alpha.1"),
            std::cmp::Ordering::Greater
        );
    }
}
