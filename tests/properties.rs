//! Property tests for every parser that reads client or upstream input: the `/v2/` and `/go/`
//! route grammars, digests and the blob paths built from them, `WWW-Authenticate`, manifest
//! checks and the egress patterns. Pure functions only: no sockets, no disk.
//!
//! Each parser is driven three ways: hostile input (traversal, percent-encodings, backslashes,
//! NUL, unicode, very long strings) must never panic and never be accepted in a dangerous shape;
//! input generated from the grammar must be accepted; and whatever is accepted must print back
//! to exactly the text it came from (the router never normalises, so nothing can be smuggled
//! between what was validated and what is forwarded or stored).
//!
//! The cargo-fuzz targets in `fuzz/` assert the same invariants over much longer runs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Component, Path};

use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{Map, Value, json};
use wharf::goproxy::path::{
    self as go, GoRoute, ModulePath, SumdbPath, Version, escape, is_canonical, unescape,
};
use wharf::registry::manifest;
use wharf::registry::routes::{self, Reference, RepoName, Route, Tag, query_param};
use wharf::upstream::auth::{Challenge, parse_challenge};
use wharf::upstream::egress::{
    AddrClass, AllowEntry, Cidr, EgressPolicy, HostPattern, canonical_ip, classify,
};
use wharf_storage::{Digest, Layout};

const CASES: u32 = 256;

// ------------------------------------------------------------------ strategies

/// Fragments that break naive path handling, mixed with pieces of the real grammars.
const HOSTILE_TOKENS: &[&str] = &[
    "..",
    ".",
    "/",
    "//",
    "%2e%2e",
    "%2E%2E",
    "%2f",
    "%2F",
    "%5c",
    "%00",
    "%",
    "\\",
    "\0",
    ";",
    "#",
    "?",
    "&",
    "=",
    "+",
    " ",
    "\t",
    "\n",
    "\r\n",
    "é",
    "\u{202e}",
    "\u{fffd}",
    "ａ",
    "Ⅻ",
    "manifests",
    "blobs",
    "tags",
    "list",
    "_catalog",
    "latest",
    "sha256:",
    "sha512:",
    ":",
    "@",
    "@v",
    "@v/",
    "@latest",
    "!",
    "!a",
    "!!",
    "v1.2.3",
    "v0.0.0-",
    "+incompatible",
    ".info",
    ".mod",
    ".zip",
    "sumdb",
    "sum.golang.org",
    "lookup",
    "tile",
    "x001",
    "000",
    ".p",
    "data",
    "A",
    "Z",
    "-",
    "_",
    "__",
    "~",
    "con",
    "example.com",
    "Bearer",
    "realm",
    "\"",
];

const HEX64: &str = "[0-9a-f]{64}";

/// Arbitrary text, dense near-grammar text, spliced hostile tokens, raw bytes and long runs.
fn hostile() -> BoxedStrategy<String> {
    let token = prop_oneof![
        3 => select(HOSTILE_TOKENS).prop_map(str::to_string),
        2 => "[a-z0-9]{1,8}",
        1 => HEX64,
        1 => any::<String>(),
    ];
    prop_oneof![
        2 => any::<String>(),
        2 => "[a-zA-Z0-9._/%:@!~;#\\\\\\x00 -]{0,80}",
        4 => prop::collection::vec(token, 0..24).prop_map(|t| t.concat()),
        1 => prop::collection::vec(any::<u8>(), 0..256)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        1 => ("[a-z0-9./_-]", 200usize..3000).prop_map(|(s, n)| s.repeat(n)),
    ]
    .boxed()
}

/// One component of a repository name: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn name_component() -> impl Strategy<Value = String> {
    "[a-z0-9]{1,6}((\\.|_|__|-{1,3})[a-z0-9]{1,6}){0,3}"
}

fn repo_name() -> impl Strategy<Value = String> {
    prop::collection::vec(name_component(), 1..5)
        .prop_map(|c| c.join("/"))
        .prop_filter("at most 255 characters", |n| {
            n.len() <= routes::MAX_NAME_LEN
        })
}

fn tag() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}"
}

fn digest_text() -> impl Strategy<Value = String> {
    HEX64.prop_map(|h| format!("sha256:{h}"))
}

