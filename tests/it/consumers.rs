//! Consumers on any test that moves rows (issue 22): one call attaches a
//! publication of the kind the test names, a subscription on the shared
//! subscriber server (its tables mirrored from the publisher's catalog, rows
//! present copied first) and a `pg_recvlogical` CDC consumer; one call
//! checks, after the test's own assertions, that both have what the
//! publisher has, row by row, each row's net change seen exactly once, with
//! no apply error.
//!
//! Built on [`crate::logical`]'s `Subscriber` and `Cdc`; made as the
//! superuser, except `FOR TABLE` publications, which the application's owner
//! makes (a conversion refuses a publication the steward cannot alter).
//!
//! Retention is DDL: a retired partition's rows stay on both consumers. A
//! test that retires calls [`Consumers::retiring`] before the pass; rows
//! that are gone from the publisher's tables afterwards are then expected
//! on the consumers as they were (so such a test must not delete rows
//! itself after that call).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::harness::{self, query};
use crate::logical::{Cdc, Subscriber};
use crate::partitions::{exec, exec_super};

/// How long the subscriber may take to have the publisher's rows.
const CATCH_UP: Duration = Duration::from_secs(30);

/// The kind of publication, varied across tests: each publishes a move
/// differently (under the root's name, or the partitions' own).
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// `FOR TABLE t, … WITH (publish_via_partition_root = true)`, by the owner.
    ViaRoot,
    /// `FOR TABLE t, …` publishing each partition under its own name (the
    /// default); the subscriber has the partitions present at attach. Only
    /// for tests that move no row into a partition made later (the steward
    /// refuses such a move, `partitions::logical`), e.g. retention.
    Leaves,
    /// `FOR ALL TABLES WITH (publish_via_partition_root = true)`: every table
    /// of the database is mirrored; a table made after attach would be an
    /// apply error, so attach after the test's fixtures exist.
    AllTables,
    /// `FOR TABLES IN SCHEMA` (the tables' schemas) with
    /// `publish_via_partition_root = true`; before PostgreSQL 15, `AllTables`.
    Schema,
}

/// One compared table: its publisher name, the subscriber relations that
/// hold its rows, and what each consumer had when attached.
struct Watched {
    /// `schema.name`, also the CDC prefix (its partitions start with it).
    name: String,
    /// Subscriber relations whose union is the table's rows.
    on_subscriber: Vec<String>,
    /// Ids present when the CDC slot was made (the stream starts there).
    baseline: BTreeSet<i64>,
    /// Rows (id → text) at [`Consumers::retiring`], if called.
    before_retirement: BTreeMap<i64, String>,
    /// Every relation seen in the table's tree (the CDC consumer counts
    /// their changes as the table's, as a CDC consumer must map them).
    tree: BTreeSet<String>,
}

/// `schema.name` of `root` and of every partition under it now.
async fn tree_of(url: &str, root: &str) -> BTreeSet<String> {
    let rows = query(
        url,
        &format!(
            "SELECT format('%s.%s', n.nspname, c.relname) FROM pg_partition_tree({}::regclass) t \
             JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace",
            pgsteward::pg::quote_literal(root)
        ),
    )
    .await;
    let mut names: BTreeSet<String> = rows.iter().map(|r| r.get(0)).collect();
    names.insert(root.to_string());
    names
}

pub struct Consumers {
    url: String,
    kind: Kind,
    publication: String,
    sub: Subscriber,
    cdc: Cdc,
    tables: Vec<Watched>,
    /// How long [`Consumers::assert_subscriber`] waits for the subscriber.
    catch_up: Duration,
}

/// `schema.name` of a table reference as the publisher resolves it.
async fn qualified(url: &str, table: &str) -> String {
    let rows = query(
        url,
        &format!(
            "SELECT format('%s.%s', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.oid = {}::regclass",
            pgsteward::pg::quote_literal(table)
        ),
    )
    .await;
    rows[0].get(0)
}

