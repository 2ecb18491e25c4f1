//! Trained zstd dictionaries for stored frames.
//!
//! A frame is one server's snapshot, about 1 KB of protobuf, and frames
//! repeat each other: the same field tags, query texts, user, database and
//! application names, client addresses. zstd alone finds little to match
//! within one small frame (1,066 bytes to 707 at level -1 on the load
//! generator's deltas); a dictionary trained on the frames themselves gives
//! it the fleet's common bytes to match against (276).
//!
//! The writer offers every frame it encodes to a reservoir ([`Samples`]),
//! trains a dictionary from it on a thread of its own once enough frames
//! have passed, stores it (`frame_dicts`, in the same transaction as the
//! commit's frames), and compresses with it from the commit after; it trains
//! again every [`DictTraining::every`], so that the dictionary follows the
//! fleet's workload. Each zstd frame names its dictionary by id in its
//! header, so readers find it ([`FrameDicts`]), and frames written before
//! any dictionary (or by an older pgfleet) read as before.
//!
//! A dictionary is kept while frames may name it: the writer marks the one
//! it uses (`used`) at least every [`TOUCH_EVERY`], and pruning deletes
//! those last used a day before the frames' retention.

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

/// The frames a reservoir keeps to train on, and the most of each.
const SAMPLES: usize = 4_000;
const SAMPLE_BYTES: usize = 8 * 1024;

/// How often the writer marks the dictionary it uses as used.
pub(super) const TOUCH_EVERY: Duration = Duration::from_secs(60);

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

/// What a commit did with the frames' dictionaries: whether it stored the
/// coder's new one as itself (None: it had none to store), and whether it
/// marked the one in use as used.
#[derive(Debug, Default)]
pub(super) struct DictsStored {
    pub dictionary: Option<bool>,
    pub touched: bool,
}

/// A dictionary trained and not yet stored, or stored and in use.
pub(super) struct Trained {
    pub id: u32,
    pub bytes: Vec<u8>,
    encoding: Encoding,
}

/// The writer's side: what it encodes frames with, and its training.
pub(super) struct FrameCoder {
    training: DictTraining,
    dicts: FrameDicts,
    current: Option<Trained>,
    /// Trained, to be stored by the next commit and used after it.
    pending: Option<Trained>,
    samples: Samples,
    /// The training under way.
    trainer: Option<Receiver<std::io::Result<Vec<u8>>>>,
    /// When the next training may start.
    next: Instant,
    /// When the dictionary in use was last marked used (None: not since it
    /// was adopted).
    touched: Option<Instant>,
}

impl FrameCoder {
    pub(super) fn new(training: DictTraining, dicts: FrameDicts) -> FrameCoder {
        FrameCoder {
            training,
            dicts,
            current: None,
            pending: None,
            samples: Samples::new(),
            trainer: None,
            next: Instant::now() + training.after,
            touched: None,
        }
    }

    /// A frame's protobuf as stored: offered to the samples, and compressed
    /// with the dictionary in use, or without one.
    pub(super) fn compress(&mut self, bytes: Vec<u8>) -> Vec<u8> {
        if !self.training.enabled {
            return crate::zstd_local::compress(&bytes, crate::zstd_local::Level::Frames)
                .unwrap_or(bytes);
        }
        self.samples.offer(&bytes);
        let compressed = match &self.current {
            Some(d) => crate::zstd_local::compress_with(&bytes, &d.encoding),
            None => crate::zstd_local::compress(&bytes, crate::zstd_local::Level::Frames),
        };
        compressed.unwrap_or(bytes)
    }

