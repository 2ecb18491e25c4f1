//! zstd with one context per thread, kept for the thread's life. Setting a
//! context up costs some 100 KB of zeroed tables, more than compressing or
//! decompressing a small frame: ingest decompresses every zstd batch, and
//! the store compresses every row of load, through these.

use std::cell::RefCell;

use zstd::bulk::Compressor;
use zstd::zstd_safe::{CDict, DCtx, DDict};

/// How hard to compress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Rows of load, statement statistics and dictionaries: larger, written
    /// once a minute or an hour per server, and mostly strings (level 3).
    Rows,
    /// Stored frames: one per snapshot, about 1 KB, written every second
    /// per server. zstd's fastest level that still matches (-1) skips the
    /// Huffman tables of literals that level 3 builds for every frame: on
    /// 3,000 frames from a `pgfleet-loadgen` run it compressed 2.3 times as
    /// fast (195 against 84 MB/s) to 1% more bytes (ratio 1.52 against 1.54).
    Frames,
}

impl Level {
    fn zstd(self) -> i32 {
        match self {
            Level::Rows => 3,
            Level::Frames => -1,
        }
    }
}

thread_local! {
    /// The thread's context for each [`Level`], made when first used.
    static COMPRESSORS: RefCell<[Option<Compressor<'static>>; 2]> = const { RefCell::new([None, None]) };
    static DECOMPRESSOR: RefCell<Option<DCtx<'static>>> = const { RefCell::new(None) };
}

/// A trained dictionary as compressing takes it (at [`Level::Frames`]).
pub struct Encoding {
    id: u32,
    cdict: CDict<'static>,
}

/// A trained dictionary as decompressing takes it.
pub struct Decoding {
    id: u32,
    ddict: DDict<'static>,
}

impl Encoding {
    /// `bytes` as a dictionary to compress with; None where they are not a
    /// zstd dictionary with an id (a frame names its dictionary by it).
    pub fn new(bytes: &[u8]) -> Option<Encoding> {
        let id = zstd::zstd_safe::get_dict_id(bytes)?.get();
        let cdict = CDict::try_create(bytes, Level::Frames.zstd())?;
        Some(Encoding { id, cdict })
    }

    pub fn id(&self) -> u32 {
        self.id
    }
}

impl Decoding {
    /// `bytes` as a dictionary to decompress with (see [`Encoding::new`]).
    pub fn new(bytes: &[u8]) -> Option<Decoding> {
        let id = zstd::zstd_safe::get_dict_id(bytes)?.get();
        let ddict = DDict::try_create(bytes)?;
        Some(Decoding { id, ddict })
    }

    pub fn id(&self) -> u32 {
        self.id
    }
}

impl std::fmt::Debug for Decoding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoding").field("id", &self.id).finish()
    }
}

fn zstd_error(code: usize) -> std::io::Error {
    std::io::Error::other(zstd::zstd_safe::get_error_name(code))
}

/// `bytes` as one zstd frame that states its size.
pub fn compress(bytes: &[u8], level: Level) -> std::io::Result<Vec<u8>> {
    COMPRESSORS.with_borrow_mut(|contexts| {
        let context = match &mut contexts[level as usize] {
            Some(c) => c,
            none => none.insert(Compressor::new(level.zstd())?),
        };
        context.compress(bytes)
    })
}

/// `bytes` as one zstd frame that states its size and names `dictionary`,
/// compressed with it at [`Level::Frames`].
pub fn compress_with(bytes: &[u8], dictionary: &Encoding) -> std::io::Result<Vec<u8>> {
    COMPRESSORS.with_borrow_mut(|contexts| {
        let context = match &mut contexts[Level::Frames as usize] {
            Some(c) => c,
            none => none.insert(Compressor::new(Level::Frames.zstd())?),
        };
        let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(bytes.len()));
        context
            .context_mut()
            .compress_using_cdict(&mut out, bytes, &dictionary.cdict)
            .map_err(zstd_error)?;
        Ok(out)
    })
}

/// The id of the dictionary a zstd frame was compressed with (None: none).
pub fn dictionary_of(frame: &[u8]) -> Option<u32> {
    zstd::zstd_safe::get_dict_id_from_frame(frame).map(|id| id.get())
}

/// Whether `bytes` begin as a zstd frame does (its magic number).
pub fn is_frame(bytes: &[u8]) -> bool {
    const MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
    bytes.starts_with(&MAGIC)
}

/// Why a frame was not decompressed.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("not a zstd frame")]
    NotZstd,
    #[error("the frame does not state its content size")]
    Unsized,
    #[error("{size} bytes decompressed, over the limit of {limit}")]
    TooLarge { size: u64, limit: usize },
    #[error("it does not decompress: {0}")]
    Corrupt(#[from] std::io::Error),
}