/// `CREATE TABLE` for the subscriber's copy of `rel` (`schema.name`): the
/// same columns (generated ones generated), keyed by the replica identity
/// index or the primary key, so the subscriber can apply DELETEs. A
/// `watched` (compared) one must have a key and an integer `id`.
async fn mirror_ddl(url: &str, rel: &str, watched: bool) -> String {
    let lit = pgsteward::pg::quote_literal(rel);
    let rows = query(
        url,
        &format!(
            "WITH r AS (SELECT {lit}::regclass AS oid), \
             cols AS (SELECT string_agg(format('%I %s%s', a.attname, format_type(a.atttypid, a.atttypmod), \
                 CASE WHEN a.attgenerated = 's' THEN format(' GENERATED ALWAYS AS (%s) STORED', pg_get_expr(d.adbin, d.adrelid)) ELSE '' END), \
                 ', ' ORDER BY a.attnum) AS list, bool_or(a.attname = 'id' AND a.atttypid IN ('bigint'::regtype, 'integer'::regtype, 'smallint'::regtype)) AS has_id \
               FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
               WHERE a.attrelid = (SELECT oid FROM r) AND a.attnum > 0 AND NOT a.attisdropped), \
             key AS (SELECT (SELECT string_agg(quote_ident(k.attname), ', ' ORDER BY k.attnum) FROM pg_attribute k \
                       WHERE k.attrelid = i.indrelid AND k.attnum = ANY (i.indkey)) AS list \
               FROM pg_index i WHERE i.indrelid = (SELECT oid FROM r) AND (i.indisreplident OR i.indisprimary) \
               ORDER BY i.indisreplident DESC LIMIT 1) \
             SELECT format('CREATE SCHEMA IF NOT EXISTS %I; CREATE TABLE %I.%I (%s%s)', n.nspname, n.nspname, c.relname, \
                      cols.list, coalesce(', PRIMARY KEY (' || (SELECT list FROM key) || ')', '')), \
                    c.relreplident::text, (SELECT list FROM key) IS NOT NULL, cols.has_id \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, cols WHERE c.oid = (SELECT oid FROM r)"
        ),
    )
    .await;
    let (ddl, identity, keyed, has_id): (String, String, bool, Option<bool>) = (
        rows[0].get(0),
        rows[0].get(1),
        rows[0].get(2),
        rows[0].get(3),
    );
    if watched {
        assert!(
            keyed || identity == "f",
            "consumers: {rel} has no primary key, replica identity index or REPLICA IDENTITY FULL; \
             a publication of it would refuse every DELETE (of a move too)"
        );
        assert!(
            has_id == Some(true),
            "consumers: {rel} has no integer `id` column, which the CDC consumer counts rows by"
        );
    }
    ddl
}

/// Every row of the relations in `rels`, as id → row text.
async fn rows_by_id(url: &str, rels: &[String]) -> BTreeMap<i64, String> {
    let mut out = BTreeMap::new();
    for rel in rels {
        for r in query(
            url,
            &format!("SELECT t.id::bigint, (t.*)::text FROM {rel} t"),
        )
        .await
        {
            out.insert(r.get::<_, i64>(0), r.get::<_, String>(1));
        }
    }
    out
}

