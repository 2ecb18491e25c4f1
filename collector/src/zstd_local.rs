//! zstd with one context per thread, kept for the thread's life. Setting a
//! context up costs some 100 KB of zeroed tables, more than compressing or
//! decompressing a small frame: ingest decompresses every zstd batch, and
//! the store compresses every row of load, through these.

use std::cell::RefCell;

use zstd::bulk::{Compressor, Decompressor};

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
    static DECOMPRESSOR: RefCell<Option<Decompressor<'static>>> = const { RefCell::new(None) };
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
    let size = match zstd::zstd_safe::get_frame_content_size(frame) {
        Ok(Some(size)) => size,
        Ok(None) => return Err(Refused::Unsized),
        Err(_) => return Err(Refused::NotZstd),
    };
    if size > limit as u64 {
        return Err(Refused::TooLarge { size, limit });
    }
    Ok(DECOMPRESSOR.with_borrow_mut(|context| {
        let context = match context {
            Some(c) => c,
            None => context.insert(Decompressor::new()?),
        };
        context.decompress(frame, size as usize)
    })?)
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
}
