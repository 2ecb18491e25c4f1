//! Trained zstd dictionaries for stored frames.
//!
//! A frame is one server's snapshot, about 1 KB of protobuf, and frames
//! repeat each other: the same field tags, query texts, user, database and
//! application names, client addresses. zstd alone finds little to match
//! within one small frame (1,066 bytes to 707 at level -1 on the load
//! generator's deltas); a dictionary trained on the frames themselves gives
//! it the fleet's common bytes to match against (276).
//!
//! The writer offers the frames it compresses to a reservoir ([`Samples`]),
//! trains a dictionary from it on a thread of its own once enough frames
//! have passed, stores it (`frame_dicts`, in a transaction of its own before
//! a commit's frames), and compresses with it from that commit's frames on;
//! it trains again every [`DictTraining::every`], so that the dictionary
//! follows the fleet's workload. Each zstd frame names its dictionary by id in its
//! header, so readers find it ([`FrameDicts`]), and frames written before
//! any dictionary (or by an older pgfleet) read as before.
//!
//! A dictionary is kept while frames may name it: the writer writes the one
//! it uses again at least every [`TOUCH_EVERY`], which sets `used` (and
//! puts the row back, should it have gone), and pruning deletes those last
//! used a day and more before the oldest frames kept.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use pgfleet_proto::time::Micros;
use tracing::{info, warn};

use crate::zstd_local::{Decoding, Encoding};

/// When the writer trains a dictionary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DictTraining {
    /// Whether frames are compressed with dictionaries at all.
    pub enabled: bool,
    /// A first dictionary is trained once this long has passed since the
    /// writer started, and [`DictTraining::frames`] have been offered.
    pub after: Duration,
    /// The frames offered before a dictionary is trained, at least.
    pub frames: u64,
    /// Then a new one from the frames since, this often.
    pub every: Duration,
}

impl Default for DictTraining {
    fn default() -> DictTraining {
        DictTraining {
            enabled: true,
            after: Duration::from_secs(60),
            frames: 2_000,
            every: Duration::from_secs(6 * 3600),
        }
    }
}

/// The most a dictionary holds: larger ones matched little more on the
/// load generator's frames, and each costs the readers that load it.
const DICT_BYTES: usize = 64 * 1024;

/// The frames a reservoir keeps to train on, and the most of each; frames
/// are offered to it over the last [`SAMPLE_WINDOW`] before a training.
const SAMPLES: usize = 2_000;
const SAMPLE_BYTES: usize = 4 * 1024;
const SAMPLE_WINDOW: Duration = Duration::from_secs(600);

/// How often the writer writes the dictionary it uses again, which marks
/// it used.
const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// How long past the frames' retention a dictionary last used is kept.
pub(super) const KEPT_PAST_RETENTION: Micros = 86_400_000_000;

/// The most dictionaries readers hold at once; past it they load again.
const CACHED: usize = 64;

/// A uniform sample of the frames offered (Algorithm R), bounded:
/// [`SAMPLES`] of at most [`SAMPLE_BYTES`] each.
struct Samples {
    kept: Vec<Vec<u8>>,
    offered: u64,
    random: u64,
}

impl Samples {
    fn new() -> Samples {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9e37_79b9_7f4a_7c15, |d| d.as_nanos() as u64);
        Samples {
            kept: Vec::new(),
            offered: 0,
            random: seed | 1,
        }
    }

    /// xorshift64: enough to choose which frames are kept.
    fn next(&mut self) -> u64 {
        let mut x = self.random;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.random = x;
        x
    }

    fn offer(&mut self, bytes: &[u8]) {
        self.offered += 1;
        let slot = if self.kept.len() < SAMPLES {
            self.kept.push(Vec::new());
            self.kept.len() - 1
        } else {
            let j = self.next() % self.offered;
            if j >= SAMPLES as u64 {
                return;
            }
            j as usize
        };
        let kept = &mut self.kept[slot];
        kept.clear();
        kept.extend_from_slice(&bytes[..bytes.len().min(SAMPLE_BYTES)]);
    }
}

/// The dictionaries a commit writes: a new one to store, and the one in
/// use, written again (which marks it used, and puts it back should its row
/// have gone). Each is written as `INSERT … ON CONFLICT (id) DO UPDATE SET
/// used` where the body is the same, then read back.
#[derive(Debug, Default)]
pub(super) struct DictWrites {
    pub new: Option<(u32, Arc<[u8]>)>,
    pub current: Option<(u32, Arc<[u8]>)>,
}

impl DictWrites {
    pub(super) fn all(&self) -> impl Iterator<Item = &(u32, Arc<[u8]>)> {
        self.new.iter().chain(&self.current)
    }
}