/// A module path element the go command accepts, with upper case so escaping matters. Elements
/// that are reserved on Windows or look like a major-version suffix are left out (golang.org/x/mod
/// rejects or treats them specially), and so is `~`, which x/mod refuses as `~<digits>`.
fn module_elem() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-]([A-Za-z0-9._-]{0,10}[A-Za-z0-9_-])?".prop_filter("not special", |e| {
        const RESERVED: &[&str] = &[
            "con", "prn", "aux", "nul", "com1", "com2", "com3", "com4", "com5", "com6", "com7",
            "com8", "com9", "lpt1", "lpt2", "lpt3", "lpt4", "lpt5", "lpt6", "lpt7", "lpt8", "lpt9",
        ];
        let stem = e.split('.').next().unwrap_or("").to_ascii_lowercase();
        let major = e.len() > 1
            && e.starts_with('v')
            && e[1..].bytes().all(|b| b.is_ascii_digit() || b == b'.');
        !RESERVED.contains(&stem.as_str()) && !major
    })
}

fn module_path() -> impl Strategy<Value = String> {
    (
        "[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?\\.[a-z]{2,6}",
        prop::collection::vec(module_elem(), 0..4),
    )
        .prop_filter("not gopkg.in", |(host, _)| host != "gopkg.in")
        .prop_map(|(host, rest)| {
            std::iter::once(host)
                .chain(rest)
                .collect::<Vec<_>>()
                .join("/")
        })
}

/// `vMAJOR.MINOR.PATCH[-pre][+incompatible]` as `semver.Canonical` prints it, upper case allowed.
fn canonical_version() -> impl Strategy<Value = String> {
    let num = "0|[1-9][0-9]{0,5}";
    let ident = "[0-9A-Za-z-]{0,4}[A-Za-z-][0-9A-Za-z-]{0,4}|0|[1-9][0-9]{0,5}";
    (
        num,
        num,
        num,
        prop::option::of(prop::collection::vec(ident, 1..4)),
        any::<bool>(),
    )
        .prop_map(|(a, b, c, pre, incompatible)| {
            let mut v = format!("v{a}.{b}.{c}");
            if let Some(pre) = pre {
                v.push('-');
                v.push_str(&pre.join("."));
            }
            if incompatible {
                v.push_str("+incompatible");
            }
            v
        })
}

fn file_ext() -> impl Strategy<Value = &'static str> {
    select(&["info", "mod", "zip"][..])
}

// ------------------------------------------------------------------ printers

/// The request path a registry route was parsed from.
fn render_route(r: &Route) -> String {
    match r {
        Route::Base => String::new(),
        Route::Catalog => "_catalog".to_string(),
        Route::Manifest { name, reference } => format!("{name}/manifests/{reference}"),
        Route::Blob { name, digest } => format!("{name}/blobs/{digest}"),
        Route::TagsList { name } => format!("{name}/tags/list"),
        Route::Referrers { name, digest } => format!("{name}/referrers/{digest}"),
    }
}

