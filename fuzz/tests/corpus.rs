//! Replays every seed in `corpus/<target>/` through its target, as rustls'
//! `test_read_fuzz_corpus` does: a corpus input that panics fails `cargo test`.

use std::path::Path;

use sluice_fuzz::{engine, targets};

#[test]
fn replay_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for t in targets::TARGETS {
        let files = engine::read_corpus(&root.join(t.name)).unwrap();
        assert!(!files.is_empty(), "no seeds in corpus/{}", t.name);
        for (path, data) in files {
            eprintln!("replay {}", path.display());
            (t.run)(&data);
        }
    }
}

#[test]
fn every_corpus_dir_is_a_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for entry in std::fs::read_dir(root).unwrap() {
        let name = entry.unwrap().file_name();
        let name = name.to_string_lossy();
        assert!(
            targets::find(&name).is_some(),
            "corpus/{name} names no target"
        );
    }
}

#[test]
fn a_short_blind_run_finds_nothing() {
    // The engine itself: mutants of the seeds, without instrumentation, for a moment each.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for t in targets::TARGETS {
        let seeds = engine::read_corpus(&root.join("corpus").join(t.name))
            .unwrap()
            .into_iter()
            .map(|(_, d)| d)
            .collect();
        let report = engine::fuzz(
            t,
            seeds,
            std::time::Duration::from_millis(200),
            7,
            &std::env::temp_dir().join("sluice-fuzz-artifacts"),
        )
        .unwrap();
        assert!(report.crash.is_none(), "{}: {:?}", t.name, report.crash);
        assert!(report.execs > 0);
    }
}
