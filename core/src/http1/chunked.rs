//! The chunked transfer coding: a streaming strict decoder and the encoders.

use std::ops::Range;

/// Why a chunked body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkedError {
    /// A chunk-size line that is not hex, or overflows.
    #[error("malformed chunk size")]
    BadSize,
    /// A missing CRLF after a chunk or in the framing.
    #[error("malformed chunk framing")]
    BadFraming,
    /// The decoded body is over the limit.
    #[error("chunked body exceeds the limit")]
    TooLarge,
    /// A chunk extension that is not `;name[=token|"quoted"]` (RFC 9112 §7.1.1).
    #[error("malformed chunk extension")]
    BadExtension,
    /// The extensions of one chunk are over [`MAX_CHUNK_EXT_BYTES`], or those of the whole
    /// body are over that plus the body's size.
    #[error("chunk extensions exceed {MAX_CHUNK_EXT_BYTES} bytes")]
    ExtensionsTooLong,
    /// A trailer line that is not a field line `name: value` (RFC 9112 §7.1.2).
    #[error("malformed trailer field")]
    BadTrailer,
    /// The trailer section is over [`MAX_TRAILER_BYTES`].
    #[error("trailer section exceeds {MAX_TRAILER_BYTES} bytes")]
    TrailersTooLarge,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChunkState {
    /// Reading hex digits of the size.
    Size { digits: u8 },
    /// White space after the size or a value (`BWS`); only `;` may follow.
    ExtBws,
    /// After `;`: white space, then an extension name.
    ExtNameStart,
    /// Inside an extension name (a token).
    ExtName,
    /// White space after a name: `=` or `;` follows.
    ExtNameBws,
    /// After `=`: white space, then a token or a quoted string.
    ExtValueStart,
    /// Inside a token value.
    ExtValueToken,
    /// Inside a quoted-string value.
    ExtQuoted,
    /// After a backslash in a quoted string.
    ExtQuotedPair,
    /// After the closing quote.
    ExtValueEnd,
    /// Expecting LF after the size line's CR.
    SizeLf,
    /// Inside chunk data.
    Data,
    /// Expecting CR after the data.
    DataCr,
    /// Expecting LF after the data.
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// Inside a trailer field name, until the colon.
    TrailerName,
    /// Inside a trailer field value, until CR.
    TrailerValue,
    /// Expecting LF after a trailer line.
    TrailerLf,
    /// Expecting the final LF.
    FinalLf,
    /// The body is complete.
    Done,
}

impl ChunkState {
    fn in_extension(self) -> bool {
        matches!(
            self,
            ChunkState::ExtBws
                | ChunkState::ExtNameStart
                | ChunkState::ExtName
                | ChunkState::ExtNameBws
                | ChunkState::ExtValueStart
                | ChunkState::ExtValueToken
                | ChunkState::ExtQuoted
                | ChunkState::ExtQuotedPair
                | ChunkState::ExtValueEnd
        )
    }
}

/// One step of chunked decoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkedStep {
    /// Bytes of the input consumed by this step.
    pub consumed: usize,
    /// Body bytes found, as a range of the input (may be empty).
    pub data: Range<usize>,
    /// The terminating zero-size chunk and trailers were read.
    pub done: bool,
}

/// A streaming, strict chunked decoder (RFC 9112 §7.1). It never copies: each call returns
/// where the body bytes are in the input. Feed it every byte in order; it keeps partial size
/// lines in its state.
///
/// Chunk extensions are checked against their grammar and ignored, bounded to
/// [`MAX_CHUNK_EXT_BYTES`] per chunk and, all chunks together, to that plus the body bytes
/// announced so far (so extensions cannot outweigh the body, however long a stream); trailer fields are checked against the field-line grammar and
/// discarded (never merged into the header section), bounded to [`MAX_TRAILER_BYTES`].
///
/// Call order: `decode(input)` repeatedly on `&input[consumed..]` until `consumed` reaches the
/// end of the input or `done` is true; bytes after `done` belong to the next message.
#[derive(Clone, Debug)]
pub struct ChunkedDecoder {
    state: ChunkState,
    size: u64,
    remaining: u64,
    total: u64,
    max_total: u64,
    /// Extension bytes of the current size line.
    ext_line_bytes: u64,
    /// Extension bytes of the whole body.
    ext_bytes: u64,
    trailer_bytes: usize,
}