    /// The dictionary the next commit should store, when one is trained;
    /// starts a training when one is due.
    pub(super) fn trained(&mut self) -> Option<&Trained> {
        if !self.training.enabled {
            return None;
        }
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
                                bytes,
                                encoding,
                            })
                        }
                        Ok((None, _)) => warn!(
                            "A trained frame dictionary does not load; frames are compressed without a new one."
                        ),
                        Err(e) => {
                            warn!(error = %e, "DictTraining a frame dictionary failed; frames are compressed without a new one, and it is tried again later.")
                        }
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
        self.pending.as_ref()
    }

    fn start_training(&mut self) {
        let samples = std::mem::replace(&mut self.samples, Samples::new()).kept;
        self.next = Instant::now() + self.training.every;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let spawned = std::thread::Builder::new()
            .name("pgfleet-dict".into())
            .spawn(move || {
                let total: usize = samples.iter().map(Vec::len).sum();
                // zstd wants some 10 times the dictionary in samples.
                let size = DICT_BYTES.min(total / 10).max(1024);
                let _ = tx.send(zstd::dict::from_samples(&samples, size));
            });
        match spawned {
            Ok(_) => self.trainer = Some(rx),
            Err(e) => {
                warn!(error = %e, "No thread to train a frame dictionary on; tried again later.")
            }
        }
    }

    /// After a commit (None: it failed): a new dictionary stored as itself
    /// is used from now on; one whose id the store held with other bytes is
    /// not.
    pub(super) fn committed(&mut self, commit: Option<&DictsStored>) {
        if commit.is_some_and(|c| c.touched) {
            self.touched = Some(Instant::now());
        }
        match (commit.and_then(|c| c.dictionary), self.pending.take()) {
            (Some(true), Some(d)) => {
                info!(
                    id = d.id,
                    bytes = d.bytes.len(),
                    "Frames are now compressed with a new dictionary."
                );
                self.dicts.insert(d.id, &d.bytes);
                self.current = Some(d);
                self.touched = Some(Instant::now());
            }
            (Some(false), Some(d)) => {
                warn!(
                    id = d.id,
                    "The store holds another frame dictionary of the same id; the new one is not used, and one is trained again later."
                );
            }
            (None, pending) => self.pending = pending,
            (Some(_), None) => {}
        }
    }

    /// The dictionary in use, when it is due to be marked used.
    pub(super) fn due_touch(&self) -> Option<u32> {
        let d = self.current.as_ref()?;
        self.touched
            .is_none_or(|t| t.elapsed() >= TOUCH_EVERY)
            .then_some(d.id)
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

    /// The dictionary in use (tests).
    #[cfg(test)]
    pub(super) fn current(&self) -> Option<u32> {
        self.current.as_ref().map(|d| d.id)
    }

    /// The bytes of the dictionary in use (tests).
    #[cfg(test)]
    pub(super) fn current_bytes(&self) -> Option<&[u8]> {
        self.current.as_ref().map(|d| d.bytes.as_slice())
    }
}

/// The dictionaries readers have loaded, by id, shared by a store's reads
/// (and given the writer's own as it adopts them).
#[derive(Clone, Default)]
pub(super) struct FrameDicts(Arc<RwLock<HashMap<u32, Arc<Decoding>>>>);

impl FrameDicts {
    pub(super) fn get(&self, id: u32) -> Option<Arc<Decoding>> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
    }

    /// Loads `bytes` as dictionary `id`; false where they are not one, or
    /// not that one.
    pub(super) fn insert(&self, id: u32, bytes: &[u8]) -> bool {
        let Some(decoding) = Decoding::new(bytes).filter(|d| d.id() == id) else {
            return false;
        };
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        if map.len() >= CACHED {
            map.clear();
        }
        map.insert(id, Arc::new(decoding));
        true
    }

    /// The dictionaries `bodies` name that are not loaded, each once.
    pub(super) fn missing<'a>(&self, bodies: impl IntoIterator<Item = &'a [u8]>) -> Vec<u32> {
        let map = self.0.read().unwrap_or_else(|e| e.into_inner());
        let mut ids: Vec<u32> = bodies
            .into_iter()
            .filter(|b| crate::zstd_local::is_frame(b))
            .filter_map(crate::zstd_local::dictionary_of)
            .filter(|id| !map.contains_key(id))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
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
}
