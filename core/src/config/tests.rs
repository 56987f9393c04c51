//! Config parsing and validation, from TOML text to errors naming the bad key.

use super::validate::parse_endpoint;
use super::*;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const MOCK: &str = r#"
[server]
listen = "127.0.0.1:8080"
workers = 2

[[providers]]
name = "mock"
base_url = "http://127.0.0.1:9000/v1/"
api_key = "env:MOCK_KEY"
headers = { "x-team" = "search" }

[[models]]
name = "mock-fast"
deployments = [{ provider = "mock", model = "gpt-4o-mini", weight = 3 }]

[[models]]
name = "mock-*"
deployments = [{ provider = "mock", model = "*" }]
"#;

#[test]
fn parses_the_mock_config() {
    let cfg = Config::from_toml(MOCK, &env(&[("MOCK_KEY", "sk-test")])).unwrap();
    assert_eq!(cfg.server.workers, Workers::Count(2));
    assert_eq!(cfg.server.max_header_bytes, 32 * 1024);
    let p = &cfg.providers[0];
    assert_eq!(p.endpoint.path_prefix, "/v1");
    assert_eq!(p.endpoint.host_header, "127.0.0.1:9000");
    assert_eq!(p.api_key.as_ref().unwrap().expose(), "sk-test");
    assert_eq!(format!("{:?}", p.api_key), "Some(Secret(***))");
    assert_eq!(cfg.model("mock-fast").unwrap().deployments[0].weight, 3);
    assert_eq!(cfg.model("mock-other").unwrap().name, "mock-*");
    assert!(cfg.model("gpt-4").is_none());
    assert!(cfg.summary().contains("mock-fast -> mock/gpt-4o-mini"));
    assert!(!cfg.summary().contains("sk-test"));
}

#[test]
fn errors_name_the_path() {
    let e = Config::from_toml("[server]\nlisten = \"x\"\nbogus = 1\n", &env(&[])).unwrap_err();
    assert!(e.0.contains("server"), "{e}");
    let e = Config::from_toml("[server]\nlisten = \"nope\"\n", &env(&[])).unwrap_err();
    assert!(e.0.contains("server.listen"), "{e}");
    let e = Config::from_toml(MOCK, &env(&[])).unwrap_err();
    assert!(
        e.0.contains("providers[0].api_key") && e.0.contains("MOCK_KEY"),
        "{e}"
    );
    let e = Config::from_toml(
        &MOCK.replace("api_key = \"env:MOCK_KEY\"", "api_key = \"sk-inline\""),
        &env(&[]),
    )
    .unwrap_err();
    assert!(
        e.0.contains("never inlined") && !e.0.contains("sk-inline"),
        "{e}"
    );
    let e = Config::from_toml(
        &MOCK.replace(
            "provider = \"mock\", model = \"gpt",
            "provider = \"nope\", model = \"gpt",
        ),
        &env(&[("MOCK_KEY", "k")]),
    )
    .unwrap_err();
    assert!(e.0.contains("models[0].deployments[0].provider"), "{e}");
    let e =
        Config::from_toml("[[models]]\nname = \"a\"\ndeployments = []\n", &env(&[])).unwrap_err();
    assert!(e.0.contains("models[0].deployments"), "{e}");
    let e = Config::from_toml("[server]\nworkers = \"many\"\n", &env(&[])).unwrap_err();
    assert!(e.0.contains("server.workers"), "{e}");
}

#[test]
fn embedded_default_registers_env_providers() {
    let cfg = Config::embedded_default(&env(&[])).unwrap();
    assert!(cfg.providers.is_empty());
    assert_eq!(cfg.server.listen.to_string(), "127.0.0.1:8080");
    let cfg = Config::embedded_default(&env(&[("OPENAI_API_KEY", "sk-x")])).unwrap();
    assert_eq!(cfg.providers[0].endpoint.host, "api.openai.com");
    assert!(cfg.providers[0].endpoint.tls);
    assert_eq!(cfg.model("gpt-4o").unwrap().deployments[0].model, "*");
    assert_eq!(
        cfg.model("text-embedding-3-small").unwrap().name,
        "text-embedding-*"
    );
}

