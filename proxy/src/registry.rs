//! The admin side of the store ([`Registry`]): keys and teams from the config and the store,
//! and the data plane's key index rebuilt from them after every change. The admin API
//! (`admin::api`) changes it; a reload reconfigures it.

use std::sync::Mutex;

use sluice_core::config::{Config, StaticKey};
use sluice_core::keys::KeyRecord;
use sluice_core::limits::{period_start, BudgetPeriod};

use crate::request::auth::{build_index, Auth, Index};
use crate::store::{Scope, Store, StoreError};

/// The admin side of the store: CRUD that rebuilds the data plane's key index.
pub struct Registry {
    /// The store the admin API writes to.
    pub(crate) store: Store,
    static_keys: Vec<StaticKey>,
    groups: usize,
}

impl Registry {
    /// Opens the store, loads every key and team, rebuilds spend and returns the first index.
    pub fn open(config: &Config, store: Store) -> Result<(Registry, Index), StoreError> {
        let unix_s = crate::clock::unix_s();
        let reg = Registry {
            store,
            static_keys: config.keys.clone(),
            groups: config.models.len(),
        };
        let snapshot = reg.store.rebuild_spend(unix_s)?;
        let spend_of =
            |scope: Scope, id: &str, period: BudgetPeriod| snapshot.spend(scope, id, period);
        let index = build_index(
            reg.all_keys()?,
            reg.store.all_teams()?,
            &Index::default(),
            reg.groups,
            &spend_of,
            unix_s,
        );
        Ok((reg, index))
    }

    fn all_keys(&self) -> Result<Vec<(KeyRecord, bool)>, StoreError> {
        let mut out: Vec<(KeyRecord, bool)> = self
            .static_keys
            .iter()
            .map(|k| (k.record.clone(), true))
            .collect();
        out.extend(self.store.all_keys()?.into_iter().map(|k| (k, false)));
        Ok(out)
    }

    /// Takes a reloaded config's static keys and group count and rebuilds the index (keys
    /// whose limits are unchanged keep their limit state).
    pub fn reconfigure(&mut self, config: &Config, auth: &Auth) -> Result<(), StoreError> {
        self.static_keys = config.keys.clone();
        self.groups = config.models.len();
        self.rebuild(auth)
    }

    /// Builds a new index from the store and swaps it in.
    pub(crate) fn rebuild(&self, auth: &Auth) -> Result<(), StoreError> {
        let unix_s = crate::clock::unix_s();
        let spend_of = |scope: Scope, id: &str, period: BudgetPeriod| {
            self.store
                .spend_since(scope, id, period_start(period, unix_s))
                .unwrap_or(0)
        };
        let index = build_index(
            self.all_keys()?,
            self.store.all_teams()?,
            &auth.index(),
            self.groups,
            &spend_of,
            unix_s,
        );
        auth.replace(index);
        Ok(())
    }
}

/// The registry, once opened, behind the lock the admin threads share.
pub type SharedRegistry = Mutex<Registry>;
