//! One record of the log: a 24-byte header (magic, payload length, sequence number, CRC-32
//! of sequence, length and payload, padding) and the payload. Little-endian.

/// Marks the start of a frame; a run of zeros (preallocated space) is never a frame.
pub const MAGIC: u32 = 0x4c41_5746; // "FWAL"
/// Header bytes.
pub const HEADER: usize = 24;

fn checksum(seq: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(&(payload.len() as u32).to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// Appends the frame of `payload` with sequence number `seq` to `out`.
pub fn encode(seq: u64, payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&checksum(seq, payload).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(payload);
}

/// What starts at an offset.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// A complete frame; the next one starts at `next`.
    Frame {
        /// Its sequence number.
        seq: u64,
        /// Its payload.
        payload: &'a [u8],
        /// Where the next frame starts.
        next: usize,
    },
    /// Zeros or the end of the file: no more frames.
    End,
    /// Something that is not a complete, intact frame.
    Damaged(&'static str),
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

/// The sequence number and payload length a frame header at `at` claims, if one starts
/// there (checked for its magic only: the frame itself may be damaged).
pub fn header_at(buf: &[u8], at: usize) -> Option<(u64, usize)> {
    let header = buf.get(at..at.checked_add(HEADER)?)?;
    (u32_at(header, 0) == MAGIC).then(|| (u64_at(header, 8), u32_at(header, 4) as usize))
}

/// Reads the frame at `at` in `buf`.
pub fn parse(buf: &[u8], at: usize) -> Parsed<'_> {
    if at >= buf.len() {
        return Parsed::End;
    }
    if buf.len() - at < HEADER {
        return if buf[at..].iter().all(|&b| b == 0) {
            Parsed::End
        } else {
            Parsed::Damaged("a frame header cut short")
        };
    }
    let header = &buf[at..at + HEADER];
    if header.iter().all(|&b| b == 0) {
        return Parsed::End;
    }
    if u32_at(header, 0) != MAGIC {
        return Parsed::Damaged("not a frame (bad magic)");
    }
    let len = u32_at(header, 4) as usize;
    let seq = u64_at(header, 8);
    let crc = u32_at(header, 16);
    if len == 0 {
        return Parsed::Damaged("an empty frame");
    }
    let start = at + HEADER;
    let Some(end) = start.checked_add(len).filter(|&e| e <= buf.len()) else {
        return Parsed::Damaged("a frame cut short");
    };
    let payload = &buf[start..end];
    if checksum(seq, payload) != crc {
        return Parsed::Damaged("a frame whose checksum does not match");
    }
    Parsed::Frame {
        seq,
        payload,
        next: end,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_damage_is_seen() {
        let mut buf = Vec::new();
        encode(7, b"hello", &mut buf);
        encode(8, b"world!", &mut buf);
        buf.extend_from_slice(&[0; 64]);
        let Parsed::Frame { seq, payload, next } = parse(&buf, 0) else {
            panic!("first frame")
        };
        assert_eq!((seq, payload), (7, &b"hello"[..]));
        let Parsed::Frame { seq, next: end, .. } = parse(&buf, next) else {
            panic!("second frame")
        };
        assert_eq!(seq, 8);
        assert_eq!(parse(&buf, end), Parsed::End);
        let mut flipped = buf.clone();
        flipped[HEADER + 1] ^= 1;
        assert!(matches!(parse(&flipped, 0), Parsed::Damaged(_)));
        assert!(matches!(parse(&buf[..next - 1], 0), Parsed::Damaged(_)));
        assert!(matches!(parse(&buf[..10], 0), Parsed::Damaged(_)));
    }
}
