//! A worker's memo of the keys it authenticated last, so a client that sends the same key on
//! every request (all of them do) costs a constant-time comparison instead of a SHA-256 and
//! a map lookup.
//!
//! ```text
//! presented key ─► memo of this worker (same index generation?) ─ hit ─► its entry
//!                        └─ miss ─► SHA-256 ─► index by hash ─► constant-time check ─► remember
//! ```
//!
//! Each slot holds a presented key's bytes and the entry the index gave for them. A lookup
//! compares the presented bytes with every slot's in constant time (the time depends on the
//! lengths only), so it reveals no more than the index lookup did. The memo belongs to the
//! index it was filled from: every key index has its own generation, and
//! a memo that meets another generation (the admin thread swapped in a new index: a key was
//! created, changed, disabled or deleted) forgets everything first. Only keys the index
//! found are remembered, so unknown keys take the full path every time and cannot evict the
//! keys in use for long. Expiry and the disabled flag are checked by the caller on every
//! request, from the entry.
//!
//! The key bytes stay in this thread's memory (as they already are in its request buffer);
//! nothing here is logged or printed (no `Debug`), and they are wiped when replaced.

/// Keys remembered per worker: a few clients' keys at once (more distinct keys than this
/// in turn still work, through the full path).
const SLOTS: usize = 4;

/// Longest key remembered (Sluice's keys are 53 bytes); longer ones take the full path.
const MAX_KEY: usize = 96;

/// One remembered key and what it stands for.
struct Slot<E> {
    len: usize,
    bytes: [u8; MAX_KEY],
    entry: E,
}

/// The keys this worker authenticated last, for one index generation, each with its entry
/// (`E`: the index's `Arc<KeyEntry>`).
pub struct KeyMemo<E> {
    generation: u64,
    slots: [Option<Slot<E>>; SLOTS],
    /// The slot the next new key goes to (round robin).
    next: usize,
}

impl<E> Default for KeyMemo<E> {
    fn default() -> Self {
        KeyMemo {
            generation: 0,
            slots: std::array::from_fn(|_| None),
            next: 0,
        }
    }
}

impl<E: Clone> KeyMemo<E> {
    /// The entry remembered for `key` under index `generation`; forgets everything when the
    /// generation changed.
    pub fn find(&mut self, generation: u64, key: &[u8]) -> Option<&E> {
        if generation != self.generation {
            self.clear();
            self.generation = generation;
            return None;
        }
        if key.len() > MAX_KEY {
            // Never remembered.
            return None;
        }
        // The presented key padded as the slots are, so a slot is compared whole.
        let mut presented = [0u8; MAX_KEY];
        presented[..key.len()].copy_from_slice(key);
        let mut found = None;
        for (i, slot) in self.slots.iter().enumerate() {
            if let Some(s) = slot {
                // Lengths are not secret (every Sluice key has the same); the bytes are
                // compared in constant time.
                if s.len == key.len()
                    && sluice_core::keys::constant_time_eq_words(&s.bytes, &presented)
                {
                    found = Some(i);
                }
            }
        }
        found.and_then(|i| self.slots[i].as_ref()).map(|s| &s.entry)
    }

    /// Remembers that `key` is `entry` under index `generation`.
    pub fn remember(&mut self, generation: u64, key: &[u8], entry: &E) {
        if key.len() > MAX_KEY {
            return;
        }
        if generation != self.generation {
            self.clear();
            self.generation = generation;
        }
        let mut bytes = [0u8; MAX_KEY];
        bytes[..key.len()].copy_from_slice(key);
        let slot = &mut self.slots[self.next];
        wipe(slot);
        *slot = Some(Slot {
            len: key.len(),
            bytes,
            entry: entry.clone(),
        });
        self.next = (self.next + 1) % SLOTS;
    }

    /// Forgets every key.
    pub fn clear(&mut self) {
        for slot in &mut self.slots {
            wipe(slot);
        }
        self.next = 0;
    }
}

/// Overwrites a slot's key bytes, then empties it.
fn wipe<E>(slot: &mut Option<Slot<E>>) {
    if let Some(s) = slot {
        s.bytes.fill(0);
        // The zeroes must be written even though the slot is dropped next.
        std::hint::black_box(&s.bytes);
    }
    *slot = None;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_only_the_same_bytes_of_the_same_generation() {
        let mut memo = KeyMemo::<u32>::default();
        assert!(memo.find(7, b"sk-sluice-a").is_none());
        memo.remember(7, b"sk-sluice-a", &1);
        assert_eq!(memo.find(7, b"sk-sluice-a"), Some(&1));
        // Another key, a prefix, a longer key: not found.
        assert!(memo.find(7, b"sk-sluice-b").is_none());
        assert!(memo.find(7, b"sk-sluice-").is_none());
        assert!(memo.find(7, b"sk-sluice-aa").is_none());
        // Another generation (a new index) empties the memo, even for the same key.
        assert!(memo.find(8, b"sk-sluice-a").is_none());
        assert!(memo.find(7, b"sk-sluice-a").is_none());
        // Remembering under a new generation forgets the old one's keys too.
        memo.remember(7, b"sk-sluice-a", &1);
        memo.remember(9, b"sk-sluice-b", &2);
        assert_eq!(memo.find(9, b"sk-sluice-b"), Some(&2));
        assert!(memo.find(9, b"sk-sluice-a").is_none());
    }

    #[test]
    fn every_byte_counts() {
        let key = b"sk-sluice-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJ".to_vec();
        let mut memo = KeyMemo::<u8>::default();
        memo.remember(1, &key, &1);
        assert_eq!(memo.find(1, &key), Some(&1));
        for i in 0..key.len() {
            let mut other = key.clone();
            other[i] ^= 0x01;
            assert!(memo.find(1, &other).is_none(), "byte {i}");
        }
        // A shorter key whose padding would match is refused by its length.
        let mut zeros = key.clone();
        zeros.push(0);
        memo.remember(1, &zeros, &2);
        assert_eq!(memo.find(1, &key), Some(&1));
        assert_eq!(memo.find(1, &zeros), Some(&2));
        let full = [b'k'; MAX_KEY];
        memo.remember(1, &full, &3);
        assert_eq!(memo.find(1, &full), Some(&3));
    }

    #[test]
    fn keeps_the_last_few_keys_and_skips_long_ones() {
        let keys: Vec<String> = (0..SLOTS + 1).map(|i| format!("sk-sluice-k{i}")).collect();
        let mut memo = KeyMemo::<usize>::default();
        for (i, k) in keys.iter().enumerate() {
            memo.remember(1, k.as_bytes(), &i);
        }
        // The first was replaced by the last; the others are there.
        assert!(memo.find(1, keys[0].as_bytes()).is_none());
        for (i, k) in keys.iter().enumerate().skip(1) {
            assert_eq!(memo.find(1, k.as_bytes()), Some(&i));
        }
        let long = vec![b'x'; MAX_KEY + 1];
        memo.remember(1, &long, &99);
        assert!(memo.find(1, &long).is_none());
    }
}
