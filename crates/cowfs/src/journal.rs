//! The metadata journal of a layer: an append-only log of the namespace and attribute changes
//! the layer makes over the layers beneath it. File data never goes through the journal; it
//! lives in the layer's data files (see `layer.rs`).
//!
//! # On-disk layout (`journal`)
//!
//! One batch per line: a JSON array of [`Record`]s followed by `\n`, written with a single
//! `write(2)`. A batch holds every record of one operation (a rename is an unlink, a link and
//! perhaps a drop), so replay sees an operation whole or not at all. A last line that is
//! incomplete or does not parse is the trace of a write cut short by a crash: replay discards
//! it and truncates the file there. A bad line anywhere else is corruption and stops the mount.
//!
//! The journal of the writable layer is compacted when it has grown well past the size of the
//! layer's net change: the net change (a [`Delta`]) is written to a new file, fsynced and
//! renamed over the old one.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::node::{Kind, Time};
use sys::crashsafe;

/// One change to the namespace or to attributes. Inode numbers are stable for the life of a
/// layer stack: they are allocated once and recorded here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Record {
    /// Inode `ino` is the image entry at `path`, relative to the image root.
    Adopt {
        ino: u64,
        #[serde(with = "bytes")]
        path: OsString,
    },
    /// A node made in this layer.
    Create {
        ino: u64,
        kind: Kind,
        mode: u32,
        uid: u32,
        gid: u32,
        rdev: u32,
        #[serde(with = "opt_bytes", default, skip_serializing_if = "Option::is_none")]
        target: Option<OsString>,
        time: Time,
    },
    /// Directory `dir` has the entry `name` for inode `ino`.
    Link {
        dir: u64,
        #[serde(with = "bytes")]
        name: OsString,
        ino: u64,
        time: Time,
    },
    /// Directory `dir` no longer has the entry `name` (a whiteout over the layers beneath).
    Unlink {
        dir: u64,
        #[serde(with = "bytes")]
        name: OsString,
        time: Time,
    },
    /// The attributes of `ino` are now these.
    Attr { ino: u64, mode: u32, uid: u32, gid: u32, atime: Time, mtime: Time, ctime: Time },
    /// Inode `ino` has no name left; its data in this layer is garbage.
    Drop { ino: u64 },
}

/// The net change a layer makes: what a compacted journal holds.
#[derive(Default)]
pub(crate) struct Delta {
    adopt: BTreeMap<u64, Record>,
    created: BTreeMap<u64, Record>,
    attrs: BTreeMap<u64, Record>,
    entries: BTreeMap<(u64, OsString), Record>,
}

impl Delta {
    fn apply(&mut self, record: &Record) {
        match record {
            Record::Adopt { ino, .. } => {
                self.adopt.insert(*ino, record.clone());
            }
            Record::Create { ino, .. } => {
                self.created.insert(*ino, record.clone());
            }
            Record::Attr { ino, .. } => {
                self.attrs.insert(*ino, record.clone());
            }
            Record::Link { dir, name, .. } | Record::Unlink { dir, name, .. } => {
                self.entries.insert((*dir, name.clone()), record.clone());
            }
            Record::Drop { ino } => {
                self.adopt.remove(ino);
                self.created.remove(ino);
                self.attrs.remove(ino);
                let children: Vec<_> = self
                    .entries
                    .range((*ino, OsString::new())..)
                    .take_while(|((dir, _), _)| dir == ino)
                    .map(|(key, _)| key.clone())
                    .collect();
                for key in children {
                    self.entries.remove(&key);
                }
            }
        }
    }

    fn len(&self) -> usize {
        self.adopt.len() + self.created.len() + self.attrs.len() + self.entries.len()
    }

    /// The records that rebuild this delta, in an order replay accepts: nodes before the
    /// entries and attributes that refer to them.
    fn records(&self) -> impl Iterator<Item = &Record> {
        self.adopt.values().chain(self.created.values()).chain(self.attrs.values()).chain(self.entries.values())
    }
}

/// The journal of the writable layer.
pub(crate) struct Journal {
    path: PathBuf,
    file: File,
    len: u64,
    synced_len: u64,
    delta: Delta,
    /// Record count of the delta when the journal was last compacted.
    compacted_records: usize,
    records_since_compaction: usize,
    /// After a compaction failed (out of space, say), the record count at which to try again.
    retry_compaction_at: usize,
    /// A failed append may have left part of its batch at the end of the file: it must be cut
    /// off before anything else is appended, or replay would find it in the middle.
    torn: bool,
}

