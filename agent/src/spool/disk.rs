//! The spool's files: segments of checksummed records, each written and
//! fsync'd before the batch it holds may be sent, plus a small state file.
//!
//! A segment is named after the sequence of its first record
//! (`00000000000000000042.seg`) and holds consecutive sequences. A record is
//! `[len: u32 LE][crc32 of body: u32 LE][body]`. The state file holds the last
//! acknowledged sequence and the next sequence to number, so a restarted agent
//! neither resends what the collector acknowledged nor reuses a number. A crash
//! can tear at most the last record of a segment; reopening cuts it off.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use pgfleet_proto::v1;
use prost::Message;
use prost::bytes::Bytes;
use tracing::warn;

/// Bytes before each record's body.
const RECORD_HEADER: u64 = 8;

const SEGMENT_SUFFIX: &str = ".seg";
const STATE_FILE: &str = "state";
/// The dictionary entries that batches on disk may refer to, as records.
const DICTIONARY_FILE: &str = "dictionary";
const LOCK_FILE: &str = "spool.lock";

/// Why a spool directory cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("spool directory {}: {message}", dir.display())]
pub struct SpoolError {
    /// The directory given by `--spool-dir`.
    pub dir: PathBuf,
    /// What is wrong, in words an operator can act on.
    pub message: String,
}

/// A record found on disk when the spool was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub seq: u64,
    pub offset: u64,
    pub len: u32,
}

/// What a reopened directory held.
#[derive(Debug)]
pub struct Opened {
    pub disk: Disk,
    /// Records after the acknowledged sequence, in sequence order.
    pub records: Vec<Found>,
    /// The next sequence to number: past every record and every number used.
    pub next_seq: u64,
    /// Records cut off as torn or corrupt.
    pub cut: u64,
    /// The dictionary entries the records may refer to.
    pub dictionary: Vec<v1::DictionaryEntry>,
}

#[derive(Debug)]
struct Segment {
    first: u64,
    /// Records in it; they hold sequences `first..first + count`.
    count: u64,
    len: u64,
    file: File,
}

impl Segment {
    fn end(&self) -> u64 {
        self.first + self.count
    }
}

