//! A gateway destination, decided and connected: the host and port through the gateway's
//! `EgressPolicy` (`gateway.allow`'s entries, `egress.allow_cidrs`, `egress.resolve`), then a
//! connection to one of the very addresses that were checked; there is no second lookup a
//! rebinding DNS answer could change. A refusal carries the status, a metrics reason and the
//! one-line text the client reads; it never names an address, only its class.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use reqwest::Url;
use tokio::net::TcpStream;

use crate::upstream::egress::{EgressError, EgressPolicy, Refusals};

/// Why a destination was not connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    /// Bounded, for `wharf_gateway_refusals` (`None`: a failure, not a refusal).
    pub reason: Option<&'static str>,
    pub text: String,
}

impl Refusal {
    pub(super) fn refused(reason: &'static str, text: String) -> Refusal {
        Refusal {
            status: 403,
            reason: Some(reason),
            text,
        }
    }

    pub(super) fn failed(status: u16, text: String) -> Refusal {
        Refusal {
            status,
            reason: None,
            text,
        }
    }
}

/// `host:port` as a client writes it (IPv6 in brackets).
pub fn shown(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Whether `host:port` may be reached at all (the host list only, no lookup).
pub fn check_host(policy: &EgressPolicy, host: &str, port: u16) -> Result<(), Refusal> {
    let dest = shown(host, port);
    let url = Url::parse(&format!("http://{dest}/"))
        .map_err(|_| Refusal::failed(400, format!("{dest} is not a host")))?;
    match policy.check(&url) {
        Ok(()) => Ok(()),
        Err(_) if host.parse::<IpAddr>().is_ok() => Err(Refusal::refused(
            "ip_literal",
            format!(
                "{dest} is an IP address, and gateway.allow does not list it; \
                 use a host name gateway.allow lists"
            ),
        )),
        Err(EgressError::PortNotAllowed { .. }) => Err(Refusal::refused(
            "host",
            format!("{dest} is not in gateway.allow (it lists {host} with other ports only)"),
        )),
        Err(_) => Err(Refusal::refused(
            "host",
            format!("{dest} is not in gateway.allow"),
        )),
    }
}

/// Whether a connection to `addr` (from `local`, once connected) reaches one of wharf's own
/// listeners: a port in `own` on this machine (a loopback address, or one the connection's
/// own end has too).
fn is_own(addr: SocketAddr, local: Option<IpAddr>, own: &[u16]) -> bool {
    let ip = crate::net::canonical_ip(addr.ip());
    own.contains(&addr.port())
        && (ip.is_loopback() || local.is_some_and(|l| crate::net::canonical_ip(l) == ip))
}

/// An IP-literal destination reached through `egress.proxy`: its address class must be
/// allowed (as when connecting directly) and it must not be one of wharf's listeners on this
/// machine. Names the proxy resolves, and these checks cannot see its answer.
pub fn check_literal(
    policy: &EgressPolicy,
    ip: IpAddr,
    port: u16,
    own: &[u16],
) -> Result<(), Refusal> {
    let dest = shown(&ip.to_string(), port);
    if let Err(class) = policy.check_addr(ip) {
        Refusals::count(&policy.refusals.address);
        return Err(Refusal::refused(
            "address",
            format!(
                "{dest} is a forbidden address ({class}); egress.allow_cidrs opens address ranges"
            ),
        ));
    }
    if is_own(SocketAddr::new(ip, port), None, own) {
        Refusals::count(&policy.refusals.address);
        return Err(Refusal::refused(
            "address",
            format!("{dest} is wharf's own listener"),
        ));
    }
    Ok(())
}

/// Checks `host:port` and connects to an address it resolves to that the policy allows, in
/// the order resolved, each within `connect_timeout`; never to wharf's own listeners (the
/// ports `own`), which a client would reach as this machine.
pub async fn connect(
    policy: &EgressPolicy,
    host: &str,
    port: u16,
    connect_timeout: Duration,
    own: &[u16],
) -> Result<(TcpStream, SocketAddr), Refusal> {
    check_host(policy, host, port)?;
    let dest = shown(host, port);
    // A resolver that never answers must not hold a tunnel slot for longer than a connect may.
    let resolved = tokio::time::timeout(connect_timeout, policy.resolve(host))
        .await
        .map_err(|_| Refusal::failed(504, format!("resolving {host} timed out")))?
        .map_err(|_| Refusal::failed(502, format!("cannot resolve {host}")))?;
    let allowed: Vec<IpAddr> = resolved
        .iter()
        .filter(|(_, v)| v.is_ok())
        .map(|(ip, _)| *ip)
        .collect();
    if allowed.is_empty() {
        if resolved.is_empty() {
            return Err(Refusal::failed(502, format!("{host} has no addresses")));
        }
        Refusals::count(&policy.refusals.address);
        let mut classes: Vec<String> = resolved
            .iter()
            .filter_map(|(_, v)| v.err().map(|c| c.to_string()))
            .collect();
        classes.dedup();
        return Err(Refusal::refused(
            "address",
            format!(
                "{dest} resolves only to forbidden addresses ({}); \
                 egress.allow_cidrs opens address ranges",
                classes.join(", ")
            ),
        ));
    }
    let mut timed_out = false;
    let mut itself = false;
    for ip in allowed {
        let addr = SocketAddr::new(ip, port);
        if is_own(addr, None, own) {
            itself = true;
            continue;
        }
        match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                if is_own(addr, stream.local_addr().ok().map(|a| a.ip()), own) {
                    itself = true;
                    continue;
                }
                let _ = stream.set_nodelay(true);
                return Ok((stream, addr));
            }
            Ok(Err(_)) => {}
            Err(_) => timed_out = true,
        }
    }
    if itself {
        Refusals::count(&policy.refusals.address);
        return Err(Refusal::refused(
            "address",
            format!("{dest} is wharf's own listener"),
        ));
    }
    Err(if timed_out {
        Refusal::failed(504, format!("connecting to {dest} timed out"))
    } else {
        Refusal::failed(502, format!("cannot connect to {dest}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EgressConfig;

    fn policy(allow: &[&str], pinned: &[(&str, &str)]) -> EgressPolicy {
        let mut cfg = EgressConfig::default();
        for (name, ip) in pinned {
            cfg.resolve.insert(name.to_string(), vec![ip.to_string()]);
        }
        let allow: Vec<String> = allow.iter().map(|s| s.to_string()).collect();
        EgressPolicy::for_gateway(&cfg, &allow, false).unwrap()
    }

    #[test]
    fn refusals_name_the_destination_and_the_key() {
        let p = policy(&["a.example", "b.example:443"], &[]);
        assert!(check_host(&p, "a.example", 8443).is_ok());
        let r = check_host(&p, "c.example", 443).unwrap_err();
        assert_eq!((r.status, r.reason), (403, Some("host")));
        assert_eq!(r.text, "c.example:443 is not in gateway.allow");
        let r = check_host(&p, "b.example", 22).unwrap_err();
        assert!(r.text.contains("other ports only"), "{}", r.text);
        let r = check_host(&p, "10.0.0.1", 443).unwrap_err();
        assert_eq!(r.reason, Some("ip_literal"));
        let r = check_host(&p, "::1", 443).unwrap_err();
        assert!(r.text.contains("[::1]:443"), "{}", r.text);
    }

    #[tokio::test]
    async fn a_pinned_name_on_a_forbidden_address_is_refused_before_connecting() {
        let p = policy(&["reg.wharf-test"], &[("reg.wharf-test", "127.0.0.1")]);
        let r = connect(&p, "reg.wharf-test", 9, Duration::from_secs(1), &[])
            .await
            .unwrap_err();
        assert_eq!((r.status, r.reason), (403, Some("address")));
        assert!(
            r.text.contains("loopback") && !r.text.contains("127.0.0.1"),
            "{}",
            r.text
        );
    }
}
