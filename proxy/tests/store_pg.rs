//! The store on PostgreSQL: the backend-generic suite (`store_suite/`) against a real server
//! (`pg_server/`: the run's shared one from `scripts/test.sh`, or one started here), plus what
//! only PostgreSQL has (concurrent migration under the advisory lock, reconnecting).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod pg_server;
#[macro_use]
mod store_suite;

use pg_server::PgDatabase;
use sluice_proxy::store::migrate::{latest, migrate};
use sluice_proxy::store::postgres::{PgSchema, PgTarget, MIGRATIONS};
use sluice_proxy::store::{
    LedgerHandle, LedgerSender, LedgerWriter, Scope, SpendGroup, Store, StoreError, StoreTarget,
    WriterOptions,
};
use store_suite::{team_record, usage_record, Fixture};

/// The suite's PostgreSQL database: a fresh one per case.
struct PgFixture {
    db: PgDatabase,
    target: StoreTarget,
}

impl PgFixture {
    fn new(case: &str) -> Self {
        let db = PgDatabase::new(case);
        let target = StoreTarget::Postgres(Box::new(PgTarget::parse(&db.url, None).unwrap()));
        PgFixture { db, target }
    }

    fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.db.url, postgres::NoTls).unwrap()
    }
}

impl Fixture for PgFixture {
    fn open(&self) -> Result<Store, StoreError> {
        Store::open_target(&self.target)
    }

    fn writer(&self, opts: WriterOptions) -> Result<(LedgerSender, LedgerHandle), StoreError> {
        LedgerWriter::spawn_target(&self.target, opts)
    }

    fn latest_version(&self) -> u32 {
        latest(MIGRATIONS)
    }

    fn set_schema_version(&self, version: u32) {
        let mut c = self.client();
        let v = i32::try_from(version).unwrap();
        c.execute(
            "DELETE FROM sluice_schema_migrations WHERE version > $1",
            &[&v],
        )
        .unwrap();
        c.execute(
            "INSERT INTO sluice_schema_migrations (version, name) VALUES ($1, 'test') \
             ON CONFLICT DO NOTHING",
            &[&v],
        )
        .unwrap();
    }

    fn migrate_to(&self, version: u32) {
        let mut c = self.client();
        let list = &MIGRATIONS[..version as usize];
        assert_eq!(migrate(&mut PgSchema(&mut c), list).unwrap(), version);
    }

    fn execute(&self, sql: &str) {
        self.client().batch_execute(sql).unwrap();
    }

    fn indexes(&self, table: &str) -> Vec<String> {
        let rows = self
            .client()
            .query(
                "SELECT indexname::TEXT FROM pg_indexes \
                 WHERE schemaname = current_schema() AND tablename = $1 ORDER BY indexname",
                &[&table],
            )
            .unwrap();
        rows.iter().map(|r| r.get(0)).collect()
    }

    fn keeps_nul(&self) -> bool {
        false
    }
}

store_suite!(postgres_backend, PgFixture::new);

#[test]
fn ledger_reads_can_use_the_time_index_the_schema_keeps() {
    // Version 4 dropped the per-key and per-team indexes; the ledger's time-range reads
    // (the listing, and the spend report whatever it groups by) go through `ledger_ts`.
    // Sequential scans are priced out so the plan says which index serves the range.
    let f = PgFixture::new("ledger_ts_plan");
    drop(f.open().unwrap());
    let mut c = f.client();
    c.batch_execute("SET enable_seqscan = off").unwrap();
    let queries = [
        "SELECT request_id FROM ledger WHERE ts_ms >= $1 AND ts_ms < $2 \
         ORDER BY ts_ms, seq LIMIT 10",
        "SELECT key_id, SUM(cost_micros) FROM ledger WHERE ts_ms >= $1 AND ts_ms < $2 GROUP BY 1",
        "SELECT team, SUM(cost_micros) FROM ledger WHERE ts_ms >= $1 AND ts_ms < $2 GROUP BY 1",
    ];
    for sql in queries {
        let plan: Vec<String> = c
            .query(&format!("EXPLAIN {sql}"), &[&0i64, &1i64])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let plan = plan.join("\n");
        assert!(plan.contains("ledger_ts"), "{sql}:\n{plan}");
    }
}

