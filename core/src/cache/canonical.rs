//! The exact key's normalisation without a JSON tree: one pass over the body's bytes that
//! writes the canonical form (object keys sorted, no whitespace, strings and numbers written
//! as `serde_json` writes a parsed `Value`) into a reused buffer.
//!
//! It gives byte for byte what parsing into a `serde_json::Value` and writing it back
//! canonically gives (the tree path in `key`, kept for Anthropic requests, which are
//! translated first, and for the semantic query), so both paths put a request in the same
//! equality class; a property test in this module compares them on generated bodies. Where
//! the tree path refuses a body, so does this one:
//! - not UTF-8, not JSON, trailing bytes, a control character in a string, a lone surrogate
//!   in a `\u` escape, a number `serde_json` cannot hold (`1e400`), nesting deeper than
//!   `serde_json`'s limit (127 levels), a top-level value that is not an object, or `n` other
//!   than `1` or `null`.
//!
//! Duplicate keys: the last one wins, as in `serde_json`'s map. Numbers: an integer of up to
//! 18 digits (not `-0`) is already canonical and copied; any other number is parsed and written
//! by `serde_json` itself (`1e2` → `100.0`, `-0` → `-0.0`, `0.0` stays `0.0`), so the two paths
//! cannot disagree. Strings without a backslash are copied (they hold nothing `serde_json`
//! escapes); a string with one is unescaped and escaped again as `serde_json` does (`\u0041` →
//! `A`, `\/` → `/`, a control character as `\n` or `\u001f`).
//!
//! Cost: one UTF-8 check of the body, one scan, and one copy of each object whose keys are
//! not already in order (the members are reordered through a scratch buffer); no allocation
//! once the buffers have grown (see [`Canonical`]).

use serde_json::Value;

/// Top-level request fields that do not change the answer (see `key`), and `n`.
const SKIPPED: [&[u8]; 6] = [
    b"user",
    b"stream",
    b"stream_options",
    b"metadata",
    b"model",
    b"n",
];
/// `serde_json`'s recursion limit: it refuses a 128th level of nesting.
const MAX_DEPTH: usize = 127;
/// Buffers keep at most this much capacity between requests (a 10 MB body grows them once).
const KEEP_CAPACITY: usize = 1 << 20;

/// Reused buffers of the canonical writer: the output, the decoded keys of the objects being
/// read, their members' places, and the scratch an object is reordered through.
#[derive(Debug, Default)]
pub struct Canonical {
    /// The canonical form written by the last [`Canonical::write_request`].
    pub out: Vec<u8>,
    keys: Vec<u8>,
    members: Vec<Member>,
    tmp: Vec<u8>,
}

/// One member of an object being read: `"key":value` at `text` in `out` (without a comma),
/// its decoded key at `key` in `keys`.
#[derive(Clone, Copy, Debug)]
struct Member {
    text: (usize, usize),
    key: (usize, usize),
}

impl Canonical {
    /// Writes the canonical form of the request object `body` without the fields that do not
    /// change the answer into [`Canonical::out`]; `None` when the tree path would not key it
    /// (see the module docs).
    pub fn write_request(&mut self, body: &[u8]) -> Option<()> {
        self.out.clear();
        self.keys.clear();
        self.members.clear();
        let done = self.request(body);
        for buf in [&mut self.out, &mut self.keys, &mut self.tmp] {
            if buf.capacity() > KEEP_CAPACITY {
                if done.is_none() {
                    *buf = Vec::new();
                } else {
                    buf.shrink_to(KEEP_CAPACITY.max(buf.len()));
                }
            }
        }
        if self.members.capacity() > KEEP_CAPACITY / 32 {
            self.members = Vec::new();
        }
        done
    }

    fn request(&mut self, body: &[u8]) -> Option<()> {
        // Invalid UTF-8 is refused by the tree path wherever it is (in a string, or as a syntax
        // error elsewhere): checking it once here lets the scan copy strings as they are.
        std::str::from_utf8(body).ok()?;
        let mut p = Parser { b: body, i: 0 };
        p.skip_ws();
        if p.peek()? != b'{' {
            return None;
        }
        p.object(self, 1, true)?;
        p.skip_ws();
        (p.i == body.len()).then_some(())
    }
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    fn expect(&mut self, c: u8) -> Option<()> {
        self.skip_ws();
        (self.peek()? == c).then(|| self.i += 1)
    }

    fn value(&mut self, c: &mut Canonical, depth: usize) -> Option<()> {
        self.skip_ws();
        match self.peek()? {
            b'{' => self.object(c, depth + 1, false),
            b'[' => self.array(c, depth + 1),
            b'"' => self.string(&mut c.out),
            b't' => self.literal(&mut c.out, b"true"),
            b'f' => self.literal(&mut c.out, b"false"),
            b'n' => self.literal(&mut c.out, b"null"),
            b'-' | b'0'..=b'9' => self.number(&mut c.out),
            _ => None,
        }
    }

