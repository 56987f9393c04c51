//! The field table of a parsed head: each field's name and value as offsets into the head's
//! bytes, written after those bytes in the same allocation. A head is then one allocation,
//! not two (its bytes and a `Vec` of ranges), and every request crosses two heads (its own
//! and its upstream's answer).

use std::ops::Range;

/// Where a head's field table starts in its bytes, and how many fields it holds.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FieldTable {
    at: u32,
    len: u32,
}

impl FieldTable {
    /// Bytes per field: the name's start and end, the value's start and end, as `u32`.
    pub(crate) const ENTRY: usize = 16;

    /// Appends the table of `fields` (name and value ranges into `raw`) to `raw`; `None` when
    /// an offset does not fit a `u32` (a head over 4 GiB, which no limit allows).
    pub(crate) fn append(
        raw: &mut Vec<u8>,
        fields: impl ExactSizeIterator<Item = (Range<usize>, Range<usize>)>,
    ) -> Option<Self> {
        let at = u32::try_from(raw.len()).ok()?;
        let len = u32::try_from(fields.len()).ok()?;
        raw.reserve_exact(fields.len() * Self::ENTRY);
        // Offsets point into the head, before `at`, so they fit a `u32` as `at` does (the
        // clamp only keeps a stray one from wrapping).
        let cut = |n: usize| (n.min(at as usize) as u32).to_ne_bytes();
        for (name, value) in fields {
            let mut e = [0u8; Self::ENTRY];
            e[0..4].copy_from_slice(&cut(name.start));
            e[4..8].copy_from_slice(&cut(name.end));
            e[8..12].copy_from_slice(&cut(value.start));
            e[12..16].copy_from_slice(&cut(value.end));
            raw.extend_from_slice(&e);
        }
        Some(FieldTable { at, len })
    }

    /// Where the table starts: the head's bytes end here.
    pub(crate) fn start(&self) -> usize {
        self.at as usize
    }

    /// The fields' (name, value) ranges in `raw`, in order.
    pub(crate) fn iter<'r>(
        &self,
        raw: &'r [u8],
    ) -> impl Iterator<Item = (Range<usize>, Range<usize>)> + 'r {
        let end = self.start() + self.len as usize * Self::ENTRY;
        raw.get(self.start()..end)
            .unwrap_or_default()
            .chunks_exact(Self::ENTRY)
            .map(|e| {
                // As an array, so the four loads need no bounds checks (`chunks_exact` gives
                // exactly `ENTRY` bytes; the fallback is never taken).
                let e = <&[u8; Self::ENTRY]>::try_from(e).unwrap_or(&[0; Self::ENTRY]);
                let n =
                    |k: usize| u32::from_ne_bytes([e[k], e[k + 1], e[k + 2], e[k + 3]]) as usize;
                (n(0)..n(4), n(8)..n(12))
            })
    }

    /// The value of the first field named `name` (ASCII case-insensitive).
    pub(crate) fn find<'r>(&self, raw: &'r [u8], name: &str) -> Option<&'r [u8]> {
        let name = name.as_bytes();
        self.iter(raw)
            .find(|(n, _)| {
                // The length first: most names differ in it, and no slice is made for them.
                n.len() == name.len()
                    && raw
                        .get(n.clone())
                        .is_some_and(|n| n.eq_ignore_ascii_case(name))
            })
            .and_then(|(_, v)| raw.get(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_gives_back_its_ranges_after_the_head() {
        let mut raw = b"a: 1\r\nBee: two\r\n".to_vec();
        let head = raw.len();
        let ranges = vec![(0..1, 3..4), (6..9, 11..14)];
        let t = FieldTable::append(&mut raw, ranges.clone().into_iter()).unwrap();
        assert_eq!(t.start(), head);
        assert_eq!(raw.len(), head + 2 * FieldTable::ENTRY);
        assert_eq!(t.iter(&raw).collect::<Vec<_>>(), ranges);
        assert_eq!(t.find(&raw, "bee"), Some(&b"two"[..]));
        assert_eq!(t.find(&raw, "A"), Some(&b"1"[..]));
        assert_eq!(t.find(&raw, "c"), None);
        let empty = FieldTable::append(&mut Vec::new(), std::iter::empty()).unwrap();
        assert_eq!(empty.iter(&[]).count(), 0);
        assert_eq!(FieldTable::default().find(&raw, "a"), None);
    }
}
