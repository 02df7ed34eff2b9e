//! Durable storage for the API server: a snapshot replaced atomically, plus a write-ahead log of
//! every change since. A change is synced to disk before the API server acknowledges it; a torn
//! record at the end of the log (the process died while writing it, so nobody was told it
//! succeeded) is dropped on the next start.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use causeway_ca::files::{Visibility, write_atomically};
use kube::core::DynamicObject;
use serde::{Deserialize, Serialize};

pub const SNAPSHOT_FILE: &str = "snapshot.json";
pub const LOG_FILE: &str = "wal.log";

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is damaged at line {line} ({reason}) and later records follow it; the API server's \
         data cannot be trusted. Move the cluster's data directory aside to start empty, or restore it"
    )]
    Corrupt {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{path} is not a snapshot this version can read: {source}")]
    BadSnapshot {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// One change: the object after it, or `None` for a delete.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub revision: u64,
    /// `group/plural`.
    pub resource: String,
    pub namespace: String,
    pub name: String,
    pub object: Option<DynamicObject>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Snapshot {
    pub revision: u64,
    pub objects: Vec<SnapshotEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotEntry {
    pub resource: String,
    pub object: DynamicObject,
}

/// What was on disk: the snapshot, then the log's records after it.
pub struct Recovered {
    pub snapshot: Snapshot,
    pub records: Vec<Record>,
    /// Bytes of a torn final record that were dropped.
    pub dropped_bytes: u64,
}

pub struct Wal {
    directory: PathBuf,
    file: File,
    len: u64,
}

fn io_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> WalError + 'a {
    move |source| WalError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

fn encode(record: &Record) -> Vec<u8> {
    let json = serde_json::to_vec(record).expect("a JSON value always serializes");
    let mut line = format!("{:08x} ", crc32fast::hash(&json)).into_bytes();
    line.extend_from_slice(&json);
    line.push(b'\n');
    line
}

fn decode(line: &[u8]) -> Result<Record, String> {
    let text = line
        .strip_suffix(b"\n")
        .ok_or_else(|| "the record has no end of line".to_owned())?;
    if text.len() < 9 || text[8] != b' ' {
        return Err("the record has no checksum".to_owned());
    }
    let checksum = std::str::from_utf8(&text[..8])
        .ok()
        .and_then(|hex| u32::from_str_radix(hex, 16).ok())
        .ok_or_else(|| "the checksum is not hexadecimal".to_owned())?;
    let json = &text[9..];
    if crc32fast::hash(json) != checksum {
        return Err("the checksum does not match".to_owned());
    }
    serde_json::from_slice(json).map_err(|error| format!("the record is not valid: {error}"))
}

impl Wal {
    /// Reads the snapshot and the log in `directory` (creating both when absent) and opens the
    /// log for appending.
    pub fn open(directory: &Path) -> Result<(Self, Recovered), WalError> {
        std::fs::create_dir_all(directory).map_err(io_error("create", directory))?;
        let snapshot_path = directory.join(SNAPSHOT_FILE);
        let snapshot = match std::fs::read(&snapshot_path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| WalError::BadSnapshot {
                    path: snapshot_path.clone(),
                    source,
                })?
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Snapshot {
                revision: 0,
                objects: Vec::new(),
            },
            Err(error) => return Err(io_error("read", &snapshot_path)(error)),
        };
        let log_path = directory.join(LOG_FILE);
        let (records, good_len, dropped_bytes) = read_log(&log_path, snapshot.revision)?;
        let file = open_log(&log_path)?;
        if dropped_bytes > 0 {
            file.set_len(good_len)
                .map_err(io_error("truncate", &log_path))?;
            file.sync_all().map_err(io_error("sync", &log_path))?;
        }
        let wal = Self {
            directory: directory.to_owned(),
            file,
            len: good_len,
        };
        Ok((
            wal,
            Recovered {
                snapshot,
                records,
                dropped_bytes,
            },
        ))
    }

    /// Appends a record and syncs it to disk. On failure the log is cut back to where it was, so a
    /// half-written record never sits in front of later ones.
    pub fn append(&mut self, record: &Record) -> Result<(), WalError> {
        let path = self.directory.join(LOG_FILE);
        let line = encode(record);
        let written = self
            .file
            .write_all(&line)
            .and_then(|()| self.file.sync_data());
        if let Err(error) = written {
            let _ = self.file.set_len(self.len);
            return Err(io_error("append to", &path)(error));
        }
        self.len += line.len() as u64;
        Ok(())
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Replaces the snapshot with `snapshot` and empties the log. A crash between the two steps is
    /// harmless: records up to the snapshot's revision are skipped on replay.
    pub fn compact(&mut self, snapshot: &Snapshot) -> Result<(), WalError> {
        let snapshot_path = self.directory.join(SNAPSHOT_FILE);
        let bytes = serde_json::to_vec(snapshot).expect("a JSON value always serializes");
        write_atomically(&snapshot_path, &bytes, Visibility::Secret).map_err(|error| {
            WalError::Io {
                action: "write",
                path: error.path,
                source: error.source,
            }
        })?;
        let log_path = self.directory.join(LOG_FILE);
        self.file
            .set_len(0)
            .map_err(io_error("truncate", &log_path))?;
        self.file.sync_all().map_err(io_error("sync", &log_path))?;
        self.len = 0;
        Ok(())
    }
}

fn open_log(path: &Path) -> Result<File, WalError> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .mode(0o600)
        .open(path)
        .map_err(io_error("open", path))
}

/// The log's records after `after_revision`, the length of its good prefix, and how many bytes of
/// a torn tail follow it.
fn read_log(path: &Path, after_revision: u64) -> Result<(Vec<Record>, u64, u64), WalError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Ok((Vec::new(), 0, 0));
        }
        Err(error) => return Err(io_error("read", path)(error)),
    };
    let mut reader = BufReader::new(file);
    let mut records = Vec::new();
    let mut good_len = 0u64;
    let mut line = Vec::new();
    let mut line_number = 0;
    let mut damage: Option<(usize, String, u64)> = None;
    loop {
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .map_err(io_error("read", path))?;
        if read == 0 {
            break;
        }
        line_number += 1;
        if let Some((damaged_line, reason, _)) = damage {
            return Err(WalError::Corrupt {
                path: path.to_owned(),
                line: damaged_line,
                reason,
            });
        }
        match decode(&line) {
            Ok(record) => {
                good_len += read as u64;
                if record.revision > after_revision {
                    records.push(record);
                }
            }
            Err(reason) => damage = Some((line_number, reason, read as u64)),
        }
    }
    let dropped = damage.map_or(0, |(_, _, bytes)| bytes);
    Ok((records, good_len, dropped))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn named(name: &str) -> DynamicObject {
        serde_json::from_value(json!({"metadata": {"name": name}})).unwrap()
    }

    fn record(revision: u64, name: &str) -> Record {
        Record {
            revision,
            resource: "/configmaps".into(),
            namespace: "default".into(),
            name: name.into(),
            object: Some(named(name)),
        }
    }

    #[test]
    fn records_come_back_in_order_after_reopening() {
        let directory = tempfile::tempdir().unwrap();
        let (mut wal, recovered) = Wal::open(directory.path()).unwrap();
        assert!(recovered.records.is_empty());
        wal.append(&record(1, "a")).unwrap();
        wal.append(&record(2, "b")).unwrap();
        drop(wal);
        let (_, recovered) = Wal::open(directory.path()).unwrap();
        assert_eq!(recovered.records, vec![record(1, "a"), record(2, "b")]);
    }

    #[test]
    fn a_torn_final_record_is_dropped_and_the_log_cut_back() {
        let directory = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(directory.path()).unwrap();
        wal.append(&record(1, "a")).unwrap();
        let good = wal.len();
        drop(wal);
        let mut torn = encode(&record(2, "b"));
        torn.truncate(torn.len() / 2);
        let log = directory.path().join(LOG_FILE);
        let mut file = OpenOptions::new().append(true).open(&log).unwrap();
        file.write_all(&torn).unwrap();
        drop(file);

        let (mut wal, recovered) = Wal::open(directory.path()).unwrap();
        assert_eq!(recovered.records, vec![record(1, "a")]);
        assert_eq!(recovered.dropped_bytes, torn.len() as u64);
        assert_eq!(std::fs::metadata(&log).unwrap().len(), good);
        wal.append(&record(2, "c")).unwrap();
        drop(wal);
        let (_, recovered) = Wal::open(directory.path()).unwrap();
        assert_eq!(recovered.records, vec![record(1, "a"), record(2, "c")]);
    }

    #[test]
    fn damage_before_later_records_refuses_to_start() {
        let directory = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(directory.path()).unwrap();
        wal.append(&record(1, "a")).unwrap();
        wal.append(&record(2, "b")).unwrap();
        drop(wal);
        let log = directory.path().join(LOG_FILE);
        let mut bytes = std::fs::read(&log).unwrap();
        bytes[20] ^= 0x01;
        std::fs::write(&log, bytes).unwrap();
        let error = Wal::open(directory.path()).err().unwrap();
        assert!(
            matches!(error, WalError::Corrupt { line: 1, .. }),
            "{error}"
        );
        assert!(error.to_string().contains("checksum"), "{error}");
    }

    #[test]
    fn compaction_keeps_the_snapshot_and_skips_older_records() {
        let directory = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(directory.path()).unwrap();
        wal.append(&record(1, "a")).unwrap();
        let snapshot = Snapshot {
            revision: 1,
            objects: vec![SnapshotEntry {
                resource: "/configmaps".into(),
                object: named("a"),
            }],
        };
        wal.compact(&snapshot).unwrap();
        assert!(wal.is_empty());
        wal.append(&record(2, "b")).unwrap();
        drop(wal);
        let (_, recovered) = Wal::open(directory.path()).unwrap();
        assert_eq!(recovered.snapshot.revision, 1);
        assert_eq!(recovered.snapshot.objects.len(), 1);
        assert_eq!(recovered.records, vec![record(2, "b")]);
    }
}
