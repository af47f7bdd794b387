//! How an archive is verified before the DROP (`archive.verify`): by the
//! store's ETag of the upload (one HEAD, no GET of the data object, as seen
//! on the wire by the proxy), by reading it back where asked or where
//! nothing was recorded, and an object replaced between `uploaded` and the
//! verification refused with nothing dropped.

use super::proxy::Proxy;
use super::*;
use crate::harness::{fresh_db, text, write_config};
use crate::partitions::month_name;

/// Requests of `method` (lower case) for a data object (`.copy`), as the
/// proxy saw them.
fn data_requests(proxy: &Proxy, method: &str) -> Vec<String> {
    proxy
        .requests()
        .into_iter()
        .filter(|r| {
            let mut line = r.lines().next().unwrap_or("").split_whitespace();
            line.next() == Some(method)
                && line
                    .next()
                    .is_some_and(|t| t.split('?').next().unwrap_or("").ends_with(".copy"))
        })
        .collect()
}

/// `(partition, state, etag)` of every retirement, oldest first.
async fn recorded(url: &str) -> Vec<(String, String, Option<String>)> {
    query(
        url,
        "SELECT partition_name, state, etag FROM pgsteward.retirements ORDER BY id",
    )
    .await
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

/// The object's ETag as the store reports it, without quotes.
async fn etag_of(s3: &S3, key: &str) -> String {
    must(
        s3.client()
            .await
            .head_object()
            .bucket(BUCKET)
            .key(key)
            .send()
            .await
            .map_err(|e| format!("{e:?}")),
    )
    .e_tag()
    .unwrap_or_default()
    .trim_matches('"')
    .to_string()
}

/// The binary killed right after the first retirement recorded `uploaded`;
/// its object key.
async fn killed_after_upload(url: &str, toml: &str) -> String {
    let dir = crate::harness::server_tempdir();
    let path = write_config(dir.path(), toml);
    let out = run(
        pgsteward()
            .args(["--config", path.to_str().unwrap(), "partitions", "apply"])
            .env("PGSTEWARD_FAILPOINT", "retire-uploaded=kill"),
        Duration::from_secs(120),
    );
    assert_eq!(out.status.code(), None, "killed: {}", text(&out));
    let rows = query(
        url,
        "SELECT object_key, state FROM pgsteward.retirements ORDER BY id",
    )
    .await;
    assert_eq!(rows[0].get::<_, String>(1), "uploaded", "{}", text(&out));
    rows[0].get(0)
}

#[tokio::test]
async fn an_archive_verifies_by_the_stores_etag_without_reading_it_back() {
    let s3 = S3::start().await;
    let proxy = Proxy::start(s3.moto.port);
    let url = fresh_db("archive_verify_etag");
    hostile_table(&url, 30).await;
    let r = pass(&config_of(&toml(&url, &proxy.url()))).await;
    assert!(r.tables[0].error.is_none(), "{:#?}", r.tables[0]);
    let rec = recorded(&url).await;
    assert_eq!(rec.len(), 3, "{rec:?}");
    for (partition, state, etag) in &rec {
        assert_eq!(state, "dropped", "{partition}");
        let etag = etag.clone().unwrap_or_default();
        // One part each (a few KiB): the multipart form, `-1`.
        assert!(
            etag.len() == 34 && etag.ends_with("-1"),
            "{partition}: {etag:?}"
        );
    }
    // What the store reports is what the upload recorded.
    let keys: Vec<String> = query(
        &url,
        "SELECT object_key FROM pgsteward.retirements ORDER BY id",
    )
    .await
    .iter()
    .map(|r| r.get(0))
    .collect();
    for (key, (_, _, etag)) in keys.iter().zip(&rec) {
        assert_eq!(Some(etag_of(&s3, key).await), etag.clone(), "{key}");
    }
    // On the wire: a HEAD of each data object, never a GET; the manifests
    // are still read.
    assert_eq!(
        data_requests(&proxy, "get"),
        Vec::<String>::new(),
        "no data object read back"
    );
    assert!(data_requests(&proxy, "head").len() >= 3);
    assert!(
        proxy
            .requests()
            .iter()
            .any(|r| r.starts_with("get ") && r.contains(".manifest.json")),
        "the manifests are still checked"
    );
}

#[tokio::test]
async fn an_object_replaced_after_its_upload_is_refused_and_nothing_is_dropped() {
    let s3 = S3::start().await;
    let url = fresh_db("archive_verify_replaced");
    hostile_table(&url, 30).await;
    let old = month_name("audit", -6);
    let before = rows_of(&url, &old).await;
    let toml = toml(&url, &s3.url());
    let key = killed_after_upload(&url, &toml).await;

    // Other bytes of the same size under the same key, between `uploaded`
    // and the verification.
    let client = s3.client().await;
    let got = must(
        client
            .get_object()
            .bucket(BUCKET)
            .key(&key)
            .send()
            .await
            .map_err(|e| format!("{e:?}")),
    );
    let mut data = must(got.body.collect().await.map_err(|e| e.to_string()))
        .into_bytes()
        .to_vec();
    assert!(!data.is_empty());
    data[0] ^= 1;
    must(
        client
            .put_object()
            .bucket(BUCKET)
            .key(&key)
            .body(data.into())
            .send()
            .await
            .map_err(|e| format!("{e:?}")),
    );

    let cfg = config_of(&toml);
    let r = pass(&cfg).await;
    let e = r.tables[0].error.clone().unwrap_or_default();
    assert!(e.contains("does not verify") && e.contains("ETag"), "{e}");
    let rec = recorded(&url).await;
    assert_eq!(
        (rec[0].0.as_str(), rec[0].1.as_str()),
        (old.as_str(), "detached"),
        "{rec:?}"
    );
    // The other partitions' archives are theirs, verified: they go on.
    assert_eq!(
        rec.iter().filter(|(p, _, _)| *p == old).count(),
        1,
        "{rec:?}"
    );
    let last: Option<String> = query(
        &url,
        "SELECT last_error FROM pgsteward.retirements ORDER BY id LIMIT 1",
    )
    .await[0]
        .get(0);
    assert!(last.unwrap_or_default().contains("ETag"));
    assert!(exists(&url, &old).await, "the partition is kept");
    assert_eq!(rows_of(&url, &old).await, before);

    // The next pass archives it again (same key) and finishes.
    let r = pass(&cfg).await;
    assert!(r.tables[0].error.is_none(), "{:#?}", r.tables[0]);
    let rec = recorded(&url).await;
    assert!(rec.iter().all(|(_, s, _)| s == "dropped"), "{rec:?}");
    assert_eq!(Some(etag_of(&s3, &key).await), rec[0].2.clone());
}

#[tokio::test]
async fn read_back_mode_reads_every_archive_back() {
    let s3 = S3::start().await;
    let proxy = Proxy::start(s3.moto.port);
    let url = fresh_db("archive_verify_read_back");
    hostile_table(&url, 30).await;
    let toml = format!("{}verify = \"read-back\"\n", toml(&url, &proxy.url()));
    let r = pass(&config_of(&toml)).await;
    assert!(r.tables[0].error.is_none(), "{:#?}", r.tables[0]);
    assert!(recorded(&url).await.iter().all(|(_, s, _)| s == "dropped"));
    assert_eq!(
        data_requests(&proxy, "get").len(),
        3,
        "each archive read back"
    );
}

#[tokio::test]
async fn a_retirement_uploaded_without_an_expected_etag_is_read_back() {
    let s3 = S3::start().await;
    let url = fresh_db("archive_verify_no_etag");
    hostile_table(&url, 30).await;
    let key = killed_after_upload(&url, &toml(&url, &s3.url())).await;
    // As a release before migration 4 recorded it.
    query(&url, "UPDATE pgsteward.retirements SET etag = NULL").await;
    let proxy = Proxy::start(s3.moto.port);
    let r = pass(&config_of(&toml(&url, &proxy.url()))).await;
    assert!(r.tables[0].error.is_none(), "{:#?}", r.tables[0]);
    assert!(recorded(&url).await.iter().all(|(_, s, _)| s == "dropped"));
    let gets = data_requests(&proxy, "get");
    assert_eq!(gets.len(), 1, "{gets:#?}");
    assert!(
        gets[0].contains(&key.to_lowercase()),
        "{key} read back: {gets:#?}"
    );
}
