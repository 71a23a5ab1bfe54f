//! One typed configuration from a TOML file, `EDGEGATE_*` environment variables and flags.
//!
//! Precedence: flag > environment > file > built-in default. Every key of the file can be
//! set from the environment as `EDGEGATE_<SECTION>__<KEY>` (upper case, `__` between levels,
//! for example `EDGEGATE_SESSION__MAX_FRAME=131072`) and from the command line as
//! `--set section.key=value`; the most used keys also have their own flag. Values from the
//! environment and `--set` are read as TOML values when they parse as one (`true`, `100`,
//! `["a","b"]`) and as strings otherwise.
//!
//! Unknown keys are errors, named with their full path, so a typo fails at start instead of
//! silently keeping a default.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::auth;
use crate::hub::policy::{ModeName, Policy, SnapshotMode};
use crate::protocol::DEFAULT_MAX_FRAME;
use crate::session;
pub use crate::session::admission::LimitsConfig;

/// Default port for UDP (WebTransport) and TCP (WebSocket + HTTP).
pub const DEFAULT_PORT: u16 = 4433;

/// Largest `session.max_frame` accepted (4 MiB), half the decoder's hard ceiling.
pub const MAX_FRAME_CEILING: u32 = (crate::protocol::DECODE_LIMIT / 2) as u32;

/// The whole node configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address for both UDP (WebTransport, HTTP/3) and TCP (WebSocket, HTTP API). Port 0
    /// picks a free port that is free for both.
    pub listen: SocketAddr,
    /// Node identity.
    pub node: NodeConfig,
    /// Development mode: a self-signed certificate, a generated API key, anonymous access
    /// to the demo namespaces, the demo ticker. On by default when no config file is given.
    pub dev: Option<bool>,
    /// TLS certificate for WebTransport (and the mesh, later).
    pub tls: TlsConfig,
    /// HTTP API.
    pub api: ApiConfig,
    /// Client authentication.
    pub auth: auth::Config,
    /// Per-session limits and timeouts.
    pub session: session::Config,
    /// Node-wide connection limits.
    pub limits: LimitsConfig,
    /// Logging.
    pub log: LogConfig,
    /// OpenTelemetry export.
    pub telemetry: TelemetryConfig,
    /// Shutdown behaviour.
    pub shutdown: ShutdownConfig,
    /// The relay mesh.
    pub cluster: crate::mesh::ClusterConfig,
    /// Channel namespaces (`[[namespace]]`); a namespace named `*` applies to all others.
    pub namespace: Vec<Policy>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, DEFAULT_PORT)),
            node: NodeConfig::default(),
            dev: None,
            tls: TlsConfig::default(),
            api: ApiConfig::default(),
            auth: auth::Config::default(),
            session: session::Config::default(),
            limits: LimitsConfig::default(),
            log: LogConfig::default(),
            telemetry: TelemetryConfig::default(),
            shutdown: ShutdownConfig::default(),
            cluster: crate::mesh::ClusterConfig::default(),
            namespace: Vec::new(),
        }
    }
}

/// `[node]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Unique id of this node (default: the host name).
    pub id: String,
    /// Region name (default `local`).
    pub region: String,
}

impl Default for NodeConfig {
    fn default() -> Self {
        let host = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "edgegate".into());
        NodeConfig {
            id: host,
            region: "local".into(),
        }
    }
}

/// `[tls]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain. Without one a self-signed certificate is generated (dev only).
    pub cert: Option<PathBuf>,
    /// PEM private key for `cert`.
    pub key: Option<PathBuf>,
    /// Extra names for the generated dev certificate (it always has localhost, 127.0.0.1, ::1).
    pub dev_names: Vec<String>,
    /// Seconds between checks of `cert` and `key` for changes (0: reload on SIGHUP only).
    pub reload_poll_secs: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert: None,
            key: None,
            dev_names: Vec::new(),
            // Certificate renewals land hours or days ahead of expiry; 5 s is prompt and
            // costs two stat calls.
            reload_poll_secs: 5,
        }
    }
}

