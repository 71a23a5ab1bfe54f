//! The `edgegate` command: `serve` runs a node, `token` mints a dev token.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use edgegate::config::{Config, LogFormat, Sources};
use edgegate::gateway::Gateway;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

#[derive(Parser)]
#[command(name = "edgegate", version, about = "Real-time edge gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node. With no config file: a development node (self-signed certificate,
    /// generated API key, demo page at /).
    Serve(ServeArgs),
    /// Mint an HS256 client token (development and tests).
    Token(TokenArgs),
    /// Make certificates.
    #[command(subcommand)]
    Certs(CertsCommand),
}

#[derive(Subcommand)]
enum CertsCommand {
    /// A development cluster CA and one mesh certificate per node.
    Cluster {
        /// Directory to write ca.pem, ca.key, <node>.pem, <node>.key into.
        #[arg(long)]
        out: PathBuf,
        /// Node ids, comma-separated: --nodes eu-1,us-1,ap-1
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<String>,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// TOML config file (see edgegate.example.toml).
    #[arg(long, short, env = "EDGEGATE_CONFIG")]
    config: Option<PathBuf>,
    /// Address for UDP and TCP, e.g. [::]:4433 or 127.0.0.1:0 (listen).
    #[arg(long)]
    listen: Option<String>,
    /// Node id (node.id).
    #[arg(long)]
    node_id: Option<String>,
    /// Region (node.region).
    #[arg(long)]
    region: Option<String>,
    /// API key (api.key).
    #[arg(long)]
    api_key: Option<String>,
    /// PEM certificate chain (tls.cert).
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// PEM private key (tls.key).
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// Log format (log.format).
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Force development mode on (or off with --dev=false).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    dev: Option<bool>,
    /// Any key: --set session.max_frame=131072 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Check the configuration (and that the certificate files load) and exit.
    #[arg(long)]
    check: bool,
}

#[derive(Args)]
struct TokenArgs {
    /// User id (the `sub` claim).
    #[arg(long)]
    sub: String,
    /// Channel pattern the token may publish, subscribe and join presence on: an exact
    /// name or `namespace:*` (repeatable).
    #[arg(long)]
    allow: Vec<String>,
    /// Lifetime: 30s, 15m, 1h, 2d.
    #[arg(long, default_value = "1h")]
    ttl: String,
    /// HS256 secret (auth.hs256_secret).
    #[arg(long, env = "EDGEGATE_AUTH__HS256_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Read the secret from this config file's auth.hs256_secret instead.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Token(args) => token(args),
        Command::Certs(CertsCommand::Cluster { out, nodes }) => {
            match edgegate::mesh::tls::generate(&out, &nodes) {
                Ok(()) => {
                    println!(
                        "wrote {}/ca.pem, ca.key and a .pem/.key pair for {}",
                        out.display(),
                        nodes.join(", ")
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("edgegate certs cluster: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn sources(args: &ServeArgs) -> Result<Sources, String> {
    let mut overrides = Vec::new();
    let mut flag = |key: &str, value: Option<String>| {
        if let Some(v) = value {
            overrides.push((key.to_string(), toml_string(&v)));
        }
    };
    flag("listen", args.listen.clone());
    flag("node.id", args.node_id.clone());
    flag("node.region", args.region.clone());
    flag("api.key", args.api_key.clone());
    flag(
        "tls.cert",
        args.tls_cert.as_ref().map(|p| p.display().to_string()),
    );
    flag(
        "tls.key",
        args.tls_key.as_ref().map(|p| p.display().to_string()),
    );
    if let Some(f) = args.log_format {
        overrides.push((
            "log.format".into(),
            match f {
                LogFormat::Human => "\"human\"".into(),
                LogFormat::Json => "\"json\"".into(),
            },
        ));
    }
    if let Some(d) = args.dev {
        overrides.push(("dev".into(), d.to_string()));
    }
    for kv in &args.set {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("--set {kv:?}: expected KEY=VALUE"))?;
        overrides.push((k.trim().to_string(), v.to_string()));
    }
    Ok(Sources {
        file: args.config.clone(),
        env: std::env::vars().collect(),
        overrides,
    })
}

/// Quotes a flag value as a TOML string so it is never reinterpreted as a number or table.
fn toml_string(v: &str) -> String {
    toml::Value::String(v.to_string()).to_string()
}

fn serve(args: ServeArgs) -> ExitCode {
    let config = match sources(&args).and_then(|s| Config::load(&s).map_err(|e| e.to_string())) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("edgegate: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let otel = match edgegate::telemetry::otel::Otel::new(
        &config.telemetry,
        &config.node.id,
        &config.node.region,
    ) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("edgegate: OpenTelemetry: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    edgegate::telemetry::init(&config.log, otel.as_ref(), &config.telemetry.filter);
    if args.check {
        return check(&config);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("edgegate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let gw = match Gateway::load(config).await {
            Ok(gw) => gw,
            Err(e) => {
                error!("cannot start: {e:#}");
                return ExitCode::FAILURE;
            }
        };
        if let Some(o) = &otel {
            o.observe(gw.shared().hub.counters().clone(), &gw.shared().node.id);
        }
        let line = gw.ready_line();
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
        drop(out);
        let shutdown = CancellationToken::new();
        tokio::spawn(signals(shutdown.clone()));
        let result = gw.run(shutdown).await;
        if let Some(o) = otel {
            // The exporters block on HTTP: off the async threads.
            let _ = tokio::task::spawn_blocking(move || o.shutdown()).await;
        }
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                error!("{e:#}");
                ExitCode::FAILURE
            }
        }
    })
}

/// `serve --check`: the config parsed and validated; the certificate files load.
fn check(config: &Config) -> ExitCode {
    if let (Some(cert), Some(key)) = (&config.tls.cert, &config.tls.key) {
        let rt = match tokio::runtime::Builder::new_current_thread().build() {
            Ok(r) => r,
            Err(e) => {
                eprintln!("edgegate: {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Err(e) = rt.block_on(edgegate::tls::load_identity(cert, key)) {
            eprintln!("edgegate: invalid configuration: tls: {e:#}");
            return ExitCode::from(2);
        }
    }
    println!(
        "configuration ok: node {} in {}, listen {}, {} namespace(s){}",
        config.node.id,
        config.node.region,
        config.listen,
        config.namespace.len(),
        if config.is_dev() { ", dev mode" } else { "" }
    );
    ExitCode::SUCCESS
}

async fn signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: draining (send again to exit now)"),
        _ = int.recv() => info!("SIGINT: draining (Ctrl-C again to exit now)"),
    }
    shutdown.cancel();
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    error!("second signal: exiting without waiting for the drain");
    std::process::exit(130);
}

fn token(args: TokenArgs) -> ExitCode {
    let secret = match (&args.secret, &args.config) {
        (Some(s), _) => Some(s.clone()),
        (None, Some(path)) => {
            match Config::load(&Sources {
                file: Some(path.clone()),
                env: Vec::new(),
                overrides: Vec::new(),
            }) {
                Ok(c) => c.auth.hs256_secret,
                Err(e) => {
                    eprintln!("edgegate: invalid configuration: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        (None, None) => None,
    };
    let Some(secret) = secret else {
        eprintln!(
            "edgegate token: no secret: pass --secret, set EDGEGATE_AUTH__HS256_SECRET, or --config with auth.hs256_secret"
        );
        return ExitCode::from(2);
    };
    let result = edgegate::auth::parse_ttl(&args.ttl).and_then(|ttl| {
        edgegate::auth::mint_hs256(
            &secret,
            &args.sub,
            &args.allow,
            ttl,
            edgegate::session::now_ms() / 1000,
        )
    });
    match result {
        Ok(t) => {
            println!("{t}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("edgegate token: {e}");
            ExitCode::from(2)
        }
    }
}
