//! Gzipped log files to JSON text, within a size limit.
//!
//! CloudTrail writes each log file as one gzip member of a few MB whose trailer holds the
//! uncompressed size (ISIZE). Such a file is inflated in one call by libdeflate into a buffer of
//! exactly that size: about twice as fast as a streaming decoder. Everything else goes through the
//! streaming decoder (zlib-rs), which reads any number of members: files made of several members,
//! trailers that do not match, corrupt data (whose error the streaming decoder words better), and
//! files whose trailer puts them over the limit.
//!
//! Memory: each worker keeps one buffer of up to `retain` bytes from file to file. Larger files
//! get a buffer of their own, leased from a budget shared by the workers, and freed after the file.
//! No buffer ever grows past the limit plus one byte, which is how a gzip bomb is told apart.

use std::io::Read;
use std::sync::Arc;

use memchr::memmem;

use crate::budget::{Budget, Lease};

/// The largest decompression buffer a worker keeps between files: CloudTrail files are a few MB.
pub(crate) const RETAIN: usize = 8 << 20;
/// What the workers keep between files, all together: on many cores each keeps less.
pub(crate) const RETAIN_TOTAL: usize = 24 << 20;

/// What each of `workers` may keep between files.
pub(crate) fn retain_per_worker(workers: usize) -> usize {
    (RETAIN_TOTAL / workers.max(1)).clamp(1 << 20, RETAIN)
}

/// How a file was inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// In one call, into a buffer of the size its trailer gives.
    Whole,
    /// By the streaming decoder.
    Streamed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum InflateError {
    /// It inflates to more than the limit.
    TooLarge,
    Corrupt(String),
}

pub(crate) struct Inflater {
    whole: libdeflater::Decompressor,
    /// Reused from file to file. Its initialised length only grows (up to `retain`), so that the
    /// whole-buffer path, which needs an initialised slice, does not zero it for every file.
    small: Vec<u8>,
    /// The current file's buffer when it does not fit in `small`, with its lease.
    large: Option<(Vec<u8>, Lease)>,
    /// Length of the current file's text.
    len: usize,
    /// The most `small` may hold.
    retain: usize,
    budget: Arc<Budget>,
}

impl Inflater {
    /// `budget` bounds the large buffers of every worker together.
    pub(crate) fn new(budget: Arc<Budget>, retain: usize) -> Inflater {
        Inflater { whole: libdeflater::Decompressor::new(), small: Vec::new(), large: None, len: 0, retain, budget }
    }

    /// Inflate `gz` (one or more gzip members); the text is then in [`Inflater::text`].
    pub(crate) fn inflate(&mut self, gz: &[u8], limit: usize) -> Result<Route, InflateError> {
        self.finish();
        if let Some(size) = trailer_size(gz).filter(|&s| s <= limit) {
            let out: &mut [u8] = if size <= self.retain {
                if self.small.len() < size {
                    self.small.resize(size, 0);
                }
                &mut self.small[..size]
            } else {
                // Untouched pages of a fresh zeroed allocation cost nothing until written.
                let (buf, _) = self.large.insert((vec![0; size], self.budget.take(size as u64)));
                &mut buf[..]
            };
            // A smaller result means the trailer is not this member's: there are more members
            // (or the trailer lies), and the streaming decoder will tell which.
            if let Ok(n) = self.whole.gzip_decompress(gz, out)
                && n == size
                && !another_member_follows(gz, n)
            {
                self.len = n;
                return Ok(Route::Whole);
            }
            // Give the lease back before the streaming path waits for its own.
            self.large = None;
        }
        self.stream(gz, limit)?;
        Ok(Route::Streamed)
    }

    fn stream(&mut self, gz: &[u8], limit: usize) -> Result<(), InflateError> {
        let mut reader = flate2::read::MultiGzDecoder::new(gz);
        // Reading one byte past the limit is what proves a file is over it.
        let ceiling = limit.saturating_add(1);
        let mut len = 0;
        loop {
            // The reused buffer may be longer than the limit: never read past the ceiling.
            let room = match &self.large {
                Some((buf, _)) => buf.len(),
                None => self.small.len(),
            }
            .min(ceiling);
            if len == room {
                if len >= ceiling {
                    return Err(InflateError::TooLarge);
                }
                let want = len.max(64 << 10).saturating_mul(2).min(ceiling);
                if want <= self.retain {
                    self.small.resize(want, 0);
                } else if self.large.is_none() {
                    // Past what a worker keeps: the rest of the way at once, so that this never
                    // waits for the budget again while holding part of it.
                    let lease = self.budget.take(ceiling as u64);
                    let mut buf = vec![0; ceiling];
                    buf[..len].copy_from_slice(&self.small[..len]);
                    self.large = Some((buf, lease));
                }
                continue;
            }
            let buf = match &mut self.large {
                Some((buf, _)) => buf,
                None => &mut self.small,
            };
            match reader.read(&mut buf[len..room]) {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.large = None;
                    return Err(InflateError::Corrupt(format!("gzip: {e}")));
                }
            }
        }
        self.len = len;
        Ok(())
    }

    /// The text of the file last inflated.
    pub(crate) fn text(&self) -> &[u8] {
        match &self.large {
            Some((buf, _)) => &buf[..self.len],
            None => &self.small[..self.len],
        }
    }

    /// Hand over the current file's own buffer (with its lease), if it has one, rather than copy
    /// what is kept from it.
    pub(crate) fn take_large(&mut self) -> Option<(Vec<u8>, Lease)> {
        self.large.take().map(|(mut buf, lease)| {
            buf.truncate(self.len);
            (buf, lease)
        })
    }

    /// Done with the current file: free its own buffer and give back the lease.
    pub(crate) fn finish(&mut self) {
        self.large = None;
        self.len = 0;
    }
}