/// What a commit found of [`DictWrites`]: for each, whether the store holds
/// it as itself (false: another dictionary of the same id).
#[derive(Debug, Default)]
pub(super) struct DictsStored {
    pub new: Option<bool>,
    pub current: Option<bool>,
}

impl DictsStored {
    /// From each write's answer, in [`DictWrites::all`]'s order.
    pub(super) fn from_answers(writes: &DictWrites, answers: &[bool]) -> DictsStored {
        let mut answers = answers.iter().copied();
        DictsStored {
            new: writes.new.as_ref().and_then(|_| answers.next()),
            current: writes.current.as_ref().and_then(|_| answers.next()),
        }
    }
}

/// A dictionary trained and not yet stored, or stored and in use.
pub(super) struct Trained {
    pub id: u32,
    pub bytes: Arc<[u8]>,
    encoding: Encoding,
}

/// The writer's side: what it compresses frames with, and its training.
pub(super) struct FrameCoder {
    training: DictTraining,
    dicts: FrameDicts,
    current: Option<Trained>,
    /// Trained, to be stored before the next commit's frames, which then
    /// use it.
    pending: Option<Trained>,
    samples: Samples,
    /// The training under way.
    trainer: Option<Receiver<std::io::Result<Vec<u8>>>>,
    /// When the next training may start, and from when frames are offered
    /// to it ([`SAMPLE_WINDOW`] before; at once for the first).
    next: Instant,
    sample_from: Instant,
    /// When the dictionary in use was last written (the store's clock).
    written: Micros,
}

impl FrameCoder {
    pub(super) fn new(training: DictTraining, dicts: FrameDicts) -> FrameCoder {
        let now = Instant::now();
        FrameCoder {
            training,
            dicts,
            current: None,
            pending: None,
            samples: Samples::new(),
            trainer: None,
            next: now + training.after,
            sample_from: now,
            written: 0,
        }
    }

    /// A frame's protobuf as stored: offered to the samples, and compressed
    /// with the dictionary in use (unless `whole`, too large for a
    /// dictionary: such a frame is read back the slow way, which takes
    /// none), or without one.
    pub(super) fn compress(&mut self, bytes: &[u8], whole: bool) -> Vec<u8> {
        let plain = |bytes: &[u8]| {
            crate::zstd_local::compress(bytes, crate::zstd_local::Level::Frames)
                .unwrap_or_else(|_| bytes.to_vec())
        };
        if !self.training.enabled || whole {
            return plain(bytes);
        }
        if self.trainer.is_none() && self.pending.is_none() && Instant::now() >= self.sample_from {
            self.samples.offer(bytes);
        }
        match &self.current {
            Some(d) => crate::zstd_local::compress_with(bytes, &d.encoding)
                .unwrap_or_else(|_| bytes.to_vec()),
            None => plain(bytes),
        }
    }

    /// What the next commit, at `now`, writes of the dictionaries: a new
    /// one when one is trained (and a training started when one is due),
    /// and the one in use at most every [`TOUCH_EVERY`].
    pub(super) fn writes(&mut self, now: Micros) -> DictWrites {
        if !self.training.enabled {
            return DictWrites::default();
        }
        self.poll_training();
        let touch = (now - self.written).unsigned_abs() >= TOUCH_EVERY.as_micros() as u64;
        DictWrites {
            new: self.pending.as_ref().map(|d| (d.id, d.bytes.clone())),
            current: self
                .current
                .as_ref()
                .filter(|_| touch)
                .map(|d| (d.id, d.bytes.clone())),
        }
    }

    /// Takes a finished training's dictionary, and starts a training when
    /// one is due.
    fn poll_training(&mut self) {
        if let Some(trainer) = &self.trainer {
            match trainer.try_recv() {
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => self.trainer = None,
                Ok(result) => {
                    self.trainer = None;
                    match result.map(|bytes| (Encoding::new(&bytes), bytes)) {
                        Ok((Some(encoding), bytes)) => {
                            self.pending = Some(Trained {
                                id: encoding.id(),
                                bytes: bytes.into(),
                                encoding,
                            })
                        }
                        Ok((None, _)) => warn!(
                            "A trained frame dictionary does not load; frames are compressed without a new one."
                        ),
                        Err(e) => warn!(
                            error = %e,
                            "Training a frame dictionary failed; frames are compressed without a new one, and it is tried again later."
                        ),
                    }
                }
            }
        }
        if self.trainer.is_none()
            && self.pending.is_none()
            && Instant::now() >= self.next
            && self.samples.offered >= self.training.frames
        {
            self.start_training();
        }
    }

