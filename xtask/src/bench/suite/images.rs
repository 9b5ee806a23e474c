//! The images of a scale, and item 4: image creation. With the source stopped: `cp -a` of
//! its data directory, and `image create --from-dir` on each daemon; with it running:
//! `pg_basebackup` (the flags the daemon uses), and `image create --from-url`. Each after a
//! page-cache drop. The source is left running for items 1 and 2.

use std::time::Instant;

use anyhow::Result;

use super::report::ImageRun;
use super::{Suite, SOURCE_SETTINGS};
use crate::bench::exec::Cmd;
use crate::bench::host;
use crate::bench::markdown::{num, Align, Table};
use crate::bench::pg::{HandServer, StartWait};
use crate::bench::progress::{log, seconds_since};
use crate::bench::stats::ratio;
use crate::bench::thinclone::{Daemon, ImageSource};

/// `image create`, timed, from a dropped page cache.
fn timed_image(s: &Suite, daemon: &Daemon, name: &str, source: ImageSource) -> Result<f64> {
    s.run.drop_caches()?;
    let t0 = Instant::now();
    daemon.create_image(name, source)?;
    Ok(seconds_since(t0))
}

pub fn run(s: &mut Suite, scale: u32) -> Result<()> {
    let run = s.run;
    let src = s.source_dir(scale);
    let bytes = host::du_bytes(&[&src]);
    let record = |s: &mut Suite, method, seconds| s.results.images.push(ImageRun { scale, method, seconds, bytes });
    let image = format!("img-{scale}");
    if s.p.want(4) {
        run.drop_caches()?;
        let copy = run.data.join(format!("cp-{scale}"));
        let t0 = Instant::now();
        run.exec.run(&Cmd::new("cp").args(["-a", "--reflink=never"]).arg(&src).arg(&copy))?;
        record(s, "cp_a", seconds_since(t0));
        sys::tree::remove(&copy)?;
    }
    let t = timed_image(s, s.ext4()?, &image, ImageSource::Dir(&src))?;
    record(s, "from_dir", t);
    log(&format!("  image {image} ({}) from the directory: {t} s", super::suite_fs(run)));
    if let Some(xfs) = &s.xfs {
        let t = timed_image(s, &xfs.daemon, &image, ImageSource::Dir(&src))?;
        record(s, "from_dir_xfs", t);
        log(&format!("  image {image} (XFS) from the directory: {t} s"));
    }
    // Item 6's thinclone clones on btrfs, at its scale only.
    if let Some(daemon) = s.btrfs.as_ref().and_then(|b| b.daemon.as_ref()).filter(|_| scale == s.p.disk_scale) {
        let t = timed_image(s, daemon, &image, ImageSource::Dir(&src))?;
        log(&format!("  image {image} (btrfs) from the directory: {t} s"));
    }
    s.source = Some(HandServer::start(
        run,
        &src,
        s.p.source_port(),
        &run.logs.join(format!("pg/source-{scale}.log")),
        SOURCE_SETTINGS,
        StartWait::Ready,
    )?);
    if s.p.want(4) {
        run.drop_caches()?;
        let target = run.data.join(format!("pgtmp/bb-{scale}"));
        let basebackup = Cmd::new(run.pg.program("pg_basebackup"))
            .args(["-d", &s.source_url(), "-D"])
            .arg(&target)
            .args(["-F", "p", "-X", "stream", "-c", "fast", "-N"])
            .user(&run.pg.user);
        let t0 = Instant::now();
        run.exec.run_to(&basebackup, &run.logs.join(format!("basebackup-{scale}.log")))?;
        record(s, "basebackup", seconds_since(t0));
        sys::tree::remove(&target)?;
        let url_image = format!("url-{scale}");
        let t = timed_image(s, s.ext4()?, &url_image, ImageSource::Url(&s.source_url_with_password()))?;
        record(s, "from_url", t);
        log(&format!("  image {url_image} from the running server: {t} s"));
        s.ext4()?.remove_image(&url_image)?;
        host::sync_all();
    }
    Ok(())
}

/// The label of an image method.
fn label(method: &str) -> &str {
    match method {
        "cp_a" => "cp -a",
        "basebackup" => "pg_basebackup",
        "from_dir" => "image create --from-dir",
        "from_dir_xfs" => "image create --from-dir (daemon on XFS)",
        "from_url" => "image create --from-url",
        other => other,
    }
}

/// An image run with its throughput and the throughput ratios against the baselines.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImageRow {
    pub scale: u32,
    pub method: &'static str,
    pub seconds: f64,
    pub bytes: u64,
    pub mb_per_s: Option<f64>,
    /// Above 1: faster than `cp -a`.
    pub throughput_vs_cp_a: Option<f64>,
    /// Above 1: faster than `pg_basebackup`.
    pub throughput_vs_basebackup: Option<f64>,
}

pub fn rows(runs: &[ImageRun]) -> Vec<ImageRow> {
    let baseline = |scale, method| runs.iter().find(|r| r.scale == scale && r.method == method).map(|r| r.seconds);
    runs.iter()
        .map(|r| ImageRow {
            scale: r.scale,
            method: r.method,
            seconds: r.seconds,
            bytes: r.bytes,
            mb_per_s: ratio(Some(r.bytes as f64 / 1e6), Some(r.seconds)),
            throughput_vs_cp_a: ratio(baseline(r.scale, "cp_a"), Some(r.seconds)),
            throughput_vs_basebackup: ratio(baseline(r.scale, "basebackup"), Some(r.seconds)),
        })
        .collect()
}

pub fn table(rows: &[ImageRow]) -> Table {
    let mut t = Table::new([
        ("scale", Align::Right),
        ("method", Align::Left),
        ("seconds", Align::Right),
        ("MB/s", Align::Right),
        ("vs cp -a", Align::Right),
        ("vs pg_basebackup", Align::Right),
    ]);
    for r in rows {
        t.row([
            r.scale.to_string(),
            label(r.method).to_owned(),
            num(Some(r.seconds), 2),
            num(r.mb_per_s, 0),
            num(r.throughput_vs_cp_a, 2),
            num(r.throughput_vs_basebackup, 2),
        ]);
    }
    t
}
