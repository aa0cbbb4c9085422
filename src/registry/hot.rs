//! Manifests and tag answers kept in memory, so a warm manifest request costs no file read and
//! no index lookup. A cache of the cache: the store and the index stay the truth, and every
//! entry here is a copy of something verified and stored there.
//!
//! Bounded by `cache.manifest_memory` (bodies, keys and a fixed overhead per entry); when full,
//! the entries added longest ago go first. Emptied whenever content leaves the store (eviction,
//! `gc`), so it never answers with a manifest the store no longer has.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::HeaderValue;
use wharf_storage::Digest;

/// Bytes charged per entry on top of its body and key (map slot, header values, queue slot).
const OVERHEAD: usize = 256;

/// A stored manifest, ready to serve (header values made once).
pub struct HotManifest {
    pub digest: Digest,
    pub body: Bytes,
    pub media_type: HeaderValue,
    /// `Docker-Content-Digest` and `ETag`.
    pub digest_header: HeaderValue,
    pub etag: HeaderValue,
    /// (upstream, repository) pairs known to hold it: copies of index links, so a warm hit by
    /// digest builds no key and takes no shared lock.
    held: std::sync::RwLock<Vec<(Box<str>, Box<str>)>>,
}

/// Most pairs remembered on one manifest; past it the shared set answers.
const MAX_HELD_PER_MANIFEST: usize = 16;

impl HotManifest {
    pub fn new(digest: Digest, body: Bytes, media_type: HeaderValue) -> HotManifest {
        // A digest's text is lowercase hex after a known algorithm: always a valid header.
        let digest_header =
            HeaderValue::from_str(digest.as_str()).unwrap_or(HeaderValue::from_static("invalid"));
        let etag = HeaderValue::from_str(&format!("\"{digest}\""))
            .unwrap_or(HeaderValue::from_static("\"invalid\""));
        HotManifest {
            digest,
            body,
            media_type,
            digest_header,
            etag,
            held: Default::default(),
        }
    }

    /// Whether `upstream/repo` is known here to hold this manifest (a copy of its index link).
    pub fn held_by(&self, upstream: &str, repo: &str) -> bool {
        let held = self.held.read().unwrap_or_else(|p| p.into_inner());
        held.iter().any(|(u, r)| &**u == upstream && &**r == repo)
    }