/// The request path a `/go/` route was parsed from.
fn render_go(r: &GoRoute) -> String {
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

/// `%XX` -> the byte it names, once; everything else unchanged (the `/go/` router decodes once).
fn percent_decode_once(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let escape = b
            .get(i + 1..i + 3)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit));
        match (b[i], escape) {
            (b'%', Some(h)) => {
                out.push(u8::from_str_radix(std::str::from_utf8(h).unwrap(), 16).unwrap());
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// No `%`, `\`, NUL, leading or trailing `/`, and no empty, `.`, `..` or dot-led components.
fn is_tame_path(s: &str) -> bool {
    !s.contains(['%', '\\', '\0']) && s.split('/').all(|c| !c.is_empty() && !c.starts_with('.'))
}

fn name_of(r: &Route) -> Option<&RepoName> {
    match r {
        Route::Manifest { name, .. }
        | Route::Blob { name, .. }
        | Route::TagsList { name }
        | Route::Referrers { name, .. } => Some(name),
        Route::Base | Route::Catalog => None,
    }
}

// ------------------------------------------------------------------ /v2/ routes

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn registry_route_parser_never_panics_on_hostile_paths(path in hostile()) {
        let _ = routes::parse(&path);
        let _ = RepoName::parse(&path);
        let _ = Tag::parse(&path);
        for kind in ["manifests", "blobs", "tags"] {
            let _ = routes::parse(&format!("library/alpine/{kind}/{path}"));
            let _ = routes::parse(&format!("{path}/{kind}/latest"));
        }
    }

    #[test]
    fn accepted_registry_routes_print_back_to_the_exact_request_path(path in hostile()) {
        if let Ok(route) = routes::parse(&path) {
            prop_assert_eq!(render_route(&route), path.as_str());
        }
        let near = format!("{path}/manifests/latest");
        if let Ok(route) = routes::parse(&near) {
            prop_assert_eq!(render_route(&route), near);
        }
    }

    #[test]
    fn accepted_repository_names_never_hold_traversal_encodings_or_empty_components(
        path in hostile(),
        suffix in select(&["/manifests/latest", "/tags/list", ""][..]),
    ) {
        let full = format!("{path}{suffix}");
        let from_route = routes::parse(&full).ok().and_then(|r| name_of(&r).cloned());
        for name in [from_route, RepoName::parse(&path).ok()].into_iter().flatten() {
            let n = name.as_str();
            prop_assert!(is_tame_path(n) && !n.contains(".."), "{:?}", n);
            prop_assert!(n.len() <= routes::MAX_NAME_LEN);
            prop_assert!(n.bytes().all(|b| b.is_ascii_lowercase()
                || b.is_ascii_digit() || b"._-/".contains(&b)), "{:?}", n);
        }
        if let Ok(Route::Manifest { reference: Reference::Tag(t), .. }) = routes::parse(&full) {
            prop_assert!(!t.as_str().contains(['/', '%', '\\', '\0', ':']), "{:?}", t);
        }
    }

    #[test]
    fn grammar_valid_names_tags_and_digests_are_accepted_by_every_route(
        name in repo_name(),
        tag in tag(),
        digest in digest_text(),
    ) {
        let n = RepoName::parse(&name).unwrap();
        let t = Tag::parse(&tag).unwrap();
        let d = Digest::parse(&digest).unwrap();
        prop_assert_eq!(
            routes::parse(&format!("{name}/manifests/{tag}")).unwrap(),
            Route::Manifest { name: n.clone(), reference: Reference::Tag(t) }
        );
        prop_assert_eq!(
            routes::parse(&format!("{name}/manifests/{digest}")).unwrap(),
            Route::Manifest { name: n.clone(), reference: Reference::Digest(d.clone()) }
        );
        prop_assert_eq!(
            routes::parse(&format!("{name}/blobs/{digest}")).unwrap(),
            Route::Blob { name: n.clone(), digest: d }
        );
        prop_assert_eq!(
            routes::parse(&format!("{name}/tags/list")).unwrap(),
            Route::TagsList { name: n }
        );
    }

    #[test]
    fn names_tags_and_references_round_trip_through_their_printers(
        name in repo_name(),
        tag in tag(),
        digest in digest_text(),
    ) {
        let n = RepoName::parse(&name).unwrap();
        prop_assert_eq!(n.as_str(), name.as_str());
        prop_assert_eq!(RepoName::parse(&n.to_string()).unwrap(), n.clone());
        if let Some(rest) = n.strip_first() {
            prop_assert_eq!(RepoName::parse(rest.as_str()).unwrap(), rest);
        }
        prop_assert_eq!(RepoName::parse(n.with_library().as_str()).ok(),
            (name.len() + "library/".len() <= routes::MAX_NAME_LEN).then(|| n.with_library()));
        let t = Tag::parse(&tag).unwrap();
        prop_assert_eq!(Tag::parse(t.as_str()).unwrap(), t.clone());
        for reference in [Reference::Tag(t), Reference::Digest(Digest::parse(&digest).unwrap())] {
            let reparsed = routes::parse(&format!("{name}/manifests/{reference}")).unwrap();
            prop_assert_eq!(reparsed, Route::Manifest { name: n.clone(), reference });
        }
    }

    #[test]
    fn query_param_decodes_what_a_percent_encoder_wrote(
        value in any::<String>(),
        other in "[a-z]{1,5}",
    ) {
        let q = format!("{other}x=1&n={}&last={}", percent_encode(&value), percent_encode(&value));
        prop_assert_eq!(query_param(Some(&q), "last"), Some(value.clone()));
        prop_assert_eq!(query_param(Some(&q), "n"), Some(value));
        prop_assert_eq!(query_param(Some(&q), "missing"), None);
    }

    #[test]
    fn query_param_never_panics_on_hostile_query_strings(q in hostile(), key in hostile()) {
        let _ = query_param(Some(&q), &key);
        let _ = query_param(Some(&q), "n");
        let _ = query_param(Some(&format!("n={q}")), "n");
    }
}

// ------------------------------------------------------------------ digests and blob paths

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn digest_parser_accepts_exactly_sha256_with_64_lowercase_hex(s in hostile()) {
        let canonical = s.strip_prefix("sha256:").is_some_and(|h| {
            h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        });
        prop_assert_eq!(Digest::parse(&s).is_ok(), canonical, "{:?}", s);
        let spliced = format!("sha256:{s}");
        let _ = Digest::parse(&spliced);
    }

    #[test]
    fn every_sha256_hex_string_parses_and_prints_back_unchanged(text in digest_text()) {
        let d = Digest::parse(&text).unwrap();
        let printed = d.to_string();
        prop_assert_eq!(&printed, &text);
        prop_assert_eq!(d.as_str(), text.as_str());
        prop_assert_eq!(d.hex(), &text[7..]);
        prop_assert_eq!(Digest::parse(&printed).unwrap(), d.clone());
        let json = serde_json::to_string(&d).unwrap();
        prop_assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
    }

    #[test]
    fn any_digest_that_parses_has_a_blob_path_strictly_under_the_data_root(
        text in prop_oneof![digest_text(), hostile()],
        root in select(&["/var/lib/wharf", "data", "/", "./x/../y", "/srv/wh arf/é"][..]),
    ) {
        let Ok(d) = Digest::parse(&text) else { return Ok(()) };
        let layout = Layout::new(root);
        let path = layout.blob_path(&d);
        let rest = path.strip_prefix(Path::new(root)).expect("blob path under the root");
        let comps: Vec<Component> = rest.components().collect();
        let hex = d.hex();
        prop_assert_eq!(comps, vec![
            Component::Normal("blobs".as_ref()),
            Component::Normal("sha256".as_ref()),
            Component::Normal(hex[..2].as_ref()),
            Component::Normal(hex.as_ref()),
        ]);
        prop_assert_eq!(hex.len(), 64);
        prop_assert_eq!(layout.fanout_dir(&d), path.parent().unwrap());
        prop_assert_eq!(layout.digest_of_blob_path(&path), Some(d));
    }

    #[test]
    fn paths_outside_the_fan_out_scheme_never_map_back_to_a_digest(
        tail in hostile(),
        text in digest_text(),
    ) {
        let layout = Layout::new("/data");
        let d = Digest::parse(&text).unwrap();
        let p = layout.blobs_dir().join(&tail);
        if let Some(found) = layout.digest_of_blob_path(&p) {
            prop_assert_eq!(layout.blob_path(&found), p);
        }
        let wrong_fanout = layout.blobs_dir().join(format!("{tail}x")).join(d.hex());
        prop_assert_eq!(layout.digest_of_blob_path(&wrong_fanout), None);
    }
}