impl Journal {
    /// Creates an empty journal. The caller makes its directory entry durable.
    pub(crate) fn create(path: &Path) -> io::Result<()> {
        OpenOptions::new().write(true).create_new(true).open(path)?.sync_all()
    }

    /// Opens the journal of the writable layer, returning it and its records for replay.
    /// A torn last batch is cut off; a journal with many superseded records is compacted.
    pub(crate) fn open(path: &Path) -> Result<(Journal, Vec<Record>)> {
        let (records, good_len) = read(path)?;
        let file = OpenOptions::new().read(true).append(true).open(path)?;
        if file.metadata()?.len() != good_len {
            tracing::warn!(journal = %path.display(), good_len, "discarding a torn batch at the end of the journal");
            file.set_len(good_len)?;
            file.sync_all()?;
        }
        let mut delta = Delta::default();
        for record in &records {
            delta.apply(record);
        }
        let mut journal = Journal {
            path: path.to_owned(),
            file,
            len: good_len,
            synced_len: good_len,
            compacted_records: delta.len(),
            records_since_compaction: records.len(),
            retry_compaction_at: 0,
            torn: false,
            delta,
        };
        if journal.wants_compaction() {
            if let Err(e) = journal.compact() {
                tracing::warn!(journal = %path.display(), "could not compact the journal, will try later: {e}");
                journal.retry_compaction_at = journal.records_since_compaction + 4096;
            }
        }
        Ok((journal, records))
    }

    /// Appends the records of one operation as one batch. Once this returns, the batch
    /// survives a kill of the process; [`Journal::sync`] makes it survive a power loss.
    pub(crate) fn append(&mut self, batch: &[Record]) -> io::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut line = serde_json::to_vec(batch).map_err(io::Error::other)?;
        line.push(b'\n');
        if self.torn {
            self.file.set_len(self.len)?;
            self.torn = false;
        }
        if let Err(e) = self.file.write_all(&line) {
            // Out of space, most likely, perhaps after part of the line: cut it off, now if
            // possible, or before the next append.
            if let Err(cut) = self.file.set_len(self.len) {
                tracing::warn!(journal = %self.path.display(), "could not cut off a failed append: {cut}");
                self.torn = true;
            }
            return Err(e);
        }
        self.len += line.len() as u64;
        for record in batch {
            self.delta.apply(record);
        }
        self.records_since_compaction += batch.len();
        if self.wants_compaction() {
            // The batch is in the journal: a compaction that fails (out of space) must not fail
            // the operation. The journal is left as it is, and compacted later.
            if let Err(e) = self.compact() {
                tracing::warn!(journal = %self.path.display(), "could not compact the journal, will try later: {e}");
                self.retry_compaction_at = self.records_since_compaction + 4096;
            }
        }
        Ok(())
    }

    pub(crate) fn sync(&mut self) -> io::Result<()> {
        if self.synced_len != self.len {
            let len = self.len;
            self.file.sync_data()?;
            self.synced_len = len;
        }
        Ok(())
    }

    fn wants_compaction(&self) -> bool {
        self.records_since_compaction > 4096
            && self.records_since_compaction > 4 * self.compacted_records
            && self.records_since_compaction >= self.retry_compaction_at
    }

    fn compact(&mut self) -> io::Result<()> {
        let records: Vec<&Record> = self.delta.records().collect();
        let mut contents = Vec::new();
        for chunk in records.chunks(256) {
            serde_json::to_writer(&mut contents, chunk).map_err(io::Error::other)?;
            contents.push(b'\n');
        }
        let mut tmp = self.path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let written = (|| {
            let mut file = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
            file.write_all(&contents)?;
            file.sync_all()
        })();
        if let Err(e) = written {
            if let Err(e) = std::fs::remove_file(&tmp) {
                tracing::warn!(path = %tmp.display(), "could not remove a compacted journal that failed: {e}");
            }
            return Err(e);
        }
        let file = OpenOptions::new().read(true).append(true).open(&tmp)?;
        std::fs::rename(&tmp, &self.path)?;
        // From the rename on, the new file is the journal, whatever happens next.
        self.file = file;
        self.len = contents.len() as u64;
        self.synced_len = self.len;
        self.compacted_records = records.len();
        self.records_since_compaction = records.len();
        self.retry_compaction_at = 0;
        tracing::debug!(journal = %self.path.display(), records = records.len(), "compacted journal");
        crashsafe::fsync_parent(&self.path)
    }
}

