//! The source cluster of a scale: `initdb`, `pgbench -i` into database `bench`, a
//! checkpoint and a clean stop. Its sizes are recorded.

use std::time::Instant;

use anyhow::{bail, Result};

use super::report::Size;
use super::{Suite, SOURCE_SETTINGS};
use crate::bench::exec::Cmd;
use crate::bench::host;
use crate::bench::markdown::bytes;
use crate::bench::pg::{HandServer, StartWait};
use crate::bench::progress::{log, seconds_since};

/// Makes the source cluster of `scale`, stopped.
pub fn make(s: &mut Suite, scale: u32) -> Result<()> {
    let run = s.run;
    let (pg, exec) = (&run.pg, &run.exec);
    let dir = s.source_dir(scale);
    pg.initdb(exec, &dir, &run.logs.join(format!("initdb-{scale}.log")))?;
    let server = HandServer::start(
        run,
        &dir,
        s.p.source_port(),
        &run.logs.join(format!("pg/source-{scale}.log")),
        SOURCE_SETTINGS,
        StartWait::Ready,
    )?;
    let on_socket =
        |cmd: Cmd| cmd.arg("-h").arg(&run.sock).args(["-p", &s.p.source_port().to_string(), "-U", "postgres"]);
    exec.run(&on_socket(Cmd::new(pg.program("createdb"))).arg("bench"))?;
    let t0 = Instant::now();
    exec.run_to(
        &on_socket(Cmd::new(pg.program("pgbench"))).args([
            "-i",
            "-I",
            "dtGvp",
            "-s",
            &scale.to_string(),
            "-q",
            "bench",
        ]),
        &run.logs.join(format!("pgbench-init-{scale}.log")),
    )?;
    // thinclone takes a source URL only with a password in it.
    s.psql(&server.conn("postgres"), &format!("ALTER ROLE postgres PASSWORD '{}'", super::SOURCE_PASSWORD))?;
    s.psql(&server.conn("postgres"), "checkpoint")?;
    let init_s = seconds_since(t0);
    let db_bytes: u64 = s.psql(&server.conn("postgres"), "select pg_database_size('bench')")?.parse()?;
    server.stop()?;
    let state = pg.cluster_state(exec, &dir)?;
    if state != "shut down" {
        bail!("the source cluster's state after the stop is {state:?}, not \"shut down\"");
    }
    host::sync_all();
    let datadir_bytes = host::du_bytes(&[&dir]);
    log(&format!(
        "  scale {scale}: database {}, data directory {}, pgbench -i + checkpoint {init_s} s",
        bytes(Some(db_bytes as f64)),
        bytes(Some(datadir_bytes as f64))
    ));
    s.results.sizes.push(Size { scale, db_bytes, datadir_bytes, pgbench_init_s: init_s });
    Ok(())
}