// ------------------------------------------------------------------ /go/ routes

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn go_path_parser_never_panics_on_hostile_paths(s in hostile()) {
        let _ = go::parse(&s);
        let _ = unescape(&s);
        let _ = escape(&s);
        let _ = ModulePath::parse(&s);
        let _ = Version::parse(&s);
        let _ = is_canonical(&s);
        let _ = go::parse(&format!("example.com/m/@v/{s}"));
        let _ = go::parse(&format!("{s}/@v/v1.0.0.zip"));
        let _ = go::parse(&format!("sumdb/sum.golang.org/{s}"));
        let _ = go::parse(&format!("sumdb/sum.golang.org/tile/{s}"));
        let _ = go::parse(&format!("sumdb/sum.golang.org/lookup/{s}"));
    }

    #[test]
    fn accepted_go_routes_print_back_to_the_request_path_decoded_once(
        s in hostile(),
        prefix in select(&["", "example.com/m/@v/", "sumdb/sum.golang.org/",
                           "sumdb/sum.golang.org/tile/8/"][..]),
    ) {
        let path = format!("{prefix}{s}");
        if let Ok(route) = go::parse(&path) {
            let printed = render_go(&route);
            prop_assert_eq!(&printed, &percent_decode_once(&path));
            prop_assert!(!printed.contains('%'), "{:?}", printed);
            prop_assert_eq!(go::parse(&printed), Ok(route));
        }
    }

    #[test]
    fn percent_encoded_go_paths_parse_like_their_plain_form(
        module in module_path(),
        version in canonical_version(),
        ext in file_ext(),
        picks in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        // The go command sends `!` as `%21`; any other byte may be encoded too.
        let plain = format!("{}/@v/{}.{ext}", escape(&module), escape(&version));
        let mut encoded: Vec<String> = plain.chars().map(String::from).collect();
        for i in picks {
            let at = i.index(encoded.len());
            encoded[at] = format!("%{:02X}", plain.as_bytes()[at]);
        }
        let encoded = encoded.concat().replace('!', "%21");
        prop_assert_eq!(go::parse(&encoded), go::parse(&plain));
        prop_assert!(go::parse(&plain).is_ok());
        for traversal in ["%2e%2e/", "%2E%2E%2F", "%2f", "%5c", "%252e", "%00", "%c3%a9"] {
            let hostile = format!("{}/{traversal}@v/{}.{ext}", escape(&module), escape(&version));
            prop_assert!(go::parse(&hostile).is_err(), "{:?}", hostile);
        }
    }

    #[test]
    fn escape_inverts_unescape_whenever_unescape_succeeds(s in hostile()) {
        if let Ok(u) = unescape(&s) {
            prop_assert_eq!(escape(&u), s);
        }
    }

    #[test]
    fn unescape_inverts_escape_for_ascii_text_without_bangs(s in "[ -~]{0,64}") {
        prop_assume!(!s.contains('!'));
        let e = escape(&s);
        prop_assert!(!e.bytes().any(|b| b.is_ascii_uppercase()));
        prop_assert_eq!(unescape(&e), Ok(s));
    }

    #[test]
    fn grammar_valid_module_paths_and_canonical_versions_are_accepted(
        module in module_path(),
        version in canonical_version(),
        ext in file_ext(),
    ) {
        let m = ModulePath::parse(&module).unwrap();
        prop_assert_eq!(m.as_str(), module.as_str());
        prop_assert_eq!(ModulePath::parse(&m.to_string()).unwrap(), m.clone());
        prop_assert!(is_canonical(&version), "{}", version);
        prop_assert_eq!(Version::parse(&version), Ok(Version::Canonical(version.clone())));
        let em = escape(&module);
        let ev = escape(&version);
        let file = go::parse(&format!("{em}/@v/{ev}.{ext}")).unwrap();
        let GoRoute::File(pm, pv, kind) = file else { panic!("{file:?}") };
        prop_assert_eq!(pm, m.clone());
        prop_assert_eq!(pv, Version::Canonical(version.clone()));
        prop_assert_eq!(kind.ext(), ext);
        prop_assert_eq!(go::parse(&format!("{em}/@v/list")), Ok(GoRoute::List(m.clone())));
        prop_assert_eq!(go::parse(&format!("{em}/@latest")), Ok(GoRoute::Latest(m.clone())));
        let lookup = go::parse(&format!("sumdb/sum.golang.org/lookup/{em}@{ev}")).unwrap();
        let GoRoute::SumdbPath(db, SumdbPath::Lookup { module: lm, version: lv, raw }) = lookup
        else { panic!("{lookup:?}") };
        prop_assert_eq!(db, "sum.golang.org");
        prop_assert_eq!(lm, m);
        prop_assert_eq!(lv, version);
        prop_assert_eq!(raw, format!("{em}@{ev}"));
        // The unescaped (upper-case) form is not a valid request path unless it has no upper case.
        let raw_upper = go::parse(&format!("{module}/@v/list"));
        prop_assert_eq!(raw_upper.is_ok(), module == em);
    }

    #[test]
    fn accepted_module_paths_and_versions_never_hold_traversal_or_encodings(s in hostile()) {
        if let Ok(m) = ModulePath::parse(&s) {
            prop_assert!(is_tame_path(m.as_str()), "{:?}", m);
            prop_assert!(!m.as_str().contains(['@', '!', ':']), "{:?}", m);
        }
        if let Ok(v) = Version::parse(&s) {
            // CVE-2025-68119: a version must never read as an option or a path.
            let v = v.as_str();
            prop_assert!(!v.starts_with(['-', '.', '/']), "{:?}", v);
            prop_assert!(is_tame_path(v) && !v.contains('/'), "{:?}", v);
            prop_assert_ne!(v, "latest");
        }
    }

    #[test]
    fn accepted_go_files_stay_inside_a_directory_source(
        s in hostile(),
        prefix in select(&["", "example.com/m/@v/", "example.com/"][..]),
    ) {
        // `GoState::fetch` joins `<escaped module>/@v/<escaped version>.<ext>` onto a local
        // directory for `dir` sources: every accepted route must keep that join inside it.
        let path = format!("{prefix}{s}");
        let rel = match go::parse(&path) {
            Ok(GoRoute::File(m, v, kind)) => {
                format!("{}/@v/{}.{}", escape(m.as_str()), escape(v.as_str()), kind.ext())
            }
            Ok(GoRoute::List(m)) => format!("{}/@v/list", escape(m.as_str())),
            Ok(GoRoute::Latest(m)) => format!("{}/@latest", escape(m.as_str())),
            _ => return Ok(()),
        };
        prop_assert!(rel.split('/').all(|c| !c.is_empty() && c != "." && c != ".."), "{:?}", rel);
        let dir = Path::new("/srv/modules");
        let joined = dir.join(&rel);
        prop_assert!(joined.starts_with(dir));
        prop_assert!(Path::new(&rel).components().all(|c| matches!(c, Component::Normal(_))));
    }

    #[test]
    fn mangled_canonical_versions_are_not_canonical(
        version in canonical_version(),
        mangle in 0usize..5,
    ) {
        let core_end = version.find(['-', '+']).unwrap_or(version.len());
        let bad = match mangle {
            0 => version[1..].to_string(),
            1 => format!("v0{}", &version[1..]),
            2 => format!("{version}+build"),
            3 => format!("{}.0{}", &version[..core_end], &version[core_end..]),
            _ => format!("{version}."),
        };
        prop_assert!(!is_canonical(&bad), "{:?}", bad);
        // At most a query for `.info`; never an immutable `.zip`.
        let zip = format!("example.com/m/@v/{}.zip", escape(&bad));
        prop_assert!(go::parse(&zip).is_err(), "{:?}", zip);
    }
}

