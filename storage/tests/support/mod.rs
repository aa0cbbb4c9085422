//! Helpers shared by the storage crate's black-box tests.

use std::path::Path;
use std::time::{Duration, Instant};

use wharf_storage::{Storage, StorageError};

/// How long a reopen waits for a just-dropped database of this process to let go of its lock:
/// sled's background threads can hold it briefly after the last handle is dropped.
const RELEASE: Duration = Duration::from_secs(10);

/// Opens the storage at `dir`, waiting out the lock of one this test just dropped.
pub fn open(dir: &Path) -> Storage {
    let deadline = Instant::now() + RELEASE;
    loop {
        match Storage::open(dir) {
            Ok(storage) => return storage,
            Err(StorageError::InUse { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("open {}: {e}", dir.display()),
        }
    }
}

/// Writes raw bytes into a tree of a closed storage's index, as a bug or bit rot would.
pub fn plant_raw_record(data_dir: &Path, tree: &str, key: &[u8], value: &[u8]) {
    let deadline = Instant::now() + RELEASE;
    let db = loop {
        match sled::open(data_dir.join("index")) {
            Ok(db) => break db,
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("open the index of {}: {e}", data_dir.display()),
        }
    };
    db.open_tree(tree).unwrap().insert(key, value).unwrap();
    db.flush().unwrap();
}
