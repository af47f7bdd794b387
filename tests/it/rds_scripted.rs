//! A scripted RDS behind the provider's `RdsApi` seam, for what moto cannot
//! show: statuses that follow a script, queued errors, and **simulated
//! time**. Every `DescribeDBInstances` advances a simulated clock by
//! `tick` seconds, and a rename (or a backup-retention change, or a delete)
//! keeps its instance `renaming` (`modifying`, `deleting`) until the clock
//! has passed its duration: a rename of four simulated minutes costs a few
//! polls of real time. Local clusters can stand in for the instances'
//! endpoints (`bind`): the endpoint follows the instance through renames, a
//! promotion promotes the cluster, a delete stops it.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use pgsteward::localpg::{Cluster, StopMode};
use pgsteward::provider::rds::{ApiError, ApiErrorKind, CreateReplica, Instance, RdsApi};

pub const SOURCE: &str = "platform-postgres";

/// The RDS instance: scripted statuses, busy-until times, an event log.
#[derive(Default)]
pub struct Scripted {
    pub state: Mutex<ScriptState>,
}

/// A rename as the scripted RDS performed it, in simulated seconds.
#[derive(Debug, Clone)]
pub struct Rename {
    pub from: String,
    pub to: String,
    pub at: u64,
    pub done: u64,
}

#[derive(Default)]
pub struct ScriptState {
    pub instances: BTreeMap<String, Instance>,
    statuses: HashMap<String, VecDeque<String>>,
    /// Describes of an id that answer "not found" before it is listed.
    pub hidden: HashMap<String, usize>,
    errors: HashMap<&'static str, VecDeque<ApiError>>,
    pub calls: Vec<String>,
    /// Simulated seconds since the start.
    pub now: u64,
    /// Simulated seconds each describe takes.
    pub tick: u64,
    /// How long a rename, a modification and a delete take (simulated seconds).
    pub rename_takes: u64,
    pub modify_takes: u64,
    pub create_takes: u64,
    pub delete_takes: Option<u64>,
    /// id → (status while busy, until when).
    busy: HashMap<String, (String, u64)>,
    pub renames: Vec<Rename>,
    /// Renames from these ids are accepted and then answered with an error
    /// once (the process died after RDS took the request).
    pub lose_answer: HashSet<String>,
    /// Local servers standing in for instances, by the id they were created under.
    clusters: HashMap<String, Cluster>,
    /// Which stand-in an instance is (follows renames).
    bound: HashMap<String, String>,
}

impl Scripted {
    pub fn with_source() -> Arc<Scripted> {
        let s = Scripted::default();
        s.put(Instance {
            id: SOURCE.into(),
            status: "available".into(),
            class: "db.r5.xlarge".into(),
            engine: "postgres".into(),
            engine_version: "15.4".into(),
            backup_retention: 7,
            endpoint: Some(("src.rds.example".into(), 5432)),
            ..Instance::default()
        });
        Arc::new(s)
    }
    pub fn put(&self, i: Instance) {
        self.state.lock().unwrap().instances.insert(i.id.clone(), i);
    }
    /// Instance `id` (existing, or created later under that id) is `cluster`.
    pub fn bind(&self, id: &str, cluster: &Cluster) {
        let mut st = self.state.lock().unwrap();
        st.clusters.insert(id.to_string(), cluster.clone());
        st.bound.insert(id.to_string(), id.to_string());
        if let Some(i) = st.instances.get_mut(id) {
            i.endpoint = Some(("127.0.0.1".into(), cluster.port));
        }
    }
    pub fn script(&self, id: &str, statuses: &[&str]) {
        self.state
            .lock()
            .unwrap()
            .statuses
            .insert(id.into(), statuses.iter().map(|s| s.to_string()).collect());
    }
    pub fn fail(&self, op: &'static str, kind: ApiErrorKind, code: &str, times: usize) {
        let mut st = self.state.lock().unwrap();
        let q = st.errors.entry(op).or_default();
        for _ in 0..times {
            q.push_back(ApiError::new(kind, code, &format!("scripted {code}")));
        }
    }
    pub fn calls(&self, op: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .calls
            .iter()
            .filter(|c| c.starts_with(op))
            .count()
    }
    fn enter(
        &self,
        op: &'static str,
        id: &str,
    ) -> Result<std::sync::MutexGuard<'_, ScriptState>, ApiError> {
        let mut st = self.state.lock().unwrap();
        st.calls.push(format!("{op} {id}"));
        if let Some(e) = st.errors.get_mut(op).and_then(VecDeque::pop_front) {
            return Err(e);
        }
        Ok(st)
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(ApiErrorKind::NotFound, "DBInstanceNotFound", id)
}