// ------------------------------------------------------------------ WWW-Authenticate

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn www_authenticate_parser_never_panics_on_hostile_headers(s in hostile()) {
        let _ = parse_challenge(&s);
        for scheme in ["Bearer ", "Basic ", "bearer realm=", "Bearer realm=\""] {
            if let Some(Challenge::Bearer(b)) = parse_challenge(&format!("{scheme}{s}")) {
                prop_assert!(!b.realm.is_empty());
            }
        }
    }

    #[test]
    fn quoted_bearer_challenges_round_trip_whatever_their_parameters_hold(
        realm in any::<String>(),
        service in prop::option::of(any::<String>()),
        scope in prop::option::of(any::<String>()),
        sep in select(&[",", ", ", " , ", ",,"][..]),
        scheme in select(&["Bearer", "bearer", "BEARER"][..]),
    ) {
        prop_assume!(!realm.is_empty());
        let mut header = format!("{scheme} realm={}", quote(&realm));
        if let Some(s) = &service {
            header.push_str(&format!("{sep}service={}", quote(s)));
        }
        if let Some(s) = &scope {
            header.push_str(&format!("{sep}scope={}", quote(s)));
        }
        let Some(Challenge::Bearer(b)) = parse_challenge(&header) else {
            panic!("{header:?} did not parse as Bearer");
        };
        prop_assert_eq!(b.realm, realm);
        prop_assert_eq!(b.service, service);
        prop_assert_eq!(b.scope, scope);
    }
}