/// Longest trailer section accepted.
pub const MAX_TRAILER_BYTES: usize = 8 * 1024;

/// Most bytes of chunk extensions accepted on one chunk; all chunks of a body together may
/// have this many plus the body's size.
pub const MAX_CHUNK_EXT_BYTES: u64 = 4 * 1024;

fn is_ws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// `qdtext` (RFC 9110 §5.6.4).
fn is_qdtext(b: u8) -> bool {
    matches!(b, b'\t' | b' ' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e | 0x80..=0xff)
}

/// `field-vchar / SP / HTAB` (RFC 9110 §5.5): no CR, LF, NUL or other control.
fn is_field_value_byte(b: u8) -> bool {
    b == b'\t' || !b.is_ascii_control()
}

impl ChunkedDecoder {
    /// A decoder refusing bodies larger than `max_total` bytes.
    pub fn new(max_total: u64) -> Self {
        ChunkedDecoder {
            state: ChunkState::Size { digits: 0 },
            size: 0,
            remaining: 0,
            total: 0,
            max_total,
            ext_line_bytes: 0,
            ext_bytes: 0,
            trailer_bytes: 0,
        }
    }

    /// Whether the final chunk and trailers were read.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Decodes from `input` until a run of body bytes is found, the input ends, or the body ends.
    // Longer than ~100 lines on purpose: one state machine over the chunk grammar (size,
    // extensions, data, CRLF, trailers) that the relay calls for every upstream read; each arm
    // is one RFC 9112 §7.1 production, and the checklist in `http1/mod.rs` maps them to tests.
    pub fn decode(&mut self, input: &[u8]) -> Result<ChunkedStep, ChunkedError> {
        use ChunkState as S;
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            if self.state.in_extension() {
                self.bump_ext()?;
                self.state = self.extension(b)?;
                i += 1;
                continue;
            }
            match self.state {
                S::Size { digits } => {
                    let v = match b {
                        b'0'..=b'9' => b - b'0',
                        b'a'..=b'f' => b - b'a' + 10,
                        b'A'..=b'F' => b - b'A' + 10,
                        b';' | b'\r' | b' ' | b'\t' if digits > 0 => {
                            self.state = match b {
                                b'\r' => S::SizeLf,
                                b';' => S::ExtNameStart,
                                _ => S::ExtBws,
                            };
                            if b != b'\r' {
                                self.bump_ext()?;
                            }
                            i += 1;
                            continue;
                        }
                        _ => return Err(ChunkedError::BadSize),
                    };
                    if digits >= 16 {
                        return Err(ChunkedError::BadSize);
                    }
                    self.size = (self.size << 4) | u64::from(v);
                    self.state = S::Size { digits: digits + 1 };
                    i += 1;
                }
                S::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkedError::BadFraming);
                    }
                    i += 1;
                    self.total = self.total.saturating_add(self.size);
                    if self.total > self.max_total {
                        return Err(ChunkedError::TooLarge);
                    }
                    if self.size == 0 {
                        self.state = S::TrailerStart;
                    } else {
                        self.remaining = self.size;
                        self.state = S::Data;
                    }
                    self.size = 0;
                    self.ext_line_bytes = 0;
                }
                S::Data => {
                    let avail = (input.len() - i) as u64;
                    let take = avail.min(self.remaining) as usize;
                    self.remaining -= take as u64;
                    let mut consumed = i + take;
                    if self.remaining == 0 {
                        // The CRLF after the data, when it came with it (a whole chunk in one
                        // read, the common case), is read now: one call per chunk, not two.
                        if input.get(consumed..consumed + 2) == Some(b"\r\n") {
                            consumed += 2;
                            self.state = S::Size { digits: 0 };
                        } else {
                            self.state = S::DataCr;
                        }
                    }
                    return Ok(ChunkedStep {
                        consumed,
                        data: i..i + take,
                        done: false,
                    });
                }
                S::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkedError::BadFraming);
                    }
                    self.state = S::DataLf;
                    i += 1;
                }
                S::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkedError::BadFraming);
                    }
                    self.state = S::Size { digits: 0 };
                    i += 1;
                }
                S::TrailerStart | S::TrailerName | S::TrailerValue => {
                    self.bump_trailer()?;
                    self.state = match (self.state, b) {
                        (S::TrailerStart, b'\r') => S::FinalLf,
                        // A field name is a token; white space before it is obsolete line
                        // folding, white space before the colon is refused as in a header.
                        (S::TrailerStart | S::TrailerName, _) if super::is_tchar(b) => {
                            S::TrailerName
                        }
                        (S::TrailerName, b':') => S::TrailerValue,
                        (S::TrailerValue, b'\r') => S::TrailerLf,
                        (S::TrailerValue, _) if is_field_value_byte(b) => S::TrailerValue,
                        _ => return Err(ChunkedError::BadTrailer),
                    };
                    i += 1;
                }
                S::TrailerLf => {
                    self.bump_trailer()?;
                    if b != b'\n' {
                        return Err(ChunkedError::BadFraming);
                    }
                    self.state = S::TrailerStart;
                    i += 1;
                }
                S::FinalLf => {
                    if b != b'\n' {
                        return Err(ChunkedError::BadFraming);
                    }
                    self.state = S::Done;
                    return Ok(ChunkedStep {
                        consumed: i + 1,
                        data: 0..0,
                        done: true,
                    });
                }
                S::Done => {
                    return Ok(ChunkedStep {
                        consumed: i,
                        data: 0..0,
                        done: true,
                    })
                }
                _ => return Err(ChunkedError::BadExtension),
            }
        }
        Ok(ChunkedStep {
            consumed: i,
            data: 0..0,
            done: self.state == S::Done,
        })
    }

    /// One byte of `chunk-ext = *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] )`, ending at
    /// the CR of the size line (RFC 9112 §7.1.1). Names and values are checked and ignored.
    fn extension(&self, b: u8) -> Result<ChunkState, ChunkedError> {
        use ChunkState as S;
        let tchar = super::is_tchar(b);
        Ok(match (self.state, b) {
            (S::ExtBws | S::ExtNameStart | S::ExtNameBws | S::ExtValueStart, _) if is_ws(b) => {
                self.state
            }
            (S::ExtBws | S::ExtName | S::ExtNameBws | S::ExtValueToken | S::ExtValueEnd, b';') => {
                S::ExtNameStart
            }
            (S::ExtNameStart | S::ExtName, _) if tchar => S::ExtName,
            (S::ExtName | S::ExtNameBws, b'=') => S::ExtValueStart,
            (S::ExtName | S::ExtValueToken | S::ExtValueEnd, b'\r') => S::SizeLf,
            (S::ExtName, _) | (S::ExtValueToken | S::ExtValueEnd, _) if is_ws(b) => {
                if self.state == S::ExtName {
                    S::ExtNameBws
                } else {
                    S::ExtBws
                }
            }
            (S::ExtValueStart | S::ExtValueToken, _) if tchar => S::ExtValueToken,
            (S::ExtValueStart, b'"') => S::ExtQuoted,
            (S::ExtQuoted, b'"') => S::ExtValueEnd,
            (S::ExtQuoted, b'\\') => S::ExtQuotedPair,
            (S::ExtQuoted, _) if is_qdtext(b) => S::ExtQuoted,
            // quoted-pair = "\" ( HTAB / SP / VCHAR / obs-text )
            (S::ExtQuotedPair, _) if b == b'\t' || !b.is_ascii_control() => S::ExtQuoted,
            _ => return Err(ChunkedError::BadExtension),
        })
    }

    fn bump_ext(&mut self) -> Result<(), ChunkedError> {
        self.ext_line_bytes += 1;
        self.ext_bytes += 1;
        if self.ext_line_bytes > MAX_CHUNK_EXT_BYTES
            || self.ext_bytes > MAX_CHUNK_EXT_BYTES.saturating_add(self.total)
        {
            return Err(ChunkedError::ExtensionsTooLong);
        }
        Ok(())
    }

    fn bump_trailer(&mut self) -> Result<(), ChunkedError> {
        self.trailer_bytes += 1;
        if self.trailer_bytes > MAX_TRAILER_BYTES {
            return Err(ChunkedError::TrailersTooLarge);
        }
        Ok(())
    }

    /// Decodes all of `input` and appends the body bytes to `out`; returns the bytes consumed
    /// (less than the input only when the body ended inside it) and whether it ended.
    pub fn decode_into(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(usize, bool), ChunkedError> {
        let mut pos = 0;
        while pos < input.len() {
            let step = self.decode(&input[pos..])?;
            out.extend_from_slice(&input[pos + step.data.start..pos + step.data.end]);
            pos += step.consumed;
            if step.done {
                return Ok((pos, true));
            }
        }
        Ok((pos, self.is_done()))
    }
}

