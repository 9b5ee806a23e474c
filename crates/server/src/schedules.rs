//! Schedules: an image of the same source made again and again on a cron schedule (UTC),
//! its newest `keep` ready images kept.
//!
//! A schedule keeps what `POST /v1/images` would be asked, the source's password included
//! (in the catalog, which only the server reads; never shown). At each run the lifecycle
//! thread makes an image named `<schedule>-<YYYYMMDD>-<HHMMSS>` with the rights of the
//! schedule's creator as they are then, so that a user who lost them makes no more images.
//! After a run, and at every tick, the schedule's ready images beyond the newest `keep` are
//! removed once no clone uses them, and its failed images once a newer one is ready.
//! `clone refresh` moves a clone to the newest ready image of its image's schedule.

use std::sync::Arc;

use api::{CreateImage, CreateSchedule, ImageStatus, Name, Operation, Role, Schedule, Timestamp};
use chrono::{DateTime, Utc};

use crate::auth::Caller;
use crate::catalog::{CatalogError, ImageRow, ScheduleRow};
use crate::ops::{check_transform, Result, Server, ServerError};
use crate::webhooks::Event;

/// How many ready images a schedule keeps when not told.
pub const DEFAULT_KEEP: u32 = 7;
const MAX_KEEP: u32 = 1000;
/// What a run adds to the schedule's name: `-YYYYMMDD-HHMMSS`.
const SUFFIX_LEN: usize = 16;

fn no_schedule(name: &Name) -> ServerError {
    ServerError::NotFound(format!("no schedule named {name}; `thinclone schedule list` shows them"))
}

/// A five-field cron expression (minute, hour, day of month, month, day of week).
fn parse_cron(text: &str) -> Result<croner::Cron> {
    let fields = text.split_whitespace().count();
    if fields != 5 {
        return Err(ServerError::BadRequest(format!(
            "cron {text:?} has {fields} fields; give five: minute hour day-of-month month day-of-week, \
             in UTC (\"0 2 * * *\" is 02:00 every day)"
        )));
    }
    text.parse::<croner::Cron>().map_err(|e| {
        ServerError::BadRequest(format!("cron {text:?} is not valid ({e}); \"0 2 * * *\" is 02:00 UTC every day"))
    })
}

fn utc(at: Timestamp) -> Result<DateTime<Utc>> {
    DateTime::<Utc>::from_timestamp(at.0, 0)
        .ok_or_else(|| ServerError::Internal(format!("time {} is out of range", at.0)))
}

/// The first time after `after` that `cron` matches.
fn next_run(cron: &str, after: Timestamp) -> Result<Timestamp> {
    let next = parse_cron(cron)?
        .find_next_occurrence(&utc(after)?, false)
        .map_err(|e| ServerError::BadRequest(format!("cron {cron:?} never matches a time after {after}: {e}")))?;
    Ok(Timestamp(next.timestamp()))
}

/// The name of the image a run of `schedule` at `at` makes.
fn image_name(schedule: &Name, at: Timestamp) -> Result<Name> {
    let name = format!("{schedule}-{}", utc(at)?.format("%Y%m%d-%H%M%S"));
    Name::new(&name).map_err(|e| ServerError::Internal(format!("image name {name}: {e}")))
}

fn view(row: ScheduleRow, images: Vec<Name>) -> Schedule {
    let request: Option<CreateImage> = serde_json::from_str(&row.request).ok();
    Schedule {
        name: row.name,
        cron: row.cron,
        keep: row.keep,
        source: row.source,
        team: row.team,
        location: request.as_ref().and_then(|r| r.location.clone()),
        host: request.as_ref().and_then(|r| r.host.clone()),
        mask: request.as_ref().map(|r| r.mask.clone()).unwrap_or_default(),
        scripts: request.map(|r| r.scripts.into_iter().map(|s| s.name).collect()).unwrap_or_default(),
        created_by: row.created_by,
        created_at: row.created_at,
        next_run_at: row.next_run_at,
        last_run_at: row.last_run_at,
        last_image: row.last_image,
        last_error: row.last_error,
        images,
    }
}