// ------------------------------------------------------------------ manifests

fn json_key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(&["layers", "manifests", "mediaType", "schemaVersion", "config", "digest",
                      "urls", "subject", "size", "MediaType"][..]).prop_map(str::to_string),
        1 => any::<String>(),
    ]
}

fn media_type() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(&[manifest::OCI_MANIFEST, manifest::OCI_INDEX, manifest::DOCKER_MANIFEST,
                      manifest::DOCKER_LIST, "application/json", "text/plain",
                      "application/octet-stream", "text/html", ""][..]).prop_map(str::to_string),
        1 => any::<String>(),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        media_type().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((json_key(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn content_type() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop_oneof![
        3 => media_type(),
        1 => (media_type(), "; ?charset=[a-z0-9-]{0,8}").prop_map(|(m, p)| format!("{m}{p}")),
        1 => hostile(),
    ])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn manifest_check_never_panics_on_arbitrary_json_values(
        doc in json_value(),
        ct in content_type(),
    ) {
        let body = serde_json::to_vec(&doc).unwrap();
        let result = manifest::check(&body, ct.as_deref());
        let _ = manifest::media_type_of_stored(&body);
        if let Ok(served) = result {
            let obj = doc.as_object().expect("only objects are accepted");
            prop_assert!(!(obj.contains_key("layers") && obj.contains_key("manifests")));
            // The served type is the document's own mediaType whenever it declares one.
            match obj.get("mediaType") {
                Some(Value::String(declared)) => prop_assert_eq!(&served, declared),
                Some(other) => prop_assert!(false, "non-string mediaType {other:?} accepted"),
                None => {}
            }
        }
    }

    #[test]
    fn manifest_check_never_panics_on_arbitrary_bytes(
        body in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..512),
            hostile().prop_map(String::into_bytes),
        ],
        ct in content_type(),
    ) {
        let _ = manifest::check(&body, ct.as_deref());
        let _ = manifest::media_type_of_stored(&body);
    }

    #[test]
    fn documents_with_both_layers_and_manifests_are_always_refused(
        layers in json_value(),
        manifests in json_value(),
        declared in prop::option::of(media_type()),
        ct in content_type(),
    ) {
        let mut doc = json!({"schemaVersion": 2, "layers": layers, "manifests": manifests});
        if let Some(d) = declared {
            doc["mediaType"] = Value::String(d);
        }
        prop_assert!(manifest::check(&serde_json::to_vec(&doc).unwrap(), ct.as_deref()).is_err());
    }

    #[test]
    fn a_media_type_that_disagrees_with_a_specific_content_type_is_always_refused(
        declared in media_type(),
        header in select(&[manifest::OCI_MANIFEST, manifest::OCI_INDEX,
                           manifest::DOCKER_MANIFEST, manifest::DOCKER_LIST][..]),
        params in "(; ?[a-z]{1,6}=[a-z0-9]{0,6})?",
    ) {
        prop_assume!(declared != header);
        let doc = json!({"schemaVersion": 2, "mediaType": declared, "layers": []});
        let ct = format!("{header}{params}");
        prop_assert!(manifest::check(&serde_json::to_vec(&doc).unwrap(), Some(&ct)).is_err());
    }

    #[test]
    fn manifest_children_are_exactly_the_valid_digests_it_names(
        config in prop::option::of(prop_oneof![digest_text(), hostile()]),
        subject in prop::option::of(prop_oneof![digest_text(), hostile()]),
        layers in prop::collection::vec(prop_oneof![digest_text(), hostile()], 0..6),
        key in select(&["layers", "manifests", "blobs"][..]),
        noise in json_value(),
    ) {
        let descriptor = |d: &String| json!({"mediaType": "x", "digest": d, "size": 1});
        let mut doc = json!({"schemaVersion": 2, "annotations": noise});
        if let Some(c) = &config {
            doc["config"] = descriptor(c);
        }
        if let Some(s) = &subject {
            doc["subject"] = descriptor(s);
        }
        doc[key] = Value::Array(layers.iter().map(descriptor).collect());
        let want: Vec<Digest> = config.iter().chain(&subject).chain(&layers)
            .filter_map(|d| Digest::parse(d).ok())
            .collect();
        prop_assert_eq!(manifest::children(&serde_json::to_vec(&doc).unwrap()), want);
    }

    #[test]
    fn manifest_children_never_panic_on_arbitrary_documents(doc in json_value(), junk in hostile()) {
        let _ = manifest::children(&serde_json::to_vec(&doc).unwrap());
        let _ = manifest::children(junk.as_bytes());
    }

    #[test]
    fn deeply_nested_manifests_are_refused_without_overflowing_the_stack(
        depth in 100usize..20_000,
        open in select(&["[", "{\"a\":"][..]),
    ) {
        let body = open.repeat(depth);
        prop_assert!(manifest::check(body.as_bytes(), None).is_err());
        prop_assert!(manifest::children(body.as_bytes()).is_empty());
        let wrapped = format!("{{\"layers\":{}", open.repeat(depth));
        prop_assert!(manifest::check(wrapped.as_bytes(), None).is_err());
    }
}

