//! A small HTTP/1.1 client connection on monoio, built for load generation.
//!
//! One [`Conn`] is one keep-alive TCP connection with one read buffer that
//! lives as long as the connection. A request is a pre-built [`Bytes`]
//! (head and body, see [`Endpoint::request_bytes`]) written with a refcount
//! clone; the response head is parsed with httparse and the body is decoded
//! in place (`Content-Length`, `chunked`, or read-to-close) and handed to a
//! [`BodySink`] piece by piece, so a request allocates nothing here.
//!
//! The head is capped at [`MAX_HEAD`] bytes; body bytes are consumed as they
//! arrive, so the buffer stays near [`BUF_INIT`].

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use monoio::buf::{IoBufMut, SliceMut};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

/// Largest response head accepted, in bytes.
pub const MAX_HEAD: usize = 64 * 1024;
/// Initial read-buffer capacity of a connection.
pub const BUF_INIT: usize = 16 * 1024;
/// Largest chunk-size or trailer line accepted, in bytes.
const MAX_CHUNK_LINE: usize = 4096;
/// Headers parsed per response head.
const MAX_HEADERS: usize = 64;

/// Where requests go: the socket address, the `Host` header and the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The resolved address to connect to.
    pub addr: SocketAddr,
    /// The `host[:port]` authority, sent as `Host`.
    pub authority: String,
    /// The request target (path and query), at least `/`.
    pub path: String,
}

impl Endpoint {
    /// Parses and resolves an `http://host[:port][/path]` URL.
    pub fn parse(url: &str) -> io::Result<Self> {
        let bad = |why: &str| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad URL {url:?}: {why}"),
            )
        };
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| bad("only http:// is supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err(bad("missing host"));
        }
        let with_port = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        let addr = with_port
            .to_socket_addrs()
            .map_err(|e| bad(&e.to_string()))?
            .next()
            .ok_or_else(|| bad("host resolves to no address"))?;
        Ok(Self {
            addr,
            authority: authority.to_owned(),
            path: path.to_owned(),
        })
    }

    /// Builds the complete request (`POST`, or `GET` when `body` is empty)
    /// once, to be written for every request. `headers` are `(name, value)`
    /// pairs added after `Host`, `Content-Type` and `Content-Length`.
    pub fn request_bytes(&self, headers: &[(String, String)], body: &[u8]) -> Bytes {
        let mut out = BytesMut::with_capacity(256 + body.len());
        let method = if body.is_empty() { "GET" } else { "POST" };
        out.put_slice(
            format!(
                "{method} {} HTTP/1.1\r\nHost: {}\r\n",
                self.path, self.authority
            )
            .as_bytes(),
        );
        let has = |n: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
        if !body.is_empty() {
            if !has("content-type") {
                out.put_slice(b"Content-Type: application/json\r\n");
            }
            out.put_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
        }
        if !has("accept") {
            out.put_slice(b"Accept: */*\r\n");
        }
        for (k, v) in headers {
            out.put_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        out.put_slice(b"\r\n");
        out.put_slice(body);
        out.freeze()
    }
}

/// Why a request on a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The peer closed the connection before sending any response byte
    /// (typical of a stale keep-alive connection, so retryable once).
    #[error("connection closed before the response")]
    ClosedEarly,
    /// Reading or writing failed, or the peer closed mid-response.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The response broke HTTP/1.1 framing or a size limit.
    #[error("protocol: {0}")]
    Protocol(&'static str),
    /// The body sink refused the body (for example an oversized SSE line).
    #[error("body: {0}")]
    Body(&'static str),
}

/// Receives a response as it arrives. `now` is read once per socket read.
pub trait BodySink {
    /// The response head was parsed (interim 1xx heads are skipped).
    fn on_head(&mut self, status: u16, now: Instant);
    /// A piece of the decoded body arrived.
    fn on_body(&mut self, data: &[u8], now: Instant) -> Result<(), &'static str>;
}

/// How a finished response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    /// The final status code.
    pub status: u16,
    /// Whether the connection can carry another request.
    pub keep_alive: bool,
    /// Decoded body bytes.
    pub body_bytes: u64,
}

/// One keep-alive HTTP/1.1 connection.
///
/// Invariant: `buf[pos..]` holds received bytes not yet consumed; between
/// requests it is empty unless the server sent bytes we did not ask for.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    pos: usize,
    served: u64,
}