#[test]
fn endpoints() {
    let e = parse_endpoint("https://[::1]:8443/openai").unwrap();
    assert_eq!(e.host, "::1");
    assert_eq!(e.host_header, "[::1]:8443");
    assert_eq!(e.path_prefix, "/openai");
    let e = parse_endpoint("https://api.example.com").unwrap();
    assert_eq!(
        (e.port, e.path_prefix.as_str(), e.host_header.as_str()),
        (443, "", "api.example.com")
    );
    assert!(parse_endpoint("ftp://x").is_err());
    assert!(parse_endpoint("http://u:p@x").is_err());
}

#[test]
fn access_settings() {
    let base = "[server]\nlisten = \"127.0.0.1:1\"\n";
    // A config file requires keys and opens a store by default.
    let cfg = Config::from_toml(base, &env(&[])).unwrap();
    assert_eq!(cfg.auth, AuthMode::Keys);
    assert_eq!(
        cfg.store.path.as_deref(),
        Some(std::path::Path::new("sluice.db"))
    );
    assert_eq!(cfg.limits.default_max_tokens, 1024);
    let cfg = Config::from_toml(base, &env(&[("STATE_DIRECTORY", "/var/lib/sluice:/x")])).unwrap();
    assert_eq!(
        cfg.store.path.as_deref(),
        Some(std::path::Path::new("/var/lib/sluice/sluice.db"))
    );
    let cfg = Config::from_toml(&format!("auth = \"none\"\n{base}"), &env(&[])).unwrap();
    assert_eq!((cfg.auth, cfg.store.path.is_none()), (AuthMode::None, true));
    let e = Config::from_toml(&format!("auth = \"maybe\"\n{base}"), &env(&[])).unwrap_err();
    assert!(e.0.contains("`auth`"), "{e}");

    let text = r#"
[store]
path = "/tmp/x.db"
synchronous = "full"
[limits]
default_max_tokens = 256
[prices."mock-model"]
input_per_mtok = 1.0
output_per_mtok = 2.0
[[keys]]
name = "demo"
key = "sk-sluice-demo"
models = ["mock-fast"]
rpm = 10
[[keys]]
name = "ci"
key = "env:CI_KEY"
team = "search"
budget_usd = 5.0
budget_period = "daily"
metadata = { owner = "ops" }
"#;
    let cfg = Config::from_toml(text, &env(&[("CI_KEY", "sk-sluice-fromenv")])).unwrap();
    assert!(cfg.store.synchronous_full);
    assert_eq!(cfg.limits.default_max_tokens, 256);
    assert_eq!(cfg.prices["mock-model"].output_per_mtok, 2.0);
    let demo = &cfg.keys[0];
    assert!(demo.literal && demo.record.matches("sk-sluice-demo"));
    assert_eq!(demo.record.id, "cfg_demo");
    assert_eq!(demo.record.team, "default");
    let ci = &cfg.keys[1];
    assert!(!ci.literal && ci.record.matches("sk-sluice-fromenv"));
    assert_eq!(ci.record.limits.budget_period.as_str(), "daily");
    assert_eq!(ci.record.metadata["owner"], "ops");
    // The key never shows: not in Debug, not in the summary.
    let shown = format!("{cfg:?}{}", cfg.summary());
    assert!(!shown.contains("sk-sluice-fromenv") && !shown.contains("sk-sluice-demo\""));
    assert!(cfg.summary().contains("demo only"));

    // Literal provider-looking secrets are refused, without echoing them.
    let bad = text.replace("sk-sluice-demo", "sk-proj-abcdef");
    let e = Config::from_toml(&bad, &env(&[("CI_KEY", "k")])).unwrap_err();
    assert!(
        e.0.contains("keys[0].key") && !e.0.contains("sk-proj-abcdef"),
        "{e}"
    );
    let e = Config::from_toml(text, &env(&[])).unwrap_err();
    assert!(e.0.contains("keys[1].key") && e.0.contains("CI_KEY"), "{e}");
    let e = Config::from_toml(text, &env(&[("CI_KEY", "sk-sluice-demo")])).unwrap_err();
    assert!(e.0.contains("same key"), "{e}");
    let e = Config::from_toml(
        &text.replace("name = \"ci\"", "name = \"demo\""),
        &env(&[("CI_KEY", "x")]),
    )
    .unwrap_err();
    assert!(e.0.contains("duplicate key name"), "{e}");
    let e = Config::from_toml(
        &text.replace("rpm = 10", "rpn = 10"),
        &env(&[("CI_KEY", "x")]),
    )
    .unwrap_err();
    assert!(e.0.contains("keys"), "{e}");
}

