//! The demo's sample database: pgbench's bank accounts, made by `initdb` and
//! `pgbench -i`, then stopped cleanly, ready to be imaged.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use engine::{InstanceSpec, Result, Sample, User};
use sys::Program;

use crate::install::Search;
use crate::server;

/// The superuser of the sample database.
const SUPERUSER: &str = "postgres";

pub(crate) fn make_sample(search: &Search, data_dir: &Path, run_dir: &Path, user: &User, scale: u32) -> Result<Sample> {
    let installation = search.newest()?;
    fs::set_permissions(data_dir, fs::Permissions::from_mode(0o700))?;
    Program::new(installation.program("initdb"))
        .arg("-D")
        .arg(data_dir)
        .args(["-A", "trust", "-U", SUPERUSER, "--no-sync"])
        .user(user)
        .timeout(Duration::from_secs(600))
        .run()?;
    let spec = InstanceSpec {
        version: installation.major.to_string(),
        data_dir: data_dir.to_owned(),
        run_dir: run_dir.to_owned(),
        port: 5432,
        listen: Vec::new(),
        remote_clients: false,
        user: user.clone(),
        superuser: SUPERUSER.into(),
        label: "thinclone-sample".into(),
        memory: Some("128MB".into()),
        read_only: false,
    };
    let server = server::start(&installation, &spec, Duration::from_secs(120))?;
    // As this process's own OS user: the only one the socket lets in (server.rs).
    Program::new(installation.program("pgbench"))
        .args(["-i", "-q", "-s", &scale.to_string(), "-h"])
        .arg(run_dir)
        .args(["-p", &spec.port.to_string(), "-U", SUPERUSER, "postgres"])
        .timeout(Duration::from_secs(3600))
        .run()?;
    server.stop_within(Duration::from_secs(300))?;
    let megabytes = sys::tree::size(data_dir).bytes.div_ceil(1 << 20);
    Ok(Sample {
        description: format!("pgbench scale {scale} (about {megabytes} MB)"),
        change_sql: "UPDATE pgbench_accounts SET abalance = abalance + 100 WHERE aid <= 1000".into(),
        check_sql: "SELECT sum(abalance) FROM pgbench_accounts".into(),
        unchanged_value: "0".into(),
    })
}