/// `[api]`.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Bearer key for `/api/*`. A dev node generates one when unset; a production node
    /// without one refuses every API call.
    pub key: Option<String>,
}

// By hand so the key never reaches a log line.
impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiConfig")
            .field("key", &self.key.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `human` or `json`.
    pub format: LogFormat,
    /// `tracing` filter directives (`RUST_LOG` overrides it).
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Human,
            filter: "info".into(),
        }
    }
}

/// `[telemetry]`: OpenTelemetry traces and metrics over OTLP/HTTP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// OTLP/HTTP base URL (`/v1/traces` and `/v1/metrics` are appended). Unset: export is
    /// on only if `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported data (`OTEL_SERVICE_NAME` overrides).
    pub service_name: String,
    /// Which spans are exported (`tracing` filter directives). `edgegate=debug` includes one
    /// span per client request; `edgegate=info` only sessions and relay links.
    pub filter: String,
    /// Seconds between metric exports.
    pub metrics_interval_secs: u64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: None,
            service_name: "edgegate".into(),
            filter: "edgegate=debug".into(),
            metrics_interval_secs: 10,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// For people.
    Human,
    /// One JSON object per line.
    Json,
}

/// `[shutdown]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// Seconds from the start of a drain until the node exits, whoever is left.
    pub deadline_secs: u64,
    /// Seconds over which `GoingAway` is spread across the open sessions (lame duck), so
    /// their reconnects do not hit the other nodes at once. Must be below `deadline_secs`.
    pub lame_duck_secs: u64,
    /// Where drained clients are told to reconnect (a URL of another node of the region).
    /// Unset: the mesh's choice if it knows one, else none (clients reconnect to the same
    /// name and DNS sends them elsewhere).
    pub reconnect_to: Option<String>,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            // Kubernetes' default grace period is 30 s; leave room after the deadline.
            deadline_secs: 20,
            lame_duck_secs: 10,
            reconnect_to: None,
        }
    }
}

/// A configuration problem, with the key it is about.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

fn err(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

/// Where settings come from, in increasing precedence after the file.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    /// The config file, if any.
    pub file: Option<PathBuf>,
    /// Environment variables (name, value); only `EDGEGATE_*` ones are read.
    pub env: Vec<(String, String)>,
    /// `key.path=value` overrides from flags, applied in order.
    pub overrides: Vec<(String, String)>,
}

/// Environment variables that are not config keys (read by the command line itself).
const NOT_KEYS: &[&str] = &["EDGEGATE_CONFIG", "EDGEGATE_REQUIRE_BROWSER"];

/// Top-level keys of [`Config`] (keep in step with its fields). A one-word `EDGEGATE_X`
/// variable that names none of them belongs to some other tool and is ignored; a
/// `EDGEGATE_SECTION__KEY` one is always read, so a typo there is an error.
const TOP_LEVEL: &[&str] = &[
    "listen",
    "node",
    "dev",
    "tls",
    "api",
    "auth",
    "session",
    "limits",
    "log",
    "telemetry",
    "shutdown",
    "namespace",
    "cluster",
];

impl Config {
    /// Reads, merges, parses and validates.
    pub fn load(sources: &Sources) -> Result<Config, ConfigError> {
        let mut root = match &sources.file {
            Some(path) => read_file(path)?,
            None => toml::Table::new(),
        };
        let mut env: Vec<&(String, String)> = sources
            .env
            .iter()
            .filter(|(k, _)| k.starts_with("EDGEGATE_") && !NOT_KEYS.contains(&k.as_str()))
            .collect();
        env.sort();
        for (name, value) in env {
            let path = name["EDGEGATE_".len()..]
                .to_ascii_lowercase()
                .replace("__", ".");
            if !path.contains('.') && !TOP_LEVEL.contains(&path.as_str()) {
                continue;
            }
            set(&mut root, &path, value).map_err(|e| err(format!("{name}: {e}")))?;
        }
        for (path, value) in &sources.overrides {
            set(&mut root, path, value).map_err(|e| err(format!("--set {path}: {e}")))?;
        }
        let mut config = from_table(root)?;
        if config.dev.is_none() {
            config.dev = Some(sources.file.is_none());
        }
        config.validate()?;
        if config.is_dev() {
            config.apply_dev_defaults();
        }
        // A namespace that lets anonymous connections do something needs them admitted.
        if config
            .namespace
            .iter()
            .any(|n| n.anonymous_subscribe || n.anonymous_publish || n.anonymous_presence)
        {
            config.auth.allow_anonymous = true;
        }
        Ok(config)
    }

