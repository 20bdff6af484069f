//! The `fluxo` binary: the server and the command-line clients.
//!
//! This crate only wires the parts together: `serve` opens the log store
//! and starts the protocol fronts; the client verbs talk to a running
//! server over the Kafka protocol through `fluxo-client`.

mod alloc;
mod bench;
mod bench_nexmark;
mod cli;
mod config;
mod demo;
mod registry_schemas;
mod serve;

use clap::{Parser, Subcommand};

#[global_allocator]
static ALLOCATOR: alloc::FluxoAllocator = alloc::FluxoAllocator;

#[derive(Parser)]
#[command(
    name = "fluxo",
    version,
    about = "One binary that takes in, keeps, processes and serves streams of events."
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: the Kafka-compatible broker and its durable log.
    Serve(serve::ServeArgs),
    /// Create, list, describe and delete topics on a running server.
    #[command(subcommand)]
    Topic(cli::topic::TopicCommand),
    /// Produce lines from stdin to a topic.
    Produce(cli::produce::ProduceArgs),
    /// Consume records from a topic and print them.
    Consume(cli::consume::ConsumeArgs),
    /// List, describe (with lag) and delete consumer groups.
    #[command(subcommand)]
    Group(cli::group::GroupCommand),
    /// Run SQL against a running server (a REPL, or one script with -e).
    Sql(cli::sql::SqlArgs),
    /// Measure throughput and latency against a running server.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

const GUIDE: &str =
    "fluxo: one binary that takes in, keeps, processes and serves streams of events.

See it work (a live shop: orders, SQL views, a dashboard), then open http://127.0.0.1:8080/:
    fluxo serve --demo

Or start an empty server (Kafka on 127.0.0.1:9092, HTTP on :8080, Postgres wire on :5433):
    fluxo serve

Then, from another terminal:
    fluxo topic create clicks --partitions 3
    echo '{\"user\": 1, \"page\": \"/\"}' | fluxo produce clicks --key-field user
    fluxo consume clicks --from-beginning
    fluxo sql -e \"SHOW VIEWS\"

Any Kafka client works too, e.g. kcat -b 127.0.0.1:9092 -L; so does psql -h 127.0.0.1 -p 5433.

Run `fluxo help` or `fluxo <command> --help` for every option.";

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let Some(command) = args.command else {
        println!("{GUIDE}");
        return std::process::ExitCode::SUCCESS;
    };
    if !matches!(command, Command::Serve(_)) {
        // A CLI whose output is piped into `head` should end quietly, as
        // Unix tools do, not panic on a closed stdout. (The server keeps
        // SIGPIPE ignored: a client closing its socket must not kill it.)
        // SAFETY: setting a signal disposition before any threads start.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("FLUXO_LOG")
        // delta-rs' kernel logs every snapshot it builds at info; that is
        // noise at fluxo's level of detail.
        .unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(
                "info,buoyant_kernel=warn,buoyant_kernel_engine=warn",
            )
        });
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fluxo: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match command {
            Command::Serve(a) => serve::run(a).await,
            Command::Topic(c) => cli::topic::run(c).await,
            Command::Produce(a) => cli::produce::run(a).await,
            Command::Consume(a) => cli::consume::run(a).await,
            Command::Group(c) => cli::group::run(c).await,
            Command::Sql(a) => cli::sql::run(a).await,
            Command::Bench(c) => bench::run(c).await,
        }
    });
    // Background tasks (stdin readers, connections) must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fluxo: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
