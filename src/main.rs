// As in lib.rs: no `unwrap` outside tests.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

use std::process::ExitCode;

use clap::Parser;
use pgsteward::cli::{Cli, Command, ConvertCommand, PartitionsCommand, UpgradeCommand};
use pgsteward::config::{self, Cluster, Config};
use pgsteward::{Error, Outcome};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Generated from the command line alone: no configuration, no runtime, no log lines.
    match &cli.command {
        Command::Completions { shell } => {
            return write_or_exit("completions", |out| {
                pgsteward::tooling::completions(*shell, out)
            })
        }
        Command::SchemaSql => {
            return write_or_exit("the schema SQL", |out| {
                out.write_all(pgsteward::schema::subscriber_sql().as_bytes())
            })
        }
        Command::Man(args) => match &args.dir {
            None => return write_or_exit("the manual page", pgsteward::tooling::man_page),
            Some(dir) => {
                return match pgsteward::tooling::man_pages(dir) {
                    Ok(pages) => {
                        for p in pages {
                            println!("{}", p.display());
                        }
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!(
                            "error: cannot write the manual pages into {}: {e}",
                            dir.display()
                        );
                        ExitCode::from(1)
                    }
                }
            }
        },
        _ => {}
    }
    pgsteward::telemetry::init(cli.log_format, &cli.log_level);
    // Tokio's default 2 MiB worker stacks: the deep futures (the partition
    // pass, the upgrade saga's steps) are made on the heap (crate::heap,
    // upgrade::table), so a debug build needs no more either.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(outcome) => ExitCode::from(outcome.exit_code()),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Writes generated text on stdout; a reader that went away (`| head`) is not an error.
fn write_or_exit(
    what: &str,
    f: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
) -> ExitCode {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match f(&mut out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: cannot write {what}: {e}");
            ExitCode::from(1)
        }
    }
}

fn load_config(cli: &Cli) -> Result<Config, Error> {
    let path = config::resolve_path(cli.config.as_deref());
    Ok(config::load(&path)?)
}

async fn dispatch(cli: Cli) -> Result<Outcome, Error> {
    match &cli.command {
        Command::Demo(args) => return Ok(pgsteward::demo::run(args).await?),
        Command::Check(out) => {
            let cfg = load_config(&cli)?;
            return Ok(pgsteward::check::run(&cfg.cluster, out.output).await?);
        }
        _ => {}
    }
    let cfg = load_config(&cli)?;
    if let Command::Run = cli.command {
        return Ok(pgsteward::service::run_until_signal(cfg).await?);
    }
    // Every other command works on one cluster: the one the file describes
    // (with several, a `--cluster NAME` would pick it here).
    let cfg = cfg.cluster;
    if let Command::Upgrade(
        UpgradeCommand::Start { .. } | UpgradeCommand::Resume | UpgradeCommand::Abort,
    ) = &cli.command
    {
        // A runner of this binary may arm a pause keeper (this program again).
        if let Ok(program) = std::env::current_exe() {
            pgsteward::upgrade::keeper::enable(
                program,
                config::resolve_path(cli.config.as_deref()),
            );
        }
    }
    match cli.command {
        Command::Partitions(PartitionsCommand::Plan(o)) => {
            Ok(pgsteward::partitions::plan_command(&cfg, o.output).await?)
        }
        Command::Partitions(PartitionsCommand::Apply(o)) => {
            before_ddl(&cfg).await?;
            Ok(pgsteward::partitions::apply_command(&cfg, o.output).await?)
        }
        Command::Partitions(PartitionsCommand::Status(o)) => {
            Ok(pgsteward::partitions::status_command(&cfg, o.output).await?)
        }
        Command::Partitions(PartitionsCommand::Archives { table, output }) => {
            Ok(pgsteward::partitions::retire::commands::archives_command(
                &cfg,
                table.as_ref(),
                output.output,
            )
            .await?)
        }
        Command::Partitions(PartitionsCommand::Restore {
            table,
            from,
            into,
            attach,
        }) => Ok(pgsteward::partitions::retire::commands::restore_command(
            &cfg,
            &table,
            &from,
            into.as_ref(),
            attach,
        )
        .await?),
        Command::Lag(o) => Ok(pgsteward::lag::lag_command(&cfg, o.output).await?),
        Command::Capacity(a) => Ok(pgsteward::capacity::capacity_command(
            &cfg,
            a.output.output,
            &a.horizon,
            a.plot.as_deref(),
        )
        .await?),
        Command::Upgrade(cmd) => Ok(match cmd {
            UpgradeCommand::Plan { target, output } => {
                pgsteward::upgrade::plan_command(&cfg, &target.target_class, output.output).await?
            }
            UpgradeCommand::Start { target } => {
                pgsteward::upgrade::start_command(&cfg, &target.target_class).await?
            }
            UpgradeCommand::Status(o) => pgsteward::upgrade::status_command(&cfg, o.output).await?,
            UpgradeCommand::Resume => pgsteward::upgrade::resume_command(&cfg).await?,
            UpgradeCommand::Abort => pgsteward::upgrade::abort_command(&cfg).await?,
            UpgradeCommand::Keeper { after_ms } => {
                pgsteward::upgrade::keeper_command(&cfg, after_ms).await?
            }
        }),
        Command::Convert(cmd) => Ok({
            if !matches!(
                cmd,
                ConvertCommand::Plan { .. } | ConvertCommand::Status { .. }
            ) {
                // As a pass does.
                before_ddl(&cfg).await?;
            }
            match cmd {
                ConvertCommand::Plan { table, key, output } => {
                    pgsteward::convert::plan_command(
                        &cfg,
                        &table.table,
                        key.key.as_deref(),
                        output.output,
                    )
                    .await?
                }
                ConvertCommand::Start { table, key } => {
                    pgsteward::convert::start_command(&cfg, &table.table, key.key.as_deref())
                        .await?
                }
                ConvertCommand::Status { table, output } => {
                    pgsteward::convert::status_command(&cfg, &table.table, output.output).await?
                }
                ConvertCommand::Resume { table } => {
                    pgsteward::convert::resume_command(&cfg, &table.table).await?
                }
                ConvertCommand::Abort { table } => {
                    pgsteward::convert::abort_command(&cfg, &table.table).await?
                }
            }
        }),
        Command::Run
        | Command::Demo(_)
        | Command::Check(_)
        | Command::Completions { .. }
        | Command::Man(_)
        | Command::SchemaSql => {
            unreachable!("handled above")
        }
    }
}

/// Before a command's DDL: wait out an upgrade's cutover (the DDL gate),
/// then refuse a primary that an upgrade moved. Only that is refused here;
/// a replica or an unreachable server is the command's own business (it
/// skips or reports).
async fn before_ddl(cfg: &Cluster) -> Result<(), Error> {
    let never = tokio_util::sync::CancellationToken::new();
    pgsteward::upgrade::DdlGate::new(cfg)
        .wait_clear(std::time::Duration::from_secs(600), &never)
        .await?;
    if let Err(e @ pgsteward::upgrade::UpgradeError::PrimaryMoved { .. }) =
        pgsteward::upgrade::ensure_primary_current(cfg).await
    {
        return Err(e.into());
    }
    Ok(())
}
