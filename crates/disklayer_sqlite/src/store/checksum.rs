//! Checksums of a chunk's data: one xxh3-64 per [`PIECE`] bytes of the
//! row's `data` BLOB (its compact layout), stored little-endian, in order,
//! in the row's `sums` column and written in the same transaction as the
//! data.
//!
//! Why per piece: a read verifies every byte it returns, and a piece is the
//! most it has to read beyond what it returns. 4 KiB is the usual guest
//! read, so a 4 KiB read costs one 4 KiB piece; a 1 MiB chunk carries 256
//! sums (2 KiB). xxh3 hashes at about the speed of a memory copy, so
//! verifying a large read costs a fraction of reading it.
//!
//! No I/O here: the store reads the bytes, this module checks them.

/// Bytes covered by one checksum.
pub(crate) const PIECE: usize = 4096;

/// Bytes of one stored checksum.
pub(crate) const SUM_LEN: usize = 8;

/// The name of the checksum scheme, stored in the file's metadata so a
/// future scheme is recognised rather than misread.
pub(crate) const SCHEME: &str = "xxh3-64/4096";

fn hash(piece: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(piece)
}

/// Number of pieces (and sums) of a data BLOB of `len` bytes.
pub(crate) fn piece_count(len: usize) -> usize {
    len.div_ceil(PIECE)
}

/// The `sums` value of a data BLOB.
pub(crate) fn sums_of(data: &[u8]) -> Vec<u8> {
    let mut sums = Vec::with_capacity(piece_count(data.len()) * SUM_LEN);
    for piece in data.chunks(PIECE) {
        sums.extend_from_slice(&hash(piece).to_le_bytes());
    }
    sums
}

/// Replaces the sums of the pieces that `window` covers. `window` holds the
/// data BLOB's bytes from offset `first_piece * PIECE` on, whole pieces
/// (the last one may be the BLOB's short last piece).
pub(crate) fn update_sums(sums: &mut [u8], first_piece: usize, window: &[u8]) {
    for (i, piece) in window.chunks(PIECE).enumerate() {
        let at = (first_piece + i) * SUM_LEN;
        sums[at..at + SUM_LEN].copy_from_slice(&hash(piece).to_le_bytes());
    }
}

/// Whether `window` (the data BLOB's bytes from offset
/// `first_piece * PIECE`, whole pieces as in [`update_sums`]) matches its
/// stored sums. A `sums` too short for the window does not match.
pub(crate) fn verify(sums: &[u8], first_piece: usize, window: &[u8]) -> bool {
    window.chunks(PIECE).enumerate().all(|(i, piece)| {
        let at = (first_piece + i) * SUM_LEN;
        sums.get(at..at + SUM_LEN)
            .is_some_and(|s| s == hash(piece).to_le_bytes())
    })
}

/// The piece-aligned window `[start, end)` of a data BLOB of `data_len`
/// bytes that covers the bytes `[from, to)`: what a read must fetch to
/// verify them.
pub(crate) fn window(from: usize, to: usize, data_len: usize) -> (usize, usize) {
    let start = from / PIECE * PIECE;
    let end = to.div_ceil(PIECE).saturating_mul(PIECE).min(data_len);
    (start, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_cover_whole_and_short_pieces() {
        let data: Vec<u8> = (0..3 * PIECE + 100).map(|i| i as u8).collect();
        let sums = sums_of(&data);
        assert_eq!(sums.len(), 4 * SUM_LEN);
        assert!(verify(&sums, 0, &data));
        assert!(verify(&sums, 1, &data[PIECE..]));
        assert!(verify(&sums, 3, &data[3 * PIECE..]));
        // One flipped bit in any piece is caught.
        for at in [0, PIECE + 7, 3 * PIECE + 99] {
            let mut bad = data.clone();
            bad[at] ^= 1;
            assert!(!verify(&sums, 0, &bad), "flip at {at}");
        }
        // Sums too short for the window never verify.
        assert!(!verify(&sums[..SUM_LEN], 0, &data));
    }

    #[test]
    fn updating_a_window_matches_recomputing() {
        let mut data: Vec<u8> = (0..4 * PIECE).map(|i| (i * 7) as u8).collect();
        let mut sums = sums_of(&data);
        data[PIECE + 5..2 * PIECE + 9].fill(0xee);
        update_sums(&mut sums, 1, &data[PIECE..3 * PIECE]);
        assert_eq!(sums, sums_of(&data));
    }

    #[test]
    fn windows_are_piece_aligned_and_clipped() {
        assert_eq!(window(0, PIECE, 10 * PIECE), (0, PIECE));
        assert_eq!(window(100, 200, 10 * PIECE), (0, PIECE));
        assert_eq!(window(PIECE - 1, PIECE + 1, 10 * PIECE), (0, 2 * PIECE));
        assert_eq!(
            window(5 * PIECE, 5 * PIECE + 10, 5 * PIECE + 10),
            (5 * PIECE, 5 * PIECE + 10)
        );
    }
}
