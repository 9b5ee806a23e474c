//! The demo's sample database: a bank's accounts, in a new data directory made by
//! `mariadb-install-db`, filled on a private server, then shut down slowly, ready to be
//! imaged.

use std::path::Path;
use std::time::Duration;

use engine::{Result, Sample, User};
use sys::Program;

use crate::datadir;
use crate::install::Search;
use crate::prepare;
use crate::server::{self, Role};

/// Accounts per unit of scale: about 12 MB each, near the other engine's unit.
const ACCOUNTS_PER_UNIT: u64 = 100_000;
/// The most a sample takes to make.
const TIMEOUT: Duration = Duration::from_secs(3600);

pub(crate) fn make_sample(search: &Search, data_dir: &Path, run_dir: &Path, user: &User, scale: u32) -> Result<Sample> {
    let installation = search.any()?;
    installation.require("mariadb-install-db", "mariadb-server")?;
    Program::new(installation.program("mariadb-install-db"))
        .args(["--no-defaults", "--skip-test-db", "--auth-root-authentication-method=socket"])
        .arg(format!("--datadir={}", data_dir.display()))
        .arg(format!("--tmpdir={}", run_dir.display()))
        .user(user)
        .cwd(run_dir)
        .timeout(TIMEOUT)
        .run()?;
    let version = datadir::detect(data_dir)?;
    let spec = prepare::prepare_spec(&version, data_dir, run_dir, user);
    let server = server::start_as(&installation, &spec, TIMEOUT, Role::Prepare)?;
    let accounts = u64::from(scale.max(1)) * ACCOUNTS_PER_UNIT;
    server.sql_for(
        None,
        &format!(
            "CREATE DATABASE bank;\n\
             CREATE TABLE bank.accounts (id INT PRIMARY KEY, branch INT NOT NULL, balance BIGINT NOT NULL, \
                                         filler CHAR(84) NOT NULL) ENGINE=InnoDB;\n\
             INSERT INTO bank.accounts SELECT seq, seq DIV 100000 + 1, 0, '' FROM bank.seq_1_to_{accounts};\n"
        ),
        TIMEOUT,
    )?;
    server.stop_within(TIMEOUT)?;
    let megabytes = sys::tree::size(data_dir).bytes.div_ceil(1 << 20);
    Ok(Sample {
        description: format!("{accounts} bank accounts (about {megabytes} MB)"),
        change_sql: "UPDATE bank.accounts SET balance = balance + 100 WHERE id <= 1000".into(),
        check_sql: "SELECT SUM(balance) FROM bank.accounts".into(),
        unchanged_value: "0".into(),
    })
}
