//! `thinclone op list|show|wait`: the operations the server runs for every request that
//! changes something (making an image, resetting a clone, …).

use api::OperationId;

use super::{format, Ctx};

#[derive(clap::Subcommand, Debug)]
pub enum OpCommand {
    /// List the most recent operations, newest first.
    List,
    /// Show one operation: its state, progress and, if it failed, why.
    Show {
        /// The operation's id, as a command with --no-wait printed it.
        id: OperationId,
    },
    /// Wait until an operation ends, showing its progress; fails if the operation failed.
    Wait {
        /// The operation's id, as a command with --no-wait printed it.
        id: OperationId,
    },
    /// Cancel a running image creation: its copy stops and the image is failed, "cancelled".
    /// Other operations end by themselves; an ended one is shown as it is.
    Cancel {
        /// The operation's id.
        id: OperationId,
    },
}

pub fn run(cmd: OpCommand, ctx: &mut Ctx) -> anyhow::Result<()> {
    match cmd {
        OpCommand::List => {
            let ops = ctx.client.list_operations()?;
            ctx.show_list(&ops, format::operations_table)
        }
        OpCommand::Show { id } => {
            let op = ctx.client.get_operation(id)?;
            ctx.show(&op, format::operation_fields)
        }
        OpCommand::Cancel { id } => {
            let op = ctx.client.cancel_operation(id)?;
            ctx.show(&op, format::operation_fields)
        }
        OpCommand::Wait { id } => {
            let op = ctx.client.get_operation(id)?;
            let op = ctx.wait(op)?;
            ctx.show(&op, format::operation_fields)
        }
    }
}