    /// Remembers that the index links this manifest to `upstream/repo` as held.
    pub fn mark_held_by(&self, upstream: &str, repo: &str) {
        let mut held = self.held.write().unwrap_or_else(|p| p.into_inner());
        if held.len() < MAX_HELD_PER_MANIFEST
            && !held.iter().any(|(u, r)| &**u == upstream && &**r == repo)
        {
            held.push((upstream.into(), repo.into()));
        }
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
enum Key {
    Manifest(Digest),
    /// `upstream \0 repository \0 tag`.
    Tag(String),
}

struct Slot<T> {
    value: T,
    cost: usize,
    generation: u64,
}

#[derive(Default)]
struct Inner {
    manifests: HashMap<Digest, Slot<Arc<HotManifest>>>,
    tags: HashMap<String, Slot<(Digest, u64)>>,
    /// Insertion order; a slot whose generation no longer matches its entry is stale.
    order: VecDeque<(Key, u64)>,
    used: usize,
    generation: u64,
}

impl Inner {
    fn generation_of(&self, key: &Key) -> Option<u64> {
        match key {
            Key::Manifest(d) => self.manifests.get(d).map(|s| s.generation),
            Key::Tag(t) => self.tags.get(t).map(|s| s.generation),
        }
    }

    fn remove(&mut self, key: &Key) {
        let cost = match key {
            Key::Manifest(d) => self.manifests.remove(d).map(|s| s.cost),
            Key::Tag(t) => self.tags.remove(t).map(|s| s.cost),
        };
        self.used -= cost.unwrap_or(0);
    }

    fn len(&self) -> usize {
        self.manifests.len() + self.tags.len()
    }

    fn next_generation(&mut self) -> u64 {
        self.generation += 1;
        self.generation
    }
}

pub struct HotManifests {
    budget: usize,
    inner: Mutex<Inner>,
    /// Blob sizes declared by manifests fetched lately, per upstream and repository
    /// (`upstream \0 repository \0 digest`): a fill for that repository stops there.
    declared: Mutex<HashMap<String, u64>>,
    /// (upstream, repository, digest) known to be held (`visibility::held`), so a warm hit by
    /// digest reads no index record. Only ever a copy of a link in the index.
    held: Mutex<std::collections::HashSet<String>>,
    /// Manifests answered from memory.
    pub memory: crate::cache::Count,
}

/// Most declared sizes remembered; past it new ones are not (a fill without one is bounded by
/// `registry.max_blob_size` instead), so filling the table cannot evict a repository's own.
const MAX_DECLARED: usize = 65_536;

impl HotManifests {
    pub fn new(budget: u64) -> HotManifests {
        HotManifests {
            budget: usize::try_from(budget).unwrap_or(usize::MAX),
            inner: Mutex::default(),
            declared: Mutex::default(),
            held: Mutex::default(),
            memory: Default::default(),
        }
    }

    /// Whether `upstream/repo` is known here to hold `digest` (a copy of its index link).
    pub fn is_held(&self, upstream: &str, repo: &str, digest: &Digest) -> bool {
        let key = format!("{upstream}\0{repo}\0{digest}");
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&key)
    }

    /// Remembers that the index links `digest` to `upstream/repo` as held.
    pub fn mark_held(&self, upstream: &str, repo: &str, digest: &Digest) {
        let mut h = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if h.len() < MAX_DECLARED {
            h.insert(format!("{upstream}\0{repo}\0{digest}"));
        }
    }

    /// Remembers the sizes a manifest of `upstream/repo` declares for what it lists. Where its
    /// manifests disagree the largest is kept: a wrong small one must not cut a correct fill.
    pub fn declare(
        &self,
        upstream: &str,
        repo: &str,
        sizes: impl IntoIterator<Item = (Digest, u64)>,
    ) {
        let mut d = self.declared.lock().unwrap_or_else(|p| p.into_inner());
        for (digest, size) in sizes {
            let key = format!("{upstream}\0{repo}\0{digest}");
            if d.len() >= MAX_DECLARED && !d.contains_key(&key) {
                continue;
            }
            let e = d.entry(key).or_insert(size);
            *e = (*e).max(size);
        }
    }

    /// The size a manifest of `upstream/repo` declared for `digest`, if one was seen lately.
    pub fn declared_size(&self, upstream: &str, repo: &str, digest: &Digest) -> Option<u64> {
        let d = self.declared.lock().unwrap_or_else(|p| p.into_inner());
        d.get(&format!("{upstream}\0{repo}\0{digest}")).copied()
    }

    pub fn manifest(&self, digest: &Digest) -> Option<Arc<HotManifest>> {
        if self.budget == 0 {
            return None;
        }
        let m = self.lock().manifests.get(digest).map(|s| s.value.clone())?;
        self.memory.add(m.body.len() as u64);
        Some(m)
    }

    /// The manifest a tag pointed to, if learned at or after `fresh_since` and still held.
    pub fn tag(
        &self,
        upstream: &str,
        repo: &str,
        tag: &str,
        fresh_since: u64,
    ) -> Option<Arc<HotManifest>> {
        if self.budget == 0 {
            return None;
        }
        let key = tag_key(upstream, repo, tag);
        let inner = self.lock();
        let (digest, learned_unix) = &inner.tags.get(&key)?.value;
        if *learned_unix < fresh_since {
            return None;
        }
        let m = inner.manifests.get(digest).map(|s| s.value.clone())?;
        drop(inner);
        self.memory.add(m.body.len() as u64);
        Some(m)
    }

    pub fn put_manifest(&self, m: Arc<HotManifest>) {
        let cost = m.body.len() + m.digest.as_str().len() + OVERHEAD;
        if !self.fits(cost) {
            return;
        }
        let key = m.digest.clone();
        let mut inner = self.lock();
        let generation = inner.next_generation();
        let old = inner.manifests.insert(
            key.clone(),
            Slot {
                value: m,
                cost,
                generation,
            },
        );
        self.account(
            &mut inner,
            Key::Manifest(key),
            generation,
            cost,
            old.map(|o| o.cost),
        );
    }

    pub fn put_tag(
        &self,
        upstream: &str,
        repo: &str,
        tag: &str,
        digest: &Digest,
        learned_unix: u64,
    ) {
        let key = tag_key(upstream, repo, tag);
        let cost = key.len() + digest.as_str().len() + OVERHEAD;
        if !self.fits(cost) {
            return;
        }
        let mut inner = self.lock();
        let generation = inner.next_generation();
        let old = inner.tags.insert(
            key.clone(),
            Slot {
                value: (digest.clone(), learned_unix),
                cost,
                generation,
            },
        );
        self.account(
            &mut inner,
            Key::Tag(key),
            generation,
            cost,
            old.map(|o| o.cost),
        );
    }

    /// Forgets everything (content left the store).
    pub fn clear(&self) {
        *self.lock() = Inner::default();
    }

    /// Bytes charged now.
    pub fn used(&self) -> usize {
        self.lock().used
    }

    /// One entry may not crowd out the rest.
    fn fits(&self, cost: usize) -> bool {
        cost <= self.budget / 8
    }

    /// Charges a new entry, then evicts the oldest until within budget.
    fn account(
        &self,
        inner: &mut Inner,
        key: Key,
        generation: u64,
        cost: usize,
        replaced: Option<usize>,
    ) {
        inner.used = inner.used - replaced.unwrap_or(0) + cost;
        inner.order.push_back((key, generation));
        while inner.used > self.budget {
            let Some((k, g)) = inner.order.pop_front() else {
                break;
            };
            if inner.generation_of(&k) == Some(g) {
                inner.remove(&k);
            }
        }
        // Replaced entries leave stale slots behind; drop them before they add up.
        if inner.order.len() > 2 * inner.len() + 1024 {
            let mut order = std::mem::take(&mut inner.order);
            order.retain(|(k, g)| inner.generation_of(k) == Some(*g));
            inner.order = order;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn tag_key(upstream: &str, repo: &str, tag: &str) -> String {
    let mut k = String::with_capacity(upstream.len() + repo.len() + tag.len() + 2);
    k.push_str(upstream);
    k.push('\0');
    k.push_str(repo);
    k.push('\0');
    k.push_str(tag);
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(n: u8, size: usize) -> Arc<HotManifest> {
        let body = Bytes::from(vec![n; size]);
        Arc::new(HotManifest::new(
            Digest::of(&body),
            body,
            HeaderValue::from_static("application/vnd.oci.image.manifest.v1+json"),
        ))
    }

    #[test]
    fn a_tag_answers_only_while_fresh_and_while_its_manifest_is_held() {
        let hot = HotManifests::new(1 << 20);
        let m = manifest(1, 100);
        hot.put_tag("hub", "library/x", "1", &m.digest, 1000);
        assert!(
            hot.tag("hub", "library/x", "1", 0).is_none(),
            "manifest not held yet"
        );
        hot.put_manifest(m.clone());
        assert_eq!(
            hot.tag("hub", "library/x", "1", 1000).unwrap().digest,
            m.digest
        );
        assert!(hot.tag("hub", "library/x", "1", 1001).is_none(), "stale");
        assert!(hot.tag("hub", "library/x", "2", 0).is_none());
        assert!(hot.tag("other", "library/x", "1", 0).is_none());
        hot.clear();
        assert!(hot.manifest(&m.digest).is_none());
        assert_eq!(hot.used(), 0);
    }

    #[test]
    fn memory_stays_within_the_budget_oldest_out_first() {
        let budget = 64 * 1024;
        let hot = HotManifests::new(budget);
        let all: Vec<Arc<HotManifest>> = (0..100).map(|i| manifest(i, 4000)).collect();
        for m in &all {
            hot.put_manifest(m.clone());
            assert!(hot.used() <= budget as usize);
        }
        assert!(hot.manifest(&all[99].digest).is_some());
        assert!(hot.manifest(&all[0].digest).is_none());
        // Re-adding the same key many times does not grow the order queue without bound.
        for _ in 0..10_000 {
            hot.put_manifest(all[99].clone());
        }
        let inner = hot.lock();
        assert!(inner.order.len() < 2 * inner.len() + 1100);
        drop(inner);
        assert!(hot.used() <= budget as usize);
    }

    #[test]
    fn zero_budget_holds_nothing_and_huge_entries_are_refused() {
        let off = HotManifests::new(0);
        let m = manifest(1, 10);
        off.put_manifest(m.clone());
        assert!(off.manifest(&m.digest).is_none());
        let small = HotManifests::new(8 * 1024);
        let big = manifest(2, 4096);
        small.put_manifest(big.clone());
        assert!(small.manifest(&big.digest).is_none());
    }
}
