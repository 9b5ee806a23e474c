//! [`LocalAgent`]: the agent of the host it runs on. It keeps each clone's record on disk
//! (record.rs), works on one clone at a time per clone (a lock each, so that a long copy
//! never blocks another clone), recovers at start what a crash interrupted, and adopts the
//! servers and mounts an earlier agent left running rather than restarting them. As root it
//! gives each clone a uid of its own (lib.rs, "Clone isolation").

use std::collections::{HashMap, HashSet};
use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use api::{Driver, Name, Timestamp};
use engine::{Engine, Instance, InstanceSpec, Secret};
use sys::User;

use crate::driver::{self, Attached};
use crate::images::{check_place, image_dir, partial_dir};
use crate::record::{CheckpointRecord, CloneRecord, Desired, Intent};
use crate::{
    Agent, AgentError, AgentErrorExt, AgentInfo, CloneReport, CloneRole, CloneSpec, CloneState, EngineVersions,
    ErrorKind, ImagePlace, ImageSource, ImageTransform, Isolation, MadeImage, Result, SourceFacts,
};

/// How long a clone's server may take to start. Crash recovery after a kill may replay WAL.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How old, at most, the disk use of one clone shown by itself is.
const FRESH_SIZE_SECONDS: u64 = 2;
/// How long a clean stop may take before the server is stopped at once.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// How an agent runs.
#[derive(Clone)]
pub struct AgentConfig {
    pub data_dir: PathBuf,
    /// The OS user images are prepared as, and clones' servers run as when they have no
    /// uid of their own ([`Isolation::clone_uids`]).
    pub os_user: User,
    /// The addresses clones' servers listen on.
    pub listen: Vec<IpAddr>,
    /// Whether clients on other hosts may connect to clones (with their password).
    pub remote_clients: bool,
    /// The address clients reach clones at, for their connection URLs.
    pub host: String,
    /// Each clone server's main memory cache (the engine's default when `None`).
    pub memory: Option<String>,
    /// The `thinclone` binary, whose `mount` command serves cowfs mounts.
    pub mount_program: PathBuf,
    /// The database engines this agent can run.
    pub engines: Vec<Arc<dyn Engine>>,
    /// How often clones' disk use is measured in the background.
    pub size_interval: Duration,
    /// How often each running clone's storage and server are checked.
    pub supervise_interval: Duration,
    /// Whether a clone whose storage or server died is repaired (remounted, restarted) by
    /// itself; without it, it stays degraded until `start`.
    pub repair: bool,
    /// How long a stopped clone keeps its storage attached (a cowfs mount, with its page
    /// cache), so that a start soon after is warm; zero stops it with the server.
    pub keep_mounts: Duration,
    /// Whether cowfs clones are mounted with the kernel's writeback cache
    /// ([`crate::driver::Cowfs::writeback_cache`]): faster writes, but a full disk crashes a
    /// clone's server instead of failing its statement. Takes effect at each clone's next
    /// mount.
    pub cowfs_writeback_cache: bool,
}

/// How many repairs in a row a clone gets before it is marked failed.
const MAX_REPAIRS: u32 = 3;
/// Below this much free space on the agent's filesystem, clones are shown degraded.
const DISK_FULL_BELOW: u64 = 16 << 20;

/// What supervision last found wrong with a clone.
#[derive(Debug, Clone, Default)]
struct Health {
    /// Why the clone is degraded, while it is.
    degraded: Option<String>,
    /// Repairs tried since it was last healthy.
    repairs: u32,
    /// Supervision stopped what was left of it and holds it down until a repair works.
    down: bool,
    /// What went wrong, while it is down.
    fault: Option<String>,
    /// Why the last repair failed.
    last_failure: Option<String>,
}

/// A clone whose storage is attached and whose server runs.
struct Running {
    attached: Attached,
    instance: Box<dyn Instance>,
    /// Taken over from an earlier agent at this one's start ([`LocalAgent::adopt`]). Its
    /// storage is not kept at a stop: the stop may be the server finishing an operation
    /// that a crash interrupted, and after a restart a stopped clone has nothing mounted.
    adopted: bool,
}

/// A stopped clone whose storage stays attached for a while ([`AgentConfig::keep_mounts`]):
/// a cowfs mount, made durable, whose page cache a start soon after finds warm. Anything
/// else done to the clone detaches it first, so that only a start ever sees it.
struct Kept {
    attached: Attached,
    since: std::time::Instant,
}

/// At most this many stopped clones keep their mounts; the longest kept go first.
const KEPT_MOUNTS_MAX: usize = 16;

pub struct LocalAgent {
    config: AgentConfig,
    isolation: Isolation,
    /// Where clones' uids are claimed, host-wide (when clones get uids).
    registry: Option<crate::uids::Registry>,
    /// Held while a uid is chosen for a clone and recorded, so that no two get the same; it
    /// keeps the last pass over the host's processes (the uids they run as, and when).
    uids: Mutex<Option<(std::time::Instant, HashSet<u32>)>>,
    /// One agent per data directory.
    _lock: sys::lock::DirLock,
    default_driver: Driver,
    drivers: Vec<Driver>,
    /// One lock per clone: operations on one clone are serialised, others go on.
    locks: Mutex<HashMap<Name, Arc<Mutex<()>>>>,
    running: Mutex<HashMap<Name, Running>>,
    /// Stopped clones whose storage stays attached, each changed only under its clone's lock.
    kept: Mutex<HashMap<Name, Kept>>,
    /// Each clone's disk use beyond its image, and when it was measured.
    sizes: Mutex<HashMap<Name, (u64, Timestamp)>>,
    /// What supervision found wrong with each running clone.
    health: Mutex<HashMap<Name, Health>>,
    /// The `.partial` directories of the images being made, each with whether the job was
    /// told to stop ([`Agent::cancel_image_jobs`], a removal): a cancelled job fails at its
    /// next step even when no program of it was running to be stopped.
    jobs: Mutex<HashMap<PathBuf, bool>>,
    /// Whether each clone had a client connected when last looked at, and since when that
    /// has been so: a clone's idle time, for the server's idle policy.
    activity: Mutex<HashMap<Name, (bool, Timestamp)>>,
    stopping: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn internal(what: &str) -> impl FnOnce(std::io::Error) -> AgentError + '_ {
    move |e| {
        if e.raw_os_error() == Some(libc::ENOSPC) {
            AgentError::new(ErrorKind::DiskFull, format!("{what}: the disk is full"))
        } else {
            AgentError::internal(format!("{what}: {e}"))
        }
    }
}

/// How long a pass over the host's processes is used to choose clones' uids.
const PROCESS_UIDS_FRESH: std::time::Duration = std::time::Duration::from_secs(5);

impl LocalAgent {
    /// Opens the agent's data directory (creating it), recovers what a crash interrupted,
    /// brings back the clones that are meant to run, and starts measuring disk use. Clones
    /// are isolated as [`Isolation::default`] says: a uid each when this process is root.
    pub fn open(config: AgentConfig) -> Result<Arc<LocalAgent>> {
        LocalAgent::open_with(config, Isolation::default())
    }

    /// Like [`LocalAgent::open`], with clones isolated as `isolation` says.
    pub fn open_with(config: AgentConfig, isolation: Isolation) -> Result<Arc<LocalAgent>> {
        if let Some((first, last)) = isolation.clone_uids {
            if !sys::user::running_as_root() {
                return Err(AgentError::new(
                    ErrorKind::BadRequest,
                    "clones can run as uids of their own only when thinclone runs as root",
                ));
            }
            if first == 0 || first > last {
                return Err(AgentError::new(
                    ErrorKind::BadRequest,
                    format!("{first}-{last} is not a range of uids for clones: give FIRST-LAST, FIRST above 0"),
                ));
            }
        } else {
            tracing::warn!(
                user = %config.os_user.name,
                "every clone runs as the OS user {}: a clone's database superuser can read and change the files of \
                 every other clone and image, and reach their servers; run thinclone as root to give each clone an \
                 OS identity of its own",
                config.os_user.name
            );
        }
        if let CloneRole::Owner { user } = &isolation.clone_role {
            tracing::info!("clones' URLs log in as {user}, a role that owns every database but is not a superuser");
        }
        fs::create_dir_all(&config.data_dir).map_err(internal("creating the data directory"))?;
        let lock = sys::lock::DirLock::acquire(&config.data_dir)
            .map_err(|e| AgentError::new(ErrorKind::Conflict, format!("thinclone cannot start: {e}")))?;
        for dir in ["images", "clones", "run/clones", "run/images"] {
            let path = config.data_dir.join(dir);
            fs::create_dir_all(&path).map_err(internal("creating the data directory"))?;
        }
        // Clones' servers must reach their own run and data directories beneath these, and
        // the preparing server its image; nobody but root may list them.
        for dir in ["", "run", "run/clones", "run/images", "clones", "images"] {
            fs::set_permissions(config.data_dir.join(dir), fs::Permissions::from_mode(0o711))
                .map_err(internal("setting the data directory's permissions"))?;
        }
        let reflink = match crate::reflink::supported(&config.data_dir) {
            Ok(yes) => yes,
            Err(e) => {
                tracing::warn!("could not probe for reflink support, using cowfs: {e}");
                false
            }
        };
        let default_driver = if reflink { Driver::Reflink } else { Driver::Cowfs };
        let drivers = if reflink { Driver::ALL.to_vec() } else { vec![Driver::Cowfs, Driver::Copy] };
        tracing::info!(
            data_dir = %config.data_dir.display(),
            driver = %default_driver,
            "default clone driver: {}",
            if reflink {
                "reflink (the filesystem shares blocks between files)"
            } else {
                "cowfs (the filesystem cannot share blocks between files)"
            }
        );
        let registry = match isolation.clone_uids {
            Some(_) => Some(
                crate::uids::Registry::open(&isolation.registry, &config.data_dir)
                    .map_err(internal("opening the registry of clones' uids"))?,
            ),
            None => None,
        };
        let agent = Arc::new(LocalAgent {
            config,
            isolation,
            registry,
            uids: Mutex::new(None),
            _lock: lock,
            default_driver,
            drivers,
            locks: Mutex::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
            kept: Mutex::new(HashMap::new()),
            sizes: Mutex::new(HashMap::new()),
            health: Mutex::new(HashMap::new()),
            jobs: Mutex::new(HashMap::new()),
            activity: Mutex::new(HashMap::new()),
            stopping: AtomicBool::new(false),
        });
        agent.recover_images();
        agent.recover_clones();
        agent.refresh_sizes();
        let weak = Arc::downgrade(&agent);
        std::thread::Builder::new()
            .name("sizes".into())
            .spawn(move || measure_sizes(weak))
            .map_err(internal("starting the size thread"))?;
        let weak = Arc::downgrade(&agent);
        std::thread::Builder::new()
            .name("supervision".into())
            .spawn(move || supervise(weak))
            .map_err(internal("starting the supervision thread"))?;
        Ok(agent)
    }

    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// The image a clone was made from: in its location, or (a clone made before images had
    /// locations) in the data directory's `images/`.
    fn record_image_dir(&self, record: &CloneRecord) -> PathBuf {
        match &record.image_dir {
            Some(dir) => dir.clone(),
            None => self.config.data_dir.join("images").join(record.image.as_str()),
        }
    }