/// The open spool directory.
#[derive(Debug)]
pub struct Disk {
    dir: PathBuf,
    /// Held for the life of the spool: one agent per directory.
    _lock: File,
    segments: VecDeque<Segment>,
    segment_bytes: u64,
    /// The acknowledged sequence the state file holds.
    acked_on_disk: u64,
    next_on_disk: u64,
    dictionary: File,
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}{SEGMENT_SUFFIX}"))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Disk {
    /// Opens (creating it if need be) and locks `dir`, and reads back what it
    /// holds. Segments are cut into pieces of about `segment_bytes`.
    pub fn open(dir: &Path, segment_bytes: u64) -> Result<Opened, SpoolError> {
        let fail = |message: String| SpoolError {
            dir: dir.to_owned(),
            message,
        };
        let io_fail = |what: &str, e: io::Error| fail(format!("{what}: {e}"));
        fs::create_dir_all(dir).map_err(|e| io_fail("cannot create it", e))?;
        let lock = File::create(dir.join(LOCK_FILE)).map_err(|e| io_fail("cannot lock it", e))?;
        lock.try_lock().map_err(|e| match e {
            fs::TryLockError::WouldBlock => {
                fail("another agent is using it; give each agent its own --spool-dir".to_owned())
            }
            fs::TryLockError::Error(e) => io_fail("cannot lock it", e),
        })?;
        let (acked, next_recorded) = read_state(dir);
        let mut firsts = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| io_fail("cannot list it", e))? {
            let entry = entry.map_err(|e| io_fail("cannot list it", e))?;
            let name = entry.file_name();
            let Some(first) = name
                .to_str()
                .and_then(|n| n.strip_suffix(SEGMENT_SUFFIX))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            firsts.push(first);
        }
        firsts.sort_unstable();
        let dictionary_path = dir.join(DICTIONARY_FILE);
        let dictionary_file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .truncate(false)
            .open(&dictionary_path)
            .map_err(|e| io_fail(&format!("cannot open {}", dictionary_path.display()), e))?;
        let mut disk = Disk {
            dictionary: dictionary_file,
            dir: dir.to_owned(),
            _lock: lock,
            segments: VecDeque::new(),
            segment_bytes: segment_bytes.max(RECORD_HEADER + 1),
            acked_on_disk: acked,
            next_on_disk: next_recorded,
        };
        let mut records = Vec::new();
        let mut next_seq = next_recorded.max(acked + 1).max(1);
        let mut cut = 0;
        for (i, &first) in firsts.iter().enumerate() {
            let path = segment_path(dir, first);
            let file = OpenOptions::new()
                .read(true)
                .append(true)
                .open(&path)
                .map_err(|e| io_fail(&format!("cannot open {}", path.display()), e))?;
            let (found, good_len, file_len) = scan(&file, first)
                .map_err(|e| io_fail(&format!("cannot read {}", path.display()), e))?;
            if good_len < file_len {
                cut += 1;
                warn!(
                    segment = %path.display(),
                    kept_bytes = good_len,
                    cut_bytes = file_len - good_len,
                    "Cut a torn or corrupt record off the spool's segment."
                );
                file.set_len(good_len)
                    .and_then(|()| file.sync_all())
                    .map_err(|e| io_fail(&format!("cannot repair {}", path.display()), e))?;
            }
            let segment = Segment {
                first,
                count: found.len() as u64,
                len: good_len,
                file,
            };
            // A later segment starting inside this one would make two records
            // claim one sequence; keep the later one's records.
            let overlaps = firsts.get(i + 1).is_some_and(|&next| next < segment.end());
            if found.is_empty() || segment.end() <= acked + 1 && i + 1 < firsts.len() || overlaps {
                drop(segment);
                fs::remove_file(&path)
                    .map_err(|e| io_fail(&format!("cannot remove {}", path.display()), e))?;
                continue;
            }
            next_seq = next_seq.max(segment.end());
            records.extend(found.into_iter().filter(|r| r.seq > acked));
            disk.segments.push_back(segment);
        }
        // The dictionary is kept while batches on disk may refer to it; with
        // none, the next run starts a new one.
        let dictionary = if records.is_empty() {
            disk.dictionary
                .set_len(0)
                .and_then(|()| disk.dictionary.sync_all())
                .map_err(|e| io_fail("cannot reset the dictionary", e))?;
            Vec::new()
        } else {
            let (found, good_len, file_len) =
                scan(&disk.dictionary, 0).map_err(|e| io_fail("cannot read the dictionary", e))?;
            if good_len < file_len {
                disk.dictionary
                    .set_len(good_len)
                    .map_err(|e| io_fail("cannot repair the dictionary", e))?;
            }
            let mut entries = Vec::with_capacity(found.len());
            for r in found {
                let body = read_body(&disk.dictionary, r.offset, r.len)
                    .map_err(|e| io_fail("cannot read the dictionary", e))?;
                if let Ok(entry) = v1::DictionaryEntry::decode(body.as_slice()) {
                    entries.push(entry);
                }
            }
            entries
        };
        Ok(Opened {
            disk,
            records,
            next_seq,
            cut,
            dictionary,
        })
    }

    /// Appends dictionary entries to the dictionary file and fsyncs it.
    pub fn append_dictionary(&mut self, entries: &[v1::DictionaryEntry]) -> io::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let offset = self.dictionary.metadata()?.len();
        let mut buf = Vec::new();
        for e in entries {
            push_record(&mut buf, &e.encode_to_vec());
        }
        if let Err(e) = self
            .dictionary
            .write_all(&buf)
            .and_then(|()| self.dictionary.sync_data())
        {
            let _ = self.dictionary.set_len(offset);
            return Err(e);
        }
        Ok(())
    }

    /// Appends `body` as record `seq` and fsyncs it; returns its offset. A new
    /// segment is started when the last is full or does not end just before
    /// `seq`.
    pub fn append(&mut self, seq: u64, body: &[u8]) -> io::Result<u64> {
        if u32::try_from(body.len()).is_err() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "batch over 4 GiB",
            ));
        }
        let fits = self
            .segments
            .back()
            .is_some_and(|s| s.end() == seq && s.len < self.segment_bytes);
        if !fits {
            let path = segment_path(&self.dir, seq);
            let file = OpenOptions::new()
                .read(true)
                .append(true)
                .create(true)
                .truncate(false)
                .open(&path)?;
            // A leftover file of that name (from numbers reused after the
            // state file was lost) holds nothing the spool still wants.
            file.set_len(0)?;
            sync_dir(&self.dir)?;
            self.segments.push_back(Segment {
                first: seq,
                count: 0,
                len: 0,
                file,
            });
        }
        let Some(segment) = self.segments.back_mut() else {
            return Err(io::Error::other("no segment to append to"));
        };
        let mut record = Vec::with_capacity(RECORD_HEADER as usize + body.len());
        push_record(&mut record, body);
        let offset = segment.len;
        if let Err(e) = segment
            .file
            .write_all(&record)
            .and_then(|()| segment.file.sync_data())
        {
            // Leave no half record behind for the next append to follow.
            let _ = segment.file.set_len(offset);
            return Err(e);
        }
        segment.len += record.len() as u64;
        segment.count += 1;
        Ok(offset)
    }

    /// Reads back the body of record `seq` at `offset`, checking its checksum.
    pub fn read(&self, seq: u64, offset: u64, len: u32) -> io::Result<Bytes> {
        let segment = self
            .segment_of(seq)
            .ok_or_else(|| io::Error::other(format!("no segment holds batch {seq}")))?;
        let mut header = [0u8; RECORD_HEADER as usize];
        segment.file.read_exact_at(&mut header, offset)?;
        let body = read_body(&segment.file, offset, len)?;
        let (stored_len, crc) = split_header(&header);
        if stored_len != len || crc != crc32fast::hash(&body) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("batch {seq} fails its checksum"),
            ));
        }
        Ok(body.into())
    }

    fn segment_of(&self, seq: u64) -> Option<&Segment> {
        let i = self.segments.partition_point(|s| s.first <= seq);
        self.segments
            .get(i.checked_sub(1)?)
            .filter(|s| seq < s.end())
    }

    /// Deletes the oldest segment unless it is the only one; returns the
    /// sequences it held.
    pub fn drop_oldest(&mut self) -> io::Result<Option<std::ops::Range<u64>>> {
        if self.segments.len() < 2 {
            return Ok(None);
        }
        let Some(oldest) = self.segments.pop_front() else {
            return Ok(None);
        };
        fs::remove_file(segment_path(&self.dir, oldest.first))?;
        Ok(Some(oldest.first..oldest.end()))
    }

    /// Deletes every segment, the last excepted, whose records all precede
    /// `keep_from`.
    pub fn release(&mut self, keep_from: u64) -> io::Result<()> {
        while self.segments.len() > 1 && self.segments[0].end() <= keep_from {
            if let Some(s) = self.segments.pop_front() {
                fs::remove_file(segment_path(&self.dir, s.first))?;
            }
        }
        Ok(())
    }

    /// Records that every sequence up to `acked` is acknowledged and that
    /// `next_seq` is the next to number; written atomically, only when changed.
    pub fn write_state(&mut self, acked: u64, next_seq: u64) -> io::Result<()> {
        if acked == self.acked_on_disk && next_seq == self.next_on_disk {
            return Ok(());
        }
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        let mut file = File::create(&tmp)?;
        writeln!(file, "acked {acked}\nnext_seq {next_seq}")?;
        file.sync_all()?;
        fs::rename(&tmp, self.dir.join(STATE_FILE))?;
        sync_dir(&self.dir)?;
        self.acked_on_disk = acked;
        self.next_on_disk = next_seq;
        Ok(())
    }

    /// Adds `shift` to every record's sequence (renaming the segments).
    pub fn renumber(&mut self, shift: u64) -> io::Result<()> {
        // From the newest, so that no new name is one still in use.
        for s in self.segments.iter_mut().rev() {
            fs::rename(
                segment_path(&self.dir, s.first),
                segment_path(&self.dir, s.first + shift),
            )?;
            s.first += shift;
        }
        sync_dir(&self.dir)
    }

    /// Bytes of the segment files.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }
}

