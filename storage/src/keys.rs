//! Composite index keys: string components joined by a NUL byte, e.g.
//! `docker.io \0 library/alpine \0 latest`. Owns that encoding and nothing else.
//!
//! NUL sorts before every other byte, so all keys sharing leading components are contiguous and
//! `prefix` gives a sled `scan_prefix` over them (all tags of one repository, later all versions of
//! one module). Components never contain NUL (the route parsers do not admit it); one that does is
//! an error, not escaped, because it can only come from a bug.

/// Why a key could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("key component {component:?} contains a NUL byte")]
    Nul { component: String },
    #[error("key has {found} components, expected {expected}")]
    Arity { expected: usize, found: usize },
    #[error("key is not UTF-8")]
    NotUtf8,
}

const SEP: u8 = 0;

/// Joins `components` with NUL. At least one component; an empty component is allowed.
pub fn encode(components: &[&str]) -> Result<Vec<u8>, KeyError> {
    let mut key = Vec::with_capacity(components.iter().map(|c| c.len() + 1).sum());
    for (i, component) in components.iter().enumerate() {
        if component.as_bytes().contains(&SEP) {
            return Err(KeyError::Nul {
                component: (*component).to_owned(),
            });
        }
        if i > 0 {
            key.push(SEP);
        }
        key.extend_from_slice(component.as_bytes());
    }
    Ok(key)
}

/// The key prefix shared by every key whose first components are `components`: the encoded
/// components followed by one separator.
pub fn prefix(components: &[&str]) -> Result<Vec<u8>, KeyError> {
    let mut key = encode(components)?;
    key.push(SEP);
    Ok(key)
}

/// Splits a key made by `encode` into exactly `N` components.
pub fn decode<const N: usize>(key: &[u8]) -> Result<[String; N], KeyError> {
    let text = std::str::from_utf8(key).map_err(|_| KeyError::NotUtf8)?;
    let parts: Vec<String> = text.split('\0').map(str::to_owned).collect();
    let found = parts.len();
    parts
        .try_into()
        .map_err(|_| KeyError::Arity { expected: N, found })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_encode_and_decode() {
        let cases: &[[&str; 3]] = &[
            ["docker.io", "library/alpine", "latest"],
            ["ghcr.io", "a/b/c", "v1.2.3-rc.1_x"],
            ["", "", ""],
            ["host:5000", "ünïcode/repo", "tag"],
        ];
        for parts in cases {
            let key = encode(parts).unwrap();
            assert_eq!(decode::<3>(&key).unwrap(), parts.map(str::to_owned));
        }
    }

    #[test]
    fn component_with_nul_is_an_error_not_a_panic() {
        let err = encode(&["docker.io", "evil\0repo", "latest"]).unwrap_err();
        assert_eq!(
            err,
            KeyError::Nul {
                component: "evil\0repo".into()
            }
        );
    }

    #[test]
    fn decoding_with_the_wrong_arity_or_bad_utf8_fails() {
        let key = encode(&["a", "b"]).unwrap();
        assert_eq!(
            decode::<3>(&key),
            Err(KeyError::Arity {
                expected: 3,
                found: 2
            })
        );
        assert_eq!(decode::<1>(&[0xff, 0xfe]), Err(KeyError::NotUtf8));
    }

    #[test]
    fn prefix_selects_exactly_the_keys_under_it() {
        let p = prefix(&["docker.io", "library/alpine"]).unwrap();
        let under = encode(&["docker.io", "library/alpine", "3.20"]).unwrap();
        let sibling = encode(&["docker.io", "library/alpine-extra", "3.20"]).unwrap();
        assert!(under.starts_with(&p));
        assert!(!sibling.starts_with(&p));
    }
}