    /// The file that names the `.partial` directory of image `name` while it is made.
    pub(crate) fn image_job_file(&self, name: &Name) -> PathBuf {
        self.config.data_dir.join("run/images").join(format!("{name}.job"))
    }

    pub(crate) fn job_started(&self, partial: &Path) {
        lock(&self.jobs).insert(partial.to_owned(), false);
    }

    pub(crate) fn job_ended(&self, partial: &Path) {
        lock(&self.jobs).remove(partial);
    }

    /// Whether the job making `partial` was told to stop.
    pub(crate) fn job_cancelled(&self, partial: &Path) -> bool {
        lock(&self.jobs).get(partial).copied().unwrap_or(false)
    }

    /// Tells the job making `partial` to stop: its running programs now, and the job itself
    /// at its next step.
    fn cancel_job(&self, partial: &Path) {
        if let Some(cancelled) = lock(&self.jobs).get_mut(partial) {
            *cancelled = true;
        }
        stop_job(partial);
    }

    pub(crate) fn image_run_dir(&self, name: &Name) -> PathBuf {
        self.config.data_dir.join("run/images").join(name.as_str())
    }

    fn clone_dir(&self, name: &Name) -> PathBuf {
        self.config.data_dir.join("clones").join(name.as_str())
    }

    fn clone_run_dir(&self, name: &Name) -> PathBuf {
        self.config.data_dir.join("run/clones").join(name.as_str())
    }

    pub(crate) fn engine(&self, id: &str) -> Result<Arc<dyn Engine>> {
        self.config
            .engines
            .iter()
            .find(|e| e.id() == id)
            .cloned()
            .ok_or_else(|| AgentError::new(ErrorKind::BadRequest, format!("this agent has no database engine {id:?}")))
    }

    fn driver(&self, record: &CloneRecord) -> Box<dyn driver::Driver> {
        let commit_dirs = self.engine(&record.engine).map_or(&[][..], |e| e.commit_dirs());
        driver::driver(record.driver, &self.config.mount_program, commit_dirs, self.config.cowfs_writeback_cache)
    }

    fn clone_lock(&self, name: &Name) -> Arc<Mutex<()>> {
        lock(&self.locks).entry(name.clone()).or_default().clone()
    }

    /// The OS user a clone's server runs as: its own uid, or the agent's OS user.
    fn clone_user(&self, record: &CloneRecord) -> User {
        match (record.uid, self.isolation.clone_uids) {
            (Some(uid), Some(_)) => User::synthetic(uid, uid),
            _ => self.config.os_user.clone(),
        }
    }

    /// Saves a new clone's record with a uid of its own (when clones get one): the first of
    /// the range, from where the last one given on this host left off, that no other clone of
    /// the host has (uids.rs), that no user of the host has, and that no process runs as. A
    /// removed clone's uid thus comes back only after every other uid of the range. The uid
    /// is claimed and the record written under the host-wide registry's lock, which is held
    /// for one pass over the host's processes at most.
    fn save_with_new_uid(&self, record: &mut CloneRecord) -> Result<()> {
        let (Some((first, last)), Some(registry)) = (self.isolation.clone_uids, &self.registry) else {
            return self.save(record);
        };
        let mut ours = lock(&self.uids);
        let held = registry.lock().map_err(internal("locking the registry of clones' uids"))?;
        let taken: std::collections::HashSet<u32> =
            self.records().iter().filter(|r| r.name != record.name).filter_map(|r| r.uid).collect();
        let next_file = registry.next_file();
        let next = sys::untrusted::read_to_string(&next_file, 64)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
            .filter(|n| (first..=last).contains(n))
            .unwrap_or(first);
        // The uids processes run as, read when a candidate gets that far: at most once, and
        // not again for clones made within seconds of each other (a batch): a pass costs
        // about 20 µs a process, 30 ms on a host running 200 clones. What the pass guards
        // against is software outside thinclone using the range; the registry, not the
        // pass, keeps agents apart, and a uid's leftovers are ended before its clone starts
        // again and after it stops.
        if ours.as_ref().is_some_and(|(at, _)| at.elapsed() > PROCESS_UIDS_FRESH) {
            *ours = None;
        }
        let mut chosen = None;
        for uid in (next..=last).chain(first..next) {
            if taken.contains(&uid) {
                continue;
            }
            match registry.claim_of(&held, uid, &record.name).map_err(internal("reading the registry of uids"))? {
                crate::uids::Claim::Theirs(_) => continue,
                crate::uids::Claim::Free | crate::uids::Claim::Ours => {}
            }
            let in_use = &ours.get_or_insert_with(|| (std::time::Instant::now(), sys::procfs::uids_in_use())).1;
            if User::uid_is_known(uid) || in_use.contains(&uid) {
                continue;
            }
            chosen = Some(uid);
            break;
        }
        let uid = chosen.ok_or_else(|| {
            AgentError::new(
                ErrorKind::Conflict,
                format!("no uid is left for a clone in {first}-{last}; remove a clone or widen --clone-uids"),
            )
        })?;
        registry.claim(&held, uid, &record.name).map_err(internal("claiming the clone's uid"))?;
        record.uid = Some(uid);
        self.save(record)?;
        let after = if uid == last { first } else { uid + 1 };
        crate::uids::write_next(&next_file, after).map_err(internal("recording the next clone uid"))
    }

    /// Claims again the uid of a clone this agent already had (the registry may have been
    /// cleared, by a reboot). A clone whose uid another clone of the host has claimed since
    /// gets a new one, its files given to it at its next start.
    fn reclaim_uid(&self, record: &mut CloneRecord) -> Result<()> {
        let (Some(uid), Some(registry)) = (record.uid, &self.registry) else { return Ok(()) };
        let claim = {
            let _ours = lock(&self.uids);
            let held = registry.lock().map_err(internal("locking the registry of clones' uids"))?;
            let claim =
                registry.claim_of(&held, uid, &record.name).map_err(internal("reading the registry of uids"))?;
            if claim == crate::uids::Claim::Free {
                registry.claim(&held, uid, &record.name).map_err(internal("claiming the clone's uid"))?;
            }
            claim
        };
        if let crate::uids::Claim::Theirs(holder) = claim {
            tracing::error!(clone = %record.name, uid, "the clone's uid is {holder}'s now; the clone gets another");
            record.chown_pending = true;
            self.save_with_new_uid(record)?;
        }
        Ok(())
    }

    /// Gives up a removed clone's uid.
    fn release_uid(&self, record: &CloneRecord) {
        if let (Some(uid), Some(registry)) = (record.uid, &self.registry) {
            if let Err(e) = registry.release(uid, &record.name) {
                // A claim left behind is stale (its clone has no record) and is taken over.
                tracing::warn!(clone = %record.name, uid, "releasing the clone's uid: {e}");
            }
        }
    }

    fn instance_spec(&self, record: &CloneRecord) -> InstanceSpec {
        InstanceSpec {
            version: record.version.clone(),
            data_dir: driver::data_dir(&self.clone_dir(&record.name)),
            run_dir: self.clone_run_dir(&record.name),
            port: record.port,
            listen: self.config.listen.clone(),
            remote_clients: self.config.remote_clients,
            user: self.clone_user(record),
            superuser: record.superuser.clone(),
            label: format!("thinclone-{}", record.name),
            memory: self.config.memory.clone(),
            read_only: record.read_only,
        }
    }

    fn load(&self, name: &Name) -> Result<CloneRecord> {
        CloneRecord::load(&self.clone_dir(name))
            .map_err(internal("reading the clone's record"))?
            .ok_or_else(|| AgentError::new(ErrorKind::NotFound, format!("no clone named {name} on this host")))
    }

    fn save(&self, record: &CloneRecord) -> Result<()> {
        record.save(&self.clone_dir(&record.name)).map_err(internal("writing the clone's record"))
    }

    /// Attaches a clone's storage, starts its server and sets its password. A clone whose
    /// uid changed (`chown_pending`) has its files given to its uid first, through the mount
    /// (a cowfs layer keeps the owner of each file the clone made); the record then says so.
    fn bring_up(&self, record: &mut CloneRecord) -> Result<()> {
        self.bring_up_as(record, false, None)
    }