impl ScriptState {
    fn stand_in(&self, id: &str) -> Option<Cluster> {
        self.clusters.get(self.bound.get(id)?).cloned()
    }
}

#[async_trait::async_trait]
impl RdsApi for Scripted {
    async fn describe_instance(&self, id: &str) -> Result<Option<Instance>, ApiError> {
        let mut st = self.enter("describe", id)?;
        st.now += st.tick;
        if let Some(n) = st.hidden.get_mut(id) {
            if *n > 0 {
                *n -= 1;
                return Ok(None);
            }
        }
        let now = st.now;
        if let Some((status, until)) = st.busy.get(id).cloned() {
            if now < until {
                if let Some(i) = st.instances.get_mut(id) {
                    i.status = status;
                }
            } else {
                st.busy.remove(id);
                if status == "deleting" {
                    st.instances.remove(id);
                    return Ok(None);
                }
                if let Some(i) = st.instances.get_mut(id) {
                    i.status = "available".into();
                }
            }
        }
        let next = st.statuses.get_mut(id).and_then(|q| {
            if q.len() > 1 {
                q.pop_front()
            } else {
                q.front().cloned()
            }
        });
        if let (Some(s), Some(i)) = (next, st.instances.get_mut(id)) {
            i.status = s;
        }
        Ok(st.instances.get(id).cloned())
    }
    async fn create_read_replica(&self, req: &CreateReplica) -> Result<(), ApiError> {
        let mut st = self.enter("create", &req.id)?;
        if st.instances.contains_key(&req.id) {
            return Err(ApiError::new(
                ApiErrorKind::AlreadyExists,
                "DBInstanceAlreadyExists",
                "exists",
            ));
        }
        let endpoint = st
            .clusters
            .get(&req.id)
            .map(|c| ("127.0.0.1".to_string(), c.port));
        if endpoint.is_some() {
            st.bound.insert(req.id.clone(), req.id.clone());
        }
        let i = Instance {
            id: req.id.clone(),
            status: "creating".into(),
            class: req.class.clone(),
            engine: "postgres".into(),
            engine_version: "15.4".into(),
            backup_retention: 0,
            tags: req.tags.clone(),
            replica_source: Some(req.source.clone()),
            endpoint,
            ..Instance::default()
        };
        st.instances.insert(req.id.clone(), i);
        let until = st.now + st.create_takes;
        st.busy.insert(req.id.clone(), ("creating".into(), until));
        if let Some(src) = st.instances.get_mut(&req.source) {
            src.read_replicas.push(req.id.clone());
        }
        Ok(())
    }
    async fn promote_read_replica(&self, id: &str) -> Result<(), ApiError> {
        let mut st = self.enter("promote", id)?;
        let Some(i) = st.instances.get_mut(id) else {
            return Err(not_found(id));
        };
        if i.status != "available" {
            return Err(ApiError::new(
                ApiErrorKind::InvalidState,
                "InvalidDBInstanceState",
                "busy",
            ));
        }
        let src = i.replica_source.take();
        if let Some(s) = src.and_then(|s| st.instances.get_mut(&s)) {
            s.read_replicas.retain(|r| r != id);
        }
        if let Some(c) = st.stand_in(id) {
            c.psql("postgres", "SELECT pg_promote()")
                .map_err(|e| ApiError::new(ApiErrorKind::Other, "StandIn", &e.to_string()))?;
        }
        Ok(())
    }
    async fn rename_instance(&self, id: &str, new_id: &str) -> Result<(), ApiError> {
        let mut st = self.enter("rename", id)?;
        if st.instances.contains_key(new_id) {
            return Err(ApiError::new(
                ApiErrorKind::AlreadyExists,
                "DBInstanceAlreadyExists",
                new_id,
            ));
        }
        let Some(mut i) = st.instances.remove(id) else {
            return Err(not_found(id));
        };
        // The old name is gone at once; the instance is `renaming` under
        // the new one until the rename has taken its (simulated) time.
        i.id = new_id.into();
        i.status = "renaming".into();
        let (at, takes) = (st.now, st.rename_takes);
        st.busy
            .insert(new_id.into(), ("renaming".into(), at + takes));
        st.renames.push(Rename {
            from: id.into(),
            to: new_id.into(),
            at,
            done: at + takes,
        });
        if let Some(b) = st.bound.remove(id) {
            st.bound.insert(new_id.into(), b);
        }
        // Replicas stay attached; the source's list names the new id.
        let source = i.replica_source.clone();
        let replicas = i.read_replicas.clone();
        st.instances.insert(new_id.into(), i);
        if let Some(s) = source.and_then(|s| st.instances.get_mut(&s)) {
            for r in s.read_replicas.iter_mut().filter(|r| *r == id) {
                *r = new_id.into();
            }
        }
        for r in replicas {
            if let Some(r) = st.instances.get_mut(&r) {
                r.replica_source = Some(new_id.into());
            }
        }
        if st.lose_answer.remove(id) {
            return Err(ApiError::new(
                ApiErrorKind::Other,
                "RequestSentAnswerLost",
                "the process died after RDS took the rename",
            ));
        }
        Ok(())
    }
    async fn set_backup_retention(&self, id: &str, days: i32) -> Result<(), ApiError> {
        let mut st = self.enter("retention", id)?;
        let (now, takes) = (st.now, st.modify_takes);
        let Some(i) = st.instances.get_mut(id) else {
            return Err(not_found(id));
        };
        i.backup_retention = days;
        i.status = "modifying".into();
        st.busy.insert(id.into(), ("modifying".into(), now + takes));
        Ok(())
    }
    async fn delete_instance(
        &self,
        id: &str,
        final_snapshot: Option<&str>,
    ) -> Result<(), ApiError> {
        let mut st = self.enter("delete", id)?;
        st.calls
            .push(format!("snapshot {}", final_snapshot.unwrap_or("SKIP")));
        let now = st.now;
        let gone = st.delete_takes;
        let stand_in = st.stand_in(id);
        match st.instances.get_mut(id) {
            Some(i) if i.status == "deleting" => {
                return Err(ApiError::new(
                    ApiErrorKind::InvalidState,
                    "InvalidDBInstanceState",
                    "already deleting",
                ))
            }
            // What RDS refuses: a final snapshot of a read replica.
            Some(i) if i.replica_source.is_some() && final_snapshot.is_some() => {
                return Err(ApiError::new(
                    ApiErrorKind::Other,
                    "InvalidParameterCombination",
                    "FinalDBSnapshotIdentifier can not be specified when deleting a replica instance",
                ))
            }
            Some(i) => i.status = "deleting".into(),
            None => return Err(not_found(id)),
        }
        if let Some(takes) = gone {
            st.busy.insert(id.into(), ("deleting".into(), now + takes));
        }
        if let Some(c) = stand_in {
            let _ = c.stop(StopMode::Fast);
        }
        Ok(())
    }
    async fn snapshot_status(&self, _snapshot_id: &str) -> Result<Option<String>, ApiError> {
        Ok(None)
    }
}
