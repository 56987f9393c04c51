//! Deterministic, meaningful embeddings: a text's lower-cased words and character trigrams
//! hashed (FNV-1a) into a fixed number of dimensions and normalised, so texts that share words
//! are close (cosine near 1) and unrelated texts far (near 0). Enough for a semantic cache to
//! be tested against: paraphrases with shared words match, different questions do not.

/// Dimensions of every vector.
pub(crate) const DIMENSIONS: usize = 256;

fn fnv1a(bytes: &[u8], salt: u8) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ u64::from(salt);
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn add(v: &mut [f32; DIMENSIONS], feature: &[u8], salt: u8, weight: f32) {
    let h = fnv1a(feature, salt);
    let sign = if h >> 63 == 1 { -1.0 } else { 1.0 };
    v[(h % DIMENSIONS as u64) as usize] += sign * weight;
}

/// The embedding of `text`: unit length (all zeros for a text without letters or digits).
pub(crate) fn embed(text: &str) -> [f32; DIMENSIONS] {
    let mut v = [0f32; DIMENSIONS];
    let lower = text.to_lowercase();
    for word in lower
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        add(&mut v, word.as_bytes(), 1, 1.0);
        let padded = format!(" {word} ");
        let chars: Vec<char> = padded.chars().collect();
        for w in chars.windows(3) {
            let gram: String = w.iter().collect();
            add(&mut v, gram.as_bytes(), 2, 0.5);
        }
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        for x in &mut v {
            *x /= norm;
        }
    }
    v
}

/// Appends `v` as a JSON array of floats.
pub(crate) fn push_vector(out: &mut Vec<u8>, v: &[f32]) {
    out.push(b'[');
    for (i, x) in v.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // Six decimals: plenty for a cosine, short on the wire.
        out.extend_from_slice(format!("{x:.6}").as_bytes());
    }
    out.push(b']');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cosine(a: &str, b: &str) -> f32 {
        embed(a).iter().zip(embed(b)).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn paraphrases_are_close_and_strangers_far() {
        let same = cosine("How do I reset my password?", "how do i reset my password");
        assert!(same > 0.99, "{same}");
        let para = cosine(
            "How do I reset my password?",
            "How can I reset my password please?",
        );
        assert!(para > 0.7, "{para}");
        let other = cosine(
            "How do I reset my password?",
            "What is the capital of France?",
        );
        assert!(other < 0.4, "{other}");
        assert_eq!(embed("   "), [0f32; DIMENSIONS]);
    }
}