    /// [`LocalAgent::bring_up`]; `fresh` for a clone just made, whose uid was just found
    /// unused and whose storage has never been attached: nothing can be left of it to clear.
    /// `kept`: its storage, still attached since it stopped ([`LocalAgent::take_kept`]).
    fn bring_up_as(&self, record: &mut CloneRecord, fresh: bool, kept: Option<Attached>) -> Result<()> {
        let engine = self.engine(&record.engine)?;
        let image = self.record_image_dir(record);
        // Only cowfs reads the image while the clone runs; reflink and copy clones have
        // their own files.
        let clone_dir = self.clone_dir(&record.name);
        if record.driver == Driver::Cowfs && !image.is_dir() {
            if let Some(kept) = kept {
                if let Err(d) = self.driver(record).detach(&clone_dir, kept) {
                    tracing::warn!(clone = %record.name, "detaching the kept storage: {d}");
                }
            }
            return Err(location_unavailable(&image));
        }
        // Root's, and passable: its server reaches its data directory through it.
        fs::set_permissions(&clone_dir, fs::Permissions::from_mode(0o711))
            .map_err(internal("setting the clone directory's permissions"))?;
        let user = self.clone_user(record);
        // Nothing may run as the clone's uid but the server about to start.
        if !fresh {
            self.end_leftover_processes(&user)?;
        }
        let driver = self.driver(record);
        let attached = match kept {
            Some(attached) => attached,
            None if fresh => driver.attach_new(&image, &clone_dir, &user).map_err(AgentError::from_driver)?,
            None => driver.attach(&image, &clone_dir, &user).map_err(AgentError::from_driver)?,
        };
        if record.chown_pending {
            tracing::info!(clone = %record.name, uid = user.uid, "giving the clone's files to its new uid");
            if let Err(e) = sys::tree::chown(&attached.data_dir, user.uid, user.gid) {
                if let Err(d) = driver.detach(&clone_dir, attached) {
                    tracing::warn!(clone = %record.name, "detaching the storage after a failed chown: {d}");
                }
                return Err(internal("giving the clone's files to its uid")(e));
            }
        }
        let spec = self.instance_spec(record);
        let password = Secret::new(record.password.clone());
        // A read-only server cannot be given its credentials: a writable start does that,
        // and stops, and the read-only one follows.
        let writable = InstanceSpec { read_only: false, ..spec.clone() };
        let started = engine.start(&writable, START_TIMEOUT).and_then(|instance| {
            // Dropping the instance on failure stops its server.
            match &record.owner {
                None => instance.set_password(&record.superuser, &password)?,
                Some(owner) => {
                    // A password nobody is given, new at every start.
                    let hidden = random_password().map_err(engine::Error::Io)?;
                    instance.set_password(&record.superuser, &hidden)?;
                    instance.make_owner(owner, &password)?;
                }
            }
            if spec.read_only {
                instance.stop(STOP_TIMEOUT)?;
                return engine.start(&spec, START_TIMEOUT);
            }
            Ok(instance)
        });
        match started {
            Ok(instance) => {
                lock(&self.running).insert(record.name.clone(), Running { attached, instance, adopted: false });
                if record.chown_pending {
                    record.chown_pending = false;
                    self.save(record)?;
                }
                Ok(())
            }
            Err(e) => {
                if let Err(d) = driver.detach(&clone_dir, attached) {
                    tracing::warn!(clone = %record.name, "detaching the storage after a failed start: {d}");
                }
                if let Err(k) = self.end_leftover_processes(&user) {
                    tracing::warn!(clone = %record.name, "after a failed start: {k}");
                }
                Err(AgentError::from_engine("starting the clone's server", e))
            }
        }
    }

    /// Ends whatever runs as a clone's own uid (nothing for a clone that runs as the agent's
    /// OS user, whose processes are not only the clone's).
    fn end_leftover_processes(&self, user: &User) -> Result<()> {
        if !user.synthetic {
            return Ok(());
        }
        let left = sys::procfs::processes_of_uid(user.uid);
        if left.is_empty() {
            return Ok(());
        }
        tracing::info!(uid = user.uid, pids = ?left, "ending what still runs as the clone's uid");
        sys::process::kill_all_of(user).map_err(|e| AgentError::internal(format!("ending the clone's processes: {e}")))
    }

    /// Stops a clone's server and detaches its storage: ours, or what an earlier agent left.
    fn tear_down(&self, record: &CloneRecord) -> Result<()> {
        lock(&self.health).remove(&record.name);
        self.detach_kept(record)?;
        let clone_dir = self.clone_dir(&record.name);
        let driver = self.driver(record);
        let running = lock(&self.running).remove(&record.name);
        let user = self.clone_user(record);
        match running {
            Some(Running { attached, instance, .. }) => {
                if let Err(e) = instance.stop(STOP_TIMEOUT) {
                    tracing::warn!(clone = %record.name, "stopping the server: {e}");
                }
                driver.detach(&clone_dir, attached).map_err(AgentError::from_driver)?;
                self.end_leftover_processes(&user)
            }
            None => {
                self.stop_leftover_server(record)?;
                driver.clean_leftovers(&clone_dir).map_err(AgentError::from_driver)?;
                self.end_leftover_processes(&user)
            }
        }
    }

    /// Stops a server of this clone that no `Running` holds: one an earlier agent left, or
    /// one a crash caught while it started or stopped.
    fn stop_leftover_server(&self, record: &CloneRecord) -> Result<()> {
        let Ok(engine) = self.engine(&record.engine) else { return Ok(()) };
        let spec = self.instance_spec(record);
        // A server that accepts connections gets a clean stop; whatever is left is stopped
        // at once.
        if let Some(instance) = engine.adopt(&spec) {
            tracing::info!(clone = %record.name, pid = instance.pid(), "stopping a server left running");
            if let Err(e) = instance.stop(STOP_TIMEOUT) {
                tracing::warn!(clone = %record.name, "stopping a leftover server: {e}");
            }
        }
        engine.stop_stray(&spec).map_err(|e| AgentError::from_engine("stopping a server left running", e))?;
        Ok(())
    }

    /// Stops a clone's server and keeps its storage attached for [`AgentConfig::keep_mounts`]
    /// when its driver finds that worth it ([`driver::Driver::park`]); otherwise, when the
    /// server did not stop cleanly, or when this agent adopted it at its start
    /// ([`Running::adopted`]), tears it down. The caller holds the clone's lock.
    fn stop_keeping_storage(&self, record: &CloneRecord) -> Result<()> {
        if self.config.keep_mounts.is_zero() {
            return self.tear_down(record);
        }
        if lock(&self.kept).contains_key(&record.name) {
            // Stopped already, its storage kept: a second stop changes nothing.
            return Ok(());
        }
        let running = {
            let mut running = lock(&self.running);
            match running.get(&record.name) {
                Some(r) if !r.adopted => running.remove(&record.name),
                _ => None,
            }
        };
        let Some(Running { attached, instance, .. }) = running else { return self.tear_down(record) };
        lock(&self.health).remove(&record.name);
        let clone_dir = self.clone_dir(&record.name);
        let driver = self.driver(record);
        if let Err(e) = instance.stop(STOP_TIMEOUT) {
            tracing::warn!(clone = %record.name, "stopping the server: {e}");
            driver.detach(&clone_dir, attached).map_err(AgentError::from_driver)?;
            return self.tear_down(record);
        }
        if let Err(e) = self.end_leftover_processes(&self.clone_user(record)) {
            driver.detach(&clone_dir, attached).map_err(AgentError::from_driver)?;
            return Err(e);
        }
        if let Some(attached) = driver.park(&clone_dir, attached).map_err(AgentError::from_driver)? {
            tracing::debug!(clone = %record.name, "keeping the stopped clone's storage attached");
            lock(&self.kept).insert(record.name.clone(), Kept { attached, since: std::time::Instant::now() });
        }
        Ok(())
    }

    /// A stopped clone's storage, still attached and serving, taken to start it on; `None`
    /// when it has none (a kept mount that died meanwhile is detached here).
    fn take_kept(&self, record: &CloneRecord) -> Option<Attached> {
        let mut attached = lock(&self.kept).remove(&record.name)?.attached;
        let clone_dir = self.clone_dir(&record.name);
        let driver = self.driver(record);
        if driver.is_healthy(&clone_dir, &mut attached) {
            return Some(attached);
        }
        tracing::info!(clone = %record.name, "the stopped clone's kept mount died; mounting afresh");
        if let Err(e) = driver.detach(&clone_dir, attached) {
            tracing::warn!(clone = %record.name, "detaching the dead mount: {e}");
        }
        None
    }

    /// Detaches a stopped clone's kept storage, if it has any: before anything but a start
    /// touches the clone's files. The caller holds the clone's lock.
    fn detach_kept(&self, record: &CloneRecord) -> Result<()> {
        let Some(kept) = lock(&self.kept).remove(&record.name) else { return Ok(()) };
        self.driver(record).detach(&self.clone_dir(&record.name), kept.attached).map_err(AgentError::from_driver)
    }

    /// Detaches the storage of stopped clones kept longer than [`AgentConfig::keep_mounts`],
    /// and of the longest kept beyond [`KEPT_MOUNTS_MAX`]. A clone busy with an operation is
    /// left for the next round.
    fn release_kept(&self) {
        let mut kept: Vec<(Name, std::time::Instant)> =
            lock(&self.kept).iter().map(|(name, k)| (name.clone(), k.since)).collect();
        kept.sort_by_key(|(_, since)| std::cmp::Reverse(*since));
        for (n, (name, since)) in kept.into_iter().enumerate() {
            if n < KEPT_MOUNTS_MAX && since.elapsed() < self.config.keep_mounts {
                continue;
            }
            let guard = self.clone_lock(&name);
            let Ok(_op) = guard.try_lock() else { continue };
            // A removal detaches under the same lock, so the record is there; one that cannot
            // be read is tried again next round rather than dropped with its mount running.
            let Ok(record) = self.load(&name) else { continue };
            tracing::info!(clone = %name, "detaching the storage the stopped clone kept");
            if let Err(e) = self.detach_kept(&record) {
                tracing::warn!(clone = %name, "detaching the stopped clone's storage: {e}");
            }
        }
    }

    /// Puts a clone's files back to the checkpoint `record.reverting_to`, drops the
    /// checkpoints after it, and clears `reverting_to`. The clone is torn down. Running it
    /// again after a crash finishes it.
    fn revert_files(&self, record: &mut CloneRecord) -> Result<()> {
        let Some(to) = record.reverting_to.clone() else { return Ok(()) };
        let Some(at) = record.checkpoints.iter().position(|c| c.name == to) else {
            record.reverting_to = None;
            return Err(AgentError::new(ErrorKind::NotFound, format!("checkpoint {to} is gone")));
        };
        let clone_dir = self.clone_dir(&record.name);
        let all = checkpoints_dir(&clone_dir);
        let driver = self.driver(record);
        driver.recover(&clone_dir).map_err(AgentError::from_driver)?;
        driver
            .revert(&self.record_image_dir(record), &clone_dir, &all.join(to.as_str()), record.checkpoints[at].layer)
            .map_err(AgentError::from_driver)?;
        let later: Vec<CheckpointRecord> = record.checkpoints.drain(at + 1..).collect();
        record.reverting_to = None;
        self.save(record)?;
        for dropped in later {
            tracing::info!(clone = %record.name, checkpoint = %dropped.name, "removing a checkpoint made after the one reverted to");
            if let Err(e) = sys::tree::remove(&all.join(dropped.name.as_str())) {
                tracing::warn!(clone = %record.name, "removing checkpoint {}: {e}", dropped.name);
            }
        }
        Ok(())
    }

    /// Remakes a torn-down clone's storage on the image its record's `refreshing_to` names,
    /// and makes the record say so. Idempotent: recovery runs it again after a crash.
    fn rebuild_on_new_image(&self, record: &mut CloneRecord) -> Result<()> {
        let Some(to) = record.refreshing_to.clone() else { return Ok(()) };
        let image = image_dir(&to.place, &to.image);
        self.driver(record)
            .rebuild(&image, &self.clone_dir(&record.name), &[CloneRecord::FILE])
            .map_err(AgentError::from_driver)?;
        record.image = to.image;
        record.image_dir = Some(image);
        record.engine = to.engine;
        record.version = to.version;
        record.superuser = to.superuser;
        record.refreshing_to = None;
        self.forget_checkpoints(record)
    }

