//! Response compression (`proxy/src/request/compress.rs`): gzip (flate2, miniz_oxide), brotli
//! and zstd at a few levels, on the answers worth compressing:
//!
//! - `embeddings_1mb`: a realistic 1 MB embeddings answer (`encoding_format: "float"`):
//!   1536-dimension vectors of pseudo-random f32 values printed as OpenAI prints them
//!   (`-0.006929283495992422`);
//! - `embeddings_b64_1mb`: the same vectors as base64 (what the openai SDKs ask for by
//!   default): packed floats, which compress far less;
//! - `chat_64k`: a 64 KiB chat completion of English-like text.
//!
//! Criterion reports MiB/s of input; the compressed size and ratio of each case are printed
//! once before it runs. The levels the gateway uses by default are chosen from these figures
//! (see the README's `[server.compression]`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::io::Write;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

/// A small deterministic generator (xorshift64*), so the fixtures are the same every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Roughly normal, mean 0, standard deviation about 0.025 (what unit-norm 1536-d
    /// embeddings look like).
    fn component(&mut self) -> f32 {
        let sum: f64 = (0..4)
            .map(|_| (self.next() >> 11) as f64 / (1u64 << 53) as f64)
            .sum();
        ((sum - 2.0) * 0.043) as f32
    }
}

const DIMS: usize = 1536;

fn vectors(n: usize) -> Vec<Vec<f32>> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    (0..n)
        .map(|_| (0..DIMS).map(|_| rng.component()).collect())
        .collect()
}

fn embeddings_answer(data: &[String]) -> Vec<u8> {
    let mut out = b"{\"object\":\"list\",\"data\":[".to_vec();
    for (i, e) in data.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write!(
            out,
            "{{\"object\":\"embedding\",\"index\":{i},\"embedding\":{e}}}"
        )
        .unwrap();
    }
    out.extend_from_slice(
        b"],\"model\":\"text-embedding-3-small\",\"usage\":{\"prompt_tokens\":4096,\"total_tokens\":4096}}",
    );
    out
}

/// About `target` bytes of float embeddings.
fn embeddings_float(target: usize) -> Vec<u8> {
    let mut data = Vec::new();
    let mut out = Vec::new();
    for v in vectors(64) {
        let parts: Vec<String> = v.iter().map(|x| format!("{}", f64::from(*x))).collect();
        data.push(format!("[{}]", parts.join(",")));
        out = embeddings_answer(&data);
        if out.len() >= target {
            break;
        }
    }
    out
}

/// About `target` bytes of base64 embeddings.
fn embeddings_base64(target: usize) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut data = Vec::new();
    let mut out = Vec::new();
    for v in vectors(256) {
        let raw: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        let mut b64 = String::from("\"");
        for chunk in raw.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                b64.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
            for _ in chunk.len()..3 {
                b64.push('=');
            }
        }
        b64.push('"');
        data.push(b64);
        out = embeddings_answer(&data);
        if out.len() >= target {
            break;
        }
    }
    out
}

