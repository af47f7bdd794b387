//! Load-time refusal of bad declarations, and the library entry points.

use super::*;

#[test]
fn bad_index_declarations_are_refused_at_load_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (extra, table, key) in [
        (
            "",
            "indexes = [ { name = \"e_idx\", columns = [\"user_id\", \"lower(email)\"] } ]",
            "partitions.tables[0].indexes[0].columns[1]",
        ),
        (
            "",
            "indexes = [ { name = \"e_idx\", columns = [\"a\"], where = \"a); DROP TABLE events; --\" } ]",
            "partitions.tables[0].indexes[0].where",
        ),
        ("index_parallelism = 0", "", "partitions.index_parallelism"),
    ] {
        let path = write_config(
            dir.path(),
            &config_toml("postgres://u@127.0.0.1:1/db", extra, table),
        );
        let out = pgsteward()
            .arg("--config")
            .arg(&path)
            .args(["partitions", "status"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(key), "{key}: {stderr}");
    }
}

/// The reusable entry points, as the online conversion calls them.
#[tokio::test]
async fn build_online_and_create_index_concurrently_as_a_library() {
    use pgsteward::config::indexes::IndexSpec;
    use pgsteward::partitions::indexes::{self, build};
    let url = fresh_db("idx_library");
    events(&url, 2, 1_000).await;
    exec(&url, "CREATE TABLE plain (id bigint, email text); INSERT INTO plain SELECT g, 'u' || g FROM generate_series(1, 1000) g").await;
    let cfg = config(&url, "lock_timeout = \"200ms\"", "premake = 2");
    let main = must(partitions::connect(&cfg).await);
    let spec: IndexSpec = toml::from_str(
        "name = \"events_lower_idx\"\ncolumns = [{ expr = \"lower(payload)\" }, \"id\"]",
    )
    .unwrap();
    must(spec.validate("spec"));
    let events_table = pgsteward::pg::QualifiedName::new("public", "events");
    let cancel = CancellationToken::new();
    let r = must(indexes::build_online(&cfg, &main, &events_table, &spec, &cancel).await);
    assert!(r.error.is_none() && r.drift.is_empty(), "{r:#?}");
    assert_eq!(r.built, 3);
    assert_complete(&index_state(&url, "events_lower_idx").await);
    // Again: nothing to do.
    let r = must(indexes::build_online(&cfg, &main, &events_table, &spec, &cancel).await);
    assert!(r.statements.is_empty(), "{r:#?}");

    let session = build::Session::new(&main, &cfg.partitions).await;
    let plain = pgsteward::pg::QualifiedName::new("public", "plain");
    let def = pgsteward::config::indexes::IndexDef {
        unique: true,
        tail: "btree (id)".into(),
    };
    let log = build::Log::default();
    let made = must(
        indexes::create_index_concurrently(&session, &plain, "plain_id_key", &def, &cancel, &log)
            .await,
    );
    assert_eq!(made, indexes::Created::Built);
    let again = must(
        indexes::create_index_concurrently(&session, &plain, "plain_id_key", &def, &cancel, &log)
            .await,
    );
    assert_eq!(again, indexes::Created::Existing);
    assert_eq!(
        log.take(),
        vec![
            r#"CREATE UNIQUE INDEX CONCURRENTLY "plain_id_key" ON "public"."plain" USING btree (id)"#
        ]
    );
    // Duplicates: the error carries the key, nothing invalid stays.
    exec(
        &url,
        "DROP INDEX plain_id_key; INSERT INTO plain VALUES (1, 'again')",
    )
    .await;
    let e = indexes::create_index_concurrently(&session, &plain, "plain_id2", &def, &cancel, &log)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("Key (id)=(1) is duplicated"), "{e}");
    assert!(invalid_indexes(&url).await.is_empty());
}