    /// After a failed refresh, whose old files may be gone already: the clone is made afresh
    /// from its own image, as a reset would, so that it comes back up.
    fn rebuild_on_own_image(&self, record: &mut CloneRecord) -> Result<()> {
        record.refreshing_to = None;
        self.save(record)?;
        let image = self.record_image_dir(record);
        if let Err(r) = self.driver(record).rebuild(&image, &self.clone_dir(&record.name), &[CloneRecord::FILE]) {
            record.intent = None;
            record.failure = Some(format!("a failed refresh left it without files ({r}); reset it"));
            self.save(record)?;
            return Err(AgentError::from_driver(r));
        }
        self.forget_checkpoints(record)
    }

    /// After its files were made afresh from an image (a reset, a refresh): the clone's
    /// checkpoints go (cowfs's went with the layers; every driver's go alike), with their
    /// directories, and a branch no longer comes from its origin.
    fn forget_checkpoints(&self, record: &mut CloneRecord) -> Result<()> {
        record.checkpoints.clear();
        record.origin = None;
        self.save(record)?;
        self.clean_checkpoints(record);
        Ok(())
    }

    /// Ends a reset or a revert, whose storage change gave `changed`: the clone comes back
    /// up if it was meant to run (whether or not the change worked: a failed one left it as
    /// it was), its record says how the start went, and its disk use is measured again.
    fn finish_change(&self, record: &mut CloneRecord, changed: Result<()>) -> Result<CloneReport> {
        let started = if record.desired == Desired::Running { self.bring_up(record) } else { Ok(()) };
        record.intent = None;
        match &started {
            Ok(()) => record.failure = None,
            Err(e) => record.failure = Some(e.message.clone()),
        }
        self.save(record)?;
        self.measure_soon(record);
        changed.and(started).map(|()| self.report(record))
    }

    /// Runs a template's scripts on a clone just started, before it is handed out.
    fn run_template(&self, record: &CloneRecord, spec: &CloneSpec) -> Result<()> {
        self.run_scripts(record, &spec.scripts, &spec.settings, "the clone is not made")
    }

    /// Runs `scripts` on a clone's running server with `settings` set; the first failure
    /// stops them, with `then` (what it means for the clone) in its message.
    fn run_scripts(
        &self,
        record: &CloneRecord,
        scripts: &[api::ImageScript],
        settings: &[(String, String)],
        then: &str,
    ) -> Result<()> {
        if scripts.is_empty() {
            return Ok(());
        }
        let taken = lock(&self.running).remove(&record.name);
        let Some(running) = taken else {
            return Err(AgentError::internal("the clone's server is not running for its template"));
        };
        let result = scripts.iter().try_for_each(|script| {
            running.instance.run_script(script.database.as_deref(), &script.sql, settings).map(drop).map_err(|e| {
                AgentError::new(ErrorKind::BadRequest, format!("template script {}: {e}; {then}", script.name))
            })
        });
        lock(&self.running).insert(record.name.clone(), running);
        result
    }

    /// Notes, for every clone, whether a client is connected to its port now (an
    /// established TCP connection; the agent's own go through the private socket), and
    /// since when that has been so.
    fn note_activity(&self) {
        let connections = sys::procfs::established_by_local_port();
        let now = Timestamp::now();
        let mut activity = lock(&self.activity);
        for record in self.records() {
            let running = lock(&self.running).contains_key(&record.name);
            let connected = running && connections.get(&record.port).is_some_and(|&n| n > 0);
            match activity.get_mut(&record.name) {
                Some((was, since)) if *was != connected => {
                    *was = connected;
                    *since = now;
                }
                Some(_) => {}
                None => {
                    activity.insert(record.name.clone(), (connected, now));
                }
            }
        }
    }

    /// A clone's checkpoints as the API shows them, each with the disk it keeps for itself.
    fn checkpoint_views(&self, record: &CloneRecord) -> Vec<api::Checkpoint> {
        let clone_dir = self.clone_dir(&record.name);
        let image = self.record_image_dir(record);
        let driver = self.driver(record);
        record
            .checkpoints
            .iter()
            .map(|c| api::Checkpoint {
                name: c.name.clone(),
                message: c.message.clone(),
                created_at: c.created_at,
                stored_bytes: driver
                    .checkpoint_bytes(&image, &clone_dir, &checkpoints_dir(&clone_dir).join(c.name.as_str()), c.layer)
                    .unwrap_or(0),
            })
            .collect()
    }

    /// Refuses a change to clone `name` that would drop layers a cowfs branch reads: those
    /// of its checkpoints for which `drops` is true.
    fn refuse_if_branched(&self, name: &Name, what: &str, drops: impl Fn(&Name) -> bool) -> Result<()> {
        let branches: Vec<String> = self
            .records()
            .into_iter()
            .filter(|r| r.driver == Driver::Cowfs)
            .filter_map(|r| {
                let origin = r.origin?;
                (&origin.clone == name && drops(&origin.checkpoint)).then(|| format!("{} (from {origin})", r.name))
            })
            .collect();
        if branches.is_empty() {
            return Ok(());
        }
        Err(AgentError::new(
            ErrorKind::Conflict,
            format!(
                "cannot {what} clone {name}: the cowfs clones {} are built on its checkpoints; remove or reset them first",
                branches.join(", ")
            ),
        ))
    }

    /// Removes checkpoint directories no record names: half-made ones, and those of
    /// checkpoints whose removal a crash interrupted.
    fn clean_checkpoints(&self, record: &CloneRecord) {
        let all = checkpoints_dir(&self.clone_dir(&record.name));
        let Ok(entries) = fs::read_dir(&all) else { return };
        for entry in entries.flatten() {
            let known = record.checkpoints.iter().any(|c| entry.file_name() == c.name.as_str());
            if !known {
                tracing::info!(clone = %record.name, dir = %entry.path().display(), "removing a checkpoint directory no record names");
                // A copy into it that an agent killed meanwhile left running goes first.
                driver::stop_copies_into(&entry.path());
                if let Err(e) = sys::tree::remove(&entry.path()) {
                    tracing::warn!(clone = %record.name, "removing {}: {e}", entry.path().display());
                }
            }
        }
    }

    /// Takes over the server and storage an earlier agent left running for this clone.
    fn adopt(&self, record: &CloneRecord) -> bool {
        let Ok(engine) = self.engine(&record.engine) else { return false };
        let driver = self.driver(record);
        let Some(mut attached) = driver.adopt(&self.clone_dir(&record.name)) else { return false };
        if !driver.is_healthy(&self.clone_dir(&record.name), &mut attached) {
            return false;
        }
        let Some(instance) = engine.adopt(&self.instance_spec(record)) else { return false };
        tracing::info!(clone = %record.name, pid = instance.pid(), "adopted the clone's running server");
        lock(&self.running).insert(record.name.clone(), Running { attached, instance, adopted: true });
        true
    }

    fn report(&self, record: &CloneRecord) -> CloneReport {
        let running = lock(&self.running).contains_key(&record.name);
        let degraded = lock(&self.health).get(&record.name).and_then(|h| h.degraded.clone());
        let (state, message) = match (running, record.desired) {
            (true, _) if degraded.is_some() => (CloneState::Degraded, degraded),
            (true, _) => (CloneState::Running, None),
            (false, Desired::Stopped) => (CloneState::Stopped, None),
            // Supervision holds it down while it repairs it.
            (false, Desired::Running) if degraded.is_some() => (CloneState::Degraded, degraded),
            (false, Desired::Running) => (
                CloneState::Failed,
                Some(record.failure.clone().unwrap_or_else(|| "its server is not running; start it".into())),
            ),
        };
        let size = lock(&self.sizes).get(&record.name).copied();
        let idle_since = match lock(&self.activity).get(&record.name) {
            Some(&(connected, since)) => (!connected).then_some(since),
            // Not looked at yet since this agent started: idle from now on, at the most.
            None => None,
        };
        CloneReport {
            name: record.name.clone(),
            state,
            message,
            stored_bytes: size.map(|s| s.0),
            sizes_at: size.map(|s| s.1),
            user: record.owner.clone(),
            idle_since,
            image: Some(record.image.clone()),
        }
    }

    /// Measures a clone's disk use now, or, when it has checkpoints (whose own bytes take a
    /// walk of its files' extents, and the image's, to measure), forgets the old figure so
    /// that the background measurement, or the next look at the clone alone, takes it.
    fn measure_soon(&self, record: &CloneRecord) {
        if record.checkpoints.is_empty() {
            self.measure(record);
        } else {
            lock(&self.sizes).remove(&record.name);
        }
    }

    /// Measures one clone's disk use now.
    fn measure(&self, record: &CloneRecord) {
        let clone_dir = self.clone_dir(&record.name);
        // What its checkpoints keep for themselves.
        let checkpoints: u64 = self.checkpoint_views(record).iter().map(|c| c.stored_bytes).sum();
        match self.driver(record).stored_bytes(&clone_dir).map(|b| b + checkpoints) {
            Ok(bytes) => {
                lock(&self.sizes).insert(record.name.clone(), (bytes, Timestamp::now()));
            }
            Err(e) => tracing::debug!(clone = %record.name, "measuring disk use: {e}"),
        }
    }

    fn records(&self) -> Vec<CloneRecord> {
        let Ok(entries) = fs::read_dir(self.config.data_dir.join("clones")) else { return Vec::new() };
        let mut records: Vec<CloneRecord> =
            entries.flatten().filter_map(|e| CloneRecord::load(&e.path()).ok().flatten()).collect();
        records.sort_by(|a, b| a.name.cmp(&b.name));
        records
    }

    fn refresh_sizes(&self) {
        for record in self.records() {
            if self.stopping.load(Ordering::Relaxed) {
                return;
            }
            self.measure(&record);
        }
    }

    /// Lets go of every clone, as at shutdown. With `stop_clones`, their servers and mounts
    /// are stopped (their records still say they are meant to run, so the next start brings
    /// them back); otherwise they run on, for the next start to adopt.
    pub fn shutdown(&self, stop_clones: bool) {
        self.stopping.store(true, Ordering::Relaxed);
        for record in self.records() {
            let guard = self.clone_lock(&record.name);
            let _op = lock(&guard);
            // Kept storage of stopped clones goes either way: nothing comes back for it.
            if let Err(e) = self.detach_kept(&record) {
                tracing::warn!(clone = %record.name, "detaching a stopped clone's storage at shutdown: {e}");
            }
            if stop_clones {
                if let Err(e) = self.tear_down(&record) {
                    tracing::warn!(clone = %record.name, "stopping at shutdown: {e}");
                }
            } else if let Some(running) = lock(&self.running).remove(&record.name) {
                running.instance.detach();
                // The mount process runs on too: dropping our handle neither stops nor reaps it.
                drop(running.attached);
            }
        }
    }