    /// Whether this node runs in development mode.
    pub fn is_dev(&self) -> bool {
        self.dev.unwrap_or(false)
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.session;
        if s.max_frame < 1024 || s.max_frame > MAX_FRAME_CEILING {
            return Err(err(format!(
                "session.max_frame: {} is outside 1024..={MAX_FRAME_CEILING} (default {DEFAULT_MAX_FRAME})",
                s.max_frame,
            )));
        }
        if s.max_datagram_payload == 0 || s.max_datagram_payload > 1200 {
            return Err(err(format!(
                "session.max_datagram_payload: {} is outside 1..=1200 (one QUIC packet)",
                s.max_datagram_payload
            )));
        }
        for (key, v) in [
            ("session.max_subscriptions", s.max_subscriptions as u64),
            ("session.publish_rate", s.publish_rate as u64),
            ("session.publish_burst", s.publish_burst as u64),
            ("session.handshake_timeout_secs", s.handshake_timeout_secs),
            ("session.heartbeat_secs", s.heartbeat_secs),
            ("session.write_batch", s.write_batch as u64),
            ("session.outbox.max_items", s.outbox.max_items as u64),
            ("session.outbox.max_bytes", s.outbox.max_bytes as u64),
            (
                "session.outbox.max_datagrams",
                s.outbox.max_datagrams as u64,
            ),
            ("limits.max_connections", self.limits.max_connections as u64),
            (
                "limits.max_connections_per_ip",
                self.limits.max_connections_per_ip as u64,
            ),
            (
                "limits.new_connections_per_sec",
                self.limits.new_connections_per_sec as u64,
            ),
        ] {
            if v == 0 {
                return Err(err(format!("{key}: must be greater than 0")));
            }
        }
        if self.shutdown.lame_duck_secs >= self.shutdown.deadline_secs {
            return Err(err(format!(
                "shutdown.lame_duck_secs: {} must be below shutdown.deadline_secs ({})",
                self.shutdown.lame_duck_secs, self.shutdown.deadline_secs
            )));
        }
        if s.idle_timeout_secs <= s.heartbeat_secs {
            return Err(err(format!(
                "session.idle_timeout_secs: {} must be greater than session.heartbeat_secs ({})",
                s.idle_timeout_secs, s.heartbeat_secs
            )));
        }
        if (s.outbox.max_bytes as u64) < s.max_frame as u64 {
            return Err(err(
                "session.outbox.max_bytes: must hold at least one frame of session.max_frame",
            ));
        }
        match (&self.tls.cert, &self.tls.key) {
            (Some(_), None) => return Err(err("tls.key: required when tls.cert is set")),
            (None, Some(_)) => return Err(err("tls.cert: required when tls.key is set")),
            (None, None) if !self.is_dev() => {
                return Err(err(
                    "tls.cert: a production node needs a certificate (tls.cert and tls.key), \
                     or set dev = true for a self-signed one",
                ));
            }
            _ => {}
        }
        if self.cluster.listen.is_some()
            && (self.cluster.ca.is_none()
                || self.cluster.cert.is_none()
                || self.cluster.key.is_none())
        {
            return Err(err(
                "cluster.ca: cluster.ca, cluster.cert and cluster.key are required with cluster.listen (edgegate certs cluster makes a dev set)",
            ));
        }
        if let Some(key) = &self.api.key
            && key.len() < 16
        {
            return Err(err("api.key: must be at least 16 characters"));
        }
        if self.node.id.is_empty() || self.node.region.is_empty() {
            return Err(err("node.id and node.region: must not be empty"));
        }
        let mut seen = HashSet::new();
        for (i, ns) in self.namespace.iter().enumerate() {
            if ns.name.is_empty() && i > 0 && seen.contains("") {
                return Err(err(format!("namespace[{i}].name: duplicate \"\"")));
            }
            if ns.name != "*" && ns.name.contains([':', '*']) {
                return Err(err(format!(
                    "namespace[{i}].name: {:?} must not contain ':' or '*' (use \"*\" alone for the fallback)",
                    ns.name
                )));
            }
            if !seen.insert(ns.name.as_str()) {
                return Err(err(format!("namespace[{i}].name: duplicate {:?}", ns.name)));
            }
            if ns.modes.is_empty() {
                return Err(err(format!(
                    "namespace[{i}].modes: at least one of reliable, datagram, latest"
                )));
            }
            if ns.max_payload == 0 || ns.max_payload > s.max_frame as usize {
                return Err(err(format!(
                    "namespace[{i}].max_payload: {} is outside 1..=session.max_frame ({})",
                    ns.max_payload, s.max_frame
                )));
            }
        }
        Ok(())
    }