// ------------------------------------------------------------------ egress

fn any_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|v| IpAddr::V4(Ipv4Addr::from(v))),
        any::<u128>().prop_map(|v| IpAddr::V6(Ipv6Addr::from(v))),
        any::<u32>().prop_map(|v| IpAddr::V6(Ipv4Addr::from(v).to_ipv6_mapped())),
    ]
}

fn policy(allow: &[String]) -> EgressPolicy {
    EgressPolicy::new(allow).unwrap()
}

fn admits(p: &EgressPolicy, url: &str) -> bool {
    reqwest::Url::parse(url).is_ok_and(|u| p.check(&u).is_ok())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn host_patterns_never_panic_and_never_accept_schemes_ports_paths_or_userinfo(s in hostile()) {
        if let Ok(p) = HostPattern::parse(&s) {
            let host = match &p {
                HostPattern::Exact(h) | HostPattern::Suffix(h) => h,
            };
            prop_assert!(!host.is_empty());
            prop_assert!(!host.contains(['/', '@', '?', '#', ' ', '*']), "{:?} -> {:?}", s, p);
        }
        let _ = EgressPolicy::new(std::slice::from_ref(&s));
    }

    #[test]
    fn allow_entries_never_panic_and_a_port_entry_admits_its_port_only(
        s in hostile(),
        port in 1u16..,
        other in 1u16..,
    ) {
        if let Ok(e) = AllowEntry::parse(&s) {
            prop_assert!(e.port != Some(0));
            prop_assert!(AllowEntry::parse(&e.to_string()).is_ok(), "{:?} -> {}", s, e);
        }
        let p = policy(&[format!("reg.example:{port}")]);
        let same = format!("http://reg.example:{port}/v2/");
        let another = format!("http://reg.example:{other}/v2/");
        prop_assert!(admits(&p, &same));
        prop_assert_eq!(admits(&p, &another), other == port);
        prop_assert!(admits(&policy(&["reg.example".into()]), &another));
    }

    #[test]
    fn wildcard_patterns_admit_subdomains_but_never_the_apex_or_a_lookalike(
        labels in prop::collection::vec("[a-z]([a-z0-9-]{0,6}[a-z0-9])?", 1..4),
        sub in "[a-z0-9]{1,8}",
    ) {
        let suffix = labels.join(".");
        prop_assume!(!suffix.contains("--") && !"evil.example".ends_with(&suffix));
        let wildcard = policy(&[format!("*.{suffix}")]);
        let exact = policy(std::slice::from_ref(&suffix));
        let upper = sub.to_uppercase();
        let cases = [
            (&wildcard, format!("https://{sub}.{suffix}/v2/"), true),
            (&wildcard, format!("https://{sub}.{sub}.{suffix}/v2/"), true),
            (&wildcard, format!("https://{upper}.{suffix}./v2/"), true),
            (&wildcard, format!("https://{suffix}/v2/"), false),
            (&wildcard, format!("https://{sub}{suffix}/v2/"), false),
            (&wildcard, format!("https://{sub}.{suffix}.evil.example/v2/"), false),
            (&exact, format!("http://{suffix}:5000/v2/"), true),
            (&exact, format!("http://{sub}.{suffix}/v2/"), false),
            (&exact, format!("ftp://{suffix}/"), false),
        ];
        for (policy, url, want) in cases {
            prop_assert_eq!(admits(policy, &url), want, "{}", url);
        }
    }

    #[test]
    fn ipv4_mapped_ipv6_addresses_classify_as_the_ipv4_address_they_carry(v in any::<u32>()) {
        let v4 = Ipv4Addr::from(v);
        let mapped = IpAddr::V6(v4.to_ipv6_mapped());
        prop_assert_eq!(classify(mapped), classify(IpAddr::V4(v4)));
        prop_assert_eq!(canonical_ip(mapped), IpAddr::V4(v4));
    }

    #[test]
    fn addresses_in_forbidden_ranges_are_never_public(
        host in any::<u32>(),
        range in select(&[
            ("0.0.0.0", 8), ("10.0.0.0", 8), ("100.64.0.0", 10), ("127.0.0.0", 8),
            ("169.254.0.0", 16), ("172.16.0.0", 12), ("192.168.0.0", 16), ("224.0.0.0", 4),
            ("240.0.0.0", 4),
        ][..]),
        v6 in any::<u128>(),
        v6range in select(&[
            ("::", 96), ("::1", 128), ("fc00::", 7), ("fe80::", 10), ("ff00::", 8),
            ("64:ff9b::", 96), ("64:ff9b:1::", 48), ("2002::", 16), ("2001::", 32),
        ][..]),
    ) {
        let (net, bits) = range;
        let net = u32::from(net.parse::<Ipv4Addr>().unwrap());
        let ip = Ipv4Addr::from(net | (host & (u32::MAX >> bits)));
        prop_assert_ne!(classify(IpAddr::V4(ip)), AddrClass::Public, "{}", ip);
        prop_assert_ne!(classify(IpAddr::V6(ip.to_ipv6_mapped())), AddrClass::Public);
        let (net6, bits6) = v6range;
        let net6 = u128::from(net6.parse::<Ipv6Addr>().unwrap());
        let mask = u128::MAX.checked_shr(bits6).unwrap_or(0);
        let ip6 = Ipv6Addr::from(net6 | (v6 & mask));
        prop_assert_ne!(classify(IpAddr::V6(ip6)), AddrClass::Public, "{}", ip6);
        prop_assert!(policy(&[]).check_addr(IpAddr::V6(ip6)).is_err());
    }

    #[test]
    fn a_cidr_contains_its_own_network_and_rejects_longer_prefixes(
        ip in any_ip(),
        bits in 0u8..=128,
        other in any_ip(),
        junk in hostile(),
    ) {
        let _ = Cidr::parse(&junk);
        let _ = Cidr::parse(&format!("{ip}/{junk}"));
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let text = format!("{ip}/{bits}");
        match Cidr::parse(&text) {
            Ok(c) => {
                prop_assert!(bits <= max);
                // Networks written as IPv4-mapped IPv6 match nothing (see fuzz/README.md).
                if canonical_ip(ip) == ip {
                    prop_assert!(c.contains(ip), "{} does not contain {}", text, ip);
                    prop_assert!(Cidr::parse(&ip.to_string()).unwrap().contains(ip));
                    if bits == 0 && canonical_ip(other).is_ipv4() == ip.is_ipv4() {
                        prop_assert!(c.contains(other), "{} does not contain {}", text, other);
                    }
                }
            }
            Err(_) => prop_assert!(bits > max, "{} refused", text),
        }
    }

    #[test]
    fn classify_is_total_and_check_addr_agrees_with_it(ip in any_ip()) {
        let class = classify(ip);
        let verdict = policy(&[]).check_addr(ip);
        prop_assert_eq!(verdict.is_ok(), class == AddrClass::Public);
        prop_assert_eq!(verdict.unwrap_or_else(|c| c), class);
        let _ = class.to_string();
    }
}