#[test]
fn embedded_default_auth() {
    let cfg = Config::embedded_default(&env(&[])).unwrap();
    assert_eq!(cfg.auth, AuthMode::None);
    assert!(cfg.store.path.is_none());
    let cfg = Config::embedded_default(&env(&[("SLUICE_AUTH", "keys")])).unwrap();
    assert_eq!(cfg.auth, AuthMode::Keys);
    assert!(Config::embedded_default(&env(&[("SLUICE_AUTH", "x")])).is_err());
}

#[test]
fn server_tls_table() {
    let with = MOCK.replace(
        "workers = 2",
        "workers = 2\n[server.tls]\ncert_file = \"/etc/sluice/cert.pem\"\nkey_file = \"/etc/sluice/key.pem\"",
    );
    let cfg = Config::from_toml(&with, &env(&[("MOCK_KEY", "sk-test")])).unwrap();
    let tls = cfg.server.tls.clone().unwrap();
    assert_eq!(
        tls.cert_file,
        std::path::PathBuf::from("/etc/sluice/cert.pem")
    );
    assert_eq!(
        tls.key_file,
        std::path::PathBuf::from("/etc/sluice/key.pem")
    );
    assert!(cfg
        .summary()
        .contains("tls on the listener: cert /etc/sluice/cert.pem"));
    assert!(Config::from_toml(MOCK, &env(&[("MOCK_KEY", "sk-test")]))
        .unwrap()
        .server
        .tls
        .is_none());
    let missing = MOCK.replace(
        "workers = 2",
        "workers = 2\n[server.tls]\ncert_file = \"/c.pem\"",
    );
    let e = Config::from_toml(&missing, &env(&[("MOCK_KEY", "sk-test")])).unwrap_err();
    assert!(e.0.contains("server.tls"), "{e:?}");
    let empty = MOCK.replace(
        "workers = 2",
        "workers = 2\n[server.tls]\ncert_file = \"\"\nkey_file = \"/k.pem\"",
    );
    let e = Config::from_toml(&empty, &env(&[("MOCK_KEY", "sk-test")])).unwrap_err();
    assert!(e.0.contains("server.tls.cert_file"), "{e:?}");
}

#[test]
fn env_overrides_replace_scalars_of_the_file() {
    let vars = env(&[
        ("MOCK_KEY", "sk-test"),
        ("SLUICE__SERVER__LISTEN", "0.0.0.0:9999"),
        ("SLUICE__SERVER__WORKERS", "auto"),
        ("SLUICE__SERVER__PIN_WORKERS", "false"),
        ("SLUICE__SERVER__MAX_BODY_BYTES", "1234"),
        ("SLUICE__ADMIN__LISTEN", "0.0.0.0:9100"),
        ("SLUICE__LOG__LEVEL", "debug"),
        ("SLUICE__STORE__PATH", "/var/lib/sluice/x.db"),
        ("SLUICE__STORE__RETENTION_DAYS", "30"),
        ("SLUICE__AUTH", "none"),
        ("SLUICE__SERVER__TLS__CERT_FILE", "/tls/cert.pem"),
        ("SLUICE__SERVER__TLS__KEY_FILE", "/tls/key.pem"),
        // Not ours: single underscores are other settings (read elsewhere).
        ("SLUICE_AUTH", "keys"),
        ("SLUICE_ADMIN_TOKEN", "t"),
        ("SLUICE_DRIVER", "epoll"),
    ]);
    let cfg = Config::from_toml(MOCK, &vars).unwrap();
    assert_eq!(cfg.server.listen, "0.0.0.0:9999".parse().unwrap());
    assert_eq!(cfg.server.workers, Workers::Auto);
    assert!(!cfg.server.pin_workers);
    assert_eq!(cfg.server.max_body_bytes, 1234);
    assert_eq!(cfg.admin.listen, "0.0.0.0:9100".parse().unwrap());
    assert_eq!(cfg.log.level, "debug");
    assert_eq!(
        cfg.store.path.as_deref(),
        Some(std::path::Path::new("/var/lib/sluice/x.db"))
    );
    assert_eq!(cfg.store.retention_days, Some(30));
    assert_eq!(cfg.auth, AuthMode::None);
    assert_eq!(
        cfg.server.tls.as_ref().unwrap().cert_file,
        std::path::Path::new("/tls/cert.pem")
    );
    // The file's values stay where nothing overrides them.
    assert_eq!(cfg.providers[0].endpoint.port, 9000);
}

