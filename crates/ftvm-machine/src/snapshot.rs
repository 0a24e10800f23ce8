//! Machine snapshots: a versioned, checksummed file holding the whole machine state.
//!
//! Layout (all integers little-endian):
//! ```text
//! magic    8 bytes  "FTVMSNAP"
//! version  u32      1; 2 when the clock changed its rate; 3 (SNAPSHOT_VERSION) with several harts
//! length   u64      length of the payload
//! payload  ...      the state, in the order Machine::save writes it
//! crc32c   u32      CRC-32C of everything before it
//! ```
//! RAM is stored page by page behind a bitmap of the pages that are not all zero.

use thiserror::Error;

pub const MAGIC: &[u8; 8] = b"FTVMSNAP";
/// The newest version: 2 adds the clock's rate and its anchor to the board's fields. A machine
/// whose clock never changed its rate is still written as version 1, byte for byte as before
/// (so its digests are too); both versions are read.
pub const SNAPSHOT_VERSION: u32 = 3;

#[derive(Debug, Clone, Error)]
pub enum SnapshotError {
    #[error("not an ftvm snapshot (bad magic)")]
    BadMagic,
    #[error(
        "snapshot version {0} is not supported (this ftvm reads versions 1 to {SNAPSHOT_VERSION})"
    )]
    Version(u32),
    #[error("snapshot is truncated")]
    Truncated,
    #[error("snapshot checksum mismatch: the file is damaged")]
    Checksum,
    #[error("snapshot is invalid: {0}")]
    Invalid(&'static str),
}

impl From<ftvm_cpu::HartStateError> for SnapshotError {
    fn from(e: ftvm_cpu::HartStateError) -> SnapshotError {
        match e {
            ftvm_cpu::HartStateError::Truncated => SnapshotError::Truncated,
            ftvm_cpu::HartStateError::Invalid(what) => SnapshotError::Invalid(what),
        }
    }
}

/// Appends state to a byte buffer.
#[derive(Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.buf.extend_from_slice(b);
    }
}

/// Reads state back, refusing to run past the end.
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf }
    }
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        if self.buf.len() < n {
            return Err(SnapshotError::Truncated);
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    pub fn u8(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.take(1)?[0])
    }
    pub fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    pub fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    pub fn bytes(&mut self) -> Result<Vec<u8>, SnapshotError> {
        let n = self.u64()?;
        if n > self.buf.len() as u64 {
            return Err(SnapshotError::Truncated);
        }
        Ok(self.take(n as usize)?.to_vec())
    }
    /// A `bytes` field of at most `max` bytes: a longer one is refused before it is copied.
    pub fn bytes_max(&mut self, max: usize, what: &'static str) -> Result<Vec<u8>, SnapshotError> {
        let n = self.u64()?;
        if n > max as u64 {
            return Err(SnapshotError::Invalid(what));
        }
        Ok(self.take(n as usize)?.to_vec())
    }
    /// Let `f` consume from the front of what is left (a decoder of another crate).
    pub fn with<T, E: Into<SnapshotError>>(
        &mut self,
        f: impl FnOnce(&mut &'a [u8]) -> Result<T, E>,
    ) -> Result<T, SnapshotError> {
        f(&mut self.buf).map_err(Into::into)
    }
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// Wrap a payload in the file framing of version 1.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    frame_version(1, payload)
}

/// Wrap a payload in the file framing of `version`.
pub fn frame_version(version: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 24);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Check the framing and return the payload.
pub fn unframe(file: &[u8]) -> Result<&[u8], SnapshotError> {
    unframe_version(file).map(|(_, p)| p)
}

/// Check the framing and return the version and the payload.
pub fn unframe_version(file: &[u8]) -> Result<(u32, &[u8]), SnapshotError> {
    if file.len() < 8 || &file[..8] != MAGIC {
        return Err(SnapshotError::BadMagic);
    }
    if file.len() < 24 {
        return Err(SnapshotError::Truncated);
    }
    let version = u32::from_le_bytes(file[8..12].try_into().unwrap());
    if !(1..=SNAPSHOT_VERSION).contains(&version) {
        return Err(SnapshotError::Version(version));
    }
    let len = u64::from_le_bytes(file[12..20].try_into().unwrap());
    if len != (file.len() - 24) as u64 {
        return Err(SnapshotError::Truncated);
    }
    let body = &file[..file.len() - 4];
    let crc = u32::from_le_bytes(file[file.len() - 4..].try_into().unwrap());
    if crc32c::crc32c(body) != crc {
        return Err(SnapshotError::Checksum);
    }
    Ok((version, &file[20..file.len() - 4]))
}

