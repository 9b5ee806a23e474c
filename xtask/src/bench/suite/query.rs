//! Item 3: query speed on a clone. A = a cowfs clone, B = a copy clone (a plain full copy)
//! of the same image, with the daemon's settings for both; one server at a time, A B A B.
//! After each start: the database read once ([`PREWARM`]), a read-write warm-up and run, a
//! select-only warm-up and run. Then the cold runs: start, drop the page cache, select-only.

use anyhow::Result;
use api::Driver;

use super::Suite;
use crate::bench::ab::{self, Side};
use crate::bench::host;
use crate::bench::pg::{url_with_db, Conn};
use crate::bench::pgbench::Mode;
use crate::bench::progress::log;

/// The drivers compared: A, then B.
pub const SIDES: (Driver, Driver) = (Driver::Cowfs, Driver::Copy);

/// Reads every page of the database's tables and indexes once through the side's server
/// (`pg_prewarm`'s `read` mode: into the kernel's page cache, not the server's buffers), so
/// that the warm runs compare warm caches: the copy's files in the host's page cache, where
/// writing them left them, and the clone's in its mount's, which the pgbench warm-ups alone
/// fill only in part (a page of a 1 GB table read at random is a FUSE round trip until it
/// is cached). The cold runs skip it.
/// `pg_prewarm` is made in each clone once, when it is created.
const PREWARM: &str = "SELECT sum(pg_prewarm(c.oid::regclass, 'read')) FROM pg_class c \
     WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'i')";

pub fn run(s: &mut Suite) -> Result<()> {
    let scale = s.p.query_scale;
    let daemon = s.ext4()?;
    let name = |side: Side| format!("q_{}", side.letter().to_lowercase());
    let mut conns = Vec::new();
    for (side, driver) in [(Side::A, SIDES.0), (Side::B, SIDES.1)] {
        let clone = daemon.create_clone(&name(side), &format!("img-{scale}"), driver)?;
        let conn = Conn::Url(url_with_db(&clone.url, "bench"));
        s.psql(&conn, "CREATE EXTENSION pg_prewarm")?;
        conns.push(conn);
        daemon.stop_clone(&name(side))?;
    }
    host::sync_all();
    let conn = |side: Side| &conns[if side == Side::A { 0 } else { 1 }];
    let (run, pgbench) = (s.run, &s.pgbench);
    let mut runs = ab::Runs::default();
    let measure = |runs: &mut ab::Runs, pair: u32, side: Side, mode: Mode, tag: &str| -> Result<()> {
        let o = pgbench.run(
            &run.exec,
            conn(side),
            mode,
            s.p.duration,
            &run.logs.join(format!("pgbench-q{pair}-{}-{tag}.log", side.letter())),
        )?;
        log(&format!(
            "  pair {pair} {} {}: {} tps, latency {} ms",
            side.letter(),
            mode.key(),
            o.tps.round(),
            crate::bench::markdown::num(o.latency_ms, 3)
        ));
        runs.record(mode, pair, side, o);
        Ok(())
    };
    ab::alternate(s.p.pairs, |pair, side| {
        daemon.start_clone(&name(side))?;
        let began = std::time::Instant::now();
        let pages = s.psql(conn(side), PREWARM)?;
        log(&format!(
            "  pair {pair} {}: read the database once ({} pages) in {:.1} s",
            side.letter(),
            pages.trim(),
            began.elapsed().as_secs_f64()
        ));
        let warm = |tag: &str| run.logs.join(format!("pgbench-q{pair}-{}-{tag}-warmup.log", side.letter()));
        pgbench.run(&run.exec, conn(side), Mode::ReadWrite, s.p.warmup, &warm("rw"))?;
        measure(&mut runs, pair, side, Mode::ReadWrite, "rw")?;
        pgbench.run(&run.exec, conn(side), Mode::SelectOnly, s.p.warmup, &warm("ro"))?;
        measure(&mut runs, pair, side, Mode::SelectOnly, "ro")?;
        daemon.stop_clone(&name(side))
    })?;
    if run.can_drop {
        ab::alternate(s.p.pairs, |pair, side| {
            daemon.start_clone(&name(side))?;
            run.drop_caches()?;
            measure(&mut runs, pair, side, Mode::SelectOnlyCold, "ro-cold")?;
            daemon.stop_clone(&name(side))
        })?;
    }
    let [layer, native] = daemon.cowfs_storage(&name(Side::A));
    let layer = host::du_bytes(&[&layer, &native]);
    for side in [Side::A, Side::B] {
        daemon.remove_clone(&name(side))?;
    }
    host::sync_all();
    s.results.query = runs;
    s.results.query_layer_bytes = Some(layer);
    Ok(())
}