#[test]
fn unknown_or_bad_env_overrides_are_refused_by_name() {
    let base = [("MOCK_KEY", "sk-test")];
    let refused = |name: &str, value: &str| {
        let mut vars = env(&base);
        vars.insert(name.to_string(), value.to_string());
        Config::from_toml(MOCK, &vars).unwrap_err().0
    };
    for name in [
        "SLUICE__SERVER__LISTN",
        "SLUICE__SERVR__LISTEN",
        "SLUICE__NOPE",
        "SLUICE__",
        "SLUICE__SERVER____LISTEN",
        "SLUICE__SERVER__LISTEN__X",
    ] {
        let e = refused(name, "1");
        assert!(e.contains(name), "{name}: {e}");
    }
    // Lists and tables are set in the file.
    let e = refused("SLUICE__PROVIDERS", "x");
    assert!(e.contains("SLUICE__PROVIDERS"), "{e}");
    let e = refused("SLUICE__SERVER", "x");
    assert!(
        e.contains("SLUICE__SERVER") && e.contains("not a scalar"),
        "{e}"
    );
    // A bad value names the setting (as in the file), or the variable when its type is
    // wrong; a type error does not echo the value.
    let e = refused("SLUICE__SERVER__WORKERS", "many");
    assert!(e.contains("server.workers"), "{e}");
    let e = refused("SLUICE__SERVER__PIN_WORKERS", "secret-ish");
    assert!(e.contains("SLUICE__SERVER__PIN_WORKERS"), "{e}");
    assert!(!e.contains("secret-ish"), "{e}");
    let e = refused("SLUICE__SERVER__LISTEN", "not-an-address");
    assert!(e.contains("server.listen"), "{e}");
    let e = refused("SLUICE__STORE__RETENTION_DAYS", "-3");
    assert!(e.contains("SLUICE__STORE__RETENTION_DAYS"), "{e}");
    assert!(!e.contains("-3"), "{e}");
}

