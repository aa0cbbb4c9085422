//! The one checked-config step: a `Config` validated once, with the runtime objects built from
//! it (egress policy, access control, upstream clients, Go sources). `check-config` and
//! `check-egress` report from it; `serve` builds `AppState` from it without validating again.

use std::collections::HashMap;
use std::sync::Arc;

use crate::access::AccessControl;
use crate::config::{Config, ConfigError};
use crate::error::Error;
use crate::goproxy::GoState;
use crate::upstream::{EgressPolicy, UpstreamClient};

pub struct Checked {
    pub(super) config: Config,
    pub(super) egress: Arc<EgressPolicy>,
    /// The shared tier's S3 client (`[shared]`), if configured and its credentials were read.
    pub(super) store: Option<crate::shared::Store>,
    /// The replicas that fill for each other (`[peers]`), if configured.
    pub(super) peers: Option<Arc<crate::shared::PeerSet>>,
    pub(super) upstreams: HashMap<String, Arc<UpstreamClient>>,
    pub(super) go: Option<GoState>,
    pub(super) access: AccessControl,
    /// Credentials that could not be read, in config order, as the error `serve` stops with.
    /// `check-config` runs without the secrets, so these do not fail the check itself.
    pub(super) unread: Vec<Error>,
}

impl Checked {
    /// Validates `config` (the only validation on the serve path) and builds its runtime objects.
    pub fn new(config: Config) -> Result<Checked, Error> {
        config.validate()?;
        let invalid = |m: String| Error::Config(ConfigError::Invalid(m));
        check_prefetch(&config).map_err(invalid)?;
        let egress = Arc::new(EgressPolicy::from_config(&config.egress).map_err(invalid)?);
        let mut unread = Vec::new();
        let mut upstreams = HashMap::new();
        for up in &config.registry.upstreams {
            let password = read(up.password(), &up.name, &mut unread);
            let own: Vec<Option<String>> = up
                .endpoints()
                .iter()
                .map(|e| read(e.password(), &up.name, &mut unread))
                .collect();
            let client = UpstreamClient::with_passwords(
                up,
                password,
                &own,
                &config.egress,
                egress.clone(),
                config.offline,
            )
            .map_err(|message| Error::Upstream {
                name: up.name.clone(),
                message,
            })?;
            upstreams.insert(up.name.clone(), Arc::new(client));
        }
        let go = if config.go.enabled {
            let state = GoState::new(&config, egress.clone(), |p| read(p, "go", &mut unread))
                .map_err(|message| Error::Upstream {
                    name: "go".into(),
                    message,
                })?;
            Some(state)
        } else {
            None
        };
        let store = match &config.shared {
            Some(cfg) => {
                crate::shared::check_endpoint(cfg, &egress).map_err(invalid)?;
                match crate::shared::connect(cfg, &config.egress, egress.clone()) {
                    Ok(store) => Some(store),
                    Err(m) => {
                        unread.push(invalid(m));
                        None
                    }
                }
            }
            None => None,
        };
        let peers = match &config.peers {
            Some(cfg) => Some(
                crate::shared::PeerSet::new(
                    cfg,
                    config
                        .listen
                        .tcp()
                        .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 5000))),
                    &config.egress,
                    egress.clone(),
                )
                .map_err(invalid)?,
            ),
            None => None,
        };
        let names: Vec<&str> = config
            .registry
            .upstreams
            .iter()
            .map(|u| u.name.as_str())
            .collect();
        let access = AccessControl::new(&config.access, &names, &config.registry.default_upstream)
            .map_err(invalid)?;
        Ok(Checked {
            config,
            egress,
            store,
            peers,
            upstreams,
            go,
            access,
            unread,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The policy itself, shared (for clients built outside the app state).
    pub fn egress_shared(&self) -> Arc<EgressPolicy> {
        self.egress.clone()
    }

    pub fn egress(&self) -> &EgressPolicy {
        &self.egress
    }

    /// Why `serve` would not start although the config is valid: credentials it cannot read.
    pub fn unread_credentials(&self) -> &[Error] {
        &self.unread
    }
}

/// A credential, or `None` with its error kept for `serve`.
fn read(
    password: Result<Option<String>, ConfigError>,
    owner: &str,
    unread: &mut Vec<Error>,
) -> Option<String> {
    password.unwrap_or_else(|e| {
        unread.push(Error::Upstream {
            name: owner.to_string(),
            message: e.to_string(),
        });
        None
    })
}

/// `[[prefetch]]` items and platforms, parsed as `wharf prefetch` parses them (and image
/// references resolved against the configured upstreams).
fn check_prefetch(config: &Config) -> Result<(), String> {
    for (i, p) in config.prefetch.iter().enumerate() {
        for item in &p.items {
            match crate::bundle::parse_item(item) {
                Ok(crate::bundle::Item::Image(r)) => {
                    crate::bundle::ImageRef::parse(config, &r)
                        .map_err(|e| format!("prefetch[{i}].items: {e}"))?;
                }
                Ok(_) => {}
                Err(e) => return Err(format!("prefetch[{i}].items: {e}")),
            }
        }
        for pl in &p.platforms {
            pl.parse::<crate::bundle::Platform>()
                .map_err(|e| format!("prefetch[{i}].platforms: {e}"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml: &str) -> Config {
        let mut c: Config = toml::from_str(toml).expect("test config parses");
        c.data_dir = std::path::PathBuf::from("/nonexistent/wharf-checked-test");
        c
    }

    #[test]
    fn an_invalid_config_is_refused_with_the_validation_message() {
        let c = config("[registry]\ndefault_upstream = \"nowhere\"\n");
        let e = Checked::new(c).err().expect("refused");
        assert!(
            e.to_string()
                .contains("registry.default_upstream \"nowhere\""),
            "{e}"
        );
    }

    #[test]
    fn an_unset_password_env_is_a_warning_for_the_check_and_an_error_for_serve() {
        // Set nowhere.
        let var = "WHARF_CHECKED_TEST_UNSET_PASSWORD";
        let c = config(&format!(
            "[registry]\ndefault_upstream = \"ghcr.io\"\n[[registry.upstream]]\nname = \"ghcr.io\"\n\
             url = \"https://ghcr.io\"\nusername = \"bot\"\npassword_env = \"{var}\"\n"
        ));
        let checked = Checked::new(c).expect("valid config");
        let unread: Vec<String> = checked
            .unread_credentials()
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(unread.len(), 1, "{unread:?}");
        assert!(
            unread[0].starts_with("upstream ghcr.io: ") && unread[0].contains(var),
            "{unread:?}"
        );
        let e = crate::AppState::from_checked(checked)
            .err()
            .expect("serve refuses");
        assert_eq!(e.to_string(), unread[0]);
    }

    #[test]
    fn the_egress_policy_is_the_configured_one() {
        let c = config("[egress]\nallow = [\"mirror.test\"]\n");
        let checked = Checked::new(c).expect("valid config");
        let ok = reqwest::Url::parse("https://mirror.test/v2/").expect("url");
        let refused = reqwest::Url::parse("https://elsewhere.test/").expect("url");
        assert!(checked.egress().check(&ok).is_ok());
        assert!(checked.egress().check(&refused).is_err());
        assert!(checked.unread_credentials().is_empty());
    }
}