/// A chat completion of about `target` bytes of English-like text.
fn chat_answer(target: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "the",
        "model",
        "answer",
        "request",
        "gateway",
        "of",
        "and",
        "to",
        "a",
        "in",
        "is",
        "that",
        "for",
        "it",
        "with",
        "as",
        "was",
        "on",
        "be",
        "at",
        "by",
        "this",
        "have",
        "from",
        "or",
        "one",
        "had",
        "not",
        "but",
        "what",
        "all",
        "were",
        "when",
        "we",
        "there",
        "can",
        "an",
        "your",
        "which",
        "their",
        "said",
        "if",
        "do",
        "will",
        "each",
        "about",
        "how",
        "up",
        "out",
        "them",
        "then",
        "she",
        "many",
        "some",
        "so",
        "these",
        "would",
        "other",
        "into",
        "has",
        "more",
        "her",
        "two",
        "like",
        "him",
        "see",
        "time",
        "could",
        "no",
        "make",
        "than",
        "first",
        "been",
        "its",
        "who",
        "now",
        "people",
        "my",
        "made",
        "over",
        "did",
        "down",
        "only",
        "way",
        "find",
        "use",
        "may",
        "water",
        "long",
        "little",
        "very",
        "after",
        "words",
        "called",
        "just",
        "where",
        "most",
        "know",
        "latency",
        "throughput",
        "compression",
        "token",
        "stream",
        "function",
        "value",
    ];
    let mut rng = Rng(42);
    let mut text = String::new();
    let mut sentence = 0;
    while text.len() < target {
        let w = WORDS[(rng.next() % WORDS.len() as u64) as usize];
        if sentence == 0 {
            let mut c = w.chars();
            text.extend(c.next().map(|f| f.to_ascii_uppercase()));
            text.push_str(c.as_str());
        } else {
            text.push_str(w);
        }
        sentence += 1;
        if sentence > 6 && rng.next().is_multiple_of(8) {
            text.push_str(if rng.next().is_multiple_of(5) {
                ".\n\n"
            } else {
                ". "
            });
            sentence = 0;
        } else {
            text.push(' ');
        }
    }
    let content = serde_json::to_string(&text).unwrap();
    format!(
        "{{\"id\":\"chatcmpl-9x\",\"object\":\"chat.completion\",\"created\":1700000000,\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"message\":{{\"role\":\"assistant\",\"content\":{content}}},\"logprobs\":null,\"finish_reason\":\"stop\"}}],\"usage\":{{\"prompt_tokens\":12,\"completion_tokens\":16000,\"total_tokens\":16012}}}}"
    )
    .into_bytes()
}

fn gzip(body: &[u8], level: u32) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::new(level),
    );
    e.write_all(body).unwrap();
    e.finish().unwrap()
}

fn brotli(body: &[u8], level: u32) -> Vec<u8> {
    let params = brotli::enc::BrotliEncoderParams {
        quality: level as i32,
        lgwin: 22,
        size_hint: body.len(),
        ..Default::default()
    };
    let mut out = Vec::with_capacity(body.len() / 4);
    brotli::BrotliCompress(&mut &body[..], &mut out, &params).unwrap();
    out
}

fn zstd(body: &[u8], level: u32) -> Vec<u8> {
    zstd::bulk::compress(body, level as i32).unwrap()
}

type Codec = fn(&[u8], u32) -> Vec<u8>;

fn bench_compress(c: &mut Criterion) {
    let inputs = [
        ("embeddings_1mb", embeddings_float(1 << 20)),
        ("embeddings_b64_1mb", embeddings_base64(1 << 20)),
        ("chat_64k", chat_answer(64 * 1024)),
    ];
    let codecs: [(&str, Codec, &[u32]); 3] = [
        ("gzip", gzip, &[1, 4, 6, 9]),
        ("br", brotli, &[1, 2, 3, 4, 5, 9]),
        ("zstd", zstd, &[1, 3, 6, 9, 19]),
    ];
    for (name, body) in &inputs {
        let mut g = c.benchmark_group(format!("compress_{name}"));
        g.throughput(Throughput::Bytes(body.len() as u64));
        for (codec, f, levels) in &codecs {
            for level in levels.iter() {
                let packed = f(body, *level);
                eprintln!(
                    "ratio {name} {codec}-{level}: {} -> {} bytes ({:.2}x, {:.1} % saved)",
                    body.len(),
                    packed.len(),
                    body.len() as f64 / packed.len() as f64,
                    100.0 * (1.0 - packed.len() as f64 / body.len() as f64),
                );
                g.bench_function(BenchmarkId::new(*codec, level), |b| {
                    b.iter(|| black_box(f(black_box(body), *level)))
                });
            }
        }
        g.finish();
    }
}

criterion_group!(benches, bench_compress);
criterion_main!(benches);