/// Appends one chunk of chunked transfer-coding framing `data` to `out`. Empty data writes
/// nothing (an empty chunk would end the body).
pub fn encode_chunk(data: &[u8], out: &mut Vec<u8>) {
    if data.is_empty() {
        return;
    }
    let mut hex = [0u8; 16];
    let mut n = data.len();
    let mut i = hex.len();
    while n > 0 {
        i -= 1;
        hex[i] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
    }
    out.reserve(hex.len() - i + data.len() + 4);
    out.extend_from_slice(&hex[i..]);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Starts a chunk whose data the caller appends next, then closes with [`end_chunk`]; the size
/// is written afterwards into a fixed-width placeholder (leading zeros are valid hex), so the
/// data is copied once.
pub fn begin_chunk(out: &mut Vec<u8>) -> usize {
    let at = out.len();
    out.extend_from_slice(b"00000000\r\n");
    at
}

/// Finishes the chunk started at `at`; an empty chunk is removed (it would end the body).
pub fn end_chunk(out: &mut Vec<u8>, at: usize) {
    let len = out.len() - at - 10;
    if len == 0 {
        out.truncate(at);
        return;
    }
    debug_assert!(len <= u32::MAX as usize);
    for i in 0..8 {
        out[at + 7 - i] = b"0123456789abcdef"[(len >> (4 * i)) & 0xf];
    }
    out.extend_from_slice(b"\r\n");
}

/// The last chunk of a chunked body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_chunk_is_one_step_its_crlf_included() {
        let mut d = ChunkedDecoder::new(u64::MAX);
        let wire = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        let step = d.decode(wire).unwrap();
        assert_eq!((step.consumed, step.data, step.done), (10, 3..8, false));
        let step = d.decode(&wire[10..]).unwrap();
        assert_eq!((step.consumed, step.data, step.done), (11, 3..9, false));
        let step = d.decode(&wire[21..]).unwrap();
        assert!(step.done && step.data.is_empty() && step.consumed == 5);
        // The CRLF in the next read, or something else there: as before.
        let mut d = ChunkedDecoder::new(u64::MAX);
        assert_eq!(d.decode(b"3\r\nabc").unwrap().consumed, 6);
        assert_eq!(d.decode(b"\r\n").unwrap().consumed, 2);
        let mut d = ChunkedDecoder::new(u64::MAX);
        assert_eq!(d.decode(b"3\r\nabcX\r\n").unwrap().consumed, 6);
        assert_eq!(d.decode(b"X\r\n"), Err(ChunkedError::BadFraming));
    }
}
