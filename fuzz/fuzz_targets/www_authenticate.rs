//! `upstream::auth::parse_challenge` on arbitrary `WWW-Authenticate` values, and the token
//! response. Checks, beyond "no panic": a Bearer challenge always has a non-empty realm, and
//! printing a parsed challenge back with quoted parameters parses to the same challenge.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wharf::upstream::auth::{Challenge, TokenResponse, parse_challenge};

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

fn render(c: &Challenge) -> String {
    match c {
        Challenge::Bearer(b) => {
            let mut h = format!("Bearer realm={}", quote(&b.realm));
            if let Some(s) = &b.service {
                h.push_str(&format!(",service={}", quote(s)));
            }
            if let Some(s) = &b.scope {
                h.push_str(&format!(",scope={}", quote(s)));
            }
            h
        }
        Challenge::Basic { realm: Some(r) } => format!("Basic realm={}", quote(r)),
        Challenge::Basic { realm: None } => "Basic".to_string(),
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = serde_json::from_slice::<TokenResponse>(data) {
        let _ = t.token();
        assert!(!t.lifetime().is_zero());
    }
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Some(c) = parse_challenge(s) else {
        return;
    };
    if let Challenge::Bearer(b) = &c {
        assert!(!b.realm.is_empty());
    }
    let printed = render(&c);
    assert_eq!(parse_challenge(&printed).as_ref(), Some(&c), "{printed:?}");
});