fn split_header(header: &[u8; RECORD_HEADER as usize]) -> (u32, u32) {
    let [a, b, c, d, e, f, g, h] = *header;
    (
        u32::from_le_bytes([a, b, c, d]),
        u32::from_le_bytes([e, f, g, h]),
    )
}

/// Appends `body` to `buf` as a record: its length, its checksum, itself.
/// Bodies are checked to fit a u32 length before they get here.
fn push_record(buf: &mut Vec<u8>, body: &[u8]) {
    buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
    buf.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    buf.extend_from_slice(body);
}

/// The body of the record at `offset`, `len` bytes long.
fn read_body(file: &File, offset: u64, len: u32) -> io::Result<Vec<u8>> {
    let mut body = vec![0u8; len as usize];
    file.read_exact_at(&mut body, offset + RECORD_HEADER)?;
    Ok(body)
}

/// Reads a segment's records up to the first that is cut short or fails its
/// checksum; returns them, the length of the good part, and the file's length.
fn scan(file: &File, first: u64) -> io::Result<(Vec<Found>, u64, u64)> {
    let file_len = file.metadata()?.len();
    let mut found = Vec::new();
    let mut offset = 0;
    let mut header = [0u8; RECORD_HEADER as usize];
    while offset + RECORD_HEADER <= file_len {
        file.read_exact_at(&mut header, offset)?;
        let (len, crc) = split_header(&header);
        let end = offset + RECORD_HEADER + u64::from(len);
        if end > file_len {
            break;
        }
        let body = read_body(file, offset, len)?;
        if crc32fast::hash(&body) != crc {
            break;
        }
        found.push(Found {
            seq: first + found.len() as u64,
            offset,
            len,
        });
        offset = end;
    }
    Ok((found, offset, file_len))
}

/// The state file's acknowledged and next sequences; zeros when it is absent
/// or unreadable (then the segments alone say what is held).
fn read_state(dir: &Path) -> (u64, u64) {
    let Ok(text) = fs::read_to_string(dir.join(STATE_FILE)) else {
        return (0, 0);
    };
    let mut acked = None;
    let mut next = None;
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("acked", v)) => acked = v.trim().parse().ok(),
            Some(("next_seq", v)) => next = v.trim().parse().ok(),
            _ => {}
        }
    }
    match (acked, next) {
        (Some(a), Some(n)) => (a, n),
        _ => {
            warn!(dir = %dir.display(), "The spool's state file is unreadable; resending every batch its segments hold.");
            (0, 0)
        }
    }
}