impl Server {
    fn schedule_view(&self, row: ScheduleRow) -> Result<Schedule> {
        let images = self.catalog().images_of_schedule(&row.name)?.into_iter().map(|i| i.name).collect();
        Ok(view(row, images))
    }

    fn visible_schedule(&self, caller: &Caller, name: &Name) -> Result<ScheduleRow> {
        match self.catalog().schedule(name) {
            Ok(row) if caller.sees(&row.team) => Ok(row),
            Ok(_) | Err(CatalogError::NotFound { .. }) => Err(no_schedule(name)),
            Err(e) => Err(e.into()),
        }
    }

    /// The schedules of the caller's teams (every one, for an administrator).
    pub fn schedules(&self, caller: &Caller) -> Result<Vec<Schedule>> {
        let rows = self.catalog().schedules()?;
        rows.into_iter().filter(|r| caller.sees(&r.team)).map(|r| self.schedule_view(r)).collect()
    }

    pub fn schedule(&self, caller: &Caller, name: &Name) -> Result<Schedule> {
        let row = self.visible_schedule(caller, name)?;
        self.schedule_view(row)
    }

    pub fn create_schedule(&self, caller: &Caller, request: CreateSchedule) -> Result<Schedule> {
        caller.require(Role::ImageCreator, "make schedules")?;
        let name = request.name;
        if name.as_str().len() + SUFFIX_LEN > api::NAME_MAX_LEN {
            return Err(ServerError::BadRequest(format!(
                "a schedule's name is at most {} characters, since its images are named <name>-YYYYMMDD-HHMMSS",
                api::NAME_MAX_LEN - SUFFIX_LEN
            )));
        }
        let keep = request.keep.unwrap_or(DEFAULT_KEEP);
        if !(1..=MAX_KEEP).contains(&keep) {
            return Err(ServerError::BadRequest(format!("keep is 1 to {MAX_KEEP} images")));
        }
        let now = Timestamp::now();
        let next_run_at = next_run(&request.cron, now)?;
        if request.snapshot && request.from_dir.is_none() {
            return Err(ServerError::BadRequest("snapshot goes with from_dir only".into()));
        }
        if request.stanza.is_some() && request.from_repo.is_none() {
            return Err(ServerError::BadRequest("stanza goes with from_repo only".into()));
        }
        let absolute = |what: &str, path: &str| {
            if path.starts_with('/') {
                Ok(())
            } else {
                Err(ServerError::BadRequest(format!("{what} is an absolute path")))
            }
        };
        let source = match (&request.from_url, &request.from_dir, &request.from_repo) {
            (Some(url), None, None) => engine::SourceUrl::parse(url).map_err(ServerError::BadRequest)?.shown(),
            (None, Some(dir), None) => {
                absolute("from_dir", dir)?;
                dir.clone()
            }
            (None, None, Some(repo)) => {
                absolute("from_repo", repo)?;
                match &request.stanza {
                    Some(stanza) => format!("repo:{repo}?stanza={stanza}"),
                    None => format!("repo:{repo}"),
                }
            }
            _ => return Err(ServerError::BadRequest("give exactly one of from_url, from_dir and from_repo".into())),
        };
        check_transform(&request.mask, &request.scripts)?;
        let team = self.team_for(caller, request.team.as_ref())?;
        // Refused now rather than at 02:00: a location that does not exist.
        self.image_location(request.location.as_ref())?;
        let image = CreateImage {
            name: name.clone(),
            from_dir: request.from_dir,
            from_url: request.from_url,
            from_dump: None,
            from_repo: request.from_repo,
            stanza: request.stanza,
            archive: None,
            target_time: None,
            target_lsn: None,
            snapshot: request.snapshot,
            team: Some(team.clone()),
            location: request.location,
            host: request.host,
            mask: request.mask,
            scripts: request.scripts,
        };
        let row = ScheduleRow {
            name: name.clone(),
            cron: request.cron.split_whitespace().collect::<Vec<_>>().join(" "),
            keep,
            request: serde_json::to_string(&image)
                .map_err(|e| ServerError::Internal(format!("encoding the schedule's request: {e}")))?,
            source,
            team,
            created_by: caller.user.clone(),
            created_at: now,
            next_run_at,
            last_run_at: None,
            last_image: None,
            last_error: None,
        };
        match self.catalog().insert_schedule(&row) {
            Ok(()) => Ok(view(row, Vec::new())),
            Err(CatalogError::Exists { .. }) => Err(ServerError::Conflict(format!("schedule {name} already exists"))),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes a schedule; the images it made stay, as ordinary images.
    pub fn delete_schedule(&self, caller: &Caller, name: &Name) -> Result<()> {
        self.visible_schedule(caller, name)?;
        caller.require(Role::ImageCreator, "remove schedules")?;
        match self.catalog().delete_schedule(name) {
            Ok(()) => Ok(()),
            Err(CatalogError::NotFound { .. }) => Err(no_schedule(name)),
            Err(e) => Err(e.into()),
        }
    }

    /// Runs a schedule now, whatever its cron says; its next run stays as it was.
    pub fn run_schedule(self: &Arc<Self>, caller: &Caller, name: &Name) -> Result<Operation> {
        let row = self.visible_schedule(caller, name)?;
        caller.require(Role::ImageCreator, "run schedules")?;
        let next = row.next_run_at;
        self.start_run(&row, next)
    }

    /// Starts a run of `row`: the image creation's operation. The run is recorded, with
    /// its failure if it could not start, and `next_run_at` as its next run.
    fn start_run(self: &Arc<Self>, row: &ScheduleRow, next_run_at: Timestamp) -> Result<Operation> {
        let now = Timestamp::now();
        let started = self.begin_run(row, now);
        let (image, error) = match &started {
            Ok((image, _)) => (Some(image), None),
            Err(e) => (None, Some(e.to_string())),
        };
        self.catalog().record_schedule_run(&row.name, now, image, error.as_deref(), next_run_at)?;
        let (kind, detail) = match &started {
            Ok((image, op)) => ("schedule.run", format!("making image {image} (operation {})", op.id)),
            Err(e) => ("schedule.failed", e.to_string()),
        };
        self.emit_event(Event { kind, subject: "schedule", name: &row.name, team: Some(&row.team), detail });
        started.map(|(_, op)| op)
    }

    fn begin_run(self: &Arc<Self>, row: &ScheduleRow, now: Timestamp) -> Result<(Name, Operation)> {
        let images = self.catalog().images_of_schedule(&row.name)?;
        if let Some(running) = images.iter().find(|i| i.status == ImageStatus::Creating) {
            return Err(ServerError::Conflict(format!(
                "schedule {}'s image {} is still being made; a run starts once it ends",
                row.name, running.name
            )));
        }
        let owner = {
            let catalog = self.catalog();
            let user = match catalog.user(&row.created_by) {
                Ok(user) => user,
                Err(CatalogError::NotFound { .. }) => {
                    return Err(ServerError::Forbidden(format!(
                        "schedule {}'s creator, {}, no longer exists; make the schedule again as another user",
                        row.name, row.created_by
                    )))
                }
                Err(e) => return Err(e.into()),
            };
            let teams = catalog.teams_of(&user.name)?;
            Caller { user: user.name, role: user.role, teams }
        };
        let mut request: CreateImage = serde_json::from_str(&row.request)
            .map_err(|e| ServerError::Internal(format!("reading schedule {}'s request: {e}", row.name)))?;
        // Two runs in one second (a manual one beside the clock's) get the next second.
        let mut at = now;
        let name = loop {
            let name = image_name(&row.name, at)?;
            if self.catalog().image(&name).is_err() {
                break name;
            }
            at = Timestamp(at.0 + 1);
        };
        request.name = name.clone();
        let op = self.create_image_of(&owner, request, Some(row.name.clone()))?;
        Ok((name, op))
    }

    /// Starts the runs that are due, and removes what the schedules no longer keep. Called
    /// by the lifecycle thread.
    pub(crate) fn follow_schedules(self: &Arc<Self>) {
        let rows = match self.catalog().schedules() {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!("reading the schedules: {e}");
                return;
            }
        };
        let now = Timestamp::now();
        for row in rows {
            if row.next_run_at <= now {
                // The next run is the first after now: runs missed while the server was down
                // are not made up one by one.
                let next = next_run(&row.cron, now).unwrap_or(Timestamp(now.0 + 24 * 3600));
                match self.start_run(&row, next) {
                    Ok(op) => tracing::info!(schedule = %row.name, operation = %op.id, "a scheduled run started"),
                    Err(e) => tracing::warn!(schedule = %row.name, "a scheduled run could not start: {e}"),
                }
            }
            if let Err(e) = self.retire_images(&row) {
                tracing::warn!(schedule = %row.name, "removing the images it no longer keeps: {e}");
            }
        }
    }

    /// Removes `row`'s ready images beyond the newest `keep` that no clone uses, and its
    /// failed images older than its newest ready one.
    fn retire_images(self: &Arc<Self>, row: &ScheduleRow) -> Result<()> {
        let images = self.catalog().images_of_schedule(&row.name)?;
        let newest_ready = images.iter().find(|i| i.status == ImageStatus::Ready).map(|i| i.created_at);
        let ready: Vec<&ImageRow> = images.iter().filter(|i| i.status == ImageStatus::Ready).collect();
        let mut retired: Vec<(&ImageRow, String)> = ready
            .iter()
            .skip(row.keep as usize)
            .map(|i| (*i, format!("schedule {} keeps its newest {} images", row.name, row.keep)))
            .collect();
        retired.extend(
            images
                .iter()
                .filter(|i| i.status == ImageStatus::Failed && newest_ready.is_some_and(|at| i.created_at <= at))
                .map(|i| (i, format!("a newer image of schedule {} is ready", row.name))),
        );
        for (image, why) in retired {
            if !self.catalog().clones_of(&image.name)?.is_empty() {
                continue;
            }
            match self.delete_image(&crate::lifecycle::system(), &image.name) {
                Ok(op) => {
                    tracing::info!(image = %image.name, "removing an image: {why}");
                    self.emit_event(Event {
                        kind: "image.retired",
                        subject: "image",
                        name: &image.name,
                        team: Some(&image.team),
                        detail: format!("{why}; removed by operation {}", op.id),
                    });
                }
                // Its agent may be away, or a clone made meanwhile: tried again next tick.
                Err(e) => tracing::debug!(image = %image.name, "removing an image ({why}): {e}"),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_is_five_fields_in_utc() {
        // 2026-11-30T01:00:00Z
        let at = Timestamp(1_796_000_400);
        assert_eq!(next_run("0 2 * * *", at).unwrap(), Timestamp(at.0 + 3600));
        assert_eq!(next_run("*/15 * * * *", at).unwrap(), Timestamp(at.0 + 900));
        for bad in ["0 2 * *", "0 0 2 * * *", "61 * * * *", "x y z a b"] {
            let err = parse_cron(bad).unwrap_err().to_string();
            assert!(err.contains("0 2 * * *"), "{bad}: {err}");
        }
    }

    #[test]
    fn images_are_named_after_the_schedule_and_the_time() {
        let name = image_name(&Name::new("nightly").unwrap(), Timestamp(1_796_000_400)).unwrap();
        assert_eq!(name.as_str(), "nightly-20261130-010000");
        let longest = Name::new(&"a".repeat(api::NAME_MAX_LEN - SUFFIX_LEN)).unwrap();
        assert!(image_name(&longest, Timestamp(0)).is_ok());
    }
}
