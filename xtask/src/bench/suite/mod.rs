//! `cargo xtask bench suite` (being written).

use anyhow::Result;

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    #[command(flatten)]
    pub common: super::Common,
}

pub fn main(_o: Options) -> Result<()> {
    anyhow::bail!("not yet")
}
