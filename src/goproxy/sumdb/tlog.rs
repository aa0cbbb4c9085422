//! Tree math of the checksum database's transparency log (RFC 6962, as laid out by
//! golang.org/x/mod/sumdb/tlog): record and node hashes, stored-hash indices, tiles and their
//! paths, tree hashes, record and tree proofs, and `TilePlan`, which says which tiles to fetch to
//! read some hashes and authenticates what came back against a signed tree head.
//!
//! Pure functions only: no I/O. Sizes and indices that come from the network are checked before
//! any shift or index, so bad input is an error, never a panic.

use std::collections::HashMap;
use std::fmt;

use sha2::{Digest, Sha256};

/// A SHA-256 hash in the log.
pub type Hash = [u8; 32];

/// Size of one hash in a tile.
pub const HASH_SIZE: usize = 32;

/// Largest tree size this code accepts (2^48 records; sum.golang.org holds about 2^26). Keeps
/// every stored-hash index far from `u64` overflow.
pub const MAX_TREE_SIZE: u64 = 1 << 48;

/// A tree head: the number of records and the root hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tree {
    pub n: u64,
    pub hash: Hash,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TlogError {
    #[error("malformed tile path {0:?}")]
    BadTilePath(String),
    #[error("invalid tile {0}")]
    BadTile(String),
    #[error("tile {tile} has {got} bytes, want {want}")]
    TileSize {
        tile: String,
        got: usize,
        want: usize,
    },
    #[error("index {index} is in {want} not {got}")]
    WrongTile {
        index: u64,
        want: String,
        got: String,
    },
    #[error("indexes not in tree of size {0}")]
    NotInTree(u64),
    #[error("tree size {0} is larger than the supported {MAX_TREE_SIZE}")]
    TreeTooLarge(u64),
    /// A tile does not hash to what its parent tile or the signed tree head says.
    #[error("downloaded inconsistent tile")]
    InconsistentTile,
    #[error("invalid transparency proof")]
    ProofFailed,
    #[error("invalid inputs: {0}")]
    BadInput(&'static str),
    #[error("hash reader returned {got} hashes for {want} indexes")]
    ShortRead { got: usize, want: usize },
}

/// Hash of a log record: `SHA-256(0x00 || data)`.
pub fn record_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// Hash of an interior node: `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

fn shl(x: u64, s: u32) -> u64 {
    x.checked_shl(s).unwrap_or(0)
}

fn shr(x: u64, s: u32) -> u64 {
    x.checked_shr(s).unwrap_or(0)
}

/// Largest power of two strictly less than `n` (n ≥ 2), with its log2.
fn maxpow2(n: u64) -> (u64, u32) {
    let mut l = 0;
    while shl(1, l + 1) < n {
        l += 1;
    }
    (1 << l, l)
}

/// Index of the hash for the `n`th node at `level` in the stored-hash sequence (the order in
/// which an append-only log writes hashes). Callers keep `n << level` below `MAX_TREE_SIZE`.
pub fn stored_hash_index(level: u32, mut n: u64) -> u64 {
    for _ in 0..level {
        n = 2 * n + 1;
    }
    let mut i = 0;
    while n > 0 {
        i += n;
        n >>= 1;
    }
    i + u64::from(level)
}

/// Inverse of `stored_hash_index`: the (level, n) of a stored-hash index.
pub fn split_stored_hash_index(index: u64) -> (u32, u64) {
    // Find the leaf n whose stored hashes bracket `index`, starting from an underestimate.
    let mut n = index / 2;
    let mut index_n = stored_hash_index(0, n);
    loop {
        let x = index_n + 1 + u64::from((n + 1).trailing_zeros());
        if x > index {
            break;
        }
        n += 1;
        index_n = x;
    }
    // index_n ≤ index here because stored_hash_index(0, index / 2) ≤ index.
    let level = (index - index_n) as u32;
    (level, shr(n, level))
}

/// Number of stored hashes in a tree of `n` records.
pub fn stored_hash_count(n: u64) -> u64 {
    if n == 0 {
        return 0;
    }
    let mut num = stored_hash_index(0, n - 1) + 1;
    let mut i = n - 1;
    while i & 1 != 0 {
        num += 1;
        i >>= 1;
    }
    num
}

/// Reads stored hashes by index (from a store, or through authenticated tiles).
pub trait HashReader {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, TlogError>;
}

fn read_exact(r: &impl HashReader, indexes: &[u64]) -> Result<Vec<Hash>, TlogError> {
    let hashes = r.read_hashes(indexes)?;
    if hashes.len() != indexes.len() {
        return Err(TlogError::ShortRead {
            got: hashes.len(),
            want: indexes.len(),
        });
    }
    Ok(hashes)
}

/// The hashes a log stores when it appends record `n` whose record hash is `h`: the record
/// hash followed by each newly completed interior node. `r` must hold records `0..n`.
pub fn stored_hashes_for_record_hash(
    n: u64,
    h: Hash,
    r: &impl HashReader,
) -> Result<Vec<Hash>, TlogError> {
    let m = (n + 1).trailing_zeros();
    let indexes: Vec<u64> = (0..m)
        .rev()
        .map(|i| stored_hash_index(i, shr(n, i) - 1))
        .collect();
    let old = read_exact(r, &indexes)?;
    let mut hashes = vec![h];
    let mut h = h;
    for left in old.iter().rev() {
        h = node_hash(left, &h);
        hashes.push(h);
    }
    Ok(hashes)
}

/// Stored-hash indices of the complete subtrees that make up `[lo, hi)`, left to right.
pub fn sub_tree_index(mut lo: u64, hi: u64, need: &mut Vec<u64>) {
    while lo < hi {
        let (k, level) = maxpow2(hi - lo + 1);
        need.push(stored_hash_index(level, shr(lo, level)));
        lo += k;
    }
}

/// Combines the subtree hashes for `[lo, hi)` (as listed by `sub_tree_index`) into one hash,
/// consuming them from the front of `hashes`.
fn sub_tree_hash(mut lo: u64, hi: u64, hashes: &[Hash]) -> Result<(Hash, &[Hash]), TlogError> {
    let mut num = 0;
    while lo < hi {
        let (k, _) = maxpow2(hi - lo + 1);
        num += 1;
        lo += k;
    }
    if num == 0 || hashes.len() < num {
        return Err(TlogError::BadInput("too few hashes for subtree"));
    }
    let (mine, rest) = hashes.split_at(num);
    let mut h = mine[num - 1];
    for left in mine[..num - 1].iter().rev() {
        h = node_hash(left, &h);
    }
    Ok((h, rest))
}

/// Root hash of the tree of the first `n` records. The empty tree hashes to all zeros, as in
/// the Go implementation.
pub fn tree_hash(n: u64, r: &impl HashReader) -> Result<Hash, TlogError> {
    if n == 0 {
        return Ok([0; 32]);
    }
    let mut indexes = Vec::new();
    sub_tree_index(0, n, &mut indexes);
    let hashes = read_exact(r, &indexes)?;
    Ok(sub_tree_hash(0, n, &hashes)?.0)
}

/// Stored-hash indices whose combination equals the root hash of `[0, n)`.
pub fn tree_hash_indexes(n: u64) -> Vec<u64> {
    let mut need = Vec::new();
    sub_tree_index(0, n, &mut need);
    need
}

/// Combines the hashes at `tree_hash_indexes(n)` into the root hash of `[0, n)`.
pub fn tree_hash_from(n: u64, hashes: &[Hash]) -> Result<Hash, TlogError> {
    if n == 0 {
        return Ok([0; 32]);
    }
    let (h, rest) = sub_tree_hash(0, n, hashes)?;
    if !rest.is_empty() {
        return Err(TlogError::BadInput("too many hashes for tree"));
    }
    Ok(h)
}

/// Proof that record `n` is in the tree of size `t`.
pub fn prove_record(t: u64, n: u64, r: &impl HashReader) -> Result<Vec<Hash>, TlogError> {
    if n >= t {
        return Err(TlogError::BadInput("record not in tree"));
    }
    let mut indexes = Vec::new();
    leaf_proof_index(0, t, n, &mut indexes);
    if indexes.is_empty() {
        return Ok(Vec::new());
    }
    let hashes = read_exact(r, &indexes)?;
    let (p, rest) = leaf_proof(0, t, n, &hashes)?;
    if !rest.is_empty() {
        return Err(TlogError::BadInput("too many hashes for proof"));
    }
    Ok(p)
}

fn leaf_proof_index(lo: u64, hi: u64, n: u64, need: &mut Vec<u64>) {
    if lo + 1 == hi {
        return;
    }
    let (k, _) = maxpow2(hi - lo);
    if n < lo + k {
        leaf_proof_index(lo, lo + k, n, need);
        sub_tree_index(lo + k, hi, need);
    } else {
        sub_tree_index(lo, lo + k, need);
        leaf_proof_index(lo + k, hi, n, need);
    }
}

fn leaf_proof(
    lo: u64,
    hi: u64,
    n: u64,
    hashes: &[Hash],
) -> Result<(Vec<Hash>, &[Hash]), TlogError> {
    if lo + 1 == hi {
        return Ok((Vec::new(), hashes));
    }
    let (k, _) = maxpow2(hi - lo);
    let (mut p, th, rest) = if n < lo + k {
        let (p, rest) = leaf_proof(lo, lo + k, n, hashes)?;
        let (th, rest) = sub_tree_hash(lo + k, hi, rest)?;
        (p, th, rest)
    } else {
        let (th, rest) = sub_tree_hash(lo, lo + k, hashes)?;
        let (p, rest) = leaf_proof(lo + k, hi, n, rest)?;
        (p, th, rest)
    };
    p.push(th);
    Ok((p, rest))
}

/// Checks that `p` proves record `n` with hash `h` is in the tree of size `t` with root `th`.
pub fn check_record(p: &[Hash], t: u64, th: &Hash, n: u64, h: &Hash) -> Result<(), TlogError> {
    if n >= t {
        return Err(TlogError::BadInput("record not in tree"));
    }
    if run_record_proof(p, 0, t, n, h)? == *th {
        Ok(())
    } else {
        Err(TlogError::ProofFailed)
    }
}

fn run_record_proof(p: &[Hash], lo: u64, hi: u64, n: u64, leaf: &Hash) -> Result<Hash, TlogError> {
    if lo + 1 == hi {
        return if p.is_empty() {
            Ok(*leaf)
        } else {
            Err(TlogError::ProofFailed)
        };
    }
    let Some((last, rest)) = p.split_last() else {
        return Err(TlogError::ProofFailed);
    };
    let (k, _) = maxpow2(hi - lo);
    if n < lo + k {
        let th = run_record_proof(rest, lo, lo + k, n, leaf)?;
        Ok(node_hash(&th, last))
    } else {
        let th = run_record_proof(rest, lo + k, hi, n, leaf)?;
        Ok(node_hash(last, &th))
    }
}

/// Proof that the tree of size `n` is a prefix of the tree of size `t`.
pub fn prove_tree(t: u64, n: u64, r: &impl HashReader) -> Result<Vec<Hash>, TlogError> {
    if t < 1 || n < 1 || n > t {
        return Err(TlogError::BadInput("tree sizes"));
    }
    let mut indexes = Vec::new();
    tree_proof_index(0, t, n, &mut indexes);
    if indexes.is_empty() {
        return Ok(Vec::new());
    }
    let hashes = read_exact(r, &indexes)?;
    let (p, rest) = tree_proof(0, t, n, &hashes)?;
    if !rest.is_empty() {
        return Err(TlogError::BadInput("too many hashes for proof"));
    }
    Ok(p)
}

fn tree_proof_index(lo: u64, hi: u64, n: u64, need: &mut Vec<u64>) {
    if n == hi {
        if lo != 0 {
            sub_tree_index(lo, hi, need);
        }
        return;
    }
    let (k, _) = maxpow2(hi - lo);
    if n <= lo + k {
        tree_proof_index(lo, lo + k, n, need);
        sub_tree_index(lo + k, hi, need);
    } else {
        sub_tree_index(lo, lo + k, need);
        tree_proof_index(lo + k, hi, n, need);
    }
}

fn tree_proof(
    lo: u64,
    hi: u64,
    n: u64,
    hashes: &[Hash],
) -> Result<(Vec<Hash>, &[Hash]), TlogError> {
    if n == hi {
        if lo == 0 {
            return Ok((Vec::new(), hashes));
        }
        let (th, rest) = sub_tree_hash(lo, hi, hashes)?;
        return Ok((vec![th], rest));
    }
    let (k, _) = maxpow2(hi - lo);
    let (mut p, th, rest) = if n <= lo + k {
        let (p, rest) = tree_proof(lo, lo + k, n, hashes)?;
        let (th, rest) = sub_tree_hash(lo + k, hi, rest)?;
        (p, th, rest)
    } else {
        let (th, rest) = sub_tree_hash(lo, lo + k, hashes)?;
        let (p, rest) = tree_proof(lo + k, hi, n, rest)?;
        (p, th, rest)
    };
    p.push(th);
    Ok((p, rest))
}

/// Checks that `p` proves the tree of size `n` with root `h` is a prefix of the tree of size
/// `t` with root `th`.
pub fn check_tree(p: &[Hash], t: u64, th: &Hash, n: u64, h: &Hash) -> Result<(), TlogError> {
    if t < 1 || n < 1 || n > t {
        return Err(TlogError::BadInput("tree sizes"));
    }
    let (h2, th2) = run_tree_proof(p, 0, t, n, h)?;
    if th2 == *th && h2 == *h {
        Ok(())
    } else {
        Err(TlogError::ProofFailed)
    }
}

fn run_tree_proof(
    p: &[Hash],
    lo: u64,
    hi: u64,
    n: u64,
    old: &Hash,
) -> Result<(Hash, Hash), TlogError> {
    if n == hi {
        if lo == 0 {
            return if p.is_empty() {
                Ok((*old, *old))
            } else {
                Err(TlogError::ProofFailed)
            };
        }
        return match p {
            [only] => Ok((*only, *only)),
            _ => Err(TlogError::ProofFailed),
        };
    }
    let Some((last, rest)) = p.split_last() else {
        return Err(TlogError::ProofFailed);
    };
    let (k, _) = maxpow2(hi - lo);
    if n <= lo + k {
        let (oh, th) = run_tree_proof(rest, lo, lo + k, n, old)?;
        Ok((oh, node_hash(&th, last)))
    } else {
        let (oh, th) = run_tree_proof(rest, lo + k, hi, n, old)?;
        Ok((node_hash(last, &oh), node_hash(last, &th)))
    }
}

/// A tile: the hashes at tree level `h·l` for positions `n·2^h .. n·2^h + w`. Level -1 is the
/// record-data tile (`tile/H/data/N`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tile {
    pub h: u32,
    pub l: i32,
    pub n: u64,
    pub w: u32,
}