/// The uncompressed size in a gzip trailer (modulo 4 GiB, as gzip stores it).
fn trailer_size(gz: &[u8]) -> Option<usize> {
    // Header (10 bytes), the shortest deflate stream (2), trailer (8).
    if gz.len() < 20 {
        return None;
    }
    let tail: [u8; 4] = gz[gz.len() - 4..].try_into().ok()?;
    usize::try_from(u32::from_le_bytes(tail)).ok()
}

/// libdeflate stops at the end of the first member and does not say where that was. Had another
/// member followed it, the first member's trailer (ending with its size, `n`) would be followed by
/// a gzip header (`1f 8b 08`): look for that sequence. A match inside compressed data by chance
/// (about 2^-56 a position) only sends the file down the streaming path.
fn another_member_follows(gz: &[u8], n: usize) -> bool {
    let mut pattern = [0u8; 7];
    pattern[..4].copy_from_slice(&(n as u32).to_le_bytes());
    pattern[4..].copy_from_slice(&[0x1f, 0x8b, 0x08]);
    memmem::find(gz, &pattern).is_some()
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(data).unwrap();
        gz.finish().unwrap()
    }

    /// JSON-like text that does not compress to nothing.
    fn text(n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + 64);
        let mut i = 0u64;
        while out.len() < n {
            i = i.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            out.extend_from_slice(
                format!("{{\"eventID\":\"{:016x}\",\"accessKeyId\":\"AKIA{i:x}\"}},", i >> 7).as_bytes(),
            );
        }
        out.truncate(n);
        out
    }

    fn inflater() -> (Inflater, Arc<Budget>) {
        let budget = Budget::new(64 << 20);
        (Inflater::new(budget.clone(), RETAIN), budget)
    }

    #[test]
    fn one_member_is_inflated_whole() {
        let (mut inf, _) = inflater();
        for n in [0, 1, 1000, 300_000] {
            let data = text(n);
            assert_eq!(inf.inflate(&gzip(&data), 1 << 20), Ok(Route::Whole), "{n} bytes");
            assert_eq!(inf.text(), &data[..]);
        }
        // A smaller file after a larger one: only its own bytes.
        let data = text(10);
        assert_eq!(inf.inflate(&gzip(&data), 1 << 20), Ok(Route::Whole));
        assert_eq!(inf.text(), &data[..]);
    }

    #[test]
    fn concatenated_members_are_all_read() {
        let (mut inf, _) = inflater();
        let (a, b) = (text(5000), text(7000));
        let mut both = gzip(&a);
        both.extend(gzip(&b));
        assert_eq!(inf.inflate(&both, 1 << 20), Ok(Route::Streamed));
        assert_eq!(inf.text(), [&a[..], &b[..]].concat());

        // The same member twice: the file's trailer is the first member's, so only the sequence
        // of a trailer followed by a header shows the second member.
        let mut twice = gzip(&a);
        twice.extend(gzip(&a));
        assert_eq!(inf.inflate(&twice, 1 << 20), Ok(Route::Streamed));
        assert_eq!(inf.text(), [&a[..], &a[..]].concat());

        // An empty member first, then data, then an empty member: trailers (size 0) agree.
        let mut sandwich = gzip(b"");
        sandwich.extend(gzip(&b));
        sandwich.extend(gzip(b""));
        assert_eq!(inf.inflate(&sandwich, 1 << 20), Ok(Route::Streamed));
        assert_eq!(inf.text(), &b[..]);
    }

    #[test]
    fn a_trailer_that_does_not_match_is_corrupt() {
        let (mut inf, budget) = inflater();
        let data = text(50_000);
        let good = gzip(&data);
        let n = good.len();
        for isize in [49_999u32, 50_001, 10, 0, u32::MAX, 60 << 20] {
            let mut bad = good.clone();
            bad[n - 4..].copy_from_slice(&isize.to_le_bytes());
            match inf.inflate(&bad, 1 << 20) {
                Err(InflateError::Corrupt(e)) => assert!(e.starts_with("gzip:"), "{e}"),
                other => panic!("ISIZE {isize}: {other:?}"),
            }
            inf.finish();
            assert_eq!(budget.used(), 0, "ISIZE {isize}: no lease kept");
        }
        let mut bad_crc = good.clone();
        bad_crc[n - 8] ^= 1;
        assert!(matches!(inf.inflate(&bad_crc, 1 << 20), Err(InflateError::Corrupt(_))));
    }

    #[test]
    fn truncated_and_garbage_files_are_corrupt_not_panics() {
        let (mut inf, _) = inflater();
        let good = gzip(&text(100_000));
        for cut in [good.len() - 1, good.len() - 8, good.len() / 2, 25, 19, 10, 3, 2] {
            let r = inf.inflate(&good[..cut], 1 << 20);
            assert!(matches!(r, Err(InflateError::Corrupt(_))), "cut at {cut}: {r:?}");
        }
        let mut garbage = vec![0x1f, 0x8b, 0x08, 0];
        garbage.extend((0..5000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8));
        assert!(matches!(inf.inflate(&garbage, 1 << 20), Err(InflateError::Corrupt(_))));
    }

    #[test]
    fn the_limit_is_exact_whatever_the_route() {
        let (mut inf, _) = inflater();
        let data = text(100_000);
        let one = gzip(&data);
        assert_eq!(inf.inflate(&one, 100_000), Ok(Route::Whole));
        assert_eq!(inf.inflate(&one, 99_999), Err(InflateError::TooLarge));
        let mut two = gzip(&data[..40_000]);
        two.extend(gzip(&data[40_000..]));
        assert_eq!(inf.inflate(&two, 100_000), Ok(Route::Streamed));
        assert_eq!(inf.text(), &data[..]);
        assert_eq!(inf.inflate(&two, 99_999), Err(InflateError::TooLarge));
    }

    /// `mib` MiB of zeros as one gzip member of about 1 KB a MiB, built by repeating one
    /// compressed MiB (a bomb is caught before its checksum is read, so that is left as zero).
    fn bomb(mib: usize) -> Vec<u8> {
        let mut deflate = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        deflate.write_all(&vec![0u8; 1 << 20]).unwrap();
        deflate.flush().unwrap();
        let block = deflate.get_ref().clone();
        let mut out = vec![0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 0xff];
        for _ in 0..mib {
            out.extend_from_slice(&block);
        }
        out.extend_from_slice(&[0x03, 0x00]);
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&((mib << 20) as u32).to_le_bytes());
        out
    }

    #[test]
    fn a_gzip_bomb_stops_at_the_limit() {
        let (mut inf, budget) = inflater();
        let limit = 12 << 20;
        // 5 GB in about 5 MB: the trailer says 1 GB (5 GB modulo 4 GiB), over the limit.
        let bomb5g = bomb(5 << 10);
        assert!(bomb5g.len() < 8 << 20, "{}", bomb5g.len());
        assert_eq!(inf.inflate(&bomb5g, limit), Err(InflateError::TooLarge));
        assert!(inf.small.len() <= RETAIN);
        inf.finish();
        assert_eq!(budget.used(), 0);

        // 4 GiB + 1 MiB: the trailer says 1 MiB, under the limit; the whole-buffer path runs out
        // of room and the streaming one stops at the limit.
        let wraps = bomb((4 << 10) + 1);
        assert_eq!(inf.inflate(&wraps, limit), Err(InflateError::TooLarge));

        // Members of 1 MiB, 200 of them: each trailer small and honest, the whole over the limit.
        let member = gzip(&vec![0u8; 1 << 20]);
        let many: Vec<u8> = std::iter::repeat_n(&member[..], 200).flatten().copied().collect();
        assert_eq!(inf.inflate(&many, limit), Err(InflateError::TooLarge));
        inf.finish();
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_large_file_leases_its_buffer_and_gives_it_back() {
        let (mut inf, budget) = inflater();
        let data = text(RETAIN + 1000);
        assert_eq!(inf.inflate(&gzip(&data), 32 << 20), Ok(Route::Whole));
        assert_eq!(budget.used(), (RETAIN + 1000) as u64);
        assert_eq!(inf.text(), &data[..]);
        let (buf, lease) = inf.take_large().unwrap();
        assert_eq!(buf, data);
        assert_eq!(budget.used(), (RETAIN + 1000) as u64, "the lease goes with the buffer");
        drop(lease);
        assert_eq!(budget.used(), 0);

        let mut two = gzip(&data[..RETAIN / 2]);
        two.extend(gzip(&data[RETAIN / 2..]));
        assert_eq!(inf.inflate(&two, 32 << 20), Ok(Route::Streamed));
        assert_eq!(inf.text(), &data[..]);
        assert!(budget.used() > 0);
        inf.finish();
        assert_eq!(budget.used(), 0);
        assert!(inf.small.len() <= RETAIN);
    }
}