/// A file in a fresh temporary directory holding `text`.
fn secret_file(name: &str, text: &str) -> String {
    let dir = std::env::temp_dir().join(format!("sluice-cfg-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("secret");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn secrets_come_from_files_wherever_env_is_accepted() {
    let key_file = secret_file("provider", "sk-from-file\n");
    let header_file = secret_file("header", "team-x\r\n");
    let vk_file = secret_file("vk", "sk-sluice-fromfile123\n");
    let text = MOCK
        .replace("env:MOCK_KEY", &format!("file:{key_file}"))
        .replace("\"search\"", &format!("\"file:{header_file}\""))
        + &format!("\n[[keys]]\nname = \"svc\"\nkey = \"file:{vk_file}\"\n");
    let cfg = Config::from_toml(&text, &env(&[])).unwrap();
    let p = &cfg.providers[0];
    assert_eq!(p.api_key.as_ref().unwrap().expose(), "sk-from-file");
    assert_eq!(
        p.headers,
        vec![("x-team".to_string(), "team-x".to_string())]
    );
    assert!(cfg.keys[0].record.matches("sk-sluice-fromfile123"));
    assert!(!cfg.keys[0].literal);

    // A missing, empty or relative file is refused with its path, never a value.
    let e = Config::from_toml(
        &MOCK.replace("env:MOCK_KEY", "file:/nonexistent/sluice/key"),
        &env(&[]),
    )
    .unwrap_err();
    assert!(
        e.0.contains("providers[0].api_key") && e.0.contains("/nonexistent/sluice/key"),
        "{e}"
    );
    let empty = secret_file("empty", "\n");
    let e = Config::from_toml(
        &MOCK.replace("env:MOCK_KEY", &format!("file:{empty}")),
        &env(&[]),
    )
    .unwrap_err();
    assert!(e.0.contains("empty"), "{e}");
    let e = Config::from_toml(
        &MOCK.replace("env:MOCK_KEY", "file:relative/key"),
        &env(&[]),
    )
    .unwrap_err();
    assert!(e.0.contains("absolute"), "{e}");
}

#[test]
fn store_url_from_env_file_or_literal() {
    let with_store = |store: &str| format!("{MOCK}\n[store]\n{store}\n");
    let vars = env(&[
        ("MOCK_KEY", "sk-test"),
        ("PG", "postgres://u:pw@db:5432/sluice"),
    ]);
    let cfg =
        Config::from_toml(&with_store("url = \"env:PG\"\nretention_days = 7"), &vars).unwrap();
    assert_eq!(
        cfg.store.url.as_ref().unwrap().expose(),
        "postgres://u:pw@db:5432/sluice"
    );
    assert_eq!(cfg.store.path, None);
    assert_eq!(cfg.store.retention_days, Some(7));
    assert_eq!(
        cfg.store.spill_path,
        std::path::PathBuf::from("sluice-ledger.spill")
    );
    assert!(!format!("{cfg:?}").contains("pw@"));
    assert!(!cfg.summary().contains("pw"));

    let file = secret_file(
        "pgurl",
        "postgresql://sluice@127.0.0.1/sluice?sslmode=require\n",
    );
    let cfg = Config::from_toml(&with_store(&format!("url = \"file:{file}\"")), &vars).unwrap();
    assert!(cfg.store.url.unwrap().expose().ends_with("sslmode=require"));
    let cfg = Config::from_toml(
        &with_store("url = \"postgres://127.0.0.1/sluice\"\nspill_path = \"/tmp/s.spill\""),
        &vars,
    )
    .unwrap();
    assert_eq!(
        cfg.store.spill_path,
        std::path::PathBuf::from("/tmp/s.spill")
    );
    // SQLite's spill file sits next to the database.
    let cfg = Config::from_toml(&with_store("path = \"/data/s.db\""), &vars).unwrap();
    assert_eq!(
        cfg.store.spill_path,
        std::path::PathBuf::from("/data/s.db.spill")
    );

    for (store, want) in [
        ("url = \"env:PG\"\npath = \"x.db\"", "exclude each other"),
        ("url = \"mysql://x\"", "postgres://"),
        ("url = \"env:NOPE\"", "NOPE"),
        ("url = \"env:PG\"\nretention_days = 0", "retention_days"),
        ("url = \"env:PG\"\nbacklog_records = 0", "backlog_records"),
    ] {
        let e = Config::from_toml(&with_store(store), &vars).unwrap_err();
        assert!(e.0.contains(want), "{store}: {e}");
        assert!(!e.0.contains("pw"), "{e}");
    }
}

#[test]
fn compression_defaults_and_validation() {
    use crate::compress::Coding;
    let cfg = Config::from_toml("", &env(&[])).unwrap();
    let c = &cfg.server.compression;
    assert!(c.enabled);
    assert_eq!(c.min_bytes, 32 * 1024);
    assert_eq!(c.algorithms, [Coding::Zstd, Coding::Brotli, Coding::Gzip]);
    assert!(!c.streams);
    assert!(cfg
        .summary()
        .contains("compression: zstd, br, gzip from 32768 bytes (zstd 1, br 2, gzip 1)"));
    let text = "[server.compression]\nmin_bytes = 1024\nalgorithms = [\"gzip\", \"br\"]\n\
                gzip_level = 6\nbr_level = 5\nzstd_level = 9\nthreads = 2\n";
    let cfg = Config::from_toml(text, &env(&[])).unwrap();
    let c = &cfg.server.compression;
    assert_eq!(
        (
            c.min_bytes,
            c.gzip_level,
            c.br_level,
            c.zstd_level,
            c.threads
        ),
        (1024, 6, 5, 9, 2)
    );
    assert_eq!(c.algorithms, [Coding::Gzip, Coding::Brotli]);
    let off = Config::from_toml("[server.compression]\nalgorithms = []\n", &env(&[])).unwrap();
    assert!(!off.server.compression.enabled);
    assert!(off.summary().contains("compression: off"));
    for (bad, key) in [
        ("algorithms = [\"deflate\"]", "algorithms"),
        ("algorithms = [\"gzip\", \"gzip\"]", "algorithms"),
        ("gzip_level = 0", "gzip_level"),
        ("gzip_level = 10", "gzip_level"),
        ("br_level = 12", "br_level"),
        ("zstd_level = 0", "zstd_level"),
        ("zstd_level = 20", "zstd_level"),
        ("min_bytes = 100\nmax_bytes = 10", "min_bytes"),
        ("max_bytes = 0", "max_bytes"),
        ("threads = 1000", "threads"),
        ("streams = true", "streams"),
        ("level = 3", "level"),
    ] {
        let e =
            Config::from_toml(&format!("[server.compression]\n{bad}\n"), &env(&[])).unwrap_err();
        assert!(e.0.contains(key), "{bad}: {e}");
    }
}

#[test]
fn price_catalog_and_unpriced_models() {
    let text = r#"
[[providers]]
name = "p"
base_url = "http://127.0.0.1:9000/v1"

[[models]]
name = "a"
deployments = [{ provider = "p", model = "house-model" }]

[[models]]
name = "b"
deployments = [{ provider = "p", model = "other-model" }, { provider = "p", model = "gpt-5-mini" }]

[[models]]
name = "any-*"
deployments = [{ provider = "p", model = "*" }]

[prices."house-model"]
input_per_mtok = 9.0
output_per_mtok = 9.0

[pricing]
catalog_file = "prices.json"
"#;
    let mut cfg = Config::from_toml(text, &env(&[])).unwrap();
    assert_eq!(
        cfg.pricing.catalog_file.as_deref(),
        Some(std::path::Path::new("prices.json"))
    );
    assert_eq!(cfg.unpriced(), vec![("b", "p/other-model")]);
    assert!(cfg
        .summary()
        .contains("warning: no price for p/other-model (model b)"));
    assert!(cfg.summary().contains("[prices.\"other-model\"]"));
    let catalog = r#"{"house-model": {"input_cost_per_token": 1e-06},
                      "other-model": {"input_cost_per_token": 3e-06, "output_cost_per_token": 6e-06}}"#;
    assert_eq!(cfg.add_price_catalog(catalog).unwrap(), (1, 0));
    assert!(cfg.unpriced().is_empty());
    let table = crate::cost::PriceTable::new(cfg.prices.clone());
    // `[prices]` wins over the catalog.
    assert_eq!(table.price("house-model").unwrap().input_per_mtok, 9.0);
    assert_eq!(table.price("other-model").unwrap().output_per_mtok, 6.0);
    let e = cfg.add_price_catalog("not json").unwrap_err();
    assert!(e.0.contains("pricing.catalog_file"), "{e}");

    for (bad, path) in [
        ("[pricing]\ncatalog_file = \"\"\n", "pricing.catalog_file"),
        ("[pricing]\nfile = \"x\"\n", "pricing"),
    ] {
        let e = Config::from_toml(bad, &env(&[])).unwrap_err();
        assert!(e.0.contains(path), "{bad}: {e}");
    }
}

#[test]
fn shared_section_from_env_overrides_and_files() {
    // `SLUICE__SHARED__…` alone makes the [shared] section (as the Kubernetes Deployment does).
    let vars = env(&[
        ("MOCK_KEY", "sk-test"),
        (
            "SLUICE__SHARED__REDIS_URL",
            "redis://:pw@redis.internal:6380",
        ),
        ("SLUICE__SHARED__TIMEOUT_MS", "7"),
    ]);
    let cfg = Config::from_toml(MOCK, &vars).unwrap();
    let sh = cfg.shared.as_ref().unwrap();
    assert_eq!(sh.redis_display, "redis://redis.internal:6380");
    assert_eq!(sh.timeout_ms, 7);
    assert!(!cfg.summary().contains("pw"));
    // And from a file, as every other secret.
    let file = secret_file("redis", "rediss://cache.internal\n");
    let text = format!("{MOCK}\n[shared]\nredis_url = \"file:{file}\"\n");
    let cfg = Config::from_toml(&text, &env(&[("MOCK_KEY", "sk-test")])).unwrap();
    assert!(cfg.shared.unwrap().tls);
    let e = Config::from_toml(
        MOCK,
        &env(&[("MOCK_KEY", "sk-test"), ("SLUICE__SHARED__REDIS_URLL", "x")]),
    )
    .unwrap_err();
    assert!(e.0.contains("SLUICE__SHARED__REDIS_URLL"), "{e}");
}

#[test]
fn otel_environment_fills_what_the_file_leaves_unset() {
    let vars = env(&[
        ("MOCK_KEY", "sk-test"),
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "https://collector.example:4318/",
        ),
        (
            "OTEL_EXPORTER_OTLP_HEADERS",
            "Authorization=Bearer%20abc,x-team = ops",
        ),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment=prod,service.name=from-resource,k=a%2Cb",
        ),
    ]);
    let cfg = Config::from_toml(MOCK, &vars).unwrap();
    let e = cfg.tracing.otlp_endpoint.clone().unwrap();
    assert!(e.tls, "https export is accepted");
    assert_eq!((e.host.as_str(), e.port), ("collector.example", 4318));
    assert_eq!(e.path_prefix, "/v1/traces");
    assert_eq!(cfg.tracing.service_name, "from-resource");
    assert_eq!(cfg.tracing.otlp_headers.len(), 2);
    assert_eq!(cfg.tracing.otlp_headers[0].0, "authorization");
    assert_eq!(cfg.tracing.otlp_headers[0].1.expose(), "Bearer abc");
    assert_eq!(cfg.tracing.otlp_headers[1].1.expose(), "ops");
    assert!(
        !format!("{:?}", cfg.tracing).contains("abc"),
        "headers are secrets"
    );
    assert_eq!(
        cfg.tracing.resource_attributes,
        vec![
            ("deployment.environment".to_string(), "prod".to_string()),
            ("k".to_string(), "a,b".to_string())
        ]
    );

    // OTEL_SERVICE_NAME beats the resource attribute; the file beats both.
    let mut with_name = vars.clone();
    with_name.insert("OTEL_SERVICE_NAME".into(), "from-env".into());
    assert_eq!(
        Config::from_toml(MOCK, &with_name)
            .unwrap()
            .tracing
            .service_name,
        "from-env"
    );
    let file = format!(
        "{MOCK}\n[tracing]\notlp_endpoint = \"http://127.0.0.1:4318/custom\"\nservice_name = \"file\"\n"
    );
    let cfg = Config::from_toml(&file, &with_name).unwrap();
    assert_eq!(cfg.tracing.service_name, "file");
    let e = cfg.tracing.otlp_endpoint.unwrap();
    assert_eq!((e.tls, e.path_prefix.as_str()), (false, "/custom"));

    // The signal-specific endpoint is taken as it is.
    let mut traces = env(&[("MOCK_KEY", "sk-test")]);
    traces.insert(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT".into(),
        "http://127.0.0.1:9/t".into(),
    );
    let e = Config::from_toml(MOCK, &traces)
        .unwrap()
        .tracing
        .otlp_endpoint
        .unwrap();
    assert_eq!(e.path_prefix, "/t");
}