/// Tiles the go command uses: 8 levels, 256 hashes when full.
pub const TILE_HEIGHT: u32 = 8;

impl Tile {
    fn full_width(&self) -> u32 {
        1 << self.h
    }

    fn valid(&self) -> bool {
        (1..=30).contains(&self.h)
            && (0..64).contains(&self.l)
            && self.w >= 1
            && self.w <= self.full_width()
    }

    /// The tile's path relative to the database base, e.g. `tile/8/0/x001/x234/067.p/5`.
    pub fn path(&self) -> String {
        let mut n = self.n;
        let mut s = format!("{:03}", n % 1000);
        while n >= 1000 {
            n /= 1000;
            s = format!("x{:03}/{s}", n % 1000);
        }
        let level = if self.l == -1 {
            "data".to_string()
        } else {
            self.l.to_string()
        };
        let partial = if self.h <= 30 && self.w != self.full_width() {
            format!(".p/{}", self.w)
        } else {
            String::new()
        };
        format!("tile/{}/{level}/{s}{partial}", self.h)
    }
}

impl fmt::Display for Tile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path())
    }
}

fn parse_num(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses a tile path (`tile/H/L/NNN[.p/W]`, `L` may be `data`). Only the canonical spelling
/// that `Tile::path` produces is accepted.
pub fn parse_tile_path(path: &str) -> Result<Tile, TlogError> {
    let bad = || TlogError::BadTilePath(path.to_string());
    let mut f: Vec<&str> = path.split('/').collect();
    if f.len() < 4 || f[0] != "tile" {
        return Err(bad());
    }
    let h = parse_num(f[1])
        .filter(|h| (1..=30).contains(h))
        .ok_or_else(bad)? as u32;
    let l: i32 = if f[2] == "data" {
        -1
    } else {
        parse_num(f[2]).filter(|l| *l < 64).ok_or_else(bad)? as i32
    };
    let mut w = 1u32 << h;
    let last2 = f[f.len() - 2];
    if let Some(stem) = last2.strip_suffix(".p") {
        let ww = parse_num(f[f.len() - 1])
            .filter(|ww| *ww > 0 && *ww < u64::from(w))
            .ok_or_else(bad)?;
        w = ww as u32;
        let at = f.len() - 2;
        f[at] = stem;
        f.pop();
    }
    let groups = f.get(3..).ok_or_else(bad)?;
    if groups.is_empty() || groups.len() > 7 {
        return Err(bad());
    }
    let mut n: u64 = 0;
    for g in groups {
        let digits = g.strip_prefix('x').unwrap_or(g);
        let nn = parse_num(digits).filter(|nn| *nn < 1000).ok_or_else(bad)?;
        n = n
            .checked_mul(1000)
            .and_then(|n| n.checked_add(nn))
            .ok_or_else(bad)?;
    }
    let t = Tile { h, l, n, w };
    if t.path() != path {
        return Err(bad());
    }
    Ok(t)
}

/// The smallest tile of height `h` holding stored hash `index`, with the byte range of that
/// hash's subtree inside the tile data.
fn tile_for_index_range(h: u32, index: u64) -> (Tile, usize, usize) {
    let (level, n) = split_stored_hash_index(index);
    let l = level / h;
    let level = level - l * h; // level within the tile
    let tn = shr(shl(n, level), h);
    let within = n - shr(shl(tn, h), level);
    let w = shl(within + 1, level) as u32;
    let start = shl(within, level) as usize * HASH_SIZE;
    let end = shl(within + 1, level) as usize * HASH_SIZE;
    (
        Tile {
            h,
            l: l as i32,
            n: tn,
            w,
        },
        start,
        end,
    )
}

/// The smallest tile of height `h` holding stored hash `index`.
pub fn tile_for_index(h: u32, index: u64) -> Tile {
    tile_for_index_range(h, index).0
}

/// The hash at stored-hash `index`, computed from the data of tile `t`.
pub fn hash_from_tile(t: &Tile, data: &[u8], index: u64) -> Result<Hash, TlogError> {
    if !t.valid() {
        return Err(TlogError::BadTile(t.path()));
    }
    let want = t.w as usize * HASH_SIZE;
    if data.len() < want {
        return Err(TlogError::TileSize {
            tile: t.path(),
            got: data.len(),
            want,
        });
    }
    let (t1, start, end) = tile_for_index_range(t.h, index);
    if t.l != t1.l || t.n != t1.n || t.w < t1.w {
        return Err(TlogError::WrongTile {
            index,
            want: t1.path(),
            got: t.path(),
        });
    }
    let span = data
        .get(start..end)
        .ok_or(TlogError::BadInput("tile range"))?;
    tile_hash(span)
}

/// Root hash of a run of hashes whose count is a power of two.
pub fn tile_hash(data: &[u8]) -> Result<Hash, TlogError> {
    let count = data.len() / HASH_SIZE;
    if !data.len().is_multiple_of(HASH_SIZE) || !count.is_power_of_two() {
        return Err(TlogError::BadInput(
            "tile hash over a non-power-of-two span",
        ));
    }
    Ok(tile_hash_inner(data))
}

fn tile_hash_inner(data: &[u8]) -> Hash {
    if let Ok(h) = <Hash>::try_from(data) {
        return h;
    }
    let (l, r) = data.split_at(data.len() / 2);
    node_hash(&tile_hash_inner(l), &tile_hash_inner(r))
}

/// The `k`th ancestor of tile `t` in a tree of `n` records, trimmed to the tree's width; `None`
/// when the tree does not reach that far.
fn tile_parent(t: Tile, k: u32, n: u64) -> Option<Tile> {
    let mut t = t;
    t.l += k as i32;
    t.n = shr(t.n, k * t.h);
    t.w = 1 << t.h;
    let max = shr(n, t.l as u32 * t.h);
    let start = shl(t.n, t.h);
    if start + u64::from(t.w) >= max {
        if start >= max {
            return None;
        }
        t.w = (max - start) as u32;
    }
    Some(t)
}

/// Which tiles to fetch to read some stored hashes of a tree, and how to authenticate them.
///
/// This is `tileHashReader.ReadHashes` from golang.org/x/mod/sumdb/tlog split in two so the
/// fetch in between can be async: `TilePlan::new` lists the tiles (first those whose hashes
/// combine into the tree's root, then the full tiles below them down to each wanted index),
/// and `verify` checks the first group against the signed root hash and every other tile
/// against its parent before returning the wanted hashes.
#[derive(Debug)]
pub struct TilePlan {
    tree: Tree,
    tiles: Vec<Tile>,
    /// Subtree-root indices for the tree hash, and the tile holding each.
    stx: Vec<(u64, usize)>,
    /// Number of leading tiles that hold `stx`.
    stx_tiles: usize,
    /// The wanted indices, and the tile holding each.
    wanted: Vec<(u64, usize)>,
}

impl TilePlan {
    pub fn new(tree: Tree, h: u32, indexes: &[u64]) -> Result<TilePlan, TlogError> {
        if !(1..=30).contains(&h) {
            return Err(TlogError::BadInput("tile height"));
        }
        if tree.n > MAX_TREE_SIZE {
            return Err(TlogError::TreeTooLarge(tree.n));
        }
        if tree.n == 0 {
            return Err(TlogError::NotInTree(0));
        }
        let mut order: HashMap<Tile, usize> = HashMap::new();
        let mut tiles = Vec::new();
        let mut stx = Vec::new();
        for x in tree_hash_indexes(tree.n) {
            let t = tile_parent(tile_for_index(h, x), 0, tree.n)
                .ok_or(TlogError::BadInput("subtree tile outside tree"))?;
            let j = *order.entry(t).or_insert_with(|| {
                tiles.push(t);
                tiles.len() - 1
            });
            stx.push((x, j));
        }
        let stx_tiles = tiles.len();

        let end = stored_hash_index(0, tree.n);
        let mut wanted = Vec::with_capacity(indexes.len());
        for &x in indexes {
            if x >= end {
                return Err(TlogError::NotInTree(tree.n));
            }
            let tile = tile_for_index(h, x);
            // Climb until a tile we already fetch, then add the full tiles on the way down.
            let mut k = 0;
            let found = loop {
                let p = tile_parent(tile, k, tree.n).ok_or(TlogError::NotInTree(tree.n))?;
                if let Some(&j) = order.get(&p) {
                    break j;
                }
                k += 1;
                if k > 64 {
                    return Err(TlogError::BadInput("no ancestor tile"));
                }
            };
            let mut j = found;
            for kk in (0..k).rev() {
                let p = tile_parent(tile, kk, tree.n).ok_or(TlogError::NotInTree(tree.n))?;
                if p.w != p.full_width() {
                    return Err(TlogError::BadInput(
                        "partial tile below the tree's right edge",
                    ));
                }
                tiles.push(p);
                j = tiles.len() - 1;
                order.insert(p, j);
            }
            wanted.push((x, j));
        }
        Ok(TilePlan {
            tree,
            tiles,
            stx,
            stx_tiles,
            wanted,
        })
    }

    /// The tiles to fetch, in order; `verify` takes their data in the same order.
    pub fn tiles(&self) -> &[Tile] {
        &self.tiles
    }

    /// Authenticates every tile and returns the hashes at the planned indexes. On success
    /// every tile in `data` is proven part of the tree and safe to cache.
    pub fn verify(&self, data: &[Vec<u8>]) -> Result<Vec<Hash>, TlogError> {
        if data.len() != self.tiles.len() {
            return Err(TlogError::ShortRead {
                got: data.len(),
                want: self.tiles.len(),
            });
        }
        for (t, d) in self.tiles.iter().zip(data) {
            let want = t.w as usize * HASH_SIZE;
            if d.len() != want {
                return Err(TlogError::TileSize {
                    tile: t.path(),
                    got: d.len(),
                    want,
                });
            }
        }
        let tile_data = |j: usize| -> Result<(&Tile, &[u8]), TlogError> {
            match (self.tiles.get(j), data.get(j)) {
                (Some(t), Some(d)) => Ok((t, d.as_slice())),
                _ => Err(TlogError::BadInput("tile plan index")),
            }
        };

        // 1. The top tiles must reproduce the signed root hash.
        let mut root: Option<Hash> = None;
        for &(x, j) in self.stx.iter().rev() {
            let (t, d) = tile_data(j)?;
            let h = hash_from_tile(t, d, x)?;
            root = Some(match root {
                None => h,
                Some(right) => node_hash(&h, &right),
            });
        }
        if root != Some(self.tree.hash) {
            return Err(TlogError::InconsistentTile);
        }

        // 2. Every other tile must hash to its entry in its parent. Parents come earlier in
        //    the list, so each check rests on an already authenticated tile.
        for (i, t) in self.tiles.iter().enumerate().skip(self.stx_tiles) {
            let p = tile_parent(*t, 1, self.tree.n).ok_or(TlogError::InconsistentTile)?;
            let j = self
                .tiles
                .iter()
                .position(|x| *x == p)
                .filter(|j| *j < i)
                .ok_or(TlogError::BadInput("lost parent tile"))?;
            let (pt, pd) = tile_data(j)?;
            let expected = hash_from_tile(pt, pd, stored_hash_index(p.l as u32 * p.h, t.n))?;
            let (_, d) = tile_data(i)?;
            if expected != tile_hash(d)? {
                return Err(TlogError::InconsistentTile);
            }
        }

        // 3. Read the wanted hashes out of the now trusted tiles.
        self.wanted
            .iter()
            .map(|&(x, j)| {
                let (t, d) = tile_data(j)?;
                hash_from_tile(t, d, x)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;

    fn b64(s: &str) -> Hash {
        STANDARD
            .decode(s)
            .ok()
            .and_then(|v| Hash::try_from(v.as_slice()).ok())
            .unwrap_or_else(|| panic!("bad test hash {s}"))
    }

    /// The records of `tests/fixtures/sumdb/gen.go`.
    fn record(i: usize) -> Vec<u8> {
        let (path, vers) = if i == 7 {
            (
                "github.com/Azure/azure-sdk".to_string(),
                "v1.0.0-RC1".to_string(),
            )
        } else {
            (format!("example.com/mod{i}"), format!("v1.{}.0", i % 17))
        };
        let h1 = |s: String| format!("h1:{}", STANDARD.encode(Sha256::digest(s.as_bytes())));
        format!(
            "{path} {vers} {}\n{path} {vers}/go.mod {}\n",
            h1(format!("{path}{vers}zip")),
            h1(format!("{path}{vers}mod"))
        )
        .into_bytes()
    }

    /// An in-memory log: every stored hash, in order.
    struct MemLog(Vec<Hash>);

    impl HashReader for MemLog {
        fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, TlogError> {
            indexes
                .iter()
                .map(|&i| {
                    self.0
                        .get(i as usize)
                        .copied()
                        .ok_or(TlogError::NotInTree(i))
                })
                .collect()
        }
    }

    fn log(n: usize) -> MemLog {
        let mut log = MemLog(Vec::new());
        for i in 0..n {
            let hs = stored_hashes_for_record_hash(i as u64, record_hash(&record(i)), &log)
                .unwrap_or_else(|e| panic!("append {i}: {e}"));
            log.0.extend(hs);
        }
        log
    }

    #[test]
    fn tree_hashes_match_the_go_implementation() {
        let log = log(300);
        let want = [
            (1, "Hm0HU79g6xZOqWYRyhdEpAljip86PD3aYNAPipbYjEU="),
            (2, "uNpy4NV/5khcUohJHl8JTOe1s/LTk8EVbGvI/vvd8Uc="),
            (3, "OCGHfLqEWMzS7X8/AeNDzthvru351XwvdW+0lKtpU6g="),
            (7, "Pn4v6Y2PpElb+YHR+DAb5I94wOl+n0JtgN7i7kz+K5M="),
            (8, "+K5bJm1ZdznmFVI85/ZeD52y6JeLI2kDsmaa0nB6DE4="),
            (200, "wX0rB8WZ8uEp8ycbcPscd14FVoq27RybhxFyuCP+ty4="),
            (256, "q3VEDUaq6WVcKBkiQjZ0Bkdj9qGekx9YkbG5pHXzhfE="),
            (300, "HHKAHTisddptIwmN/TxVlY1NW0oH4rXSYQk1bQd7NtA="),
        ];
        for (n, h) in want {
            assert_eq!(tree_hash(n, &log), Ok(b64(h)), "TreeHash({n})");
        }
        assert_eq!(tree_hash(0, &log), Ok([0; 32]));
        assert_eq!(log.0.len() as u64, stored_hash_count(300));
        assert_eq!(record_hash(&record(0)), b64(want[0].1));
    }

    #[test]
    fn stored_hash_indices_match_the_go_implementation() {
        for (level, n, want) in [
            (0, 0, 0),
            (0, 1, 1),
            (1, 0, 2),
            (0, 299, 593),
            (3, 5, 92),
            (8, 1, 1021),
            (7, 2, 765),
        ] {
            assert_eq!(
                stored_hash_index(level, n),
                want,
                "StoredHashIndex({level}, {n})"
            );
            assert_eq!(split_stored_hash_index(want), (level, n));
        }
        let split = [
            (0, (0, 0), "tile/8/0/000.p/1"),
            (1, (0, 1), "tile/8/0/000.p/2"),
            (2, (1, 0), "tile/8/0/000.p/2"),
            (3, (0, 2), "tile/8/0/000.p/3"),
            (4, (0, 3), "tile/8/0/000.p/4"),
            (598, (1, 150), "tile/8/0/001.p/46"),
            (1000, (2, 125), "tile/8/0/001.p/248"),
            (12345, (2, 1543), "tile/8/0/024.p/32"),
        ];
        for (index, want, tile) in split {
            assert_eq!(split_stored_hash_index(index), want, "Split({index})");
            assert_eq!(
                tile_for_index(8, index).path(),
                tile,
                "TileForIndex({index})"
            );
        }
        for (n, want) in [(0, 0), (1, 1), (2, 3), (3, 4), (300, 596), (1000, 1994)] {
            assert_eq!(stored_hash_count(n), want, "StoredHashCount({n})");
        }
        for i in 0..5000 {
            let (l, n) = split_stored_hash_index(i);
            assert_eq!(stored_hash_index(l, n), i);
        }
    }

    #[test]
    fn tile_paths_match_the_go_implementation_and_round_trip() {
        let cases = [
            (
                Tile {
                    h: 8,
                    l: 0,
                    n: 1234067,
                    w: 256,
                },
                "tile/8/0/x001/x234/067",
            ),
            (
                Tile {
                    h: 8,
                    l: -1,
                    n: 5,
                    w: 256,
                },
                "tile/8/data/005",
            ),
            (
                Tile {
                    h: 8,
                    l: 2,
                    n: 1000,
                    w: 7,
                },
                "tile/8/2/x001/000.p/7",
            ),
            (
                Tile {
                    h: 8,
                    l: 1,
                    n: 0,
                    w: 1,
                },
                "tile/8/1/000.p/1",
            ),
        ];
        for (t, p) in cases {
            assert_eq!(t.path(), p);
            assert_eq!(parse_tile_path(p), Ok(t));
        }
    }

    #[test]
    fn non_canonical_tile_paths_are_rejected() {
        for p in [
            "tile/8/0/1",
            "tile/8/0/001.p/256",
            "tile/8/0/001.p/0",
            "tile/8/0/x000/001",
            "tile/8/0/001/",
            "tile/0/0/001",
            "tile/31/0/001",
            "tile/8/64/001",
            "tile/8/-1/001",
            "tile/8/0/+01",
            "tile/8/0",
            "tiles/8/0/001",
            "tile/8/0/x001/x001/x001/x001/x001/x001/x001/001",
            "tile/8/0/001.p/99999999999999999999",
            "tile/8/0/x999/x999/x999/x999/x999/x999/999",
        ] {
            assert!(parse_tile_path(p).is_err(), "{p} should be rejected");
        }
    }

    #[test]
    fn proofs_match_the_go_implementation_and_check() {
        let log = log(300);
        let t300 = tree_hash(300, &log).unwrap_or_default();
        let t200 = tree_hash(200, &log).unwrap_or_default();
        let p = prove_tree(300, 200, &log).unwrap_or_default();
        let want: Vec<Hash> = [
            "WhPmqcbILwvWy3eu0TR2gr9/qW6dCEw3d4q0XJESkYk=",
            "gq+jkjVD5KQ5gciGxuCDJv0+MnGL0Ag8ZweR67bmM+A=",
            "Uho54nsqiGQpGrtxIViFwXxdchP6o9PL4KnXK1SQVNY=",
            "uTz5cms7qThSA7pXN5ETHliqbzaO763ugvTt8laeFG8=",
            "t3CrfXBf8dlkZADVc95V3amE+V3+jdfkSNhclC2wSHE=",
            "0vAsDF0a972Zcld5x6Oa2jWNdBHt+2CzdODI5T2TlrQ=",
            "doPva94ovidSOxVvcb9+9jJY/se+Wf8pET/OFDiehAs=",
        ]
        .map(b64)
        .to_vec();
        assert_eq!(p, want);
        assert_eq!(check_tree(&p, 300, &t300, 200, &t200), Ok(()));
        assert_eq!(
            check_tree(&p, 300, &t300, 200, &t300),
            Err(TlogError::ProofFailed)
        );

        let rp = prove_record(300, 250, &log).unwrap_or_default();
        assert_eq!(rp.len(), 9);
        assert_eq!(rp[0], b64("3IE/AlPRMVIp70m90hyaQ6vyvsOZg90V3y+JkHvuZCg="));
        let leaf = record_hash(&record(250));
        assert_eq!(check_record(&rp, 300, &t300, 250, &leaf), Ok(()));
        assert_eq!(
            check_record(&rp, 300, &t300, 251, &leaf),
            Err(TlogError::ProofFailed)
        );
        assert_eq!(
            check_record(&rp[1..], 300, &t300, 250, &leaf),
            Err(TlogError::ProofFailed)
        );
    }

    /// The hash tiles of a tree of size `n` at exact widths, as a server serves them.
    fn tile_data(log: &MemLog, t: &Tile) -> Vec<u8> {
        let start = shl(t.n, t.h);
        (0..u64::from(t.w))
            .flat_map(|i| {
                let idx = stored_hash_index(t.l as u32 * t.h, start + i);
                log.0[idx as usize]
            })
            .collect()
    }

    #[test]
    fn tile_plan_reads_every_record_of_a_tree_through_authenticated_tiles() {
        let log = log(600);
        for n in [1u64, 2, 255, 256, 257, 300, 512, 600] {
            let tree = Tree {
                n,
                hash: tree_hash(n, &log).unwrap_or_default(),
            };
            let indexes: Vec<u64> = (0..n).map(|i| stored_hash_index(0, i)).collect();
            let plan = TilePlan::new(tree, 8, &indexes).unwrap_or_else(|e| panic!("{n}: {e}"));
            let data: Vec<Vec<u8>> = plan.tiles().iter().map(|t| tile_data(&log, t)).collect();
            let got = plan.verify(&data).unwrap_or_else(|e| panic!("{n}: {e}"));
            let want: Vec<Hash> = (0..n as usize).map(|i| record_hash(&record(i))).collect();
            assert_eq!(got, want, "tree {n}");
        }
    }

    #[test]
    fn tile_plan_rejects_any_flipped_bit_in_any_tile() {
        let log = log(300);
        let tree = Tree {
            n: 300,
            hash: tree_hash(300, &log).unwrap_or_default(),
        };
        for id in [0u64, 250, 299] {
            let plan = TilePlan::new(tree, 8, &[stored_hash_index(0, id)])
                .unwrap_or_else(|e| panic!("{e}"));
            let data: Vec<Vec<u8>> = plan.tiles().iter().map(|t| tile_data(&log, t)).collect();
            for i in 0..data.len() {
                let mut bad = data.clone();
                // The byte holding the wanted record's hash, or the first byte of the tile.
                let off = if plan.tiles()[i].l == 0 && plan.tiles()[i].n == id >> 8 {
                    (id as usize % 256) * HASH_SIZE
                } else {
                    0
                };
                bad[i][off] ^= 1;
                assert_eq!(
                    plan.verify(&bad),
                    Err(TlogError::InconsistentTile),
                    "record {id}, tile {}",
                    plan.tiles()[i]
                );
            }
        }
    }

    #[test]
    fn tile_plan_rejects_indexes_outside_the_tree_and_short_tiles() {
        let log = log(10);
        let tree = Tree {
            n: 10,
            hash: tree_hash(10, &log).unwrap_or_default(),
        };
        assert!(TilePlan::new(tree, 8, &[stored_hash_index(0, 10)]).is_err());
        assert!(
            TilePlan::new(
                Tree {
                    n: 0,
                    hash: [0; 32]
                },
                8,
                &[]
            )
            .is_err()
        );
        assert!(
            TilePlan::new(
                Tree {
                    n: u64::MAX,
                    hash: [0; 32]
                },
                8,
                &[]
            )
            .is_err()
        );
        let plan = TilePlan::new(tree, 8, &[0]).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            plan.verify(&[vec![0; 31]]),
            Err(TlogError::TileSize { .. })
        ));
        assert!(plan.verify(&[]).is_err());
    }
}