pub fn page_is_zero(p: &[u8]) -> bool {
    // Blocks of 256 bytes folded with OR (which the compiler vectorizes), stopping at the first
    // block with a bit set: a word-by-word test that stops at once is not vectorized, and a
    // zero page is read to its end either way.
    let blocks = p.chunks_exact(256);
    let rest = blocks.remainder();
    blocks
        .into_iter()
        .all(|b| b.iter().fold(0u8, |acc, &x| acc | x) == 0)
        && rest.iter().all(|&b| b == 0)
}

/// The serialized form of RAM, piece by piece: its size, a bitmap of the pages that are not all
/// zero, then those pages. `save_ram` stores the pieces, `Machine::digest` hashes them. Runs of
/// neighbouring non-zero pages go as one piece (the same bytes): a hash takes a long piece
/// many chunks at a time.
pub fn ram_pieces(ram: &[u8], mut piece: impl FnMut(&[u8])) {
    piece(&(ram.len() as u64).to_le_bytes());
    let pages = ram.len().div_ceil(4096);
    let mut bitmap = vec![0u8; pages.div_ceil(8)];
    for (i, p) in ram.chunks(4096).enumerate() {
        if !page_is_zero(p) {
            bitmap[i / 8] |= 1 << (i % 8);
        }
    }
    piece(&bitmap);
    let stored = |i: usize| bitmap[i / 8] & (1 << (i % 8)) != 0;
    let mut i = 0;
    while i < pages {
        if !stored(i) {
            i += 1;
            continue;
        }
        let first = i;
        while i < pages && stored(i) {
            i += 1;
        }
        piece(&ram[first * 4096..(i * 4096).min(ram.len())]);
    }
}

/// Store RAM as a bitmap of non-zero pages followed by those pages.
pub fn save_ram(w: &mut Writer, ram: &[u8]) {
    ram_pieces(ram, |b| w.buf.extend_from_slice(b));
}

/// Store RAM of `len` bytes as if it were all zeros (its size and an empty bitmap): the state
/// of a machine whose RAM travels apart from it.
pub fn save_empty_ram(w: &mut Writer, len: usize) {
    w.u64(len as u64);
    w.buf
        .resize(w.buf.len() + len.div_ceil(4096).div_ceil(8), 0);
}

/// Read RAM stored by [`save_empty_ram`]: the size must be `ram_size` and no page stored.
pub fn skip_empty_ram(r: &mut Reader, ram_size: u64) -> Result<(), SnapshotError> {
    if r.u64()? != ram_size {
        return Err(SnapshotError::Invalid(
            "RAM size differs from the one at the start of the snapshot",
        ));
    }
    let npages =
        usize::try_from(ram_size.div_ceil(4096)).map_err(|_| SnapshotError::Invalid("RAM size"))?;
    if r.take(npages.div_ceil(8))?.iter().any(|&b| b != 0) {
        return Err(SnapshotError::Invalid(
            "this state stores RAM pages, where its RAM was to come apart from it",
        ));
    }
    Ok(())
}

/// Check, before RAM is allocated, that what is left starts with RAM of `ram_size` bytes and
/// holds at least its whole page bitmap.
pub fn check_ram_header(r: &Reader, ram_size: u64) -> Result<(), SnapshotError> {
    let rest = r.buf;
    let Some((len, rest)) = rest.split_first_chunk::<8>() else {
        return Err(SnapshotError::Truncated);
    };
    if u64::from_le_bytes(*len) != ram_size {
        return Err(SnapshotError::Invalid(
            "RAM size differs from the one at the start of the snapshot",
        ));
    }
    if (rest.len() as u64) < ram_size.div_ceil(4096).div_ceil(8) {
        return Err(SnapshotError::Truncated);
    }
    Ok(())
}

