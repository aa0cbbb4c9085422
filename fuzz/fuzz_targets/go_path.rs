//! The `/go/` route grammar (`goproxy::path::parse`) and the case encoding. Checks, beyond "no
//! panic": an accepted path prints back to itself percent-decoded once (the router decodes once,
//! since the go command sends `!` as `%21`), and the printed form parses to the same route with no
//! `%` left; `escape(unescape(s)) == s`; a module
//! file route joined onto a directory source (as `GoState::fetch` does) has only plain components;
//! a sumdb lookup's raw text is exactly the escaped validated module and version; versions never
//! start with `-`, `.` or `/` (CVE-2025-68119).

#![no_main]

use libfuzzer_sys::fuzz_target;
use wharf::goproxy::path::{
    self as go, GoRoute, ModulePath, SumdbPath, Version, escape, is_canonical, unescape,
};

fn render(r: &GoRoute) -> String {
    match r {
        GoRoute::List(m) => format!("{}/@v/list", escape(m.as_str())),
        GoRoute::Latest(m) => format!("{}/@latest", escape(m.as_str())),
        GoRoute::File(m, v, kind) => format!(
            "{}/@v/{}.{}",
            escape(m.as_str()),
            escape(v.as_str()),
            kind.ext()
        ),
        GoRoute::SumdbSupported(db) => format!("sumdb/{db}/supported"),
        GoRoute::SumdbPath(db, p) => format!("sumdb/{db}/{}", p.raw()),
    }
}

/// `%XX` -> the byte it names, once; everything else unchanged.
fn percent_decode_once(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let escape = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()));
        match (b[i], escape) {
            (b'%', Some(h)) => {
                out.push(u8::from_str_radix(h, 16).expect("two hex digits"));
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

fn plain_components(rel: &str) {
    assert!(
        rel.split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains(['\\', '%', '\0'])),
        "{rel:?}"
    );
}

fn check_module(m: &ModulePath) {
    let s = m.as_str();
    plain_components(s);
    assert!(s.split('/').all(|c| !c.starts_with('.')), "{s:?}");
    assert!(!s.contains(['@', '!', ':']), "{s:?}");
}

fn check_version(v: &Version) {
    let s = v.as_str();
    assert!(!s.is_empty() && !s.starts_with(['-', '.', '/']), "{s:?}");
    assert!(!s.contains(['/', '\\', '%', '\0']), "{s:?}");
    assert_ne!(s, "latest");
    assert_eq!(matches!(v, Version::Canonical(_)), is_canonical(s), "{s:?}");
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(u) = unescape(s) {
        assert_eq!(escape(&u), s);
    }
    if let Ok(m) = ModulePath::parse(s) {
        check_module(&m);
    }
    if let Ok(v) = Version::parse(s) {
        check_version(&v);
    }
    let Ok(route) = go::parse(s) else {
        return;
    };
    let printed = render(&route);
    assert_eq!(
        printed.as_bytes(),
        percent_decode_once(s).as_slice(),
        "{s:?}"
    );
    assert!(!printed.contains('%'), "{printed:?}");
    assert_eq!(go::parse(&printed).as_ref(), Ok(&route));
    match &route {
        GoRoute::List(m) | GoRoute::Latest(m) => {
            check_module(m);
            plain_components(&escape(m.as_str()));
        }
        GoRoute::File(m, v, kind) => {
            check_module(m);
            check_version(v);
            plain_components(&format!(
                "{}/@v/{}.{}",
                escape(m.as_str()),
                escape(v.as_str()),
                kind.ext()
            ));
        }
        GoRoute::SumdbSupported(db) => plain_components(db),
        GoRoute::SumdbPath(db, p) => {
            plain_components(db);
            plain_components(&p.raw());
            if let SumdbPath::Lookup {
                module,
                version,
                raw,
            } = p
            {
                check_module(module);
                assert!(is_canonical(version), "{version:?}");
                assert_eq!(
                    raw,
                    &format!("{}@{}", escape(module.as_str()), escape(version))
                );
            }
        }
    }
});