#[test]
fn bad_otel_lists_are_refused_without_echoing_header_values() {
    let e = Config::from_toml(
        MOCK,
        &env(&[
            ("MOCK_KEY", "sk-test"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "api-key-without-equals-sk-secret",
            ),
        ]),
    )
    .unwrap_err();
    assert!(e.0.contains("OTEL_EXPORTER_OTLP_HEADERS"), "{e:?}");
    assert!(!e.0.contains("sk-secret"), "{e:?}");
    let e = Config::from_toml(
        MOCK,
        &env(&[("MOCK_KEY", "sk-test"), ("OTEL_RESOURCE_ATTRIBUTES", "=x")]),
    )
    .unwrap_err();
    assert!(e.0.contains("OTEL_RESOURCE_ATTRIBUTES"), "{e:?}");
    // Only http/protobuf is spoken.
    let mut grpc = env(&[("MOCK_KEY", "sk-test")]);
    grpc.insert("OTEL_EXPORTER_OTLP_PROTOCOL".into(), "grpc".into());
    let e = Config::from_toml(MOCK, &grpc).unwrap_err();
    assert!(
        e.0.contains("OTEL_EXPORTER_OTLP_PROTOCOL") && e.0.contains("http/protobuf"),
        "{e:?}"
    );
    grpc.insert("OTEL_EXPORTER_OTLP_PROTOCOL".into(), "http/protobuf".into());
    assert!(Config::from_toml(MOCK, &grpc).is_ok());
}