    fn start_training(&mut self) {
        let samples = std::mem::replace(&mut self.samples, Samples::new()).kept;
        self.next = Instant::now() + self.training.every;
        self.sample_from = self.next - SAMPLE_WINDOW.min(self.training.every);
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let spawned = std::thread::Builder::new()
            .name("pgfleet-dict".into())
            .spawn(move || {
                let total: usize = samples.iter().map(Vec::len).sum();
                // zstd wants some 10 times the dictionary in samples.
                let size = DICT_BYTES.min(total / 10).max(1024);
                let _ = tx.send(zstd::dict::from_samples(&samples, size));
                crate::threads::thread_ends();
            });
        match spawned {
            Ok(_) => self.trainer = Some(rx),
            Err(e) => {
                warn!(error = %e, "No thread to train a frame dictionary on; tried again later.")
            }
        }
    }

    /// After a commit at `now` (None: it failed, and what it was to store
    /// is written by the next): a new dictionary stored as itself is used
    /// from now on; one whose id the store holds with other bytes is not,
    /// nor, should that befall it, the one in use.
    pub(super) fn committed(&mut self, commit: Option<&DictsStored>, now: Micros) {
        let Some(commit) = commit else {
            return;
        };
        match commit.current {
            Some(true) => self.written = now,
            Some(false) => {
                warn!(
                    id = self.current.as_ref().map(|d| d.id),
                    "The store holds another frame dictionary of the id of the one in use; frames are compressed without it until one is trained again."
                );
                self.current = None;
            }
            None => {}
        }
        match (commit.new, self.pending.take()) {
            (Some(true), Some(d)) => {
                info!(
                    id = d.id,
                    bytes = d.bytes.len(),
                    "Frames are now compressed with a new dictionary."
                );
                self.dicts.insert(d.id, &d.bytes);
                self.current = Some(d);
                self.written = now;
            }
            (Some(false), Some(d)) => warn!(
                id = d.id,
                "The store holds another frame dictionary of the same id; the new one is not used, and one is trained again later."
            ),
            (_, pending) => self.pending = pending,
        }
    }

    /// A coder that compresses without dictionaries and trains none.
    #[cfg(test)]
    pub(super) fn off() -> FrameCoder {
        let training = DictTraining {
            enabled: false,
            ..DictTraining::default()
        };
        FrameCoder::new(training, FrameDicts::default())
    }

    /// Has the next commit write the dictionary in use again, whenever it
    /// was last written: after the store's connection was made again (a
    /// failover may have lost the last write).
    pub(super) fn write_again(&mut self) {
        self.written = Micros::MIN / 2;
    }

    /// The dictionary in use (tests).
    #[cfg(test)]
    pub(super) fn current(&self) -> Option<u32> {
        self.current.as_ref().map(|d| d.id)
    }

    /// The bytes of the dictionary in use (tests).
    #[cfg(test)]
    pub(super) fn current_bytes(&self) -> Option<&[u8]> {
        self.current.as_ref().map(|d| &*d.bytes)
    }
}

/// The dictionaries readers have loaded, by id, shared by a store's reads
/// (and given the writer's own as it adopts them); at most [`CACHED`]. And
/// those a read found missing or not loading, which reads do not look up
/// again (nor warn of again) for [`ABSENT_FOR`].
#[derive(Clone, Default)]
pub(super) struct FrameDicts(Arc<RwLock<Cache>>);

#[derive(Default)]
struct Cache {
    loaded: HashMap<u32, Arc<Decoding>>,
    absent: HashMap<u32, Instant>,
}

impl Cache {
    /// Whether `id` was found missing within [`ABSENT_FOR`].
    fn absent_lately(&self, id: u32) -> bool {
        self.absent
            .get(&id)
            .is_some_and(|at| at.elapsed() < ABSENT_FOR)
    }
}

/// How long a dictionary found missing is not looked up again.
const ABSENT_FOR: Duration = Duration::from_secs(60);

impl FrameDicts {
    fn cache(&self) -> std::sync::RwLockWriteGuard<'_, Cache> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Loads `bytes` as dictionary `id`: None where they are not one, or
    /// not that one.
    pub(super) fn insert(&self, id: u32, bytes: &[u8]) -> Option<Arc<Decoding>> {
        let decoding = Arc::new(Decoding::new(bytes).filter(|d| d.id() == id)?);
        let mut cache = self.cache();
        if cache.loaded.len() >= CACHED {
            cache.loaded.clear();
        }
        cache.loaded.insert(id, decoding.clone());
        cache.absent.remove(&id);
        Some(decoding)
    }