    /// Removes images that a crash left half-made, and their temporary servers' files.
    fn recover_images(&self) {
        let Ok(entries) = fs::read_dir(self.config.data_dir.join("images")) else { return };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().ends_with(".partial") {
                tracing::warn!(path = %entry.path().display(), "removing an image left half-made by a crash");
                if let Err(e) = sys::tree::remove(&entry.path()) {
                    tracing::error!("removing {}: {e}", entry.path().display());
                }
            }
        }
        let runs = self.config.data_dir.join("run/images");
        // Each job names its `.partial` directory, in whatever location it was.
        if let Ok(entries) = fs::read_dir(&runs) {
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().is_none_or(|e| e != "job") {
                    continue;
                }
                if let Ok(partial) = sys::untrusted::read_to_string(&path, 4096) {
                    let partial = PathBuf::from(partial.trim());
                    if partial.is_absolute() && partial.to_string_lossy().ends_with(".partial") && partial.exists() {
                        for pid in sys::procfs::processes_under(&partial) {
                            tracing::warn!(pid, "stopping an image job left running");
                            // SAFETY: kill has no memory-safety preconditions; the process's
                            // command line names a half-made image of ours.
                            unsafe { libc::kill(pid, libc::SIGQUIT) };
                        }
                        tracing::warn!(path = %partial.display(), "removing an image left half-made by a crash");
                        if let Err(e) = sys::tree::remove(&partial) {
                            tracing::error!("removing {}: {e}", partial.display());
                        }
                    }
                }
                // Left behind, it only makes the next start look at the same job again.
                if let Err(e) = fs::remove_file(&path) {
                    tracing::warn!("removing {}: {e}", path.display());
                }
            }
        }
        if let Ok(entries) = fs::read_dir(&runs) {
            for entry in entries.flatten() {
                // A preparing server a crash left running is stopped before its files go.
                for pid in sys::procfs::processes_under(&self.partial_dir_of_run(&entry.path())) {
                    tracing::warn!(pid, "stopping a preparing server left running");
                    // SAFETY: kill has no memory-safety preconditions; the process's command
                    // line names a half-made image of ours.
                    unsafe { libc::kill(pid, libc::SIGQUIT) };
                }
                let _ = sys::tree::remove(&entry.path());
            }
        }
    }

    fn partial_dir_of_run(&self, run_dir: &Path) -> PathBuf {
        let name = run_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        self.config.data_dir.join("images").join(format!("{name}.partial"))
    }

    /// Finishes or rolls back each clone's interrupted operation, then brings back the
    /// clones that are meant to run: adopted where their server and storage still run,
    /// started afresh otherwise. A clone that fails to come back is kept, failed.
    fn recover_clones(&self) {
        let Ok(entries) = fs::read_dir(self.config.data_dir.join("clones")) else { return };
        for entry in entries.flatten() {
            let dir = entry.path();
            match CloneRecord::load(&dir) {
                Ok(Some(record)) => {
                    if let Err(e) = self.recover_clone(record) {
                        tracing::error!(clone_dir = %dir.display(), "recovering the clone: {e}");
                    }
                }
                Ok(None) => {
                    // Made by a create that a crash stopped before its record was written:
                    // it was never handed out.
                    tracing::warn!(path = %dir.display(), "removing a clone directory without a record");
                    // Only cowfs leaves anything running (a mount).
                    if let Some(name) = dir.file_name().and_then(|n| Name::new(&n.to_string_lossy()).ok()) {
                        let _ = sys::tree::remove(&self.clone_run_dir(&name));
                    }
                    if let Err(e) =
                        driver::driver(Driver::Cowfs, &self.config.mount_program, &[], false).clean_leftovers(&dir)
                    {
                        tracing::error!(path = %dir.display(), "stopping what it left running: {e}");
                    }
                    if let Err(e) = sys::tree::remove(&dir) {
                        tracing::error!(path = %dir.display(), "removing it: {e}");
                    }
                }
                Err(e) => tracing::error!(path = %dir.display(), "unreadable clone record, left alone: {e}"),
            }
        }
    }

    fn recover_clone(&self, mut record: CloneRecord) -> Result<()> {
        let name = record.name.clone();
        let clone_dir = self.clone_dir(&name);
        let driver = self.driver(&record);
        match record.intent {
            Some(Intent::Create) if !record.ever_ready => {
                tracing::warn!(clone = %name, "removing a clone whose creation was interrupted (it was never ready)");
                self.tear_down(&record)?;
                sys::tree::remove(&self.clone_run_dir(&name)).map_err(internal("removing the run directory"))?;
                driver.destroy(&clone_dir).map_err(AgentError::from_driver)?;
                self.release_uid(&record);
                return Ok(());
            }
            Some(Intent::Delete) => {
                tracing::info!(clone = %name, "finishing an interrupted removal");
                self.tear_down(&record)?;
                sys::tree::remove(&self.clone_run_dir(&name)).map_err(internal("removing the run directory"))?;
                driver.destroy(&clone_dir).map_err(AgentError::from_driver)?;
                self.release_uid(&record);
                return Ok(());
            }
            Some(Intent::Stop) => {
                tracing::info!(clone = %name, "finishing an interrupted stop");
                self.tear_down(&record)?;
                record.desired = Desired::Stopped;
            }
            Some(Intent::Reset) => {
                tracing::info!(clone = %name, "finishing an interrupted reset");
                self.tear_down(&record)?;
                driver.recover(&clone_dir).map_err(AgentError::from_driver)?;
                driver.reset(&self.record_image_dir(&record), &clone_dir).map_err(AgentError::from_driver)?;
            }
            Some(Intent::Refresh) => {
                tracing::info!(clone = %name, "finishing an interrupted refresh");
                self.tear_down(&record)?;
                if let Err(e) = self.rebuild_on_new_image(&mut record) {
                    tracing::warn!(clone = %name, "finishing the refresh failed ({e}); resetting it on {}", record.image);
                    self.rebuild_on_own_image(&mut record)?;
                }
            }
            Some(Intent::Start) | Some(Intent::Create) => {
                self.tear_down(&record)?;
            }
            Some(Intent::Checkpoint) => {
                // The server may be paused: it goes on, and is adopted as it runs.
                tracing::info!(clone = %name, "ending a checkpoint a crash interrupted");
                let server = self.engine(&record.engine).ok().and_then(|e| e.adopt(&self.instance_spec(&record)));
                let user = self.clone_user(&record);
                crate::pause::resume(server.as_ref().map(|i| i.pid() as i32), user.synthetic.then_some(user.uid));
                if let Some(server) = server {
                    server.detach();
                }
                record.intent = None;
            }
            Some(Intent::Revert) => {
                tracing::info!(clone = %name, "finishing an interrupted revert");
                self.tear_down(&record)?;
                if let Err(e) = self.revert_files(&mut record) {
                    // Shown on the clone, which stays down: its files are half-way.
                    record.failure = Some(format!("an interrupted revert could not be finished: {e}; revert it again"));
                    record.intent = None;
                    self.save(&record)?;
                    return Err(e);
                }
            }
            None => {}
        }
        self.clean_checkpoints(&record);
        driver.recover(&clone_dir).map_err(AgentError::from_driver)?;
        let mut had_intent = record.intent.take().is_some();
        if record.uid.is_none() && self.isolation.clone_uids.is_some() {
            // Made before clones had uids of their own: it gets one, and its server, which
            // runs as the agent's OS user, is started again as it, its files given to it.
            tracing::info!(clone = %name, "giving the clone an OS identity of its own; its server restarts");
            self.tear_down(&record)?;
            record.chown_pending = true;
            self.save_with_new_uid(&mut record)?;
            had_intent = true;
        } else if self.isolation.clone_uids.is_some() {
            let before = record.uid;
            self.reclaim_uid(&mut record)?;
            if record.uid != before {
                // Its server, if it still runs, runs as a uid that is another clone's now.
                had_intent = true;
            }
        }
        self.save(&record)?;
        match record.desired {
            Desired::Stopped => self.tear_down(&record),
            Desired::Running => {
                if !had_intent && self.adopt(&record) {
                    return Ok(());
                }
                self.tear_down(&record)?;
                tracing::info!(clone = %name, port = record.port, "bringing the clone back");
                match self.bring_up(&mut record) {
                    Ok(()) => {
                        record.failure = None;
                        record.ever_ready = true;
                        self.save(&record)
                    }
                    Err(e) if e.kind == ErrorKind::Unavailable => {
                        // Its image's location is not mounted yet: supervision brings it back
                        // once it is.
                        tracing::warn!(clone = %name, "{e}");
                        lock(&self.health).insert(
                            name.clone(),
                            Health {
                                degraded: Some(e.message.clone()),
                                down: true,
                                fault: Some(e.message.clone()),
                                ..Health::default()
                            },
                        );
                        Ok(())
                    }
                    Err(e) => {
                        tracing::error!(clone = %name, "could not bring the clone back: {e}");
                        record.failure = Some(e.message.clone());
                        self.save(&record)
                    }
                }
            }
        }
    }
}

