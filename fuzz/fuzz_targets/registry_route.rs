//! The `/v2/` route grammar (`registry::routes::parse`) on arbitrary raw paths, plus the query
//! decoder. Checks, beyond "no panic": an accepted path prints back to exactly itself (nothing is
//! normalised between validation and use), and an accepted repository name is a plain relative
//! path of grammar characters with no `..`, `%`, `\` or empty component.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wharf::registry::routes::{self, Reference, RepoName, Route, Tag, query_param};

fn render(r: &Route) -> String {
    match r {
        Route::Base => String::new(),
        Route::Catalog => "_catalog".to_string(),
        Route::Manifest { name, reference } => format!("{name}/manifests/{reference}"),
        Route::Blob { name, digest } => format!("{name}/blobs/{digest}"),
        Route::TagsList { name } => format!("{name}/tags/list"),
    }
}

fn check_name(n: &RepoName) {
    let s = n.as_str();
    assert!(!s.is_empty() && s.len() <= routes::MAX_NAME_LEN, "{s:?}");
    assert!(!s.contains(".."), "{s:?}");
    assert!(
        s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b)),
        "{s:?}"
    );
    assert!(
        s.split('/')
            .all(|c| !c.is_empty() && !c.starts_with(['.', '_', '-'])),
        "{s:?}"
    );
    assert_eq!(RepoName::parse(s).as_ref(), Ok(n));
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(route) = routes::parse(s) {
        assert_eq!(render(&route), s);
        match &route {
            Route::Manifest { name, reference } => {
                check_name(name);
                if let Reference::Tag(t) = reference {
                    assert!(!t.as_str().contains(['/', '%', '\\', ':']), "{t:?}");
                    assert_eq!(Tag::parse(t.as_str()).as_ref(), Ok(t));
                }
            }
            Route::Blob { name, .. } | Route::TagsList { name } => check_name(name),
            Route::Base | Route::Catalog => {}
        }
    }
    if let Ok(n) = RepoName::parse(s) {
        check_name(&n);
    }
    let _ = query_param(Some(s), "n");
    let _ = query_param(Some(s), "last");
});
