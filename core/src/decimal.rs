//! Integers as decimal text, appended straight to a byte buffer: the numbers of the access
//! line and of the `x-ratelimit-*` head lines, written on every request with keys on.
//!
//! Numbers below 10^4 (statuses, token counts, most byte counts) and below 10^8 (timestamps'
//! microseconds, latencies) are laid out as digit pairs in one word, shifted so the first
//! digit leads, and copied whole (a copy of fixed size, no call to `memcpy`) before the
//! buffer is cut back to the number's length: no loop, and below 10^4 no digit count by
//! `ilog10` either (three comparisons).

/// "00" to "99".
const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
    2021222324252627282930313233343536373839\
    4041424344454647484950515253545556575859\
    6061626364656667686970717273747576777879\
    8081828384858687888990919293949596979899";

/// The two digits of `p` (below 100).
#[inline(always)]
fn pair(p: u32) -> [u8; 2] {
    let i = (p as usize % 100) * 2;
    [PAIRS[i], PAIRS[i + 1]]
}

/// Appends `value` in decimal, zero-padded to at least `width` digits (at most 20 in all).
#[inline(always)]
pub fn push(out: &mut Vec<u8>, value: u64, width: usize) {
    if value < 10_000 && width <= 4 {
        push_4(out, value as u32, width);
    } else if value < 100_000_000 && width <= 8 {
        push_8(out, value as u32, width);
    } else {
        push_20(out, value, width);
    }
}

/// Appends `frac` (above 0, below `10^places`) as the digits after a decimal point: zero-padded
/// to `places` digits (1 to 8), trailing zeros left out (`50` in 3 places is `05`). The
/// trailing zeros are counted in the digits' word at once, not divided off one by one.
#[inline(always)]
pub fn push_fraction(out: &mut Vec<u8>, frac: u64, places: usize) {
    const ZEROS: u64 = u64::from_ne_bytes([b'0'; 8]);
    let places = places.clamp(1, 8);
    let word = u64::from_be_bytes(eight((frac % 100_000_000) as u32));
    // Each trailing '0' is a zero byte at the low end of `word ^ ZEROS`.
    let trailing = ((word ^ ZEROS).trailing_zeros() / 8) as usize;
    let len = places.saturating_sub(trailing).max(1);
    // The last `places` digits, leading.
    let lead = word << (8 * (8 - places));
    let at = out.len();
    out.extend_from_slice(&lead.to_be_bytes());
    out.truncate(at + len);
}

/// Appends the last `len` (1 to 4) of `digits`: shifted so they lead, copied whole, then cut.
#[inline(always)]
fn put_last_4(out: &mut Vec<u8>, digits: [u8; 4], len: usize) {
    let at = out.len();
    let len = len.clamp(1, 4);
    let word = u32::from_be_bytes(digits) << (8 * (4 - len));
    out.extend_from_slice(&word.to_be_bytes());
    out.truncate(at + len);
}

/// Appends the last `len` (1 to 8) of `digits`, as [`put_last_4`] does.
#[inline(always)]
fn put_last_8(out: &mut Vec<u8>, digits: [u8; 8], len: usize) {
    let at = out.len();
    let len = len.clamp(1, 8);
    let word = u64::from_be_bytes(digits) << (8 * (8 - len));
    out.extend_from_slice(&word.to_be_bytes());
    out.truncate(at + len);
}

/// Below 10^4, at most 4 digits of padding.
#[inline(always)]
fn push_4(out: &mut Vec<u8>, v: u32, width: usize) {
    if v < 10 && width <= 1 {
        out.push(b'0' + v as u8);
        return;
    }
    let [a, b] = pair(v / 100);
    let [c, d] = pair(v % 100);
    let count = 1 + usize::from(v >= 10) + usize::from(v >= 100) + usize::from(v >= 1000);
    put_last_4(out, [a, b, c, d], count.max(width));
}

/// Below 10^8, at most 8 digits of padding.
fn push_8(out: &mut Vec<u8>, v: u32, width: usize) {
    let count = v.checked_ilog10().map_or(1, |l| l as usize + 1);
    put_last_8(out, eight(v), count.max(width));
}

/// All 8 digits of `v` (below 10^8), leading zeros included.
#[inline(always)]
fn eight(v: u32) -> [u8; 8] {
    let (hi, lo) = (v / 10_000, v % 10_000);
    let [a, b] = pair(hi / 100);
    let [c, d] = pair(hi % 100);
    let [e, f] = pair(lo / 100);
    let [g, h] = pair(lo % 100);
    [a, b, c, d, e, f, g, h]
}

/// Any `u64`, padded to at most 20 digits: its leading part (below 10^8, or below 10^4 past
/// 10^16) as [`push`] writes it, then each lower group of 8 digits whole (a rate limit of a
/// billion requests and its remaining count are 10 digits).
#[cold]
fn push_20(out: &mut Vec<u8>, value: u64, width: usize) {
    const E8: u64 = 100_000_000;
    let width = width.min(20);
    if value < E8 * E8 {
        push(out, value / E8, width.saturating_sub(8).max(1));
        out.extend_from_slice(&eight((value % E8) as u32));
    } else {
        let rest = value % (E8 * E8);
        push(out, value / (E8 * E8), width.saturating_sub(16).max(1));
        out.extend_from_slice(&eight((rest / E8) as u32));
        out.extend_from_slice(&eight((rest % E8) as u32));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn text(value: u64, width: usize) -> String {
        let mut out = b"x".to_vec();
        push(&mut out, value, width);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn numbers_and_padding_as_format_writes_them() {
        for v in [
            0,
            1,
            9,
            10,
            99,
            100,
            999,
            1000,
            9_999,
            10_000,
            99_999_999,
            100_000_000,
            u64::MAX,
        ] {
            for width in 0..=21 {
                assert_eq!(
                    text(v, width),
                    format!("x{v:0w$}", w = width.min(20)),
                    "{v} {width}"
                );
            }
        }
    }

    #[test]
    fn fractions_keep_their_leading_zeros_and_lose_their_trailing_ones() {
        let frac = |f: u64, places: usize| {
            let mut out = Vec::new();
            push_fraction(&mut out, f, places);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(frac(50, 3), "05");
        assert_eq!(frac(5, 3), "005");
        assert_eq!(frac(500, 3), "5");
        assert_eq!(frac(125, 6), "000125");
        assert_eq!(frac(999_999, 6), "999999");
        assert_eq!(frac(100_000, 6), "1");
        assert_eq!(frac(1, 1), "1");
        assert_eq!(frac(10_000_000, 8), "1");
        assert_eq!(frac(1, 8), "00000001");
    }

    proptest! {
        #[test]
        fn any_number_any_width(v in any::<u64>(), small in 0u64..100_000_000, width in 0usize..22) {
            prop_assert_eq!(text(v, width), format!("x{v:0w$}", w = width.min(20)));
            prop_assert_eq!(text(small, width), format!("x{small:0w$}", w = width.min(20)));
        }

        #[test]
        fn any_fraction(places in 1usize..=8, f in 1u64..100_000_000) {
            let f = f % 10u64.pow(places as u32);
            prop_assume!(f > 0);
            let mut out = Vec::new();
            push_fraction(&mut out, f, places);
            let full = format!("{f:0places$}");
            prop_assert_eq!(String::from_utf8(out).unwrap(), full.trim_end_matches('0'));
        }
    }
}