impl LocalAgent {
    /// Checks every running clone once: its storage (a mount whose process lives and
    /// answers), its server, and the free space of the agent's filesystem. A clone found
    /// wrong is shown degraded with the reason, and repaired (storage remounted, server
    /// started again; the database's crash recovery then runs) at most `MAX_REPAIRS` times
    /// in a row before it is marked failed. A full disk is only shown: the clone works again
    /// once space is freed.
    fn supervise_once(&self) {
        // The rule cowfs mounts refuse writes by (a reserve of the filesystem), for every
        // clone on the agent's filesystem, whatever its driver.
        let disk_full = match cowfs::layer_space(&self.config.data_dir) {
            Ok(space) if space.is_full() || space.available < DISK_FULL_BELOW => Some(format!(
                "disk full: {} MiB free on {}; free space and the clone works again",
                space.available >> 20,
                self.config.data_dir.display()
            )),
            _ => None,
        };
        let host_full = disk_full.clone();
        self.note_activity();
        // The running clones, and those supervision took down and means to bring back.
        let mut names: Vec<Name> = lock(&self.running).keys().cloned().collect();
        names.extend(lock(&self.health).iter().filter(|(_, h)| h.down).map(|(n, _)| n.clone()));
        names.sort();
        names.dedup();
        for name in names {
            if self.stopping.load(Ordering::Relaxed) {
                return;
            }
            let guard = self.clone_lock(&name);
            // An operation under way on the clone has it in hand.
            let Ok(_op) = guard.try_lock() else { continue };
            let Ok(mut record) = self.load(&name) else { continue };
            // A cowfs mount says when it refused a write for lack of room, and when room came
            // back: it keeps a reserve, so the filesystem alone never looks quite full.
            let disk_full = host_full.clone().or_else(|| {
                (record.driver == Driver::Cowfs && cowfs_out_of_room(&self.clone_dir(&name))).then(|| {
                    format!(
                        "disk full: its storage refused writes for lack of room on {}; free space and the clone \
                         works again",
                        self.config.data_dir.display()
                    )
                })
            });
            let mut health = lock(&self.health).get(&name).cloned().unwrap_or_default();
            // Its image's location (a share) is gone: nothing can read the image now.
            let image = self.record_image_dir(&record);
            let location_gone = record.driver == Driver::Cowfs && !image.is_dir();
            let fault = if health.down {
                match (&health.fault, location_gone) {
                    (Some(f), false) if f.starts_with("image location unavailable") => {
                        Some("its image's location was unavailable".to_owned())
                    }
                    (_, true) => Some(location_unavailable(&image).message),
                    (f, false) => f.clone(),
                }
            } else if location_gone {
                Some(location_unavailable(&image).message)
            } else {
                let mut running = lock(&self.running);
                let Some(r) = running.get_mut(&name) else { continue };
                if !self.driver(&record).is_healthy(&self.clone_dir(&name), &mut r.attached) {
                    Some("its storage (the cowfs mount) died".to_owned())
                } else if !r.instance.is_running() {
                    Some("its database server exited".to_owned())
                } else {
                    None
                }
            };
            let Some(fault) = fault else {
                match &disk_full {
                    None => {
                        if health.degraded.is_some() {
                            tracing::info!(clone = %name, "healthy again");
                        }
                        lock(&self.health).remove(&name);
                    }
                    Some(full) => {
                        health.degraded = Some(full.clone());
                        lock(&self.health).insert(name.clone(), health);
                    }
                }
                continue;
            };
            let reason = match &disk_full {
                Some(full) => format!("{fault}; {full}"),
                None => fault.clone(),
            };
            if health.degraded.as_deref() != Some(reason.as_str()) && !health.down {
                tracing::warn!(clone = %name, "degraded: {reason}");
            }
            if !health.down {
                // What is left of it goes; supervision holds it down until it is repaired.
                if let Err(e) = self.tear_down(&record) {
                    tracing::warn!(clone = %name, "stopping what is left: {e}");
                }
                health.down = true;
                health.fault = Some(fault.clone());
            }
            health.degraded = Some(match &health.last_failure {
                Some(failed) => format!("{reason}; the last repair failed: {failed}"),
                None => reason.clone(),
            });
            lock(&self.health).insert(name.clone(), health.clone());
            // Repairs wait for space, and for the image's location: a start would only fail.
            if !self.config.repair || disk_full.is_some() || location_gone {
                continue;
            }
            if health.repairs >= MAX_REPAIRS {
                tracing::error!(clone = %name, "giving up after {MAX_REPAIRS} repairs: {reason}");
                lock(&self.health).remove(&name);
                record.failure = Some(format!(
                    "{reason}; {MAX_REPAIRS} repairs failed (the last: {}); start it again",
                    health.last_failure.as_deref().unwrap_or("unknown")
                ));
                if let Err(e) = self.save(&record) {
                    tracing::error!(clone = %name, "{e}");
                }
                continue;
            }
            tracing::info!(clone = %name, attempt = health.repairs + 1, "repairing: {reason}");
            let repaired = self.tear_down(&record).and_then(|()| self.bring_up(&mut record));
            // A start that ran out of room (crash recovery writes) waits for more, uncounted;
            // so does one whose location went again.
            if !matches!(&repaired, Err(e) if e.kind == ErrorKind::DiskFull || e.kind == ErrorKind::Unavailable) {
                health.repairs += 1;
            }
            match repaired {
                Ok(()) => {
                    tracing::info!(clone = %name, "repaired");
                    lock(&self.health).remove(&name);
                }
                Err(e) => {
                    tracing::warn!(clone = %name, "the repair failed: {e}");
                    // Tried again at the next rounds, up to MAX_REPAIRS in all.
                    health.last_failure = Some(e.message.clone());
                    health.degraded = Some(format!("{reason}; the last repair failed: {}", e.message));
                    lock(&self.health).insert(name.clone(), health);
                }
            }
        }
    }
}

/// Where a clone's checkpoints keep their files: one directory each, by name.
fn checkpoints_dir(clone_dir: &Path) -> PathBuf {
    clone_dir.join("checkpoints")
}

/// Whether a cowfs mount's log says that it refuses writes for lack of room now: its last
/// `cowfs: ENOSPC` line is later than its last `cowfs: space available again` line.
fn cowfs_out_of_room(clone_dir: &Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut log) = fs::File::open(clone_dir.join("mount.log")) else { return false };
    let len = log.metadata().map_or(0, |m| m.len());
    // The end of the log is enough: an episode's last line is what counts.
    if log.seek(SeekFrom::Start(len.saturating_sub(64 << 10))).is_err() {
        return false;
    }
    let mut tail = Vec::new();
    if log.read_to_end(&mut tail).is_err() {
        return false;
    }
    let tail = String::from_utf8_lossy(&tail);
    match (tail.rfind("cowfs: ENOSPC"), tail.rfind("cowfs: space available again")) {
        (Some(full), Some(back)) => full > back,
        (Some(_), None) => true,
        _ => false,
    }
}

/// Stops what copies or prepares an image at `partial` (cp, a base backup, the preparing
/// server: each names the directory on its command line). The job then fails, and its
/// thread removes what it made.
fn stop_job(partial: &Path) {
    for pid in sys::procfs::processes_under(partial) {
        tracing::info!(pid, path = %partial.display(), "stopping an image job");
        // SAFETY: kill has no memory-safety preconditions; the process's command line names a
        // half-made image of ours. SIGQUIT is a database server's immediate shutdown, and ends
        // a copying program.
        unsafe { libc::kill(pid, libc::SIGQUIT) };
    }
}

/// The fault of a clone whose image is not there: its location (a share) is not mounted.
fn location_unavailable(image: &Path) -> AgentError {
    AgentError::new(
        ErrorKind::Unavailable,
        format!(
            "image location unavailable: {} is missing on this host (is the share mounted?); the clone works \
             again, with its data, once it is back",
            image.display()
        ),
    )
}

/// 24 random bytes as hex.
fn random_password() -> std::io::Result<Secret> {
    let mut bytes = [0u8; 24];
    std::io::Read::read_exact(&mut fs::File::open("/dev/urandom")?, &mut bytes)?;
    Ok(Secret::new(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()))
}

/// Supervises every running clone every `supervise_interval`, until the agent is dropped.
fn supervise(agent: Weak<LocalAgent>) {
    loop {
        let interval = match agent.upgrade() {
            Some(a) if !a.stopping.load(Ordering::Relaxed) => a.config.supervise_interval,
            _ => return,
        };
        std::thread::sleep(interval);
        match agent.upgrade() {
            Some(a) if !a.stopping.load(Ordering::Relaxed) => {
                a.supervise_once();
                a.release_kept();
            }
            _ => return,
        }
    }
}

/// Measures every clone's disk use every `size_interval`, until the agent is dropped.
fn measure_sizes(agent: Weak<LocalAgent>) {
    loop {
        let interval = match agent.upgrade() {
            Some(a) if !a.stopping.load(Ordering::Relaxed) => a.config.size_interval,
            _ => return,
        };
        std::thread::sleep(interval);
        match agent.upgrade() {
            Some(a) if !a.stopping.load(Ordering::Relaxed) => a.refresh_sizes(),
            _ => return,
        }
    }
}

