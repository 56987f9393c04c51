//! Start-up of the access side: the store (SQLite or PostgreSQL), the ledger writer and
//! the key index the workers authenticate with.

use std::io;
use std::time::Duration;

use sluice_core::config::Config;

/// What `open_access` sets up for `Shared`.
pub(super) struct Access {
    pub(super) auth: crate::request::auth::Auth,
    pub(super) registry: Option<crate::registry::SharedRegistry>,
    pub(super) admin_token: Option<[u8; 32]>,
}

/// Opens the store (keys, teams, spend) and the ledger writer, and builds the key index.
pub(super) fn open_access(
    config: &Config,
) -> io::Result<(Access, Option<crate::store::LedgerHandle>)> {
    use crate::registry::Registry;
    use crate::store::{LedgerWriter, Store, WriterOptions};
    let admin_token = std::env::var("SLUICE_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
        .map(|t| sluice_core::keys::hash_key(t.trim()));
    for k in config.keys.iter().filter(|k| k.literal) {
        tracing::warn!(key = %k.record.name, prefix = %k.record.prefix, "a key is written literally in the config: fine for a demo, never for production");
    }
    let Some(target) = store_target(config)? else {
        let auth =
            crate::request::auth::Auth::new(config, crate::request::auth::Index::default(), None);
        return Ok((
            Access {
                auth,
                registry: None,
                admin_token,
            },
            None,
        ));
    };
    if admin_token.is_none() {
        tracing::info!("admin API off: set SLUICE_ADMIN_TOKEN to manage keys, teams and spend");
    }
    let location = target.location();
    let store_err = |e: crate::store::StoreError| io::Error::other(format!("{location}: {e}"));
    let store = Store::open_target(&target).map_err(store_err)?;
    let (registry, index) = Registry::open(config, store).map_err(store_err)?;
    let opts = WriterOptions {
        flush_interval: Duration::from_millis(config.store.flush_interval_ms),
        synchronous_full: config.store.synchronous_full,
        backlog_records: config.store.backlog_records,
        spill_path: Some(config.store.spill_path.clone()),
        retention: config
            .store
            .retention_days
            .map(|d| Duration::from_secs(u64::from(d) * 86_400)),
        ..WriterOptions::default()
    };
    let (ledger, handle) = LedgerWriter::spawn_target(&target, opts).map_err(store_err)?;
    tracing::info!(
        store = %location,
        keys = index.keys().count(),
        auth = ?config.auth,
        "store opened"
    );
    let auth = crate::request::auth::Auth::new(config, index, Some(ledger));
    Ok((
        Access {
            auth,
            registry: Some(std::sync::Mutex::new(registry)),
            admin_token,
        },
        Some(handle),
    ))
}

/// Where `[store]` points: PostgreSQL (`url`), an SQLite file (`path`, its directory created),
/// or nothing.
fn store_target(config: &Config) -> io::Result<Option<crate::store::StoreTarget>> {
    use crate::store::{postgres::PgTarget, StoreTarget};
    if let Some(url) = &config.store.url {
        let target = PgTarget::parse(url.expose(), config.store.ca_file.as_deref())
            .map_err(|e| io::Error::other(e.to_string()))?;
        return Ok(Some(StoreTarget::Postgres(Box::new(target))));
    }
    let Some(path) = &config.store.path else {
        return Ok(None);
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
    }
    Ok(Some(StoreTarget::Sqlite(path.clone())))
}