    /// What a dev node adds when the config leaves it open.
    fn apply_dev_defaults(&mut self) {
        if !self.auth_has_keys() {
            self.auth.allow_anonymous = true;
        }
        if self.namespace.is_empty() {
            self.namespace = dev_namespaces();
        }
    }

    fn auth_has_keys(&self) -> bool {
        self.auth.hs256_secret.is_some()
            || !self.auth.public_key_files.is_empty()
            || self.auth.jwks_file.is_some()
    }
}

/// The demo namespaces of a dev node: `chat`, `scene`, `prices` and an open fallback.
pub fn dev_namespaces() -> Vec<Policy> {
    let open = Policy {
        anonymous_subscribe: true,
        anonymous_publish: true,
        anonymous_presence: true,
        ..Policy::default()
    };
    vec![
        Policy {
            name: "chat".into(),
            history_len: 100,
            modes: vec![ModeName::Reliable],
            ..open.clone()
        },
        Policy {
            name: "scene".into(),
            history_len: 0,
            snapshot: SnapshotMode::Keyed,
            modes: vec![ModeName::Datagram, ModeName::Latest],
            max_payload: 1000,
            ..open.clone()
        },
        Policy {
            name: "prices".into(),
            history_len: 0,
            snapshot: SnapshotMode::Keyed,
            modes: vec![ModeName::Latest],
            anonymous_publish: false,
            anonymous_presence: false,
            presence: false,
            ..open.clone()
        },
        Policy {
            name: "*".into(),
            ..open
        },
    ]
}

fn read_file(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| err(format!("{}: cannot read: {e}", path.display())))?;
    text.parse::<toml::Table>()
        .map_err(|e| err(format!("{}: {e}", path.display())))
}

fn from_table(root: toml::Table) -> Result<Config, ConfigError> {
    let value = toml::Value::Table(root);
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            err(format!("config: {inner}"))
        } else {
            err(format!("{path}: {inner}"))
        }
    })
}

/// Sets `a.b.c = value` in the table, creating tables on the way.
fn set(root: &mut toml::Table, path: &str, raw: &str) -> Result<(), String> {
    let parts: Vec<&str> = path.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(format!("bad key path {path:?}"));
    }
    let value = parse_value(raw);
    let mut table = root;
    for part in &parts[..parts.len() - 1] {
        let entry = table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| format!("{part} is not a table"))?;
    }
    table.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