impl Conn {
    /// Connects with `TCP_NODELAY`.
    pub async fn connect(addr: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect_addr(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(BUF_INIT),
            pos: 0,
            served: 0,
        })
    }

    /// Whether this connection already completed a request (so a close
    /// before the response is likely a keep-alive race, not a failure).
    pub fn is_reused(&self) -> bool {
        self.served > 0
    }

    /// Sends `request` and reads the whole response into `sink`.
    ///
    /// Cancel-safe only in the sense that a dropped future leaves the
    /// connection unusable: drop the `Conn` too (the read buffer may be gone).
    pub async fn request<S: BodySink>(
        &mut self,
        request: Bytes,
        sink: &mut S,
    ) -> Result<Response, ClientError> {
        let (res, _) = self.stream.write_all(request).await;
        if let Err(e) = res {
            return Err(if self.is_reused() {
                ClientError::ClosedEarly
            } else {
                ClientError::Io(e)
            });
        }
        let mut got_bytes = self.pos < self.buf.len();
        let (status, mut framing, keep_alive) = loop {
            if let Some(head) = self.parse_head()? {
                if (100..200).contains(&head.0) && head.0 != 101 {
                    continue; // interim response (100 Continue, 103 Early Hints)
                }
                break head;
            }
            if self.buf.len() - self.pos >= MAX_HEAD {
                return Err(ClientError::Protocol("response head too large"));
            }
            if self.fill().await? == 0 {
                return Err(if got_bytes {
                    io_eof().into()
                } else {
                    ClientError::ClosedEarly
                });
            }
            got_bytes = true;
        };
        let mut now = Instant::now();
        sink.on_head(status, now);
        let mut body_bytes = 0u64;
        loop {
            let (consumed, piece, done) = framing.decode(&self.buf[self.pos..])?;
            if let Some((start, len)) = piece {
                let at = self.pos + start;
                sink.on_body(&self.buf[at..at + len], now)
                    .map_err(ClientError::Body)?;
                body_bytes += len as u64;
            }
            self.pos += consumed;
            if done {
                break;
            }
            if consumed == 0 {
                if self.fill().await? == 0 {
                    if matches!(framing, Framing::Close) {
                        break;
                    }
                    return Err(io_eof().into());
                }
                now = Instant::now();
            }
        }
        self.served += 1;
        let keep_alive = keep_alive && !matches!(framing, Framing::Close);
        Ok(Response {
            status,
            keep_alive,
            body_bytes,
        })
    }

    /// Parses a complete response head at `buf[pos..]`, consuming it.
    /// Returns `(status, framing, keep_alive)`.
    fn parse_head(&mut self) -> Result<Option<(u16, Framing, bool)>, ClientError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        let n = match resp.parse(&self.buf[self.pos..]) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(ClientError::Protocol("too many response headers"))
            }
            Err(_) => return Err(ClientError::Protocol("malformed response head")),
        };
        let status = resp.code.ok_or(ClientError::Protocol("missing status"))?;
        let mut keep_alive = resp.version == Some(1);
        let mut length: Option<u64> = None;
        let mut chunked = false;
        for h in resp.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                let v = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .ok_or(ClientError::Protocol("bad Content-Length"))?;
                if length.is_some_and(|l| l != v) {
                    return Err(ClientError::Protocol("conflicting Content-Length"));
                }
                length = Some(v);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = last_token_is(h.value, b"chunked");
            } else if h.name.eq_ignore_ascii_case("connection") {
                if contains_token(h.value, b"close") {
                    keep_alive = false;
                } else if contains_token(h.value, b"keep-alive") {
                    keep_alive = true;
                }
            }
        }
        self.pos += n;
        let framing = if status == 204 || status == 304 || (100..200).contains(&status) {
            Framing::Length(0)
        } else if chunked {
            Framing::Chunked(Chunk::Size)
        } else if let Some(l) = length {
            Framing::Length(l)
        } else {
            Framing::Close
        };
        Ok(Some((status, framing, keep_alive)))
    }

    /// Reads more bytes after `buf[..len]`, first dropping consumed bytes and
    /// growing the buffer (up to [`MAX_HEAD`] plus slack) only when full.
    async fn fill(&mut self) -> io::Result<usize> {
        if self.pos > 0 {
            self.buf.copy_within(self.pos.., 0);
            self.buf.truncate(self.buf.len() - self.pos);
            self.pos = 0;
        }
        if self.buf.len() == self.buf.capacity() {
            if self.buf.capacity() >= MAX_HEAD + BUF_INIT {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "response buffer limit",
                ));
            }
            self.buf.reserve(self.buf.capacity());
        }
        let buf = std::mem::take(&mut self.buf);
        let start = buf.len();
        let (res, slice): (io::Result<usize>, SliceMut<Vec<u8>>) =
            self.stream.read(buf.slice_mut(start..)).await;
        self.buf = slice.into_inner();
        res
    }
}

fn io_eof() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "connection closed mid-response",
    )
}

fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(|t| t.trim_ascii())
}

fn contains_token(value: &[u8], token: &[u8]) -> bool {
    tokens(value).any(|t| t.eq_ignore_ascii_case(token))
}

fn last_token_is(value: &[u8], token: &[u8]) -> bool {
    tokens(value)
        .last()
        .is_some_and(|t| t.eq_ignore_ascii_case(token))
}

/// Response body framing, decoded without copying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// `Content-Length`: bytes still to come.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked(Chunk),
    /// No length: the body ends when the server closes.
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data: bytes still to come.
    Data(u64),
    /// Expecting the CRLF after chunk data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailer,
}

/// `(consumed, Some((offset, len)) of a body piece in input, done)`.
type Step = (usize, Option<(usize, usize)>, bool);

