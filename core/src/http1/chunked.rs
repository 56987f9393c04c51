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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChunkState {
    /// Reading hex digits of the size.
    Size { digits: u8 },
    /// Inside a chunk extension (`;name=value`), until CR.
    Extension,
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
    /// Inside a trailer line, until CR.
    TrailerLine,
    /// Expecting LF after a trailer line.
    TrailerLf,
    /// Expecting the final LF.
    FinalLf,
    /// The body is complete.
    Done,
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

/// A streaming, strict chunked decoder. It never copies: each call returns where the body bytes
/// are in the input. Feed it every byte in order; it keeps partial size lines in its state.
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
    trailer_bytes: usize,
}

/// Longest trailer section accepted.
const MAX_TRAILER_BYTES: usize = 8 * 1024;

impl ChunkedDecoder {
    /// A decoder refusing bodies larger than `max_total` bytes.
    pub fn new(max_total: u64) -> Self {
        ChunkedDecoder {
            state: ChunkState::Size { digits: 0 },
            size: 0,
            remaining: 0,
            total: 0,
            max_total,
            trailer_bytes: 0,
        }
    }

    /// Whether the final chunk and trailers were read.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Decodes from `input` until a run of body bytes is found, the input ends, or the body ends.
    pub fn decode(&mut self, input: &[u8]) -> Result<ChunkedStep, ChunkedError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                ChunkState::Size { digits } => {
                    let v = match b {
                        b'0'..=b'9' => b - b'0',
                        b'a'..=b'f' => b - b'a' + 10,
                        b'A'..=b'F' => b - b'A' + 10,
                        b';' | b'\r' if digits > 0 => {
                            self.state = if b == b';' {
                                ChunkState::Extension
                            } else {
                                ChunkState::SizeLf
                            };
                            i += 1;
                            continue;
                        }
                        _ => return Err(ChunkedError::BadSize),
                    };
                    if digits >= 16 {
                        return Err(ChunkedError::BadSize);
                    }
                    self.size = (self.size << 4) | u64::from(v);
                    self.state = ChunkState::Size { digits: digits + 1 };
                    i += 1;
                }
                ChunkState::Extension => {
                    match b {
                        b'\r' => self.state = ChunkState::SizeLf,
                        b'\n' => return Err(ChunkedError::BadFraming),
                        _ => {}
                    }
                    i += 1;
                }
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkedError::BadFraming);
                    }
                    i += 1;
                    self.total = self.total.saturating_add(self.size);
                    if self.total > self.max_total {
                        return Err(ChunkedError::TooLarge);
                    }
                    if self.size == 0 {
                        self.state = ChunkState::TrailerStart;
                    } else {
                        self.remaining = self.size;
                        self.state = ChunkState::Data;
                    }
                    self.size = 0;
                }
                ChunkState::Data => {
                    let avail = (input.len() - i) as u64;
                    let take = avail.min(self.remaining) as usize;
                    self.remaining -= take as u64;
                    if self.remaining == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    return Ok(ChunkedStep {
                        consumed: i + take,
                        data: i..i + take,
                        done: false,
                    });
                }
                ChunkState::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkedError::BadFraming);
                    }
                    self.state = ChunkState::DataLf;
                    i += 1;
                }
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkedError::BadFraming);
                    }
                    self.state = ChunkState::Size { digits: 0 };
                    i += 1;
                }
                ChunkState::TrailerStart => {
                    self.state = if b == b'\r' {
                        ChunkState::FinalLf
                    } else {
                        ChunkState::TrailerLine
                    };
                    self.bump_trailer()?;
                    i += 1;
                }
                ChunkState::TrailerLine => {
                    match b {
                        b'\r' => self.state = ChunkState::TrailerLf,
                        b'\n' => return Err(ChunkedError::BadFraming),
                        _ => {}
                    }
                    self.bump_trailer()?;
                    i += 1;
                }
                ChunkState::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkedError::BadFraming);
                    }
                    self.state = ChunkState::TrailerStart;
                    i += 1;
                }
                ChunkState::FinalLf => {
                    if b != b'\n' {
                        return Err(ChunkedError::BadFraming);
                    }
                    self.state = ChunkState::Done;
                    return Ok(ChunkedStep {
                        consumed: i + 1,
                        data: 0..0,
                        done: true,
                    });
                }
                ChunkState::Done => {
                    return Ok(ChunkedStep {
                        consumed: i,
                        data: 0..0,
                        done: true,
                    })
                }
            }
        }
        Ok(ChunkedStep {
            consumed: i,
            data: 0..0,
            done: self.state == ChunkState::Done,
        })
    }

    fn bump_trailer(&mut self) -> Result<(), ChunkedError> {
        self.trailer_bytes += 1;
        if self.trailer_bytes > MAX_TRAILER_BYTES {
            return Err(ChunkedError::TooLarge);
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
