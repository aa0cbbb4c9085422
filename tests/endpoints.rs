//! Who may read `/healthz` and `/metrics`: health answers everyone (load balancers, liveness
//! probes); metrics go through `[access]` like the protocols, as README says.

mod support;
use support::*;

use sha2::{Digest as _, Sha256};

const TOKEN: &str = "scraper-token-0123456789";

async fn start(access: &str) -> (FakeRegistry, Wharf, tempfile::TempDir) {
    let up = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let w = Wharf::serve(WharfConfig::fake(&up.url(), dir.path()).tables(access)).await;
    (up, w, dir)
}

#[tokio::test]
async fn metrics_obey_allow_clients_and_healthz_does_not() {
    let (_up, w, _d) = start("[access]\nallow_clients = [\"10.0.0.0/8\"]\n").await;
    assert_eq!(
        status_of(w.url("/metrics")).await,
        403,
        "metrics served to an address outside allow_clients"
    );
    assert_eq!(status_of(w.url("/healthz")).await, 200);
}

#[tokio::test]
async fn metrics_need_credentials_where_access_requires_them() {
    let access = format!(
        "[access]\nrequire_auth = true\n[[access.token]]\nname = \"prometheus\"\nsha256 = \"{}\"\n",
        hex::encode(Sha256::digest(TOKEN.as_bytes()))
    );
    let (_up, w, _d) = start(&access).await;
    let c = client();
    assert_eq!(status_of(w.url("/metrics")).await, 401);
    let r = c.get(w.url("/metrics")).bearer_auth(TOKEN).sent().await;
    assert_eq!(r.status(), 200);
    assert!(read_text(r).await.contains("wharf_"));
    assert_eq!(status_of(w.url("/healthz")).await, 200);
}

#[tokio::test]
async fn the_v2_ping_is_not_counted_as_a_cache_hit() {
    let (up, w, _d) = start("").await;
    up.put_image("team/app", "v1", &[support::bytes_of(100, 1)]);
    for _ in 0..3 {
        assert_eq!(status_of(w.url("/v2/")).await, 200);
    }
    let r = get(w.url("/v2/team/app/manifests/v1")).await;
    assert_eq!(r.headers()["x-cache"], "MISS");
    let m = get(w.url("/metrics")).await.body_text().await;
    assert!(
        m.contains("wharf_requests_total{protocol=\"registry\",outcome=\"hit\"} 0"),
        "{m}"
    );
    assert!(m.contains("wharf_requests_total{protocol=\"registry\",outcome=\"miss\"} 1"));
}

#[tokio::test]
async fn a_disabled_go_proxy_answers_404_with_the_reason() {
    let (_up, w, _d) = start("[go]\nenabled = false\n").await;
    let r = get(w.url("/go/golang.org/x/text/@v/list")).await;
    assert_eq!(r.status(), 404);
    assert!(read_text(r).await.contains("go.enabled = false"));
}