    /// Notes `id` as missing or not loading: whether it was not so noted
    /// already.
    fn absent(&self, id: u32) -> bool {
        let mut cache = self.cache();
        if cache.absent.len() >= CACHED {
            cache.absent.retain(|_, at| at.elapsed() < ABSENT_FOR);
        }
        let fresh = !cache.absent_lately(id);
        if fresh {
            cache.absent.insert(id, Instant::now());
        }
        fresh
    }

    /// The dictionaries `bodies` name, as far as they are loaded, for one
    /// read (which holds them whatever other reads load meanwhile); and
    /// those it must load itself, each once ([`Named::load`]), but for those
    /// found missing within [`ABSENT_FOR`].
    pub(super) fn named<'a>(
        &self,
        bodies: impl IntoIterator<Item = &'a [u8]>,
    ) -> (Named, Vec<u32>) {
        let cache = self.0.read().unwrap_or_else(|e| e.into_inner());
        let mut named = Named::default();
        let mut missing = Vec::new();
        for id in bodies
            .into_iter()
            .filter(|b| crate::zstd_local::is_frame(b))
            .filter_map(crate::zstd_local::dictionary_of)
        {
            if named.0.contains_key(&id) || missing.contains(&id) {
                continue;
            }
            if let Some(d) = cache.loaded.get(&id) {
                named.0.insert(id, d.clone());
            } else if !cache.absent_lately(id) {
                missing.push(id);
            }
        }
        (named, missing)
    }
}

/// The dictionaries one read's frames name.
#[derive(Default)]
pub(super) struct Named(HashMap<u32, Arc<Decoding>>);

impl Named {
    pub(super) fn get(&self, id: u32) -> Option<&Decoding> {
        self.0.get(&id).map(|d| &**d)
    }

    /// Dictionary `id` as the store holds it (None: it holds none), for
    /// this read and those after it; where it is missing or the bytes are
    /// not that dictionary, a warning, once in [`ABSENT_FOR`].
    pub(super) fn load(&mut self, dicts: &FrameDicts, id: u32, bytes: Option<&[u8]>) {
        match bytes.and_then(|b| dicts.insert(id, b)) {
            Some(d) => {
                self.0.insert(id, d);
            }
            None if dicts.absent(id) => warn!(
                id,
                stored = bytes.is_some(),
                "A frame dictionary that frames name does not load; a read that needs it ends at the first frame that names it."
            ),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reservoir_is_bounded_and_keeps_frames_from_all_along() {
        let mut s = Samples::new();
        for i in 0..(SAMPLES as u32 * 5) {
            let mut bytes = i.to_le_bytes().to_vec();
            bytes.resize(if i == 7 { SAMPLE_BYTES * 3 } else { 16 }, 0);
            s.offer(&bytes);
        }
        assert_eq!(s.kept.len(), SAMPLES);
        assert!(s.kept.iter().all(|k| k.len() <= SAMPLE_BYTES));
        // A uniform sample of 20,000 keeps some from each fifth.
        let fifths = s.kept.iter().fold([0; 5], |mut f, k| {
            let i = u32::from_le_bytes(k[..4].try_into().unwrap());
            f[(i / SAMPLES as u32) as usize] += 1;
            f
        });
        assert!(fifths.iter().all(|&n| n > SAMPLES / 10), "{fifths:?}");
    }

    #[test]
    fn a_dictionary_found_missing_is_not_looked_up_again_for_a_while() {
        let samples: Vec<Vec<u8>> = (0..300)
            .map(|i| format!("SELECT {i} FROM orders_{} WHERE user = 'app'", i % 11).into_bytes())
            .collect();
        let bytes = zstd::dict::from_samples(&samples, 2048).unwrap();
        let encoding = Encoding::new(&bytes).unwrap();
        let frame = crate::zstd_local::compress_with(b"SELECT 7 FROM orders_7", &encoding).unwrap();
        let id = encoding.id();
        let dicts = FrameDicts::default();
        let (mut named, missing) = dicts.named([frame.as_slice()]);
        assert_eq!(missing, [id]);
        named.load(&dicts, id, None);
        assert!(named.get(id).is_none());
        // Not looked up again meanwhile, nor warned of.
        let (_, missing) = dicts.named([frame.as_slice()]);
        assert!(missing.is_empty());
        assert!(!dicts.absent(id));
        // Until a while has passed.
        dicts.cache().absent.insert(id, Instant::now() - ABSENT_FOR);
        let (mut named, missing) = dicts.named([frame.as_slice()]);
        assert_eq!(missing, [id]);
        // Once it loads (the writer's own, or a read's), it is found.
        named.load(&dicts, id, Some(&bytes));
        assert!(named.get(id).is_some());
        let (named, missing) = dicts.named([frame.as_slice()]);
        assert!(missing.is_empty() && named.get(id).is_some());
        assert!(dicts.cache().absent.is_empty());
    }
}