/// The bytes of one zstd frame that states its size, at most `limit` of them.
pub fn decompress(frame: &[u8], limit: usize) -> Result<Vec<u8>, Refused> {
    decompress_with(frame, limit, None)
}

/// The bytes of one zstd frame that states its size, at most `limit` of
/// them, with the dictionary it was compressed with, if any.
pub fn decompress_with(
    frame: &[u8],
    limit: usize,
    dictionary: Option<&Decoding>,
) -> Result<Vec<u8>, Refused> {
    let size = match zstd::zstd_safe::get_frame_content_size(frame) {
        Ok(Some(size)) => size,
        Ok(None) => return Err(Refused::Unsized),
        Err(_) => return Err(Refused::NotZstd),
    };
    if size > limit as u64 {
        return Err(Refused::TooLarge { size, limit });
    }
    DECOMPRESSOR.with_borrow_mut(|context| {
        let context = match context {
            Some(c) => c,
            None => context.insert(
                DCtx::try_create().ok_or_else(|| std::io::Error::other("zstd: out of memory"))?,
            ),
        };
        let mut out = Vec::with_capacity(size as usize);
        match dictionary {
            Some(d) => context.decompress_using_ddict(&mut out, frame, &d.ddict),
            None => context.decompress(&mut out, frame),
        }
        .map_err(zstd_error)?;
        if out.len() as u64 != size {
            return Err(Refused::Corrupt(std::io::Error::other(format!(
                "{} bytes decompressed where the frame states {size}",
                out.len()
            ))));
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_come_back_and_bad_ones_are_refused() {
        let text = b"SELECT * FROM orders WHERE id = $1".repeat(20);
        // Each level's context, made then kept, interleaved as the store uses them.
        for level in [Level::Rows, Level::Frames, Level::Rows, Level::Frames] {
            let frame = compress(&text, level).unwrap();
            assert!(frame.len() < text.len() / 4, "{level:?}");
            assert_eq!(decompress(&frame, 1 << 20).unwrap(), text);
        }
        let frame = compress(&text, Level::Rows).unwrap();
        assert!(matches!(
            decompress(&frame, 10),
            Err(Refused::TooLarge { limit: 10, .. })
        ));
        assert!(matches!(
            decompress(b"plain", 1 << 20),
            Err(Refused::NotZstd)
        ));
        assert!(is_frame(&frame) && !is_frame(b"plain"));
        assert!(matches!(
            decompress(&frame[..frame.len() - 3], 1 << 20),
            Err(Refused::Corrupt(_))
        ));
        let mut sizeless = Vec::new();
        let mut encoder = zstd::stream::write::Encoder::new(&mut sizeless, 3).unwrap();
        std::io::Write::write_all(&mut encoder, &text).unwrap();
        encoder.finish().unwrap();
        assert!(matches!(
            decompress(&sizeless, 1 << 20),
            Err(Refused::Unsized)
        ));
    }

    #[test]
    fn a_dictionary_is_named_by_the_frames_it_compressed_and_needed_to_read_them() {
        let samples: Vec<Vec<u8>> = (0..500)
            .map(|i| {
                format!(
                    "SELECT * FROM orders_{} WHERE id = {i} AND user = 'app'",
                    i % 13
                )
                .into_bytes()
            })
            .collect();
        let bytes = zstd::dict::from_samples(&samples, 4096).unwrap();
        let (encoding, decoding) = (
            Encoding::new(&bytes).unwrap(),
            Decoding::new(&bytes).unwrap(),
        );
        assert_eq!(encoding.id(), decoding.id());
        assert!(Encoding::new(b"not a dictionary").is_none());
        assert!(Decoding::new(&bytes[..8]).is_none());

        let text = b"SELECT * FROM orders_5 WHERE id = 77 AND user = 'app'";
        let frame = compress_with(text, &encoding).unwrap();
        assert_eq!(dictionary_of(&frame), Some(encoding.id()));
        assert_eq!(dictionary_of(&compress(text, Level::Frames).unwrap()), None);
        assert!(frame.len() < compress(text, Level::Frames).unwrap().len());
        assert_eq!(
            decompress_with(&frame, 1 << 20, Some(&decoding)).unwrap(),
            text
        );
        // Without it, or with another, the frame does not read.
        assert!(matches!(
            decompress(&frame, 1 << 20),
            Err(Refused::Corrupt(_))
        ));
        let other: Vec<Vec<u8>> = (0..500)
            .map(|i| format!("{i} other words entirely {}", i * 7).into_bytes())
            .collect();
        let other = Decoding::new(&zstd::dict::from_samples(&other, 4096).unwrap()).unwrap();
        assert!(decompress_with(&frame, 1 << 20, Some(&other)).is_err());
        assert!(matches!(
            decompress_with(&frame, 10, Some(&decoding)),
            Err(Refused::TooLarge { limit: 10, .. })
        ));
    }
}