    fn literal(&mut self, out: &mut Vec<u8>, word: &[u8]) -> Option<()> {
        let end = self.i + word.len();
        (self.b.get(self.i..end)? == word).then_some(())?;
        out.extend_from_slice(word);
        self.i = end;
        Some(())
    }

    fn array(&mut self, c: &mut Canonical, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.i += 1;
        c.out.push(b'[');
        self.skip_ws();
        if self.peek()? == b']' {
            self.i += 1;
            c.out.push(b']');
            return Some(());
        }
        loop {
            self.value(c, depth)?;
            self.skip_ws();
            match self.peek()? {
                b',' => {
                    self.i += 1;
                    c.out.push(b',');
                }
                b']' => {
                    self.i += 1;
                    c.out.push(b']');
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// An object: each member is written as it comes (`"key":value`, commas between), its
    /// decoded key kept aside; then, unless the keys came sorted and unique (and nothing is
    /// skipped), the members are written again in key order through the scratch buffer.
    fn object(&mut self, c: &mut Canonical, depth: usize, top: bool) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.i += 1;
        c.out.push(b'{');
        let start = c.out.len();
        let first_member = c.members.len();
        let first_key = c.keys.len();
        let mut in_order = true;
        self.skip_ws();
        if self.peek()? == b'}' {
            self.i += 1;
            c.out.push(b'}');
            return Some(());
        }
        loop {
            self.skip_ws();
            if self.peek()? != b'"' {
                return None;
            }
            if c.members.len() > first_member {
                c.out.push(b',');
            }
            let text_start = c.out.len();
            let key_start = c.keys.len();
            self.key(c)?;
            let key = (key_start, c.keys.len());
            self.expect(b':')?;
            c.out.push(b':');
            self.value(c, depth)?;
            if let Some(prev) = c.members.last().filter(|_| c.members.len() > first_member) {
                let prev_key = c.keys.get(prev.key.0..prev.key.1)?;
                in_order &= prev_key < c.keys.get(key.0..key.1)?;
            }
            c.members.push(Member {
                text: (text_start, c.out.len()),
                key,
            });
            self.skip_ws();
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    break;
                }
                _ => return None,
            }
        }
        let result = if in_order && !top {
            c.out.push(b'}');
            Some(())
        } else {
            reorder(c, start, first_member, top)
        };
        c.members.truncate(first_member);
        c.keys.truncate(first_key);
        result
    }

    /// A key: decoded into `keys`, written canonically into `out`.
    fn key(&mut self, c: &mut Canonical) -> Option<()> {
        let start = c.keys.len();
        self.unescape(&mut c.keys, false)?;
        let decoded = c.keys.get(start..)?;
        c.out.push(b'"');
        if decoded.iter().any(|&b| needs_escape(b)) {
            write_escaped(decoded, &mut c.out);
        } else {
            c.out.extend_from_slice(decoded);
        }
        c.out.push(b'"');
        Some(())
    }

    /// A string value, written canonically: copied when it has no escape, otherwise unescaped
    /// and escaped again as `serde_json` writes strings, in one pass.
    fn string(&mut self, out: &mut Vec<u8>) -> Option<()> {
        let start = self.i;
        let end = scan_string(self.b, start + 1);
        if self.b.get(end) == Some(&b'"') {
            out.extend_from_slice(self.b.get(start..=end)?);
            self.i = end + 1;
            return Some(());
        }
        out.push(b'"');
        self.unescape(out, true)?;
        out.push(b'"');
        Some(())
    }

    /// Reads the string at `self.i` (its opening quote) and appends its text: decoded, or,
    /// when `canonical`, decoded and escaped again as `serde_json` escapes (the plain runs
    /// between escapes hold nothing it escapes, so they are copied).
    fn unescape(&mut self, out: &mut Vec<u8>, canonical: bool) -> Option<()> {
        self.i += 1;
        loop {
            let end = scan_string(self.b, self.i);
            out.extend_from_slice(self.b.get(self.i..end)?);
            self.i = end;
            match self.peek()? {
                b'"' => {
                    self.i += 1;
                    return Some(());
                }
                b'\\' => {
                    // The short escapes of what serde_json escapes are already canonical.
                    if canonical {
                        if let Some(e @ (b'"' | b'\\' | b'n' | b't' | b'r' | b'b' | b'f')) =
                            self.b.get(self.i + 1).copied()
                        {
                            out.extend_from_slice(&[b'\\', e]);
                            self.i += 2;
                            continue;
                        }
                    }
                    self.i += 1;
                    let ch = self.escape()?;
                    match u8::try_from(ch) {
                        Ok(b) if canonical && needs_escape(b) => write_escaped(&[b], out),
                        _ => {
                            let mut utf8 = [0u8; 4];
                            out.extend_from_slice(ch.encode_utf8(&mut utf8).as_bytes());
                        }
                    }
                }
                // A control character: serde_json refuses it unescaped.
                _ => return None,
            }
        }
    }

    /// The character an escape stands for (after its backslash).
    fn escape(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.i += 1;
        Some(match c {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => return self.unicode_escape(),
            _ => return None,
        })
    }

    /// `\uXXXX` (after the `u`), with a surrogate pair's second half; a lone surrogate is
    /// refused, as `serde_json` refuses it in a string.
    fn unicode_escape(&mut self) -> Option<char> {
        let n = self.hex4()?;
        match n {
            0xDC00..=0xDFFF => None,
            0xD800..=0xDBFF => {
                if self.b.get(self.i..self.i + 2)? != b"\\u" {
                    return None;
                }
                self.i += 2;
                let n2 = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&n2) {
                    return None;
                }
                char::from_u32((((n - 0xD800) << 10) | (n2 - 0xDC00)) + 0x1_0000)
            }
            _ => char::from_u32(n),
        }
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = self.b.get(self.i..self.i + 4)?;
        let mut n = 0u32;
        for &d in digits {
            n = n * 16 + char::from(d).to_digit(16)?;
        }
        self.i += 4;
        Some(n)
    }