impl Agent for LocalAgent {
    fn info(&self) -> Result<AgentInfo> {
        Ok(AgentInfo {
            default_driver: self.default_driver,
            drivers: self.drivers.clone(),
            host: self.config.host.clone(),
            free_bytes: sys::space::free_bytes(&self.config.data_dir).unwrap_or(0),
            engines: self
                .config
                .engines
                .iter()
                .map(|e| EngineVersions { engine: e.id().to_owned(), versions: e.installed_versions() })
                .collect(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        })
    }

    fn check_source_dir(
        &self,
        path: &str,
        snapshot: bool,
        roots: &[String],
        place: &ImagePlace,
    ) -> Result<SourceFacts> {
        crate::images::check_source_dir(self, path, snapshot, roots, place)
    }

    fn check_source_url(&self, url: &str) -> Result<SourceFacts> {
        crate::images::check_source_url(self, url)
    }

    fn check_source(&self, source: &ImageSource, place: &ImagePlace) -> Result<SourceFacts> {
        crate::images::check_source(self, source, place)
    }

    fn make_image(
        &self,
        name: &Name,
        place: &ImagePlace,
        source: &ImageSource,
        transform: &ImageTransform,
        progress: &(dyn Fn(u64, u64) + Sync),
        step: &(dyn Fn(&str) + Sync),
    ) -> Result<MadeImage> {
        crate::images::make_image(self, name, place, source, transform, progress, step)
    }

    fn remove_image(&self, name: &Name, place: &ImagePlace) -> Result<()> {
        check_place(place)?;
        // A job still making it (a retry after a lost answer) is stopped first.
        let partial = partial_dir(place, name);
        if lock(&self.jobs).contains_key(&partial) {
            self.cancel_job(&partial);
        }
        sys::tree::remove(&partial).map_err(internal("removing what is left of the image's copy"))?;
        sys::tree::remove(&image_dir(place, name)).map_err(internal("removing the image's files"))
    }

    fn cancel_image_job(&self, name: &Name, place: &ImagePlace) -> Result<bool> {
        check_place(place)?;
        let partial = partial_dir(place, name);
        let running = lock(&self.jobs).contains_key(&partial);
        if running {
            tracing::info!(image = %name, "stopping the job making the image, as asked");
            self.cancel_job(&partial);
        }
        Ok(running)
    }

    fn cancel_image_jobs(&self) {
        let jobs: Vec<PathBuf> = lock(&self.jobs).keys().cloned().collect();
        for partial in jobs {
            self.cancel_job(&partial);
        }
    }

    fn port_is_free(&self, port: u16) -> Result<bool> {
        let addresses: Vec<IpAddr> =
            if self.config.listen.is_empty() { vec![IpAddr::from([127, 0, 0, 1])] } else { self.config.listen.clone() };
        Ok(addresses.iter().all(|a| std::net::TcpListener::bind((*a, port)).is_ok()))
    }

    fn create_clone(&self, spec: &CloneSpec) -> Result<CloneReport> {
        let guard = self.clone_lock(&spec.name);
        let _op = lock(&guard);
        let clone_dir = self.clone_dir(&spec.name);
        if CloneRecord::load(&clone_dir).map_err(internal("reading the clone's record"))?.is_some() {
            return Err(AgentError::new(
                ErrorKind::Conflict,
                format!("clone {} already exists on this host", spec.name),
            ));
        }
        check_place(&spec.place)?;
        let image = image_dir(&spec.place, &spec.image);
        if !image.is_dir() {
            return Err(AgentError::new(
                ErrorKind::NotFound,
                format!(
                    "no image named {} in location {} ({}) on this host",
                    spec.image, spec.place.location, spec.place.path
                ),
            ));
        }
        if spec.driver == Driver::Copy {
            crate::images::check_room(
                self,
                &format!("a full copy of image {}", spec.image),
                sys::tree::size(&image).bytes,
            )?;
        }
        // A branch: the checkpoint it starts from, made now if asked, and kept from changing
        // (its clone locked) while the branch's storage is made from it.
        if let Some(origin) = spec.origin.as_ref().filter(|o| o.make_checkpoint) {
            self.checkpoint_clone(&origin.clone, &origin.checkpoint, Some(&format!("made for clone {}", spec.name)))?;
        }
        let origin_guard = spec.origin.as_ref().map(|o| self.clone_lock(&o.clone));
        let _origin_op = origin_guard.as_ref().map(|g| lock(g));
        let from = match &spec.origin {
            Some(origin) => {
                let record = self.load(&origin.clone)?;
                // Its layers are read unmounted.
                self.detach_kept(&record)?;
                let checkpoint = record.checkpoints.iter().find(|c| c.name == origin.checkpoint).ok_or_else(|| {
                    AgentError::new(
                        ErrorKind::NotFound,
                        format!("clone {} has no checkpoint named {}", origin.clone, origin.checkpoint),
                    )
                })?;
                if record.driver != spec.driver {
                    return Err(AgentError::new(
                        ErrorKind::BadRequest,
                        format!("a branch of clone {} uses its driver, {}", origin.clone, record.driver),
                    ));
                }
                let origin_dir = self.clone_dir(&origin.clone);
                if spec.driver == Driver::Copy {
                    let files = checkpoints_dir(&origin_dir).join(checkpoint.name.as_str());
                    crate::images::check_room(
                        self,
                        &format!("a full copy of checkpoint {origin}"),
                        sys::tree::size(&files).bytes,
                    )?;
                }
                Some((origin_dir, checkpoint.clone()))
            }
            None => None,
        };
        // A directory without a record is what a crash left before the record was written.
        sys::tree::remove(&clone_dir).map_err(internal("clearing the clone's directory"))?;
        fs::create_dir(&clone_dir).map_err(internal("making the clone's directory"))?;
        fs::set_permissions(&clone_dir, fs::Permissions::from_mode(0o711))
            .map_err(internal("setting the clone directory's permissions"))?;
        let mut record = CloneRecord {
            name: spec.name.clone(),
            image: spec.image.clone(),
            engine: spec.engine.clone(),
            version: spec.version.clone(),
            superuser: spec.superuser.clone(),
            driver: spec.driver,
            port: spec.port,
            password: spec.password.clone(),
            desired: Desired::Running,
            ever_ready: false,
            intent: Some(Intent::Create),
            failure: None,
            uid: None,
            owner: match &self.isolation.clone_role {
                CloneRole::Superuser => None,
                CloneRole::Owner { user } => Some(user.clone()),
            },
            chown_pending: false,
            image_dir: Some(image.clone()),
            checkpoints: Vec::new(),
            reverting_to: None,
            refreshing_to: None,
            origin: spec.origin.clone(),
            read_only: spec.read_only,
        };
        // Recorded first: a crash from here on is cleaned up by recovery.
        self.save_with_new_uid(&mut record)?;
        let driver = self.driver(&record);
        let storage = match &from {
            Some((origin_dir, checkpoint)) => {
                // Its files are the origin's, and its uid's from its first start.
                record.chown_pending = true;
                let files = checkpoints_dir(origin_dir).join(checkpoint.name.as_str());
                driver.branch(&image, origin_dir, &files, checkpoint.layer, &clone_dir)
            }
            None => driver.create(&image, &clone_dir),
        };
        let made = storage
            .map_err(AgentError::from_driver)
            .and_then(|()| self.bring_up_as(&mut record, true, None))
            .and_then(|()| self.run_template(&record, spec));
        if let Err(e) = made {
            if let Err(t) = self.tear_down(&record) {
                tracing::warn!(clone = %spec.name, "stopping after a failed create: {t}");
            }
            match driver.destroy(&clone_dir) {
                Ok(()) => self.release_uid(&record),
                Err(d) => tracing::error!(clone = %spec.name, "removing after a failed create: {d}"),
            }
            let _ = sys::tree::remove(&self.clone_run_dir(&spec.name));
            return Err(e);
        }
        record.ever_ready = true;
        record.intent = None;
        self.save(&record)?;
        self.measure(&record);
        Ok(self.report(&record))
    }

    fn start_clone(&self, name: &Name) -> Result<CloneReport> {
        let guard = self.clone_lock(name);
        let _op = lock(&guard);
        let mut record = self.load(name)?;
        let healthy = {
            let mut running = lock(&self.running);
            match running.get_mut(name) {
                Some(r) => {
                    r.instance.is_running() && self.driver(&record).is_healthy(&self.clone_dir(name), &mut r.attached)
                }
                None => false,
            }
        };
        if healthy && record.desired == Desired::Running {
            return Ok(self.report(&record));
        }
        record.intent = Some(Intent::Start);
        record.desired = Desired::Running;
        self.save(&record)?;
        // Whatever is left of dead processes goes first, so that the start is real; storage
        // kept attached since a stop is started on as it is.
        let result = match self.take_kept(&record) {
            Some(kept) => match self.stop_leftover_server(&record) {
                Ok(()) => self.bring_up_as(&mut record, false, Some(kept)),
                Err(e) => {
                    if let Err(d) = self.driver(&record).detach(&self.clone_dir(name), kept) {
                        tracing::warn!(clone = %name, "detaching the kept storage: {d}");
                    }
                    Err(e)
                }
            },
            None => self.tear_down(&record).and_then(|()| self.bring_up(&mut record)),
        };
        record.intent = None;
        match &result {
            Ok(()) => {
                record.failure = None;
                record.ever_ready = true;
            }
            Err(e) => record.failure = Some(e.message.clone()),
        }
        self.save(&record)?;
        result.map(|()| self.report(&record))
    }

    fn stop_clone(&self, name: &Name) -> Result<CloneReport> {
        let guard = self.clone_lock(name);
        let _op = lock(&guard);
        let mut record = self.load(name)?;
        record.intent = Some(Intent::Stop);
        record.desired = Desired::Stopped;
        self.save(&record)?;
        self.stop_keeping_storage(&record)?;
        record.intent = None;
        record.failure = None;
        self.save(&record)?;
        Ok(self.report(&record))
    }

    fn reset_clone(&self, name: &Name) -> Result<CloneReport> {
        let guard = self.clone_lock(name);
        let _op = lock(&guard);
        let mut record = self.load(name)?;
        self.refuse_if_branched(name, "reset", |_| true)?;
        if record.driver == Driver::Copy {
            let image = self.record_image_dir(&record);
            crate::images::check_room(
                self,
                &format!("a fresh copy of image {}", record.image),
                sys::tree::size(&image).bytes,
            )?;
        }
        record.intent = Some(Intent::Reset);
        self.save(&record)?;
        self.tear_down(&record)?;
        let clone_dir = self.clone_dir(name);
        // A failed copy (a full disk) leaves the clone as it was; it comes back up either way.
        let reset =
            self.driver(&record).reset(&self.record_image_dir(&record), &clone_dir).map_err(AgentError::from_driver);
        if reset.is_ok() {
            self.forget_checkpoints(&mut record)?;
        }
        self.finish_change(&mut record, reset)
    }

    fn refresh_clone(&self, name: &Name, to: &api::agent::RefreshTarget) -> Result<CloneReport> {
        let guard = self.clone_lock(name);
        let _op = lock(&guard);
        let mut record = self.load(name)?;
        self.refuse_if_branched(name, "refresh", |_| true)?;
        check_place(&to.place)?;
        let image = image_dir(&to.place, &to.image);
        if !image.is_dir() {
            return Err(AgentError::new(
                ErrorKind::NotFound,
                format!(
                    "no image named {} in location {} ({}) on this host",
                    to.image, to.place.location, to.place.path
                ),
            ));
        }
        self.engine(&to.engine)?
            .check_installed(&to.version)
            .map_err(|e| AgentError::from_engine(&format!("refreshing clone {name} on image {}", to.image), e))?;
        if record.driver == Driver::Copy {
            crate::images::check_room(
                self,
                &format!("a full copy of image {}", to.image),
                sys::tree::size(&image).bytes,
            )?;
        }
        record.intent = Some(Intent::Refresh);
        record.refreshing_to = Some(to.clone());
        self.save(&record)?;
        self.tear_down(&record)?;
        let refreshed = self.rebuild_on_new_image(&mut record);
        if let Err(e) = &refreshed {
            tracing::warn!(clone = %name, "refreshing onto image {} failed ({e}); resetting it on {}", to.image, record.image);
            self.rebuild_on_own_image(&mut record)?;
        }
        let report = self.finish_change(&mut record, refreshed)?;
        // The template it was made with runs again on its new files (a running clone only:
        // a stopped one's runs at no later start).
        if lock(&self.running).contains_key(name) {
            self.run_scripts(
                &record,
                &to.scripts,
                &to.settings,
                "the clone is on the new image, without what the rest of its template does",
            )?;
        }
        Ok(report)
    }

    fn delete_clone(&self, name: &Name) -> Result<()> {
        let guard = self.clone_lock(name);
        let _op = lock(&guard);
        self.refuse_if_branched(name, "remove", |_| true)?;
        let clone_dir = self.clone_dir(name);
        let Some(mut record) = CloneRecord::load(&clone_dir).map_err(internal("reading the clone's record"))? else {
            return sys::tree::remove(&clone_dir).map_err(internal("removing the clone's directory"));
        };
        record.intent = Some(Intent::Delete);
        self.save(&record)?;
        self.tear_down(&record)?;
        // The record goes last, with the clone's directory: until then a crash leaves
        // something that recovery finishes removing.
        sys::tree::remove(&self.clone_run_dir(name)).map_err(internal("removing the clone's run directory"))?;
        self.driver(&record).destroy(&clone_dir).map_err(AgentError::from_driver)?;
        self.release_uid(&record);
        lock(&self.sizes).remove(name);
        lock(&self.activity).remove(name);
        Ok(())
    }

    fn checkpoint_clone(&self, name: &Name, checkpoint: &Name, message: Option<&str>) -> Result<CloneReport> {
        let guard = self.clone_lock(name);
        let _op = lock(&guard);
        let mut record = self.load(name)?;
        // A stopped clone is checkpointed unmounted.
        self.detach_kept(&record)?;
        if record.checkpoints.iter().any(|c| &c.name == checkpoint) {
            return Err(AgentError::new(
                ErrorKind::Conflict,
                format!("clone {name} already has a checkpoint named {checkpoint}; choose another name"),
            ));
        }
        let clone_dir = self.clone_dir(name);
        if record.driver == Driver::Copy {
            let bytes = sys::tree::size(&driver::data_dir(&clone_dir)).bytes;
            crate::images::check_room(self, &format!("a copy of clone {name}'s files"), bytes)?;
        }
        let all = checkpoints_dir(&clone_dir);
        fs::create_dir_all(&all).map_err(internal("making the checkpoints directory"))?;
        fs::set_permissions(&all, fs::Permissions::from_mode(0o700))
            .map_err(internal("making the checkpoints directory private"))?;
        let partial = all.join(format!("{checkpoint}.partial"));
        driver::stop_copies_into(&partial);
        sys::tree::remove(&partial).map_err(internal("removing a half-made checkpoint"))?;
        record.intent = Some(Intent::Checkpoint);
        self.save(&record)?;
        let server = lock(&self.running).get(name).map(|r| r.instance.pid() as i32);
        if server.is_some() {
            // Written out first, with clients going on: the pause is then short, and a
            // revert to this checkpoint replays little.
            // Taken out of the map meanwhile, so that no other clone waits on its lock; the
            // clone's own lock keeps supervision off it.
            let taken = lock(&self.running).remove(name);
            if let Some(Err(e)) = taken.as_ref().map(|r| r.instance.flush()) {
                tracing::warn!(clone = %name, "flushing the server before a checkpoint: {e}");
            }
            if let Some(r) = taken {
                lock(&self.running).insert(name.clone(), r);
            }
        }
        let user = self.clone_user(&record);
        let image = self.record_image_dir(&record);
        let taken = (|| {
            fs::create_dir(&partial).map_err(internal("making the checkpoint's directory"))?;
            let _paused = match server {
                Some(pid) => Some(
                    crate::pause::Paused::pause(pid, user.synthetic.then_some(user.uid))
                        .map_err(internal("pausing the clone's server"))?,
                ),
                None => None,
            };
            self.driver(&record)
                .checkpoint(&image, &clone_dir, &partial, server.is_some())
                .map_err(AgentError::from_driver)
            // The server goes on here; what follows makes the capture durable.
        })()
        .and_then(|layer| {
            self.driver(&record).finish_checkpoint(&partial).map_err(AgentError::from_driver)?;
            sys::crashsafe::sync_tree(&partial).map_err(internal("syncing the checkpoint"))?;
            sys::crashsafe::rename(&partial, &all.join(checkpoint.as_str()))
                .map_err(internal("putting the checkpoint in place"))?;
            Ok(layer)
        });
        match &taken {
            Ok(layer) => record.checkpoints.push(CheckpointRecord {
                name: checkpoint.clone(),
                message: message.map(str::to_owned),
                created_at: Timestamp::now(),
                layer: *layer,
            }),
            Err(e) => {
                tracing::warn!(clone = %name, %checkpoint, "the checkpoint failed: {e}");
                if let Err(r) = sys::tree::remove(&partial) {
                    tracing::warn!(clone = %name, "removing the half-made checkpoint: {r}");
                }
            }
        }
        record.intent = None;
        self.save(&record)?;
        self.measure_soon(&record);
        taken.map(|_| self.report(&record))
    }

    fn revert_clone(&self, name: &Name, to: Option<&Name>) -> Result<CloneReport> {
        let guard = self.clone_lock(name);
        let _op = lock(&guard);
        let mut record = self.load(name)?;
        let target = match to {
            Some(to) => record.checkpoints.iter().find(|c| &c.name == to).cloned().ok_or_else(|| {
                AgentError::new(
                    ErrorKind::NotFound,
                    format!("clone {name} has no checkpoint named {to}; `clone checkpoints {name}` lists them"),
                )
            })?,
            None => record.checkpoints.last().cloned().ok_or_else(|| {
                AgentError::new(
                    ErrorKind::Conflict,
                    format!("clone {name} has no checkpoint to go back to; make one with `clone checkpoint {name}`"),
                )
            })?,
        };
        let at = record.checkpoints.iter().position(|c| c.name == target.name).unwrap_or(0);
        let later: Vec<&Name> = record.checkpoints[at + 1..].iter().map(|c| &c.name).collect();
        self.refuse_if_branched(name, &format!("revert to {}", target.name), |cp| later.contains(&cp))?;
        if record.driver == Driver::Copy {
            let bytes = sys::tree::size(&checkpoints_dir(&self.clone_dir(name)).join(target.name.as_str())).bytes;
            crate::images::check_room(self, &format!("a copy of checkpoint {}", target.name), bytes)?;
        }
        record.intent = Some(Intent::Revert);
        record.reverting_to = Some(target.name.clone());
        self.save(&record)?;
        // Its state is thrown away: the server stops at once, without writing it out.
        let began = std::time::Instant::now();
        let running = lock(&self.running).remove(name);
        if let Some(Running { attached, instance, .. }) = running {
            drop(instance);
            self.driver(&record).detach(&self.clone_dir(name), attached).map_err(AgentError::from_driver)?;
        }
        self.tear_down(&record)?;
        let stopped = began.elapsed();
        let reverted = self.revert_files(&mut record);
        let files = began.elapsed() - stopped;
        let report = self.finish_change(&mut record, reverted);
        // Where a revert's time goes, for whoever measures it (BENCHMARKS.md, item 7).
        tracing::info!(
            clone = %name,
            checkpoint = %target.name,
            stop_ms = stopped.as_millis() as u64,
            files_ms = files.as_millis() as u64,
            start_ms = (began.elapsed() - stopped - files).as_millis() as u64,
            "reverted"
        );
        report
    }

    fn checkpoints(&self, name: &Name) -> Result<Vec<api::Checkpoint>> {
        Ok(self.checkpoint_views(&self.load(name)?))
    }

    fn checkpoint_names(&self, name: &Name) -> Result<Vec<Name>> {
        Ok(self.load(name)?.checkpoints.into_iter().map(|c| c.name).collect())
    }

    fn delete_checkpoint(&self, name: &Name, checkpoint: &Name) -> Result<()> {
        let guard = self.clone_lock(name);
        let _op = lock(&guard);
        let mut record = self.load(name)?;
        let Some(at) = record.checkpoints.iter().position(|c| &c.name == checkpoint) else {
            return Err(AgentError::new(
                ErrorKind::NotFound,
                format!("clone {name} has no checkpoint named {checkpoint}; `clone checkpoints {name}` lists them"),
            ));
        };
        // The record goes first: a crash leaves a directory no record names, removed at the
        // next start. A cowfs layer stays in the clone's stack (the later state is built on
        // it) until a reset or a revert to an earlier checkpoint.
        record.checkpoints.remove(at);
        self.save(&record)?;
        let dir = checkpoints_dir(&self.clone_dir(name)).join(checkpoint.as_str());
        // A spare copy being made in it stops first.
        driver::stop_copies_into(&dir);
        sys::tree::remove(&dir).map_err(internal("removing the checkpoint's files"))?;
        self.measure_soon(&record);
        Ok(())
    }

    fn clone_report(&self, name: &Name) -> Result<Option<CloneReport>> {
        let Some(record) = CloneRecord::load(&self.clone_dir(name)).map_err(internal("reading the clone's record"))?
        else {
            return Ok(None);
        };
        // One clone is cheap to measure: its figure is at most a few seconds old. (Lists
        // take the background figures.)
        let stale = lock(&self.sizes).get(name).is_none_or(|(_, at)| at.age(Timestamp::now()) >= FRESH_SIZE_SECONDS);
        if stale {
            self.measure(&record);
        }
        Ok(Some(self.report(&record)))
    }

    fn clone_reports(&self) -> Result<Vec<CloneReport>> {
        Ok(self.records().iter().map(|r| self.report(r)).collect())
    }

    fn write_marker(&self, path: &str, value: &str) -> Result<()> {
        let dir = Path::new(path);
        if !dir.is_absolute() || !dir.is_dir() {
            return Err(AgentError::new(
                ErrorKind::BadRequest,
                format!(
                    "{path} is not a directory on this host; give the location's absolute path as the agent sees it"
                ),
            ));
        }
        let own = fs::canonicalize(&self.config.data_dir).unwrap_or_else(|_| self.config.data_dir.clone());
        let resolved = fs::canonicalize(dir).map_err(internal("resolving the location's path"))?;
        if resolved.starts_with(&own) && resolved != own.join("images") {
            return Err(AgentError::new(
                ErrorKind::BadRequest,
                format!(
                    "{path} is inside the agent's own data directory {}; give a directory of its own",
                    own.display()
                ),
            ));
        }
        // Root's, passable: preparing servers reach their copies beneath it.
        fs::set_permissions(dir, fs::Permissions::from_mode(0o711))
            .map_err(internal("setting the location's permissions"))?;
        sys::crashsafe::replace_file_mode(&dir.join(crate::MARKER_FILE), format!("{value}\n").as_bytes(), 0o644)
            .map_err(internal("writing the location's marker"))
    }

    fn read_marker(&self, path: &str) -> Result<Option<String>> {
        match sys::untrusted::read_to_string(&Path::new(path).join(crate::MARKER_FILE), 4096) {
            Ok(text) => Ok(Some(text.trim().to_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => Ok(None),
            Err(e) => Err(AgentError::internal(format!("reading the marker of {path}: {e}"))),
        }
    }
}
