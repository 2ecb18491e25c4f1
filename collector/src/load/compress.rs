//! How stored rows of load, statement statistics and dictionaries are
//! compressed.

/// The most bytes a stored row of load may take once decompressed.
const MAX_ROW_BYTES: usize = 16 << 20;

/// A row as stored: `bytes` compressed with zstd (as they are, should the
/// compressor fail; reading tells the two apart).
pub(super) fn compressed(bytes: Vec<u8>) -> Vec<u8> {
    crate::zstd_local::compress(&bytes, crate::zstd_local::Level::Rows).unwrap_or(bytes)
}

/// A stored row's bytes, decompressed if they were; None when they do not
/// decompress within [`MAX_ROW_BYTES`].
pub(super) fn decompressed(bytes: &[u8]) -> Option<std::borrow::Cow<'_, [u8]>> {
    if crate::zstd_local::is_frame(bytes) {
        crate::zstd_local::decompress(bytes, MAX_ROW_BYTES)
            .ok()
            .map(std::borrow::Cow::Owned)
    } else {
        Some(std::borrow::Cow::Borrowed(bytes))
    }
}
