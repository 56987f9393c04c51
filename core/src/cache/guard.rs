//! The lexical guard of the semantic cache: two prompts close in meaning may still ask
//! different things — "is it safe to take 2 tablets" and "is it not safe to take 20 tablets"
//! embed close together. A semantic hit needs both texts to agree on their negations, their
//! numbers and their quoted strings; a candidate that fails is a miss.

/// Words that negate (compared as a count, so "not … not" is not "not").
const NEGATIONS: [&str; 14] = [
    "not", "no", "never", "without", "none", "nobody", "nothing", "neither", "nor", "nowhere",
    "cannot", "cant", "dont", "isnt",
];

/// What the guard compares of a text.
#[derive(Debug, PartialEq, Eq)]
struct Marks {
    negations: usize,
    numbers: Vec<String>,
    quoted: Vec<String>,
}

fn marks(text: &str) -> Marks {
    let lower = text.to_lowercase();
    let mut negations = 0;
    let mut numbers = Vec::new();
    let mut word = String::new();
    let flush = |word: &mut String, negations: &mut usize| {
        if !word.is_empty() {
            let bare: String = word.chars().filter(|c| *c != '\'' && *c != '’').collect();
            if NEGATIONS.contains(&bare.as_str())
                || (bare.ends_with("nt") && word.contains(['\'', '’']))
            {
                *negations += 1;
            }
            word.clear();
        }
    };
    let mut number = String::new();
    for c in lower.chars() {
        if c.is_ascii_digit() || (c == '.' || c == ',') && !number.is_empty() {
            number.push(c);
        } else if !number.is_empty() {
            numbers.push(canonical_number(&number));
            number.clear();
        }
        if c.is_alphabetic() || c == '\'' || c == '’' {
            word.push(c);
        } else {
            flush(&mut word, &mut negations);
        }
    }
    flush(&mut word, &mut negations);
    if !number.is_empty() {
        numbers.push(canonical_number(&number));
    }
    numbers.sort_unstable();
    let mut quoted = Vec::new();
    for q in ['"', '`', '“'] {
        let close = if q == '“' { '”' } else { q };
        let mut rest = text;
        while let Some(start) = rest.find(q) {
            let after = &rest[start + q.len_utf8()..];
            match after.find(close) {
                Some(end) => {
                    quoted.push(after[..end].trim().to_lowercase());
                    rest = &after[end + close.len_utf8()..];
                }
                None => break,
            }
        }
    }
    quoted.sort_unstable();
    Marks {
        negations,
        numbers,
        quoted,
    }
}

/// `2`, `2.0`, `2,000` and `2000` read alike; a trailing separator is punctuation.
fn canonical_number(raw: &str) -> String {
    let trimmed = raw.trim_end_matches(['.', ',']);
    let digits: String = trimmed.chars().filter(|c| *c != ',').collect();
    match digits.split_once('.') {
        Some((int, frac)) => {
            let frac = frac.trim_end_matches('0');
            if frac.is_empty() {
                int.trim_start_matches('0').to_owned()
            } else {
                format!("{}.{frac}", int.trim_start_matches('0'))
            }
        }
        None => digits.trim_start_matches('0').to_owned(),
    }
}

/// Whether `a` and `b` agree on negations, numbers and quoted strings.
pub fn agree(a: &str, b: &str) -> bool {
    marks(a) == marks(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negations_numbers_and_quotes_must_agree() {
        assert!(agree(
            "Is it safe to take 2 tablets?",
            "is it safe to take 2 tablets"
        ));
        assert!(!agree(
            "Is it safe to take 2 tablets?",
            "Is it not safe to take 2 tablets?"
        ));
        assert!(!agree(
            "Is it safe to take 2 tablets?",
            "Is it safe to take 20 tablets?"
        ));
        assert!(!agree("Is it safe?", "Isn't it safe?"));
        assert!(!agree(
            r#"Translate "good morning" to French"#,
            r#"Translate "good night" to French"#
        ));
        assert!(agree("It costs 2,000 dollars.", "it costs 2000 dollars"));
        assert!(agree("take 2.0 mg", "take 2 mg"));
        assert!(!agree("a cake without sugar", "a cake with sugar"));
    }
}
