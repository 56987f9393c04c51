//! The migration runner on SQLite, with made-up migration lists. The store's behaviour,
//! backend by backend, is tested in `proxy/tests/store.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rusqlite::Connection;

use super::migrate::{check_list, latest, migrate, Migration};
use super::sqlite::{SqliteSchema, MIGRATIONS};
use super::StoreError;

const V1: Migration = Migration {
    version: 1,
    name: "a",
    sql: "CREATE TABLE a (x INTEGER);",
};
const V2: Migration = Migration {
    version: 2,
    name: "b",
    sql: "CREATE TABLE b (y TEXT); INSERT INTO a (x) VALUES (1);",
};
const V3: Migration = Migration {
    version: 3,
    name: "a.z",
    sql: "ALTER TABLE a ADD COLUMN z TEXT NOT NULL DEFAULT 'zed';",
};
/// Its first statement works, its second does not.
const V4_BAD: Migration = Migration {
    version: 4,
    name: "half done",
    sql: "CREATE TABLE c (w INTEGER); INSERT INTO no_such_table VALUES (1);",
};

fn version(conn: &Connection) -> u32 {
    let v: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    u32::try_from(v).unwrap()
}

fn has_table(conn: &Connection, name: &str) -> bool {
    conn.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [name],
        |r| r.get::<_, i64>(0),
    )
    .unwrap()
        == 1
}

#[test]
fn empty_database_reaches_the_latest_version_and_stays_there() {
    let conn = Connection::open_in_memory().unwrap();
    let list = [V1, V2, V3];
    assert_eq!(migrate(&mut SqliteSchema(&conn), &list).unwrap(), 3);
    assert_eq!(version(&conn), 3);
    assert!(has_table(&conn, "a") && has_table(&conn, "b"));
    // Again: nothing to do, nothing run twice (V2's insert would add a second row).
    assert_eq!(migrate(&mut SqliteSchema(&conn), &list).unwrap(), 3);
    let rows: i64 = conn
        .query_row("SELECT COUNT(*) FROM a", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 1);
}

#[test]
fn an_older_database_gets_only_the_newer_migrations() {
    let conn = Connection::open_in_memory().unwrap();
    migrate(&mut SqliteSchema(&conn), &[V1, V2]).unwrap();
    conn.execute("INSERT INTO a (x) VALUES (7)", []).unwrap();
    assert_eq!(migrate(&mut SqliteSchema(&conn), &[V1, V2, V3]).unwrap(), 3);
    let z: String = conn
        .query_row("SELECT z FROM a WHERE x = 7", [], |r| r.get(0))
        .unwrap();
    assert_eq!(z, "zed");
}

#[test]
fn a_failed_migration_rolls_back_whole() {
    let conn = Connection::open_in_memory().unwrap();
    let err = migrate(&mut SqliteSchema(&conn), &[V1, V2, V3, V4_BAD]).unwrap_err();
    match &err {
        StoreError::Migration { version, name, .. } => {
            assert_eq!((*version, *name), (4, "half done"));
        }
        other => panic!("not a migration error: {other:?}"),
    }
    assert!(err.to_string().contains("migration 4 (half done) failed"));
    // The ones before it stay; its first statement is undone with it.
    assert_eq!(version(&conn), 3);
    assert!(!has_table(&conn, "c"));
    assert!(conn.is_autocommit(), "no transaction left open");
    // Fixed in a later binary: it applies.
    let fixed = Migration {
        sql: "CREATE TABLE c (w INTEGER);",
        ..V4_BAD
    };
    assert_eq!(
        migrate(&mut SqliteSchema(&conn), &[V1, V2, V3, fixed]).unwrap(),
        4
    );
    assert!(has_table(&conn, "c"));
}

#[test]
fn a_newer_database_is_refused_untouched() {
    let conn = Connection::open_in_memory().unwrap();
    migrate(&mut SqliteSchema(&conn), &[V1, V2, V3]).unwrap();
    let err = migrate(&mut SqliteSchema(&conn), &[V1, V2]).unwrap_err();
    assert!(
        matches!(err, StoreError::SchemaTooNew { found: 3, known: 2 }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("version 3") && msg.contains("version 2"),
        "{msg}"
    );
    assert_eq!(version(&conn), 3);
}

#[test]
fn migration_lists_are_numbered_without_gaps() {
    check_list(MIGRATIONS).unwrap();
    assert_eq!(latest(MIGRATIONS), MIGRATIONS.len() as u32);
    assert_eq!(latest(&[]), 0);
    assert!(check_list(&[V1, V3]).is_err());
    assert!(check_list(&[V2]).is_err());
    let conn = Connection::open_in_memory().unwrap();
    assert!(matches!(
        migrate(&mut SqliteSchema(&conn), &[V1, V3]),
        Err(StoreError::BadValue(_))
    ));
    assert_eq!(version(&conn), 0);
}
