//! A module zip's directory read the way Go's `archive/zip` reads it, and the one layout this
//! check accepts: entries one after another from the first byte, each with exactly its data
//! (and data descriptor), then the central directory, then the end records, nothing else.
//!
//! Why: the `zip` crate reads some malformed archives differently from Go (an entry count that
//! wraps at 65,536, an earlier end record when the last one is bad, the last of two zip64 extra
//! fields instead of the first, a Unicode path field over the name), so a hostile upstream
//! could have the check hash one archive while the go command unpacks another. Go's own module
//! zips have this layout; anything else is refused before a byte is inflated. Contiguous
//! entries also cannot share data, so no archive costs more than one pass over its bytes.

use std::io::{self, BufReader, Read};

use super::hash::ModZipError;
use super::unzip::{Cursor, ReadAt};

const LOCAL: u32 = 0x0403_4b50;
const CENTRAL: u32 = 0x0201_4b50;
const END: u32 = 0x0605_4b50;
const END64: u32 = 0x0606_4b50;
const LOCATOR64: u32 = 0x0706_4b50;
const DESCRIPTOR: u32 = 0x0807_4b50;
const END_LEN: u64 = 22;
const CENTRAL_LEN: usize = 46;
const LOCAL_LEN: usize = 30;

/// One central directory entry, zip64 fields applied as Go applies them (the first field).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub flags: u16,
    pub method: u16,
    pub crc: u32,
    pub stored: u64,
    pub size: u64,
    pub header: u64,
}

impl DirEntry {
    fn uses_descriptor(&self) -> bool {
        self.flags & 0x8 != 0
    }
}

/// The directory, and where the data of each entry starts (after its local header).
pub struct Layout {
    pub entries: Vec<DirEntry>,
    pub data: Vec<u64>,
}

fn bad(why: impl Into<String>) -> ModZipError {
    ModZipError::Layout(why.into())
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2)
        .map_or(0, |s| u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8).map_or(0, |s| {
        u64::from_le_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]])
    })
}

fn read_exact_at<S: ReadAt + ?Sized>(src: &S, buf: &mut [u8], at: u64) -> Result<(), ModZipError> {
    let mut done = 0;
    while done < buf.len() {
        let n = src
            .read_at(&mut buf[done..], at + done as u64)
            .map_err(|e| bad(format!("read failed: {e}")))?;
        if n == 0 {
            return Err(bad("a record runs past the end of the file"));
        }
        done += n;
    }
    Ok(())
}

/// Reads the directory of `src` as Go does and checks the layout described above.
pub fn read<S: ReadAt + ?Sized>(src: &S) -> Result<Layout, ModZipError> {
    let len = src.size().map_err(|e| bad(format!("read failed: {e}")))?;
    let (end_start, records, dir_size, dir_offset) = end_records(src, len)?;
    if dir_offset.checked_add(dir_size) != Some(end_start) {
        return Err(bad(
            "the central directory does not end where the end record starts",
        ));
    }
    // Headers one after another from the directory's offset, as Go reads them.
    let mut reader = BufReader::new(Cursor::new(src).map_err(|e| bad(e.to_string()))?);
    io::Seek::seek(&mut reader, io::SeekFrom::Start(dir_offset)).map_err(|e| bad(e.to_string()))?;
    let mut entries = Vec::new();
    let mut pos = dir_offset;
    while pos < end_start {
        let (entry, used) = central_entry(&mut reader)?;
        pos += used;
        entries.push(entry);
    }
    if pos != end_start || entries.len() as u64 != records {
        return Err(bad(format!(
            "the end record names {records} entries in {dir_size} bytes; the directory holds {} in {}",
            entries.len(),
            pos - dir_offset
        )));
    }
    let data = contiguous(src, &entries, dir_offset)?;
    Ok(Layout { entries, data })
}