    /// A number (JSON's grammar, as `serde_json` reads it), written as `serde_json` writes
    /// the value it parses to.
    fn number(&mut self, out: &mut Vec<u8>) -> Option<()> {
        let start = self.i;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.i += 1;
        }
        let int_start = self.i;
        match self.peek()? {
            b'0' => {
                self.i += 1;
                // No leading zeros.
                if self.peek().is_some_and(|d| d.is_ascii_digit()) {
                    return None;
                }
            }
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        let int_digits = self.i - int_start;
        let mut integer = true;
        if self.peek() == Some(b'.') {
            self.i += 1;
            self.digits1()?;
            integer = false;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            self.digits1()?;
            integer = false;
        }
        let token = self.b.get(start..self.i)?;
        // An integer that fits u64/i64 is written back as it was read (`-0` is a float in
        // serde_json: `-0.0`).
        if integer && int_digits <= 18 && token != b"-0" {
            out.extend_from_slice(token);
            return Some(());
        }
        let v: Value = serde_json::from_slice(token).ok()?;
        serde_json::to_writer(&mut *out, &v).ok()
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|d| d.is_ascii_digit()) {
            self.i += 1;
        }
    }

    fn digits1(&mut self) -> Option<()> {
        let start = self.i;
        self.digits();
        (self.i > start).then_some(())
    }
}

/// Writes the members of the object whose text starts at `start` (after its `{`) in key order,
/// the last of equal keys only, without the skipped top-level fields; closes it. At the top
/// level, refuses `n` other than `1` or `null`.
fn reorder(c: &mut Canonical, start: usize, first_member: usize, top: bool) -> Option<()> {
    let Canonical {
        out,
        keys,
        members,
        tmp,
    } = c;
    let members = members.get_mut(first_member..)?;
    let key_of = |m: &Member| keys.get(m.key.0..m.key.1).unwrap_or_default();
    // Stable: of equal keys the last read stays last, and it is the one kept.
    members.sort_by(|a, b| key_of(a).cmp(key_of(b)));
    tmp.clear();
    tmp.extend_from_slice(out.get(start..)?);
    out.truncate(start);
    let mut first = true;
    for (i, m) in members.iter().enumerate() {
        let key = key_of(m);
        if members.get(i + 1).is_some_and(|next| key_of(next) == key) {
            continue;
        }
        let text = tmp.get(m.text.0 - start..m.text.1 - start)?;
        if top && SKIPPED.contains(&key) {
            if key == b"n" {
                // The value after `"n":`.
                let value = text.get(4..)?;
                if value != b"1" && value != b"null" {
                    return None;
                }
            }
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        out.extend_from_slice(text);
    }
    out.push(b'}');
    Some(())
}

/// The index of the first byte at or after `i` that ends a plain run in a string (a quote, a
/// backslash or a control character), or `b.len()`. Eight bytes at a time.
fn scan_string(b: &[u8], mut i: usize) -> usize {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    while let Some(chunk) = b.get(i..i + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let w = u64::from_le_bytes(word);
        let zero = |x: u64| x.wrapping_sub(LO) & !x & HI;
        let quote = zero(w ^ (LO * u64::from(b'"')));
        let backslash = zero(w ^ (LO * u64::from(b'\\')));
        let control = w.wrapping_sub(LO * 0x20) & !w & HI;
        // The lowest flagged byte is exact (borrows only flag bytes above a real match).
        let found = quote | backslash | control;
        if found != 0 {
            return i + (found.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&c) = b.get(i) {
        if needs_escape(c) {
            return i;
        }
        i += 1;
    }
    i
}

/// Whether serde_json escapes this byte of a string.
fn needs_escape(b: u8) -> bool {
    b == b'"' || b == b'\\' || b < 0x20
}

/// The bytes of decoded UTF-8 `s` escaped as serde_json escapes them: `\"`, `\\`,
/// `\b \f \n \r \t`, other controls as `\u00xx`.
fn write_escaped(s: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &b in s {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..=0x1f => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]),
            _ => out.push(b),
        }
    }
}

#[cfg(test)]
#[path = "canonical_tests.rs"]
mod tests;