/// A TOML value if `raw` is one (`42`, `true`, `["a"]`, `"quoted"`), else the string itself.
fn parse_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(
        file: Option<&str>,
        env: &[(&str, &str)],
        sets: &[(&str, &str)],
    ) -> Result<Config, ConfigError> {
        let dir = std::env::temp_dir().join(format!("edgegate-config-{}", rand::random::<u64>()));
        let file = file.map(|text| {
            std::fs::create_dir_all(&dir).expect("temp dir");
            let p = dir.join("edgegate.toml");
            std::fs::write(&p, text).expect("write config");
            p
        });
        let sources = Sources {
            file,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            overrides: sets
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let r = Config::load(&sources);
        let _ = std::fs::remove_dir_all(&dir);
        r
    }

    const PROD: &str = "[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n";

    #[test]
    fn no_file_is_a_dev_node_with_demo_namespaces() {
        let c = load(None, &[], &[]).expect("dev config");
        assert!(c.is_dev());
        assert!(c.auth.allow_anonymous);
        assert!(c.namespace.iter().any(|n| n.name == "prices"));
        assert_eq!(c.listen.port(), DEFAULT_PORT);
    }

    #[test]
    fn a_file_means_production() {
        let c = load(Some(PROD), &[], &[]).expect("prod config");
        assert!(!c.is_dev());
        assert!(!c.auth.allow_anonymous);
        assert!(c.namespace.is_empty());
        let e = load(Some("[session]\nmax_frame = 65536\n"), &[], &[]).expect_err("no cert");
        assert!(e.to_string().starts_with("tls.cert:"), "{e}");
    }

    #[test]
    fn precedence_is_flag_over_env_over_file() {
        let file =
            format!("{PROD}[session]\nmax_frame = 2048\npublish_rate = 7\nheartbeat_secs = 5\n");
        let c = load(Some(&file), &[], &[]).expect("file");
        assert_eq!(c.session.max_frame, 2048);
        let c = load(Some(&file), &[("EDGEGATE_SESSION__MAX_FRAME", "4096")], &[]).expect("env");
        assert_eq!(c.session.max_frame, 4096);
        assert_eq!(c.session.publish_rate, 7);
        let c = load(
            Some(&file),
            &[("EDGEGATE_SESSION__MAX_FRAME", "4096")],
            &[("session.max_frame", "8192")],
        )
        .expect("flag");
        assert_eq!(c.session.max_frame, 8192);
        let c = load(
            None,
            &[
                ("EDGEGATE_LISTEN", "127.0.0.1:9000"),
                ("EDGEGATE_BIN", "/usr/bin/x"),
            ],
            &[],
        )
        .expect("string value; an unrelated one-word variable is ignored");
        assert_eq!(c.listen, "127.0.0.1:9000".parse().expect("addr"));
    }

    #[test]
    fn bad_keys_and_values_are_named() {
        let e =
            load(Some(&format!("{PROD}[session]\nmax_fram = 1\n")), &[], &[]).expect_err("typo");
        let msg = e.to_string();
        assert!(msg.contains("session") && msg.contains("max_fram"), "{msg}");
        let e = load(None, &[("EDGEGATE_SESSION__PUBLISH_RATE", "fast")], &[]).expect_err("type");
        assert!(e.to_string().starts_with("session.publish_rate"), "{e}");
        let e = load(None, &[("EDGEGATE_SESION__PUBLISH_RATE", "5")], &[]).expect_err("typo");
        assert!(e.to_string().contains("sesion"), "{e}");
        let e = load(None, &[("EDGEGATE_SESSION__PUBLISH_RATE", "fast")], &[]).expect_err("type");
        assert!(e.to_string().starts_with("session.publish_rate"), "{e}");
        let e = load(None, &[], &[("session.max_frame", "10")]).expect_err("range");
        assert!(e.to_string().starts_with("session.max_frame"), "{e}");
        let e =
            load(None, &[], &[("namespace", "[{name = \"a\", modes = []}]")]).expect_err("modes");
        assert!(e.to_string().starts_with("namespace[0].modes"), "{e}");
        let e = load(Some("listen = \n"), &[], &[]).expect_err("syntax");
        assert!(e.to_string().contains("edgegate.toml"), "{e}");
    }

    #[test]
    fn example_config_parses_and_covers_every_section() {
        let text = include_str!("../edgegate.example.toml");
        let table: toml::Table = text.parse().expect("example parses");
        let c = from_table(table).expect("example is valid");
        assert!(!c.namespace.is_empty());
        for section in [
            "node", "tls", "api", "auth", "session", "limits", "log", "shutdown",
        ] {
            assert!(
                text.contains(&format!("[{section}]")),
                "example lacks [{section}]"
            );
        }
    }
}