/// The end record Go picks (the last signature in the final 65 KiB whose comment fits; here it
/// must end the file), and the zip64 end record it points to when its fields are saturated.
/// Returns where the end records start, the entry count, and the directory's size and offset.
fn end_records<S: ReadAt + ?Sized>(src: &S, len: u64) -> Result<(u64, u64, u64, u64), ModZipError> {
    let tail_len = len.min(65 * 1024);
    let mut tail = vec![0u8; usize::try_from(tail_len).unwrap_or(0)];
    read_exact_at(src, &mut tail, len - tail_len)?;
    let found = (0..tail.len().saturating_sub(END_LEN as usize - 1))
        .rev()
        .find(|&i| {
            u32_at(&tail, i) == END
                && i + END_LEN as usize + usize::from(u16_at(&tail, i + 20)) <= tail.len()
        });
    let Some(at) = found else {
        return Err(bad("no end of central directory record"));
    };
    if at + END_LEN as usize + usize::from(u16_at(&tail, at + 20)) != tail.len() {
        return Err(bad("bytes after the end of central directory record"));
    }
    let end = len - tail_len + at as u64;
    let records = u64::from(u16_at(&tail, at + 10));
    let size = u64::from(u32_at(&tail, at + 12));
    let offset = u64::from(u32_at(&tail, at + 16));
    // Go follows a zip64 locator when `records == 0xffff || size == 0xffff || offset ==
    // 0xffffffff` (sic: 0xffff for the size) and the locator says disk 0 of 1 disk; the zip
    // crate when any field is saturated (size 0xffffffff), whatever the disk count. Go's
    // writer saturates all three; accept zip64 only in that form, and refuse a locator that
    // one reader would follow and another would not.
    let locator_at = end.checked_sub(20);
    let mut locator = [0u8; 20];
    let has_locator = match locator_at {
        Some(at) => {
            read_exact_at(src, &mut locator, at)?;
            u32_at(&locator, 0) == LOCATOR64
        }
        None => false,
    };
    let saturated = records == 0xffff && size == 0xffff_ffff && offset == 0xffff_ffff;
    if !saturated {
        let any =
            records == 0xffff || size == 0xffff || size == 0xffff_ffff || offset == 0xffff_ffff;
        if any && has_locator {
            return Err(bad("a zip64 locator that not every reader follows"));
        }
        if records == 0xffff || size == 0xffff_ffff || offset == 0xffff_ffff {
            return Err(bad("partly saturated end record"));
        }
        return Ok((end, records, size, offset));
    }
    let at = locator_at.ok_or_else(|| bad("zip64 end record missing"))?;
    if !has_locator || u32_at(&locator, 4) != 0 || u32_at(&locator, 16) != 1 {
        return Err(bad("zip64 end record missing"));
    }
    let start = u64_at(&locator, 8);
    let mut rec = [0u8; 56];
    read_exact_at(src, &mut rec, start)?;
    if u32_at(&rec, 0) != END64
        || start
            .checked_add(12)
            .and_then(|s| s.checked_add(u64_at(&rec, 4)))
            != Some(at)
        || u32_at(&rec, 16) != 0
        || u32_at(&rec, 20) != 0
        || u64_at(&rec, 24) != u64_at(&rec, 32)
    {
        return Err(bad("zip64 end record missing or misplaced"));
    }
    Ok((start, u64_at(&rec, 32), u64_at(&rec, 40), u64_at(&rec, 48)))
}

