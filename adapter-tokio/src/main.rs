//! `brokk`: the MQTT broker server.

use std::process::ExitCode;

use adapter_common::cli::{load_config, run_passwd, Cli, Command};
use adapter_common::passwd::SetPassword;
use adapter_tokio::Server;
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Passwd(args)) = &cli.command {
        return match run_passwd(args, &mut std::io::stdin().lock()) {
            Ok(SetPassword::Added) => {
                println!("added {} to {}", args.username, args.file.display());
                ExitCode::SUCCESS
            }
            Ok(SetPassword::Replaced) => {
                println!(
                    "changed the password of {} in {}",
                    args.username,
                    args.file.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("brokk passwd: {e}");
                ExitCode::FAILURE
            }
        };
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let config = match load_config(&cli.run) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("brokk: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = match Server::start(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("brokk: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(ca) = server.dev_ca_cert() {
        println!(
            "dev TLS: clients should trust the CA certificate at {}",
            ca.display()
        );
    }
    for (kind, addr) in server.local_addrs() {
        println!("brokk listening: {}://{addr}", kind.as_str());
    }
    wait_for_signal();
    server.shutdown();
    ExitCode::SUCCESS
}

/// Blocks until SIGINT or SIGTERM.
fn wait_for_signal() {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    });
}