impl Consumers {
    /// Publishes `tables` (as written in the test: `events`, `s.t`), mirrors
    /// them on the subscriber, subscribes copying the rows present, and
    /// starts the CDC consumer. Call it once the tables (and, for
    /// `AllTables`, every other table the test writes) exist.
    pub async fn attach(pub_url: &str, kind: Kind, tables: &[&str]) -> Consumers {
        let mut names = Vec::new();
        for t in tables {
            names.push(qualified(pub_url, t).await);
        }
        let kind = match kind {
            Kind::Schema if harness::server_major() < 15 => Kind::AllTables,
            k => k,
        };
        let publication = crate::logical::unique("consumers");
        match kind {
            Kind::ViaRoot | Kind::Leaves => {
                let via_root = matches!(kind, Kind::ViaRoot);
                exec(
                    pub_url,
                    &format!(
                        "CREATE PUBLICATION {publication} FOR TABLE {} WITH (publish_via_partition_root = {via_root})",
                        names.join(", ")
                    ),
                )
                .await
            }
            Kind::AllTables => {
                exec_super(
                    pub_url,
                    &format!("CREATE PUBLICATION {publication} FOR ALL TABLES WITH (publish_via_partition_root = true)"),
                )
                .await
            }
            Kind::Schema => {
                let schemas: BTreeSet<&str> =
                    names.iter().filter_map(|n| n.split('.').next()).collect();
                let schemas: Vec<&str> = schemas.into_iter().collect();
                exec_super(
                    pub_url,
                    &format!(
                        "CREATE PUBLICATION {publication} FOR TABLES IN SCHEMA {} WITH (publish_via_partition_root = true)",
                        schemas.join(", ")
                    ),
                )
                .await
            }
        }
        // What the publication publishes, and the compared table each belongs to.
        let published = query(
            pub_url,
            &format!(
                "SELECT format('%s.%s', schemaname, tablename), \
                   (SELECT format('%s.%s', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                    WHERE c.oid = coalesce(pg_partition_root(format('%I.%I', schemaname, tablename)::regclass), \
                                           format('%I.%I', schemaname, tablename)::regclass)) \
                 FROM pg_publication_tables WHERE pubname = '{publication}' ORDER BY 1"
            ),
        )
        .await;
        let mut ddl = String::new();
        let mut watched: Vec<Watched> = names
            .iter()
            .map(|n| Watched {
                name: n.clone(),
                on_subscriber: Vec::new(),
                baseline: BTreeSet::new(),
                before_retirement: BTreeMap::new(),
                tree: BTreeSet::new(),
            })
            .collect();
        for r in &published {
            let (rel, root): (String, String) = (r.get(0), r.get(1));
            let w = watched.iter_mut().find(|w| w.name == root);
            ddl.push_str(&mirror_ddl(pub_url, &rel, w.is_some()).await);
            ddl.push(';');
            if let Some(w) = w {
                w.on_subscriber.push(rel);
            }
        }
        for w in &watched {
            assert!(
                !w.on_subscriber.is_empty(),
                "consumers: publication {publication} ({kind:?}) publishes nothing of {}: {published:?}",
                w.name
            );
        }
        let sub = Subscriber::create_with(pub_url, &publication, &ddl, true);
        // The initial copy ends before the test changes anything (a partition
        // retired mid-copy would never reach the subscriber).
        let t0 = Instant::now();
        loop {
            let syncing = query(
                &sub.url(),
                "SELECT count(*) FROM pg_subscription_rel WHERE srsubstate <> 'r'",
            )
            .await[0]
                .get::<_, i64>(0);
            if syncing == 0 {
                break;
            }
            assert!(
                t0.elapsed() < CATCH_UP,
                "consumers: {syncing} tables of publication {publication} ({kind:?}) still copying after {CATCH_UP:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let cdc = Cdc::start(pub_url).await;
        for w in &mut watched {
            w.tree = tree_of(pub_url, &w.name).await;
            w.baseline = rows_by_id(pub_url, std::slice::from_ref(&w.name))
                .await
                .into_keys()
                .collect();
        }
        Consumers {
            url: pub_url.to_string(),
            kind,
            publication,
            sub,
            cdc,
            tables: watched,
            catch_up: CATCH_UP,
        }
    }

    /// The publication's name on the publisher.
    pub fn publication(&self) -> &str {
        &self.publication
    }

    /// The subscription on the subscriber server.
    pub fn subscriber(&self) -> &Subscriber {
        &self.sub
    }

    /// Waits `d` instead of [`CATCH_UP`] for the subscriber (a test that
    /// expects a difference need not wait the full bound).
    pub fn catch_up(mut self, d: Duration) -> Consumers {
        self.catch_up = d;
        self
    }

    /// Before a pass that retires partitions: their rows stay on the
    /// consumers (DETACH and DROP are not row changes), so every row present
    /// now and gone from the publisher's tables at [`Consumers::assert_same`]
    /// is expected there as it is now.
    pub async fn retiring(&mut self) {
        for w in &mut self.tables {
            w.before_retirement = rows_by_id(&self.url, std::slice::from_ref(&w.name)).await;
            let now = tree_of(&self.url, &w.name).await;
            w.tree.extend(now);
        }
    }

    /// The subscriber has the publisher's rows (plus retired ones), row by
    /// row, with no apply error, within [`CATCH_UP`]; the CDC stream, replayed
    /// from the rows present at attach, inserted or deleted each row at most
    /// once at a time and ends with the same ids. Fails naming `what`, the
    /// publication kind and the first differences.
    pub async fn assert_same(&mut self, what: &str) {
        self.assert_subscriber(what).await;
        self.assert_cdc(what).await;
    }

    /// The publisher's rows of each watched table (and those retired since
    /// [`Consumers::retiring`]), id → row text.
    async fn expected(&self, w: &Watched) -> BTreeMap<i64, String> {
        let mut want = rows_by_id(&self.url, std::slice::from_ref(&w.name)).await;
        for (id, row) in &w.before_retirement {
            want.entry(*id).or_insert_with(|| row.clone());
        }
        want
    }

    /// The subscriber half of [`Consumers::assert_same`].
    pub async fn assert_subscriber(&self, what: &str) {
        let kind = self.kind;
        for w in &self.tables {
            let want_rows: Vec<String> = self.expected(w).await.into_values().collect();
            let t0 = Instant::now();
            loop {
                let mut got: Vec<(i64, String)> = Vec::new();
                for rel in &w.on_subscriber {
                    let sql = format!("SELECT t.id::bigint, (t.*)::text FROM {rel} t");
                    got.extend(
                        query(&self.sub.url(), &sql)
                            .await
                            .iter()
                            .map(|r| (r.get(0), r.get(1))),
                    );
                }
                let errors = self.sub.apply_errors().await;
                got.sort();
                let got: Vec<String> = got.into_iter().map(|(_, t)| t).collect();
                if got == want_rows && errors == 0 {
                    break;
                }
                if t0.elapsed() > self.catch_up || errors > 0 {
                    let missing: Vec<&String> = want_rows
                        .iter()
                        .filter(|r| !got.contains(r))
                        .take(5)
                        .collect();
                    let extra: Vec<&String> = got
                        .iter()
                        .filter(|r| !want_rows.contains(r))
                        .take(5)
                        .collect();
                    panic!(
                        "{what} ({kind:?} publication of {}): after {:?} the subscriber has {} rows, \
                         the publisher {} ({errors} apply errors); missing on the subscriber (first 5): \
                         {missing:?}; extra there: {extra:?}",
                        w.name,
                        t0.elapsed(),
                        got.len(),
                        want_rows.len()
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// The CDC half of [`Consumers::assert_same`].
    pub async fn assert_cdc(&mut self, what: &str) {
        for i in 0..self.tables.len() {
            let want = self.expected(&self.tables[i]).await;
            let now = tree_of(&self.url, &self.tables[i].name).await;
            self.tables[i].tree.extend(now);
            let w = &self.tables[i];
            let mut present: BTreeMap<i64, i64> = w.baseline.iter().map(|id| (*id, 1)).collect();
            let changes = self.cdc.changes_of(|rel| w.tree.contains(rel)).await;
            for (id, sign, line) in changes {
                let n = present.entry(id).or_default();
                *n += sign;
                assert!(
                    (0..=1).contains(n),
                    "{what} ({}): the CDC consumer's {line} leaves row {id} present {n} times",
                    w.name
                );
            }
            let got: BTreeSet<i64> = present
                .into_iter()
                .filter(|(_, n)| *n > 0)
                .map(|(id, _)| id)
                .collect();
            let want: BTreeSet<i64> = want.into_keys().collect();
            if got != want {
                let missing: Vec<&i64> = want.difference(&got).take(5).collect();
                let extra: Vec<&i64> = got.difference(&want).take(5).collect();
                panic!(
                    "{what} ({}): the CDC consumer replayed {} rows, the publisher has {}; \
                     missing (first 5): {missing:?}; extra: {extra:?}",
                    w.name,
                    got.len(),
                    want.len()
                );
            }
        }
    }
}

/// The fixture fails where a consumer would be wrong: rows moved out of
/// DEFAULT by hand the way the steward refuses to (copied into a standalone
/// table, deleted from DEFAULT, then attached) reach the subscriber as
/// DELETEs only, and the CDC consumer as INSERTs of a table not yet in the
/// tree; both are reported, and a plain write is not.
#[tokio::test]
async fn a_move_that_loses_rows_is_caught() {
    let url = crate::harness::fresh_db("consumers_self");
    exec(
        &url,
        "CREATE TABLE events (id bigint GENERATED ALWAYS AS IDENTITY, created_at timestamptz NOT NULL, \
           PRIMARY KEY (id, created_at)) PARTITION BY RANGE (created_at); \
         CREATE TABLE events_default PARTITION OF events DEFAULT; \
         INSERT INTO events (created_at) SELECT '2020-01-01'::timestamptz + g * interval '1 hour' FROM generate_series(1, 10) g",
    )
    .await;
    let mut consumers = Consumers::attach(&url, Kind::ViaRoot, &["events"])
        .await
        .catch_up(Duration::from_secs(3));
    let mut cdc_only = Consumers::attach(&url, Kind::ViaRoot, &["events"]).await;
    exec(&url, "INSERT INTO events (created_at) VALUES (now())").await;
    consumers.assert_same("a plain write").await;
    exec(
        &url,
        "BEGIN; \
         CREATE TABLE events_2020 (LIKE events INCLUDING ALL EXCLUDING IDENTITY); \
         INSERT INTO events_2020 OVERRIDING SYSTEM VALUE SELECT * FROM events_default WHERE created_at < '2021-01-01'; \
         DELETE FROM events_default WHERE created_at < '2021-01-01'; \
         ALTER TABLE events ATTACH PARTITION events_2020 FOR VALUES FROM ('2020-01-01') TO ('2021-01-01'); \
         COMMIT",
    )
    .await;
    let caught = tokio::spawn(async move {
        consumers
            .assert_subscriber("copied before the attach")
            .await;
    })
    .await;
    let message = caught
        .err()
        .filter(|e| e.is_panic())
        .map(|e| format!("{:?}", e.into_panic().downcast_ref::<String>()))
        .unwrap_or_else(|| panic!("the subscriber's lost rows went unnoticed"));
    assert!(
        message.contains("the subscriber has 1 rows, the publisher 11"),
        "{message}"
    );
    let caught = tokio::spawn(async move {
        cdc_only.assert_cdc("copied before the attach").await;
    })
    .await;
    let message = caught
        .err()
        .filter(|e| e.is_panic())
        .map(|e| format!("{:?}", e.into_panic().downcast_ref::<String>()))
        .unwrap_or_else(|| panic!("the CDC consumer's duplicates went unnoticed"));
    assert!(message.contains("present 2 times"), "{message}");
}