/// One central header and the bytes it takes.
fn central_entry(r: &mut impl Read) -> Result<(DirEntry, u64), ModZipError> {
    let mut fixed = [0u8; CENTRAL_LEN];
    r.read_exact(&mut fixed)
        .map_err(|_| bad("a central directory header runs past the directory"))?;
    if u32_at(&fixed, 0) != CENTRAL {
        return Err(bad("not a central directory header"));
    }
    let (n, m, k) = (
        usize::from(u16_at(&fixed, 28)),
        usize::from(u16_at(&fixed, 30)),
        usize::from(u16_at(&fixed, 32)),
    );
    let mut var = vec![0u8; n + m + k];
    r.read_exact(&mut var)
        .map_err(|_| bad("a central directory header runs past the directory"))?;
    let mut e = DirEntry {
        name: var[..n].to_vec(),
        flags: u16_at(&fixed, 8),
        method: u16_at(&fixed, 10),
        crc: u32_at(&fixed, 16),
        stored: u64::from(u32_at(&fixed, 20)),
        size: u64::from(u32_at(&fixed, 24)),
        header: u64::from(u32_at(&fixed, 42)),
    };
    let (mut need_size, mut need_stored, mut need_header) = (
        e.size == 0xffff_ffff,
        e.stored == 0xffff_ffff,
        e.header == 0xffff_ffff,
    );
    let mut extra = &var[n..n + m];
    let mut zip64_fields = 0;
    while extra.len() >= 4 {
        let (tag, size) = (u16_at(extra, 0), usize::from(u16_at(extra, 2)));
        let Some(field) = extra.get(4..4 + size) else {
            break;
        };
        match tag {
            0x0001 => {
                zip64_fields += 1;
                let mut at = 0;
                for (need, value) in [
                    (&mut need_size, &mut e.size),
                    (&mut need_stored, &mut e.stored),
                    (&mut need_header, &mut e.header),
                ] {
                    if *need {
                        if field.len() < at + 8 {
                            return Err(bad("a zip64 field is too short"));
                        }
                        *value = u64_at(field, at);
                        *need = false;
                        at += 8;
                    }
                }
            }
            // Unicode path and comment fields: some readers take the name from them, Go does not.
            0x7075 | 0x6375 => {
                return Err(bad(format!(
                    "{:?}: Unicode path or comment fields are not allowed",
                    String::from_utf8_lossy(&e.name)
                )));
            }
            _ => {}
        }
        extra = &extra[4 + size..];
    }
    if zip64_fields > 1 || need_size || need_stored || need_header {
        return Err(bad(format!(
            "{:?}: zip64 fields missing or repeated",
            String::from_utf8_lossy(&e.name)
        )));
    }
    Ok((e, (CENTRAL_LEN + n + m + k) as u64))
}

/// Each entry's data start; entries must follow one another from offset 0 to the directory.
fn contiguous<S: ReadAt + ?Sized>(
    src: &S,
    entries: &[DirEntry],
    dir_offset: u64,
) -> Result<Vec<u64>, ModZipError> {
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&i| entries[i].header);
    let mut data = vec![0u64; entries.len()];
    let mut expect = 0u64;
    for (k, &i) in order.iter().enumerate() {
        let e = &entries[i];
        let name = String::from_utf8_lossy(&e.name);
        if e.header != expect || e.header >= dir_offset {
            return Err(bad(format!(
                "{name:?}: its local header is at {} instead of {expect} (entries must follow one another)",
                e.header
            )));
        }
        let mut local = [0u8; LOCAL_LEN];
        read_exact_at(src, &mut local, e.header)?;
        if u32_at(&local, 0) != LOCAL {
            return Err(bad(format!("{name:?}: no local header at {}", e.header)));
        }
        let start = e.header
            + LOCAL_LEN as u64
            + u64::from(u16_at(&local, 26))
            + u64::from(u16_at(&local, 28));
        data[i] = start;
        let end = start
            .checked_add(e.stored)
            .filter(|&end| end <= dir_offset)
            .ok_or_else(|| bad(format!("{name:?}: its data runs into the directory")))?;
        let next = order.get(k + 1).map_or(dir_offset, |&j| entries[j].header);
        let gap = next
            .checked_sub(end)
            .ok_or_else(|| bad(format!("{name:?}: its data overlaps the next entry")))?;
        if e.uses_descriptor() {
            // Go checks the descriptor's CRC against the directory's.
            let mut d = [0u8; 8];
            read_exact_at(src, &mut d, end)?;
            let (crc, lens): (u32, &[u64]) = if u32_at(&d, 0) == DESCRIPTOR {
                (u32_at(&d, 4), &[16, 24])
            } else {
                (u32_at(&d, 0), &[12, 20])
            };
            if !lens.contains(&gap) {
                return Err(bad(format!("{name:?}: a malformed data descriptor")));
            }
            if crc != e.crc {
                return Err(bad(format!(
                    "{name:?}: its data descriptor's CRC-32 differs from the directory's"
                )));
            }
        } else if gap != 0 {
            return Err(bad(format!(
                "{name:?}: {gap} bytes between its data and the next entry"
            )));
        }
        expect = next;
    }
    if expect != dir_offset {
        return Err(bad("bytes between the last entry and the directory"));
    }
    Ok(data)
}