/// Reads the records of a journal, and the length of its well-formed prefix.
pub(crate) fn read(path: &Path) -> Result<(Vec<Record>, u64)> {
    let mut contents = Vec::new();
    File::open(path)?.read_to_end(&mut contents)?;
    let mut records = Vec::new();
    let mut good_len = 0;
    let mut rest = &contents[..];
    while !rest.is_empty() {
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            break; // a batch cut short by a crash
        };
        match serde_json::from_slice::<Vec<Record>>(&rest[..end]) {
            Ok(batch) => records.extend(batch),
            Err(_) if end + 1 == rest.len() => break, // a torn last batch
            Err(e) => {
                return Err(Error::Corrupt(format!("{}: bad batch at byte {good_len}: {e}", path.display())));
            }
        }
        good_len += end as u64 + 1;
        rest = &rest[end + 1..];
    }
    Ok((records, good_len))
}

/// File names and paths are bytes; JSON holds them as a string when they are UTF-8 and as an
/// array of bytes otherwise.
mod bytes {
    use super::*;

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Text(String),
        Bytes(Vec<u8>),
    }

    pub fn serialize<S: serde::Serializer>(name: &OsString, s: S) -> Result<S::Ok, S::Error> {
        match name.to_str() {
            Some(text) => s.serialize_str(text),
            None => s.collect_seq(name.as_bytes()),
        }
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<OsString, D::Error> {
        Ok(match Repr::deserialize(d)? {
            Repr::Text(text) => text.into(),
            Repr::Bytes(bytes) => OsString::from_vec(bytes),
        })
    }
}

mod opt_bytes {
    use super::*;

    pub fn serialize<S: serde::Serializer>(name: &Option<OsString>, s: S) -> Result<S::Ok, S::Error> {
        match name {
            Some(name) => bytes::serialize(name, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<OsString>, D::Error> {
        bytes::deserialize(d).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(dir: u64, name: &str, ino: u64) -> Record {
        Record::Link { dir, name: name.into(), ino, time: Time::default() }
    }

    #[test]
    fn torn_last_batch_is_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        Journal::create(&path).unwrap();
        let (mut journal, _) = Journal::open(&path).unwrap();
        journal.append(&[link(1, "a", 2)]).unwrap();
        journal.append(&[link(1, "b", 3), link(1, "c", 4)]).unwrap();
        drop(journal);
        let full = std::fs::read(&path).unwrap();
        std::fs::write(&path, &full[..full.len() - 5]).unwrap();

        let (mut journal, records) = Journal::open(&path).unwrap();
        assert_eq!(records, vec![link(1, "a", 2)]);
        journal.append(&[link(1, "d", 5)]).unwrap();
        let (records, _) = read(&path).unwrap();
        assert_eq!(records, vec![link(1, "a", 2), link(1, "d", 5)]);
    }

    #[test]
    fn corruption_before_the_end_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        std::fs::write(&path, b"[{\"op\":\"drop\",\"ino\":3}]\nnot json\n[]\n").unwrap();
        assert!(matches!(read(&path), Err(Error::Corrupt(_))));
    }

    #[test]
    fn non_utf8_names_round_trip() {
        let name = OsString::from_vec(vec![b'a', 0xff, b'b']);
        let record = Record::Unlink { dir: 1, name: name.clone(), time: Time::default() };
        let json = serde_json::to_string(&record).unwrap();
        assert_eq!(serde_json::from_str::<Record>(&json).unwrap(), record);
    }

    #[test]
    fn compaction_keeps_the_net_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        Journal::create(&path).unwrap();
        let (mut journal, _) = Journal::open(&path).unwrap();
        let create = |ino| Record::Create {
            ino,
            kind: Kind::File,
            mode: 0o600,
            uid: 0,
            gid: 0,
            rdev: 0,
            target: None,
            time: Time::default(),
        };
        for i in 0..5000u64 {
            let ino = 100 + i;
            journal.append(&[create(ino), link(1, "tmp", ino)]).unwrap();
            let unlink = Record::Unlink { dir: 1, name: "tmp".into(), time: Time::default() };
            journal.append(&[unlink, Record::Drop { ino }]).unwrap();
        }
        journal.append(&[create(7), link(1, "kept", 7)]).unwrap();
        let (records, _) = read(&path).unwrap();
        // 20,002 records were written; compaction keeps the journal within 4096 of the net change.
        assert!(records.len() <= 4096 + 4, "journal was not compacted: {} records", records.len());
        let mut delta = Delta::default();
        records.iter().for_each(|r| delta.apply(r));
        assert!(delta.created.contains_key(&7));
        assert_eq!(delta.entries.get(&(1, "kept".into())), Some(&link(1, "kept", 7)));
    }
}
