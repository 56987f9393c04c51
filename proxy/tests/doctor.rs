//! `sluice doctor` run as a real binary on this host, and the systemd units in `tuning/`
//! checked with `systemd-analyze verify` (skipped with a note when systemd-analyze is absent;
//! CI installs the Debian package `systemd`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sluice_proxy::ops::doctor::CHECK_NAMES;

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

fn tuning_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tuning")
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "sluice-doctor-{tag}-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn doctor(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(SLUICE);
    cmd.arg("doctor").args(args);
    cmd.env_remove("SLUICE_DRIVER")
        .env_remove("MONOIO_FORCE_LEGACY_DRIVER");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The line reporting check `name`, e.g. `[warn] open files ...`.
fn line_of<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines().find(|l| {
        l.len() > 7
            && ["[ ok ] ", "[warn] ", "[FAIL] "].contains(&&l[..7])
            && l[7..].starts_with(name)
            && l[7 + name.len()..].starts_with(' ')
    })
}

#[test]
fn doctor_reports_every_check_on_this_host() {
    let out = doctor(&[], &[]);
    let text = stdout(&out);
    println!("{text}");
    let code = out.status.code();
    assert!(
        code == Some(0) || code == Some(1),
        "exit {code:?}\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in CHECK_NAMES {
        assert!(
            line_of(&text, name).is_some(),
            "no line for `{name}`:\n{text}"
        );
    }
    let fails = text.lines().filter(|l| l.starts_with("[FAIL]")).count();
    assert_eq!(
        code == Some(1),
        fails > 0,
        "exit status must be 1 exactly when a check fails"
    );
    // Every warning or failure with a fix shows it on the next line.
    assert!(text.contains(" ok, ") && text.contains(" warn, ") && text.contains(" fail"));
    let lines: Vec<&str> = text.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        if l.starts_with("[ ok ]") {
            let next = lines.get(i + 1).copied().unwrap_or("");
            assert!(
                !next.trim_start().starts_with("fix:"),
                "ok check with a fix: {l}"
            );
        }
    }
}

#[test]
fn doctor_fails_when_io_uring_is_required_but_unavailable() {
    // MONOIO_FORCE_LEGACY_DRIVER makes io_uring detection fail on any host.
    let out = doctor(
        &[],
        &[
            ("SLUICE_DRIVER", "io_uring"),
            ("MONOIO_FORCE_LEGACY_DRIVER", "1"),
        ],
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let line = line_of(&text, "io_uring").unwrap();
    assert!(line.starts_with("[FAIL]"), "{line}");
    assert!(
        text.contains("fix: unset MONOIO_FORCE_LEGACY_DRIVER"),
        "{text}"
    );

    // Under `auto` the same host only warns: workers fall back to epoll.
    let out = doctor(&[], &[("MONOIO_FORCE_LEGACY_DRIVER", "1")]);
    let text = stdout(&out);
    let line = line_of(&text, "io_uring").unwrap();
    assert!(
        line.starts_with("[warn]") && line.contains("epoll"),
        "{line}"
    );
}

#[test]
fn doctor_reads_the_config() {
    let dir = temp_dir("config");
    let cfg = dir.join("sluice.toml");
    std::fs::write(
        &cfg,
        r#"
[server]
listen = "127.0.0.1:443"
workers = 512
driver = "epoll"

[[providers]]
name = "mock"
base_url = "http://127.0.0.1:9000/v1"

[[models]]
name = "m"
deployments = [{ provider = "mock", model = "m" }]
"#,
    )
    .unwrap();
    let out = doctor(&["--config", cfg.to_str().unwrap()], &[]);
    let text = stdout(&out);
    let workers = line_of(&text, "workers").unwrap();
    assert!(
        workers.starts_with("[warn]") && workers.contains("512 workers"),
        "{workers}"
    );
    assert!(text.contains("fix: set `workers = \"auto\"`"), "{text}");
    let io = line_of(&text, "io_uring").unwrap();
    assert!(io.starts_with("[ ok ]"), "{io}");
    assert!(line_of(&text, "listen port").is_some(), "{text}");

    std::fs::write(&cfg, "[server]\nlisten = \"nowhere\"\n").unwrap();
    let out = doctor(&["--config", cfg.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(64), "a refused config exits 64");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The unit keeps what the operations issue asks for.
#[test]
fn unit_has_the_required_settings() {
    let unit = std::fs::read_to_string(tuning_dir().join("sluice.service")).unwrap();
    let directives: Vec<&str> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    for want in [
        "Type=notify",
        "ExecStart=/usr/local/bin/sluice serve --config /etc/sluice/sluice.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "WatchdogSec=30s",
        "Restart=on-failure",
        "KillSignal=SIGTERM",
        "DynamicUser=yes",
        "StateDirectory=sluice",
        "ConfigurationDirectory=sluice",
        "LimitNOFILE=1048576",
        "LimitMEMLOCK=infinity",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service io_uring_setup io_uring_enter io_uring_register",
    ] {
        assert!(directives.contains(&want), "sluice.service lacks `{want}`");
    }
    // The stop timeout must outlast the default drain (30 s).
    let stop = directives
        .iter()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .and_then(|v| v.strip_suffix('s'))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap();
    assert!(
        stop > 30,
        "TimeoutStopSec={stop}s must exceed the 30 s drain"
    );
}

#[test]
fn systemd_analyze_verifies_the_units() {
    let found = Command::new("systemd-analyze").arg("--version").output();
    if !found.is_ok_and(|o| o.status.success()) {
        println!("skipped: systemd-analyze not installed (Debian package `systemd`)");
        return;
    }
    // verify insists that ExecStart's binary exists: point it at the one just built.
    let dir = temp_dir("units");
    let mut paths = Vec::new();
    for name in ["sluice.service", "sluice.socket"] {
        let text = std::fs::read_to_string(tuning_dir().join(name)).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text.replace("/usr/local/bin/sluice", SLUICE)).unwrap();
        paths.push(path);
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&paths)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    // verify exits 0 on unknown keys and some warnings: anything it says about our units fails.
    let ours: Vec<&str> = stderr
        .lines()
        .chain(stdout.lines())
        .filter(|l| l.contains("sluice"))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify: {:?}\n{stdout}\n{stderr}",
        out.status.code()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