/// Read RAM stored by `save_ram` into `ram` (which must have the stored size). With `zeroed`
/// (`ram` is known to be all zeros), the pages the snapshot does not store are not touched, so
/// the cost is what the snapshot holds, not the RAM size.
pub fn load_ram(r: &mut Reader, ram: &mut [u8], zeroed: bool) -> Result<(), SnapshotError> {
    let len = r.u64()?;
    if len != ram.len() as u64 {
        return Err(SnapshotError::Invalid(
            "RAM size differs from the snapshot's (use the same --mem)",
        ));
    }
    let npages = ram.len().div_ceil(4096);
    let bitmap = r.take(npages.div_ceil(8))?;
    if !npages.is_multiple_of(8) && bitmap.last().is_some_and(|&b| b >> (npages % 8) != 0) {
        return Err(SnapshotError::Invalid(
            "RAM bitmap marks pages past the end",
        ));
    }
    for (i, &bits) in bitmap.iter().enumerate() {
        if bits == 0 && zeroed {
            continue;
        }
        for bit in 0..8 {
            let page = i * 8 + bit;
            let start = page * 4096;
            if start >= ram.len() {
                break;
            }
            let end = (start + 4096).min(ram.len());
            let dst = &mut ram[start..end];
            if bits & (1 << bit) != 0 {
                let src = r.take(dst.len())?;
                if page_is_zero(src) {
                    return Err(SnapshotError::Invalid(
                        "RAM page stored although it is zero",
                    ));
                }
                dst.copy_from_slice(src);
            } else if !zeroed {
                dst.fill(0);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trip_and_damage() {
        let f = frame(b"hello state");
        assert_eq!(unframe(&f).unwrap(), b"hello state");
        let mut bad = f.clone();
        bad[22] ^= 1;
        assert!(matches!(unframe(&bad), Err(SnapshotError::Checksum)));
        assert!(matches!(unframe(b"ELF..."), Err(SnapshotError::BadMagic)));
        assert!(matches!(
            unframe(&f[..f.len() - 1]),
            Err(SnapshotError::Truncated)
        ));
        let mut v2 = f.clone();
        v2[8] = 9;
        assert!(matches!(unframe(&v2), Err(SnapshotError::Version(9))));
    }

    #[test]
    fn ram_round_trip() {
        let mut ram = vec![0u8; 5 * 4096];
        ram[4096 * 3 + 7] = 42;
        let mut w = Writer::default();
        save_ram(&mut w, &ram);
        assert!(w.buf.len() < 4096 + 64, "zero pages are not stored");
        let mut back = vec![1u8; ram.len()];
        load_ram(&mut Reader::new(&w.buf), &mut back, false).unwrap();
        assert_eq!(back, ram);
    }

    #[test]
    fn ram_pieces_are_the_size_the_bitmap_and_each_non_zero_page_in_order() {
        // Runs of non-zero pages, zero pages between, a byte set at either end of a page, and
        // a last page cut short.
        let mut ram = vec![0u8; 40 * 4096 + 100];
        for (page, at) in [(0, 0), (1, 4095), (2, 2048), (5, 255), (6, 256), (7, 4000)] {
            ram[page * 4096 + at] = 1;
        }
        for page in 20..33 {
            ram[page * 4096 + page] = page as u8;
        }
        ram[40 * 4096 + 99] = 3;
        let mut expected = (ram.len() as u64).to_le_bytes().to_vec();
        let mut bitmap = vec![0u8; 41usize.div_ceil(8)];
        for (i, p) in ram.chunks(4096).enumerate() {
            if p.iter().any(|&b| b != 0) {
                bitmap[i / 8] |= 1 << (i % 8);
            }
        }
        expected.extend_from_slice(&bitmap);
        for p in ram.chunks(4096) {
            if p.iter().any(|&b| b != 0) {
                expected.extend_from_slice(p);
            }
        }
        let mut got = Vec::new();
        ram_pieces(&ram, |b| got.extend_from_slice(b));
        assert_eq!(got, expected);
        // Every byte of a page is looked at.
        let mut page = vec![0u8; 4096];
        assert!(page_is_zero(&page));
        for at in (0..4096).step_by(37).chain([4095]) {
            page[at] = 0x80;
            assert!(!page_is_zero(&page), "a bit at {at}");
            page[at] = 0;
        }
        assert!(!page_is_zero(&[0, 0, 1]));
    }
}