#[test]
fn replicas_starting_together_migrate_once() {
    let f = PgFixture::new("together");
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let target = f.target.clone();
            std::thread::spawn(move || Store::open_target(&target).map(|s| s.schema_version()))
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap().unwrap().unwrap(), latest(MIGRATIONS));
    }
    let mut c = f.client();
    let n: i64 = c
        .query_one("SELECT COUNT(*) FROM sluice_schema_migrations", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, i64::from(latest(MIGRATIONS)));
}

#[test]
fn big_integers_and_order_survive() {
    let f = PgFixture::new("bigint");
    let (tx, handle) = f.writer(WriterOptions::default()).unwrap();
    // Past i64::MAX: saturates, in the ledger and in the sums, and commits.
    let mut r = usage_record(1, "big", "t", u64::MAX);
    r.usage.input_tokens = u64::MAX;
    tx.record(r).unwrap();
    // Same timestamp: insertion order (seq) breaks the tie.
    for i in 0..50u64 {
        let mut r = usage_record(2, "k", "t", 1);
        r.request_id = format!("same-{i:02}");
        tx.record(r).unwrap();
    }
    drop(tx);
    assert_eq!(handle.join().committed, 51);
    let store = f.open().unwrap();
    let rows = store.ledger(0, u64::MAX, 100).unwrap();
    assert_eq!(rows[0].cost_micros, i64::MAX as u64);
    assert_eq!(rows[0].usage.input_tokens, i64::MAX as u64);
    let ids: Vec<_> = rows[1..].iter().map(|r| r.request_id.clone()).collect();
    let want: Vec<_> = (0..50).map(|i| format!("same-{i:02}")).collect();
    assert_eq!(ids, want);
    let by_team = store.spend_by(SpendGroup::Team, 0, u64::MAX).unwrap();
    assert_eq!(by_team[0].cost_micros, i64::MAX as u64);
    assert_eq!(by_team[0].requests, 51);
    assert_eq!(
        store.spend_since(Scope::Team, "t", 0).unwrap(),
        i64::MAX as u64
    );
}

#[test]
fn the_admin_connection_comes_back_after_the_server_dropped_it() {
    let f = PgFixture::new("reconnect");
    let store = f.open().unwrap();
    store.create_team(&team_record("core")).unwrap();
    // Kill every other connection to this database, as a server restart would.
    let mut c = f.client();
    c.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
        &[],
    )
    .unwrap();
    // The first call may see the dead connection; the next one reconnects.
    let _ = store.all_teams();
    assert_eq!(store.all_teams().unwrap(), vec![team_record("core")]);
}

#[test]
fn a_bad_url_is_refused_without_echoing_it() {
    let err = PgTarget::parse("postgres://u:hunter2@host:notaport/db", None).unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");
    let t = PgTarget::parse("postgres://u:hunter2@db.internal:5433/sluice", None).unwrap();
    assert_eq!(t.location(), "postgresql://db.internal:5433/sluice");
}

#[test]
fn sslmode_require_connects_through_rustls_and_verifies_the_server() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let server = pg_server::PgServer::start_tls("tls", &leaf.pem(), &leaf_key.serialize_pem());
    let dir = std::env::temp_dir().join(format!("sluice-pg-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    let url = format!(
        "postgres://sluice@localhost:{}/sluice?sslmode=require",
        server.port
    );

    // Trusting the private CA: connects, over TLS, and works.
    let target = PgTarget::parse(&url, Some(&ca_file)).unwrap();
    assert!(
        target.location().ends_with("(tls)"),
        "{}",
        target.location()
    );
    let store = Store::open_target(&StoreTarget::Postgres(Box::new(target))).unwrap();
    store.create_team(&team_record("core")).unwrap();
    let mut plain = postgres::Client::connect(&server.url("sluice"), postgres::NoTls).unwrap();
    let tls_sessions: i64 = plain
        .query_one(
            "SELECT COUNT(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
             WHERE ssl AND application_name = 'sluice'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(tls_sessions >= 1, "the store's connection is not TLS");

    // Without the CA the server's certificate is refused: no silent fallback to plain text.
    let untrusted = PgTarget::parse(&url, None).unwrap();
    let err = Store::open_target(&StoreTarget::Postgres(Box::new(untrusted)))
        .err()
        .expect("an unknown issuer is refused");
    assert!(matches!(err, StoreError::Postgres(_)), "{err:?}");
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}
