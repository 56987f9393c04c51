//! The command line: `check-config` and refusing a bad config before binding any port.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use common::*;

fn sluice() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
}

#[test]
fn check_config_prints_what_would_be_served() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/mock.toml");
    let out = sluice().args(["check-config", example]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("model mock-fast -> mock/mock-model"),
        "{text}"
    );
    assert!(
        text.contains("model mock-stream -> mock/mock-stream-model"),
        "{text}"
    );
    assert!(text.contains("config ok"), "{text}");
}

#[test]
fn every_example_config_is_valid() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            // examples/fleet.toml reads its PostgreSQL URL from the environment.
            let out = sluice()
                .arg("check-config")
                .arg(&path)
                .env("SLUICE_PG_URL", "postgres://sluice@127.0.0.1:5432/sluice")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 2,
        "examples/ should hold the mock and resilience configs"
    );
}

#[test]
fn bad_config_fails_with_the_path_and_exit_64() {
    let dir = std::env::temp_dir();
    let cases = [
        ("[server]\nlisten = \"127.0.0.1:1\"\nbogus = 1\n", "bogus"),
        ("[server]\nworkers = 0\n", "server.workers"),
        (
            "[[providers]]\nname = \"p\"\nbase_url = \"http://x\"\napi_key = \"sk-inline-secret\"\n",
            "providers[0].api_key",
        ),
        (
            "[[models]]\nname = \"m\"\ndeployments = [{ provider = \"nope\", model = \"x\" }]\n",
            "models[0].deployments[0].provider",
        ),
    ];
    for (i, (text, needle)) in cases.iter().enumerate() {
        let path = dir.join(format!("sluice-bad-{}-{i}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        for sub in [&["check-config"][..], &["serve", "--config"][..]] {
            let out = sluice().args(sub).arg(&path).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(64), "{sub:?} {text}: {err}");
            assert!(
                err.contains(needle),
                "{sub:?}: `{err}` does not name `{needle}`"
            );
            assert!(
                !err.contains("sk-inline-secret"),
                "the secret was echoed: {err}"
            );
        }
        let _ = std::fs::remove_file(path);
    }
}

#[test]
fn env_overrides_apply_and_an_unknown_one_is_refused_with_its_name() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/mock.toml");
    let out = sluice()
        .args(["check-config", example])
        .env("SLUICE__SERVER__LISTEN", "127.0.0.1:18099")
        .env("SLUICE__SERVER__WORKERS", "3")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("listen 127.0.0.1:18099 (3 workers"), "{text}");

    for sub in [&["check-config"][..], &["serve", "--config"][..]] {
        let out = sluice()
            .args(sub)
            .arg(example)
            .env("SLUICE__SERVER__LISTN", "127.0.0.1:1")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{sub:?}: {err}");
        assert!(err.contains("SLUICE__SERVER__LISTN"), "{sub:?}: {err}");
    }
}

#[test]
fn connections_over_the_limit_get_503() {
    let mock = mock();
    let gw = Gateway::start(
        &config(mock.addr(), "max_connections_per_worker = 2", ""),
        driver_name(true),
    );
    let mut a = gw.connect();
    let mut b = gw.connect();
    assert_eq!(a.get("/healthz").status, 200);
    assert_eq!(b.get("/healthz").status, 200);
    let mut c = gw.connect();
    let r = c.read_response();
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.error_code(), "overloaded");
    drop(a);
    assert!(eventually(std::time::Duration::from_secs(2), || {
        let mut d = gw.connect();
        d.get("/healthz").status == 200
    }));
}
