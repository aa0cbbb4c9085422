//! `wharf check-config` and `wharf check-egress`: what the config and the egress policy decide,
//! printed for a person.

use std::process::ExitCode;

use crate::app::Checked;

/// Explains the egress decision for `url`: host rule, resolved addresses and their classes.
pub async fn check_egress(checked: &Checked, url: &str) -> Result<ExitCode, crate::Error> {
    use std::fmt::Write as _;
    let invalid = |m: String| crate::Error::Config(crate::config::ConfigError::Invalid(m));
    let policy = checked.egress();
    let url =
        reqwest::Url::parse(url).map_err(|e| invalid(format!("{url:?} is not a URL: {e}")))?;
    let mut o = String::new();
    let _ = writeln!(o, "url:  {}", crate::upstream::egress::redact(&url));
    let host_ok = match policy.check(&url) {
        Ok(()) => {
            let rule = policy.matching_rule(&url).unwrap_or_default();
            let _ = writeln!(o, "host: allowed by egress.allow entry {rule:?}");
            true
        }
        Err(e) => {
            let _ = writeln!(o, "host: REFUSED: {e}");
            false
        }
    };
    let mut any_addr = false;
    if let Some(host) = url.host_str() {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
            let _ = writeln!(
                o,
                "addresses (IP literal; allowed only when listed in egress.allow):"
            );
            let _ = writeln!(o, "  {ip:<40} {}", crate::upstream::egress::classify(ip));
            any_addr = host_ok;
        } else if !host_ok {
            // A refused name is never looked up: the query itself would reach the outside.
            let _ = writeln!(o, "addresses: not resolved (the host is refused)");
        } else {
            let source = if policy.is_pinned(host) {
                "egress.resolve"
            } else {
                "DNS"
            };
            match policy.resolve(host).await {
                Ok(addrs) if addrs.is_empty() => {
                    let _ = writeln!(o, "addresses ({source}): none");
                }
                Ok(addrs) => {
                    let _ = writeln!(o, "addresses ({source}):");
                    for (ip, verdict) in addrs {
                        let (class, word) = match verdict {
                            Ok(c) => (c, "allowed"),
                            Err(c) => (c, "REFUSED (egress.allow_cidrs)"),
                        };
                        any_addr |= word == "allowed";
                        let _ = writeln!(o, "  {ip:<40} {class:<45} {word}");
                    }
                }
                Err(e) => {
                    let _ = writeln!(o, "addresses ({source}): cannot resolve: {e}");
                }
            }
        }
    }
    gateway_verdict(checked, &url, &mut o).map_err(invalid)?;
    let allowed = host_ok && any_addr;
    let _ = writeln!(
        o,
        "verdict: {}",
        if allowed { "allowed" } else { "refused" }
    );
    let _ = std::io::Write::write_all(&mut std::io::stdout(), o.as_bytes());
    Ok(if allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The gateway's host decision for `url`, when `[gateway]` is configured.
fn gateway_verdict(checked: &Checked, url: &reqwest::Url, o: &mut String) -> Result<(), String> {
    use std::fmt::Write as _;
    let config = checked.config();
    if let Some(gateway) = crate::gateway::policy(config)? {
        let via = config.gateway.as_ref().and_then(|g| g.parent_shown(config));
        let _ = match gateway.check(url) {
            Ok(()) if via.is_some() => writeln!(
                o,
                "gateway: host allowed by gateway.allow (reached through egress.proxy, which \
                 resolves it)"
            ),
            Ok(()) => writeln!(
                o,
                "gateway: host allowed by gateway.allow (addresses as above)"
            ),
            Err(_) => writeln!(o, "gateway: REFUSED: not in gateway.allow"),
        };
    }
    Ok(())
}

/// `[gateway]`'s effective settings, if it is configured.
fn print_gateway(c: &crate::config::Config, o: &mut String) {
    use std::fmt::Write as _;
    let d = |t: std::time::Duration| humantime::format_duration(t).to_string();
    if let Some(g) = &c.gateway {
        let _ = writeln!(o, "gateway.listen             = {}", g.listen);
        let _ = writeln!(
            o,
            "gateway.allow              = {}",
            g.allow_entries(c).join(", ")
        );
        let _ = writeln!(
            o,
            "gateway.allow_clients      = {}",
            g.client_ranges(c).join(", ")
        );
        let _ = writeln!(
            o,
            "gateway                    = require_auth {}, idle {}, max {}, {} tunnels at most",
            g.require_auth,
            d(g.idle_timeout),
            d(g.max_duration),
            g.max_tunnels
        );
        let via = match (g.parent_shown(c), g.parent_passed_over(c)) {
            (Some(p), _) => format!("through egress.proxy {p}"),
            (None, Some(u)) => format!(
                "direct (egress.proxy {}://{} passed over: the gateway goes through http:// \
                 proxies only)",
                u.scheme(),
                u.host_str().unwrap_or("")
            ),
            (None, None) => "direct".into(),
        };
        let _ = writeln!(o, "gateway.via_egress_proxy   = {via}");
    }
}

/// The effective settings, one per line; secrets are named by their source, never printed. A
/// credential that cannot be read here is a warning on standard error: `serve` would stop on it,
/// but the check may run where the secrets are not.
pub fn print_config(checked: &Checked) {
    use std::fmt::Write as _;
    for e in checked.unread_credentials() {
        eprintln!("wharf: warning: {e} (serve will not start without it)");
    }
    let c = checked.config();
    let d = |t: std::time::Duration| humantime::format_duration(t).to_string();
    let mut o = String::new();
    let _ = writeln!(o, "config OK");
    let _ = writeln!(o, "listen                     = {}", c.listen);
    let _ = writeln!(o, "data_dir                   = {}", c.data_dir.display());
    let _ = writeln!(o, "offline                    = {}", c.offline);
    let _ = writeln!(
        o,
        "log                        = {:?}, level {}",
        c.log.format, c.log.level
    );
    let _ = writeln!(
        o,
        "registry.default_upstream  = {}",
        c.registry.default_upstream
    );
    let _ = writeln!(o, "registry.tag_ttl           = {}", d(c.registry.tag_ttl));
    let _ = writeln!(
        o,
        "registry.max_manifest_size = {}",
        c.registry.max_manifest_size
    );
    let _ = writeln!(o, "registry.max_blob_size = {}", c.registry.max_blob_size);
    for u in &c.registry.upstreams {
        let auth = auth_summary(&u.username, &u.password_file, &u.password_env);
        let lib = if u.library_prefix() {
            ", library/ prefix"
        } else {
            ""
        };
        let eps = u.endpoints();
        let urls: Vec<&str> = eps.iter().map(|e| e.url.as_str()).collect();
        let _ = writeln!(
            o,
            "registry.upstream {:<16} {} ({auth}{lib})",
            u.name,
            urls.join(", ")
        );
        for e in eps.iter().filter(|_| eps.len() > 1) {
            let auth = auth_summary(&e.username, &e.password_file, &e.password_env);
            let own = if e.username.is_some() {
                auth
            } else {
                "upstream's credentials".into()
            };
            let _ = writeln!(o, "  endpoint {} weight {} ({own})", e.url, e.weight);
        }
        refused_endpoints(
            checked,
            &format!("registry.upstream {}", u.name),
            &eps,
            &mut o,
        );
    }
    let g = &c.go;
    let _ = writeln!(o, "go.enabled                 = {}", g.enabled);
    let labels: Vec<String> = g.upstreams.iter().map(|u| u.label()).collect();
    let _ = writeln!(o, "go.upstreams               = {}", labels.join(", "));
    for u in &g.upstreams {
        refused_endpoints(checked, "go.upstreams", &u.0, &mut o);
    }
    let _ = writeln!(o, "go.list_ttl                = {}", d(g.list_ttl));
    let _ = writeln!(o, "go.not_found_ttl           = {}", d(g.not_found_ttl));
    let _ = writeln!(o, "go.verify                  = {}", g.verify);
    let _ = writeln!(o, "go.sumdb_ttl               = {}", d(g.sumdb_ttl));
    for db in &g.sumdbs {
        let _ = writeln!(o, "go.sumdb {:<25} {} (key {})", db.name, db.url(), db.key);
    }
    for p in &g.private {
        let eps = p.endpoints();
        let urls: Vec<&str> = eps.iter().map(|e| e.url.as_str()).collect();
        let src = match &p.dir {
            Some(dir) => format!("directory {}", dir.display()),
            None if !eps.is_empty() => format!(
                "{} ({})",
                urls.join(", "),
                auth_summary(&p.username, &p.password_file, &p.password_env)
            ),
            None => "no source".into(),
        };
        let _ = writeln!(o, "go.private {:<23} {src}", p.pattern);
        refused_endpoints(checked, &format!("go.private {}", p.pattern), &eps, &mut o);
    }
    let _ = writeln!(
        o,
        "egress.allow               = {}",
        c.egress.allow.join(", ")
    );
    let _ = writeln!(
        o,
        "egress                     = connect {}, read {}, max {} redirects, down after {} failures, probe every {}",
        d(c.egress.connect_timeout),
        d(c.egress.read_timeout),
        c.egress.max_redirects,
        c.egress.failure_threshold,
        d(c.egress.probe_interval)
    );
    if let Ok(Some(proxy)) = c.egress.parse().map(|e| e.proxy) {
        let creds = if proxy.username().is_empty() && proxy.password().is_none() {
            ""
        } else {
            " (credentials from its URL, not shown)"
        };
        let _ = writeln!(
            o,
            "egress.proxy               = {}{creds}",
            crate::upstream::egress::redact(&proxy)
        );
    }
    print_gateway(c, &mut o);
    if let Some(sh) = &c.shared {
        let _ = writeln!(
            o,
            "shared                     = {} bucket {}{}{}, sync every {}",
            sh.endpoint,
            sh.bucket,
            if sh.prefix.is_empty() { "" } else { "/" },
            sh.prefix,
            d(sh.sync_interval)
        );
    }
    if let Some(p) = &c.peers {
        let _ = writeln!(
            o,
            "peers                      = {}{}",
            p.members.join(", "),
            p.dns
                .as_ref()
                .map(|n| format!(" + dns {n} (every {})", d(p.refresh)))
                .unwrap_or_default()
        );
    }
    // A closed pipe (`| head`) is not an error worth a panic.
    let _ = std::io::Write::write_all(&mut std::io::stdout(), o.as_bytes());
}

/// A line (and a warning) for each endpoint the egress policy would refuse: every endpoint of
/// a pool is checked on its own.
fn refused_endpoints(
    checked: &Checked,
    owner: &str,
    eps: &[crate::config::EndpointConfig],
    o: &mut String,
) {
    use std::fmt::Write as _;
    for e in eps {
        let verdict = match crate::config::unix_socket_url(&e.url) {
            Some(path) => checked.egress().check_socket(&path).err(),
            None => match reqwest::Url::parse(&e.url) {
                Ok(url) => checked.egress().check(&url).err(),
                Err(_) => None,
            },
        };
        if let Some(err) = verdict {
            eprintln!(
                "wharf: warning: {owner} endpoint {} is refused by the egress policy: {err}",
                e.url
            );
            let _ = writeln!(o, "  endpoint {} REFUSED by egress: {err}", e.url);
        }
    }
}

fn auth_summary(
    user: &Option<String>,
    file: &Option<std::path::PathBuf>,
    env: &Option<String>,
) -> String {
    match (user, file, env) {
        (Some(u), Some(f), _) => format!("user {u}, password from file {}", f.display()),
        (Some(u), _, Some(v)) => format!("user {u}, password from ${v}"),
        (Some(u), None, None) => format!("user {u}, no password"),
        _ => "anonymous".into(),
    }
}