impl Framing {
    /// Decodes one step from `input`. `consumed == 0` with no piece and not
    /// done means more input is needed.
    fn decode(&mut self, input: &[u8]) -> Result<Step, ClientError> {
        match self {
            Framing::Length(0) => Ok((0, None, true)),
            Framing::Length(rem) => {
                let n = (*rem).min(input.len() as u64) as usize;
                *rem -= n as u64;
                Ok((n, (n > 0).then_some((0, n)), *rem == 0))
            }
            Framing::Close => Ok((
                input.len(),
                (!input.is_empty()).then_some((0, input.len())),
                false,
            )),
            Framing::Chunked(state) => decode_chunked(state, input),
        }
    }
}

fn decode_chunked(state: &mut Chunk, input: &[u8]) -> Result<Step, ClientError> {
    let need_line = |input: &[u8]| -> Result<Option<usize>, ClientError> {
        match memchr::memchr(b'\n', input) {
            Some(i) => Ok(Some(i)),
            None if input.len() > MAX_CHUNK_LINE => {
                Err(ClientError::Protocol("chunk line too long"))
            }
            None => Ok(None),
        }
    };
    match *state {
        Chunk::Size => {
            let Some(i) = need_line(input)? else {
                return Ok((0, None, false));
            };
            let line = input[..i].strip_suffix(b"\r").unwrap_or(&input[..i]);
            let hex = line
                .split(|&b| b == b';')
                .next()
                .unwrap_or(line)
                .trim_ascii();
            let size = std::str::from_utf8(hex)
                .ok()
                .filter(|h| !h.is_empty())
                .and_then(|h| u64::from_str_radix(h, 16).ok())
                .ok_or(ClientError::Protocol("bad chunk size"))?;
            *state = if size == 0 {
                Chunk::Trailer
            } else {
                Chunk::Data(size)
            };
            Ok((i + 1, None, false))
        }
        Chunk::Data(rem) => {
            let n = rem.min(input.len() as u64) as usize;
            *state = if rem == n as u64 {
                Chunk::DataEnd
            } else {
                Chunk::Data(rem - n as u64)
            };
            Ok((n, (n > 0).then_some((0, n)), false))
        }
        Chunk::DataEnd => match input {
            [b'\r', b'\n', ..] => {
                *state = Chunk::Size;
                Ok((2, None, false))
            }
            [b'\n', ..] => {
                *state = Chunk::Size;
                Ok((1, None, false))
            }
            [] | [b'\r'] => Ok((0, None, false)),
            _ => Err(ClientError::Protocol("missing CRLF after chunk")),
        },
        Chunk::Trailer => {
            let Some(i) = need_line(input)? else {
                return Ok((0, None, false));
            };
            let empty = input[..i]
                .strip_suffix(b"\r")
                .unwrap_or(&input[..i])
                .is_empty();
            Ok((i + 1, None, empty))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` split at every point, as two reads would deliver it.
    fn decode_all(framing: Framing, input: &[u8]) -> Result<Vec<u8>, ClientError> {
        let mut f = framing;
        let mut out = Vec::new();
        let mut buf = Vec::new();
        let mut pos = 0;
        for byte in input {
            buf.push(*byte);
            loop {
                let (c, piece, done) = f.decode(&buf[pos..])?;
                if let Some((s, l)) = piece {
                    out.extend_from_slice(&buf[pos + s..pos + s + l]);
                }
                pos += c;
                if done {
                    return Ok(out);
                }
                if c == 0 {
                    break;
                }
            }
        }
        Err(ClientError::Protocol("incomplete"))
    }

    #[test]
    fn chunked_byte_by_byte() {
        let body = b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: 1\r\n\r\n";
        assert_eq!(
            decode_all(Framing::Chunked(Chunk::Size), body).unwrap(),
            b"hello, world"
        );
        assert!(decode_all(Framing::Chunked(Chunk::Size), b"zz\r\n").is_err());
        assert!(decode_all(Framing::Chunked(Chunk::Size), b"1\r\nab").is_err());
    }

    #[test]
    fn content_length() {
        assert_eq!(decode_all(Framing::Length(3), b"abc").unwrap(), b"abc");
    }

    #[test]
    fn endpoint_and_request() {
        let e = Endpoint::parse("http://127.0.0.1:9/v1/chat/completions").unwrap();
        assert_eq!(
            (e.authority.as_str(), e.path.as_str()),
            ("127.0.0.1:9", "/v1/chat/completions")
        );
        assert_eq!(Endpoint::parse("http://127.0.0.1:9").unwrap().path, "/");
        assert!(Endpoint::parse("https://x").is_err());
        let req = e.request_bytes(&[("Authorization".into(), "Bearer k".into())], b"{}");
        let text = std::str::from_utf8(&req).unwrap();
        assert!(text.starts_with("POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:9\r\n"));
        assert!(
            text.contains("Content-Length: 2\r\n")
                && text.ends_with("Authorization: Bearer k\r\n\r\n{}")
        );
    }
}
