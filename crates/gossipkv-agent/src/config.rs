//! The agent's configuration: command-line flags, `GOSSIPKV_*` environment
//! variables and a TOML file, merged with an explicit precedence.
//!
//! Every option can come from three places. For each option on its own,
//! the first that sets it wins: **flag > environment > file > default**.
//! [`resolve`] does the merge; it takes the environment as a map so that
//! it can be tested without touching the process environment.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::Deserialize;

/// Default address of the HTTP API (loopback only).
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8500";
/// Default gossip bind address.
pub const DEFAULT_BIND_ADDR: &str = "0.0.0.0:7946";
/// Default log filter.
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// Default largest HTTP request body accepted, in bytes.
pub const DEFAULT_MAX_BODY: usize = 2 * 1024 * 1024;
/// Default number of HTTP requests served at once (more get a 503).
pub const DEFAULT_MAX_CONCURRENT: usize = 256;

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// How the agent finds its peers besides its seeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Discovery {
    /// Seeds only.
    None,
    /// Seeds and multicast DNS on the local network.
    Mdns,
}

/// What the agent's node does at `--max-entries` or `--max-bytes`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MemoryPolicyArg {
    /// Refuse the write (507 over_budget); right for configuration.
    #[default]
    Reject,
    /// Evict the least recently used keys, as deletes that replicate to
    /// every node; right for a cache.
    EvictLru,
}

impl MemoryPolicyArg {
    /// The library's setting.
    pub fn to_policy(self) -> gossipkv::MemoryPolicy {
        match self {
            MemoryPolicyArg::Reject => gossipkv::MemoryPolicy::Reject,
            MemoryPolicyArg::EvictLru => gossipkv::MemoryPolicy::EvictLru,
        }
    }

    /// The policy of the library's setting.
    pub fn of(policy: gossipkv::MemoryPolicy) -> MemoryPolicyArg {
        match policy {
            gossipkv::MemoryPolicy::EvictLru => MemoryPolicyArg::EvictLru,
            _ => MemoryPolicyArg::Reject,
        }
    }

    /// The policy's name, as the flag and the API spell it.
    pub fn name(self) -> &'static str {
        match self {
            MemoryPolicyArg::Reject => "reject",
            MemoryPolicyArg::EvictLru => "evict-lru",
        }
    }
}

/// How the agent's node treats gossip without a seal (with a keyring).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EncryptionMode {
    /// Seal everything sent; accept only sealed gossip.
    #[default]
    Required,
    /// Accept sealed and plaintext gossip; send plaintext (the first step
    /// of a migration).
    Permissive,
    /// Accept sealed and plaintext gossip; seal what is sent (the second
    /// step of a migration).
    PermissiveSealing,
}

impl EncryptionMode {
    /// The library's setting.
    pub fn to_encryption(self) -> gossipkv::Encryption {
        match self {
            EncryptionMode::Required => gossipkv::Encryption::Required,
            EncryptionMode::Permissive => gossipkv::Encryption::Permissive {
                seal_outgoing: false,
            },
            EncryptionMode::PermissiveSealing => gossipkv::Encryption::Permissive {
                seal_outgoing: true,
            },
        }
    }

    /// The mode of the library's setting.
    pub fn of(encryption: gossipkv::Encryption) -> EncryptionMode {
        match encryption {
            gossipkv::Encryption::Permissive {
                seal_outgoing: false,
            } => EncryptionMode::Permissive,
            gossipkv::Encryption::Permissive {
                seal_outgoing: true,
            } => EncryptionMode::PermissiveSealing,
            _ => EncryptionMode::Required,
        }
    }

    /// The mode's name, as the flag and the API spell it.
    pub fn name(self) -> &'static str {
        match self {
            EncryptionMode::Required => "required",
            EncryptionMode::Permissive => "permissive",
            EncryptionMode::PermissiveSealing => "permissive-sealing",
        }
    }

    /// The mode of a name (`required`, `permissive`,
    /// `permissive-sealing`).
    pub fn parse(s: &str) -> Result<EncryptionMode, String> {
        parse_enum(s)
    }
}

/// The flags of `gossipkv agent`. Every option is optional here: what is
/// not given falls back to the environment, the file, then the default.
#[derive(Args, Clone, Debug, Default)]
pub struct AgentArgs {
    /// This node's id, unique in the cluster [env: GOSSIPKV_NODE_ID]
    /// [default: node- and random hex digits]
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,
    /// Cluster name; nodes of other clusters are ignored
    /// [env: GOSSIPKV_CLUSTER_ID] [default: default]
    #[arg(long, value_name = "ID")]
    pub cluster_id: Option<String>,
    /// UDP address to gossip on, host:port (port 0 picks a free port)
    /// [env: GOSSIPKV_BIND] [default: 0.0.0.0:7946]
    #[arg(long, value_name = "ADDR")]
    pub bind: Option<String>,
    /// Address announced to peers when it differs from --bind (NAT,
    /// containers) [env: GOSSIPKV_ADVERTISE]
    #[arg(long, value_name = "ADDR")]
    pub advertise: Option<String>,
    /// A peer to join, host:port; repeat for several
    /// [env: GOSSIPKV_SEED, comma-separated]
    #[arg(long = "seed", value_name = "ADDR")]
    pub seeds: Vec<String>,
    /// Peer discovery besides seeds [env: GOSSIPKV_DISCOVERY] [default: none]
    #[arg(long, value_enum, value_name = "MODE")]
    pub discovery: Option<Discovery>,
    /// Time between gossip rounds, such as 100ms or 1s
    /// [env: GOSSIPKV_GOSSIP_INTERVAL] [default: 1s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub gossip_interval: Option<Duration>,
    /// How long deletes are remembered as tombstones before they are
    /// collected; a node away longer than this is re-synchronised when it
    /// comes back, such as 10m or 12h
    /// [env: GOSSIPKV_TOMBSTONE_RETENTION] [default: 6h]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub tombstone_retention: Option<Duration>,
    /// Directory that keeps the node's data across restarts (durable mode)
    /// [env: GOSSIPKV_DATA_DIR] [default: memory only]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// When writes reach the disk (needs --data-dir): `sync`, a write is
    /// answered once it is on disk (concurrent writes share one fsync), or
    /// an interval such as 100ms, a write is answered at once and a crash
    /// loses at most the last interval [env: GOSSIPKV_DURABILITY]
    /// [default: sync]
    #[arg(long, value_name = "sync|DURATION", value_parser = parse_durability)]
    pub durability: Option<gossipkv::Durability>,
    /// Most keys held; what happens beyond is --memory-policy
    /// [env: GOSSIPKV_MAX_ENTRIES]
    #[arg(long, value_name = "N")]
    pub max_entries: Option<usize>,
    /// Most bytes held (keys, values, overhead); what happens beyond is
    /// --memory-policy [env: GOSSIPKV_MAX_BYTES]
    #[arg(long, value_name = "BYTES")]
    pub max_bytes: Option<usize>,
    /// What a write beyond --max-entries or --max-bytes does; every node of
    /// a cluster should use the same [env: GOSSIPKV_MEMORY_POLICY]
    /// [default: reject]
    #[arg(long, value_enum, value_name = "POLICY")]
    pub memory_policy: Option<MemoryPolicyArg>,
    /// HTTP API address; a non-loopback address needs --http-token
    /// [env: GOSSIPKV_HTTP] [default: 127.0.0.1:8500]
    #[arg(long, value_name = "ADDR")]
    pub http: Option<String>,
    /// Bearer token the HTTP API requires [env: GOSSIPKV_HTTP_TOKEN]
    #[arg(long, value_name = "TOKEN")]
    pub http_token: Option<String>,
    /// PEM certificate chain: serve the HTTP API over HTTPS only (TLS 1.3
    /// and 1.2); needs --http-tls-key [env: GOSSIPKV_HTTP_TLS_CERT]
    #[arg(long, value_name = "FILE")]
    pub http_tls_cert: Option<PathBuf>,
    /// PEM private key of --http-tls-cert (PKCS#8, PKCS#1 or SEC1)
    /// [env: GOSSIPKV_HTTP_TLS_KEY]
    #[arg(long, value_name = "FILE")]
    pub http_tls_key: Option<PathBuf>,
    /// TOML configuration file (same option names, with underscores)
    /// [env: GOSSIPKV_CONFIG]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log filter: a level (error, warn, info, debug, trace) or
    /// tracing directives [env: GOSSIPKV_LOG_LEVEL] [default: info]
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Log format [env: GOSSIPKV_LOG_FORMAT] [default: text]
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Largest HTTP request body, in bytes (larger ones get a 413)
    /// [env: GOSSIPKV_HTTP_MAX_BODY] [default: 2097152]
    #[arg(long, value_name = "BYTES")]
    pub http_max_body: Option<usize>,
    /// HTTP requests served at once; more get a 503
    /// [env: GOSSIPKV_HTTP_MAX_CONCURRENT] [default: 256]
    #[arg(long, value_name = "N")]
    pub http_max_concurrent: Option<usize>,
    /// Most open HTTP connections; more are closed at once
    /// [env: GOSSIPKV_HTTP_MAX_CONNECTIONS] [default: 1024]
    #[arg(long, value_name = "N")]
    pub http_max_connections: Option<usize>,
    /// JSON keyring file of the gossip encryption keys (mode 0600), as
    /// `{"primary": "<base64>", "keys": ["<base64>", ...]}`; rewritten
    /// when the keyring changes through the API
    /// [env: GOSSIPKV_KEYRING_FILE] [default: no encryption]
    #[arg(long, value_name = "FILE")]
    pub keyring_file: Option<PathBuf>,
    /// Create --keyring-file with a new random key if it does not exist
    /// [flag only]
    #[arg(long)]
    pub init_keyring: bool,
    /// How gossip without a seal is treated (with a keyring):
    /// `permissive` and `permissive-sealing` are the steps of a migration
    /// [env: GOSSIPKV_ENCRYPTION] [default: required]
    #[arg(long, value_enum, value_name = "MODE")]
    pub encryption: Option<EncryptionMode>,
    /// Also run the console in this terminal, attached to this agent; the
    /// agent leaves the cluster when the console ends (logs default to
    /// warn) [flag only]
    #[arg(long)]
    pub console: bool,
}

/// The configuration file: the same options as the flags, with
/// underscores (`node_id = "a"`, `seed = ["10.0.0.1:7946"]`,
/// `gossip_interval = "100ms"`). Unknown keys are an error.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// See [`AgentArgs::node_id`].
    pub node_id: Option<String>,
    /// See [`AgentArgs::cluster_id`].
    pub cluster_id: Option<String>,
    /// See [`AgentArgs::bind`].
    pub bind: Option<String>,
    /// See [`AgentArgs::advertise`].
    pub advertise: Option<String>,
    /// See [`AgentArgs::seeds`].
    #[serde(alias = "seeds")]
    pub seed: Option<Vec<String>>,
    /// See [`AgentArgs::discovery`].
    pub discovery: Option<Discovery>,
    /// See [`AgentArgs::gossip_interval`] (a string such as `"100ms"`).
    pub gossip_interval: Option<String>,
    /// See [`AgentArgs::tombstone_retention`] (a string such as `"12h"`).
    pub tombstone_retention: Option<String>,
    /// See [`AgentArgs::data_dir`].
    pub data_dir: Option<PathBuf>,
    /// See [`AgentArgs::durability`] (`"sync"` or a string such as
    /// `"100ms"`).
    pub durability: Option<String>,
    /// See [`AgentArgs::max_entries`].
    pub max_entries: Option<usize>,
    /// See [`AgentArgs::max_bytes`].
    pub max_bytes: Option<usize>,
    /// See [`AgentArgs::memory_policy`] (`"reject"` or `"evict-lru"`).
    pub memory_policy: Option<MemoryPolicyArg>,
    /// See [`AgentArgs::http`].
    pub http: Option<String>,
    /// See [`AgentArgs::http_token`].
    pub http_token: Option<String>,
    /// See [`AgentArgs::http_tls_cert`].
    pub http_tls_cert: Option<PathBuf>,
    /// See [`AgentArgs::http_tls_key`].
    pub http_tls_key: Option<PathBuf>,
    /// See [`AgentArgs::log_level`].
    pub log_level: Option<String>,
    /// See [`AgentArgs::log_format`].
    pub log_format: Option<LogFormat>,
    /// See [`AgentArgs::http_max_body`].
    pub http_max_body: Option<usize>,
    /// See [`AgentArgs::http_max_concurrent`].
    pub http_max_concurrent: Option<usize>,
    /// See [`AgentArgs::http_max_connections`].
    pub http_max_connections: Option<usize>,
    /// See [`AgentArgs::keyring_file`].
    pub keyring_file: Option<PathBuf>,
    /// See [`AgentArgs::encryption`].
    pub encryption: Option<EncryptionMode>,
}

/// The files of the HTTP API's TLS certificate and key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpTls {
    /// PEM certificate chain, the server's certificate first.
    pub cert: PathBuf,
    /// PEM private key of the certificate.
    pub key: PathBuf,
}

/// The resolved configuration of an agent.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentConfig {
    /// Node id (`None`: the library picks one).
    pub node_id: Option<String>,
    /// Cluster id (`None`: the library's default).
    pub cluster_id: Option<String>,
    /// Gossip bind address.
    pub bind: String,
    /// Advertised address.
    pub advertise: Option<String>,
    /// Seeds.
    pub seeds: Vec<String>,
    /// Discovery mode.
    pub discovery: Discovery,
    /// Gossip interval (`None`: the library's default).
    pub gossip_interval: Option<Duration>,
    /// Tombstone retention (`None`: the library's default).
    pub tombstone_retention: Option<Duration>,
    /// Data directory (`None`: memory only).
    pub data_dir: Option<PathBuf>,
    /// When writes reach the disk (`None`: the library's default, `Sync`;
    /// only with a data directory).
    pub durability: Option<gossipkv::Durability>,
    /// Entry limit.
    pub max_entries: Option<usize>,
    /// Byte limit.
    pub max_bytes: Option<usize>,
    /// What a write beyond the limits does.
    pub memory_policy: MemoryPolicyArg,
    /// HTTP address.
    pub http: String,
    /// HTTP bearer token.
    pub http_token: Option<String>,
    /// HTTPS: the PEM certificate chain and private key files (both or
    /// neither; `None`: plain HTTP).
    pub http_tls: Option<HttpTls>,
    /// Log filter.
    pub log_level: String,
    /// Log format.
    pub log_format: LogFormat,
    /// Largest HTTP request body.
    pub http_max_body: usize,
    /// Most HTTP requests served at once.
    pub http_max_concurrent: usize,
    /// Most open HTTP connections.
    pub http_max_connections: usize,
    /// Keyring file (`None`: no gossip encryption at start).
    pub keyring_file: Option<PathBuf>,
    /// Whether to create the keyring file when it does not exist.
    pub init_keyring: bool,
    /// How gossip without a seal is treated (with a keyring).
    pub encryption: EncryptionMode,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            node_id: None,
            cluster_id: None,
            bind: DEFAULT_BIND_ADDR.to_string(),
            advertise: None,
            seeds: Vec::new(),
            discovery: Discovery::None,
            gossip_interval: None,
            tombstone_retention: None,
            data_dir: None,
            durability: None,
            max_entries: None,
            max_bytes: None,
            memory_policy: MemoryPolicyArg::Reject,
            http: DEFAULT_HTTP_ADDR.to_string(),
            http_token: None,
            http_tls: None,
            log_level: DEFAULT_LOG_LEVEL.to_string(),
            log_format: LogFormat::Text,
            http_max_body: DEFAULT_MAX_BODY,
            http_max_concurrent: DEFAULT_MAX_CONCURRENT,
            http_max_connections: crate::server::DEFAULT_MAX_CONNECTIONS,
            keyring_file: None,
            init_keyring: false,
            encryption: EncryptionMode::Required,
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The configuration file is not valid TOML or has unknown keys.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// One option has a value that does not parse.
    #[error("invalid {option} (from {source_name}): {message}")]
    Invalid {
        /// The option, as its flag is named.
        option: &'static str,
        /// Where it came from: flag, environment variable or file.
        source_name: String,
        /// What is wrong.
        message: String,
    },
    /// The HTTP API would listen beyond loopback without a token.
    #[error(
        "refusing to serve the HTTP API on {addr} without a token: it is not a loopback \
         address, so anyone who can reach it could read and write every key; set \
         --http-token (or GOSSIPKV_HTTP_TOKEN, or http_token in the config file), or \
         listen on 127.0.0.1"
    )]
    InsecureHttp {
        /// The HTTP address.
        addr: String,
    },
}

/// Parses a duration such as `100ms`, `1s`, `1m30s`, `2h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("{s:?} is not a duration ({e})"))
}

/// Parses `--durability`: `sync`, or the interval of an interval commit
/// such as `100ms` (more than zero).
pub fn parse_durability(s: &str) -> Result<gossipkv::Durability, String> {
    if s.trim().eq_ignore_ascii_case("sync") {
        return Ok(gossipkv::Durability::Sync);
    }
    let every = parse_duration(s)
        .map_err(|_| format!("{s:?} is neither `sync` nor an interval such as 100ms"))?;
    if every.is_zero() {
        return Err(format!(
            "{s:?}: the interval must be more than zero (or `sync`)"
        ));
    }
    Ok(gossipkv::Durability::Interval(every))
}

/// Reads a TOML configuration file.
pub fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_file(&text).map_err(|message| ConfigError::Parse {
        path: path.to_path_buf(),
        message,
    })
}

/// Parses the text of a TOML configuration file.
pub fn parse_file(text: &str) -> Result<FileConfig, String> {
    toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
}

/// The `GOSSIPKV_*` variables of the process environment (others are left
/// out, as are values that are not UTF-8).
pub fn process_env() -> HashMap<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| k.starts_with("GOSSIPKV_"))
        .collect()
}

/// The configuration file to read: `--config`, else `GOSSIPKV_CONFIG`.
pub fn config_path(flags: &AgentArgs, env: &HashMap<String, String>) -> Option<PathBuf> {
    flags
        .config
        .clone()
        .or_else(|| env_str(env, "GOSSIPKV_CONFIG").map(PathBuf::from))
}

fn env_str(env: &HashMap<String, String>, name: &str) -> Option<String> {
    env.get(name).filter(|v| !v.is_empty()).cloned()
}

/// Picks one option: flag, then environment, then file.
struct Merge<'a> {
    env: &'a HashMap<String, String>,
}

impl Merge<'_> {
    /// A string option.
    fn string(&self, flag: &Option<String>, var: &str, file: &Option<String>) -> Option<String> {
        flag.clone()
            .or_else(|| env_str(self.env, var))
            .or_else(|| file.clone())
    }

    /// An option parsed from a string in the environment (and given
    /// already typed by the flag and the file).
    fn parsed<T: Clone>(
        &self,
        option: &'static str,
        flag: &Option<T>,
        var: &str,
        file: &Option<T>,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        if let Some(v) = flag {
            return Ok(Some(v.clone()));
        }
        if let Some(raw) = env_str(self.env, var) {
            return parse(&raw)
                .map(Some)
                .map_err(|message| ConfigError::Invalid {
                    option,
                    source_name: var.to_string(),
                    message,
                });
        }
        Ok(file.clone())
    }
}

fn parse_usize(s: &str) -> Result<usize, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a non-negative integer"))
}

fn parse_enum<T: ValueEnum>(s: &str) -> Result<T, String> {
    T::from_str(s.trim(), true).map_err(|_| {
        let names: Vec<String> = T::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value().map(|p| p.get_name().to_string()))
            .collect();
        format!("{s:?} is not one of {}", names.join(", "))
    })
}

/// Merges flags, environment and file into one configuration: for each
/// option, a flag wins over an environment variable, which wins over the
/// file, which wins over the default. Seeds are taken whole from the first
/// place that has any (they are not concatenated). Also refuses an HTTP
/// address beyond loopback without a token.
pub fn resolve(
    flags: &AgentArgs,
    env: &HashMap<String, String>,
    file: &FileConfig,
) -> Result<AgentConfig, ConfigError> {
    let m = Merge { env };
    let d = AgentConfig::default();
    let seeds = if !flags.seeds.is_empty() {
        flags.seeds.clone()
    } else if let Some(raw) = env_str(env, "GOSSIPKV_SEED") {
        raw.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    } else {
        file.seed.clone().unwrap_or_default()
    };
    let file_duration = |option: &'static str, raw: &Option<String>| match raw {
        Some(s) => parse_duration(s)
            .map(Some)
            .map_err(|message| ConfigError::Invalid {
                option,
                source_name: "config file".into(),
                message,
            }),
        None => Ok(None),
    };
    let file_interval = file_duration("--gossip-interval", &file.gossip_interval)?;
    let file_retention = file_duration("--tombstone-retention", &file.tombstone_retention)?;
    let file_durability = match &file.durability {
        Some(raw) => Some(
            parse_durability(raw).map_err(|message| ConfigError::Invalid {
                option: "--durability",
                source_name: "config file".into(),
                message,
            })?,
        ),
        None => None,
    };
    let cfg = AgentConfig {
        node_id: m.string(&flags.node_id, "GOSSIPKV_NODE_ID", &file.node_id),
        cluster_id: m.string(&flags.cluster_id, "GOSSIPKV_CLUSTER_ID", &file.cluster_id),
        bind: m
            .string(&flags.bind, "GOSSIPKV_BIND", &file.bind)
            .unwrap_or(d.bind),
        advertise: m.string(&flags.advertise, "GOSSIPKV_ADVERTISE", &file.advertise),
        seeds,
        discovery: m
            .parsed(
                "--discovery",
                &flags.discovery,
                "GOSSIPKV_DISCOVERY",
                &file.discovery,
                parse_enum,
            )?
            .unwrap_or(d.discovery),
        gossip_interval: m.parsed(
            "--gossip-interval",
            &flags.gossip_interval,
            "GOSSIPKV_GOSSIP_INTERVAL",
            &file_interval,
            parse_duration,
        )?,
        tombstone_retention: m.parsed(
            "--tombstone-retention",
            &flags.tombstone_retention,
            "GOSSIPKV_TOMBSTONE_RETENTION",
            &file_retention,
            parse_duration,
        )?,
        data_dir: m.parsed(
            "--data-dir",
            &flags.data_dir,
            "GOSSIPKV_DATA_DIR",
            &file.data_dir,
            |s| Ok(PathBuf::from(s)),
        )?,
        durability: m.parsed(
            "--durability",
            &flags.durability,
            "GOSSIPKV_DURABILITY",
            &file_durability,
            parse_durability,
        )?,
        max_entries: m.parsed(
            "--max-entries",
            &flags.max_entries,
            "GOSSIPKV_MAX_ENTRIES",
            &file.max_entries,
            parse_usize,
        )?,
        max_bytes: m.parsed(
            "--max-bytes",
            &flags.max_bytes,
            "GOSSIPKV_MAX_BYTES",
            &file.max_bytes,
            parse_usize,
        )?,
        memory_policy: m
            .parsed(
                "--memory-policy",
                &flags.memory_policy,
                "GOSSIPKV_MEMORY_POLICY",
                &file.memory_policy,
                parse_enum,
            )?
            .unwrap_or(d.memory_policy),
        http: m
            .string(&flags.http, "GOSSIPKV_HTTP", &file.http)
            .unwrap_or(d.http),
        http_token: m.string(&flags.http_token, "GOSSIPKV_HTTP_TOKEN", &file.http_token),
        http_tls: http_tls(&m, flags, file)?,
        log_level: m
            .string(&flags.log_level, "GOSSIPKV_LOG_LEVEL", &file.log_level)
            .unwrap_or(d.log_level),
        log_format: m
            .parsed(
                "--log-format",
                &flags.log_format,
                "GOSSIPKV_LOG_FORMAT",
                &file.log_format,
                parse_enum,
            )?
            .unwrap_or(d.log_format),
        http_max_body: m
            .parsed(
                "--http-max-body",
                &flags.http_max_body,
                "GOSSIPKV_HTTP_MAX_BODY",
                &file.http_max_body,
                parse_usize,
            )?
            .unwrap_or(d.http_max_body),
        http_max_concurrent: m
            .parsed(
                "--http-max-concurrent",
                &flags.http_max_concurrent,
                "GOSSIPKV_HTTP_MAX_CONCURRENT",
                &file.http_max_concurrent,
                parse_usize,
            )?
            .unwrap_or(d.http_max_concurrent),
        http_max_connections: m
            .parsed(
                "--http-max-connections",
                &flags.http_max_connections,
                "GOSSIPKV_HTTP_MAX_CONNECTIONS",
                &file.http_max_connections,
                parse_usize,
            )?
            .unwrap_or(d.http_max_connections),
        keyring_file: m.parsed(
            "--keyring-file",
            &flags.keyring_file,
            "GOSSIPKV_KEYRING_FILE",
            &file.keyring_file,
            |s| Ok(PathBuf::from(s)),
        )?,
        init_keyring: flags.init_keyring,
        encryption: m
            .parsed(
                "--encryption",
                &flags.encryption,
                "GOSSIPKV_ENCRYPTION",
                &file.encryption,
                parse_enum,
            )?
            .unwrap_or(d.encryption),
    };
    if cfg.init_keyring && cfg.keyring_file.is_none() {
        return Err(ConfigError::Invalid {
            option: "--init-keyring",
            source_name: "flag".into(),
            message: "needs --keyring-file (or GOSSIPKV_KEYRING_FILE, or keyring_file in the \
                      config file)"
                .into(),
        });
    }
    if cfg.durability.is_some() && cfg.data_dir.is_none() {
        return Err(ConfigError::Invalid {
            option: "--durability",
            source_name: "configuration".into(),
            message: "needs --data-dir (or GOSSIPKV_DATA_DIR, or data_dir in the config \
                      file): without one nothing is written to disk"
                .into(),
        });
    }
    if cfg.http_max_connections == 0 {
        return Err(ConfigError::Invalid {
            option: "--http-max-connections",
            source_name: "configuration".into(),
            message: "must be at least 1".into(),
        });
    }
    if cfg.http_max_concurrent == 0 {
        return Err(ConfigError::Invalid {
            option: "--http-max-concurrent",
            source_name: "configuration".into(),
            message: "must be at least 1".into(),
        });
    }
    if cfg.http_token.is_none() && !is_loopback(&cfg.http) {
        return Err(ConfigError::InsecureHttp {
            addr: cfg.http.clone(),
        });
    }
    Ok(cfg)
}

/// The TLS certificate and key files: both or neither (each from the
/// first place that sets it).
fn http_tls(
    m: &Merge<'_>,
    flags: &AgentArgs,
    file: &FileConfig,
) -> Result<Option<HttpTls>, ConfigError> {
    let path = |s: &str| Ok(PathBuf::from(s));
    let cert = m.parsed(
        "--http-tls-cert",
        &flags.http_tls_cert,
        "GOSSIPKV_HTTP_TLS_CERT",
        &file.http_tls_cert,
        path,
    )?;
    let key = m.parsed(
        "--http-tls-key",
        &flags.http_tls_key,
        "GOSSIPKV_HTTP_TLS_KEY",
        &file.http_tls_key,
        path,
    )?;
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(HttpTls { cert, key })),
        (None, None) => Ok(None),
        (Some(_), None) => Err(ConfigError::Invalid {
            option: "--http-tls-cert",
            source_name: "configuration".into(),
            message: "needs --http-tls-key too (or GOSSIPKV_HTTP_TLS_KEY, or http_tls_key in \
                      the config file): HTTPS takes a certificate and its private key"
                .into(),
        }),
        (None, Some(_)) => Err(ConfigError::Invalid {
            option: "--http-tls-key",
            source_name: "configuration".into(),
            message: "needs --http-tls-cert too (or GOSSIPKV_HTTP_TLS_CERT, or http_tls_cert \
                      in the config file): HTTPS takes a certificate and its private key"
                .into(),
        }),
    }
}

/// Whether an HTTP listen address only accepts connections from this host:
/// a loopback IP (`127.0.0.0/8`, `::1`) or `localhost`. Anything else,
/// including unspecified addresses and names, counts as not loopback.
pub fn is_loopback(addr: &str) -> bool {
    if let Ok(sa) = addr.parse::<SocketAddr>() {
        return sa.ip().is_loopback();
    }
    match addr.rsplit_once(':') {
        Some((host, port)) => host.eq_ignore_ascii_case("localhost") && port.parse::<u16>().is_ok(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_when_nothing_is_given() {
        let c = resolve(&AgentArgs::default(), &env(&[]), &FileConfig::default()).unwrap();
        assert_eq!(c, AgentConfig::default());
        assert_eq!(c.http, "127.0.0.1:8500");
        assert_eq!(c.log_format, LogFormat::Text);
    }

    #[test]
    fn flag_beats_env_beats_file_beats_default_per_option() {
        let file = parse_file(
            r#"
            node_id = "from-file"
            cluster_id = "file-cluster"
            bind = "127.0.0.1:1111"
            seed = ["10.0.0.1:7946", "10.0.0.2:7946"]
            gossip_interval = "300ms"
            tombstone_retention = "10m"
            max_entries = 10
            log_format = "json"
            "#,
        )
        .unwrap();
        let e = env(&[
            ("GOSSIPKV_NODE_ID", "from-env"),
            ("GOSSIPKV_CLUSTER_ID", "env-cluster"),
            ("GOSSIPKV_GOSSIP_INTERVAL", "2s"),
        ]);
        let flags = AgentArgs {
            node_id: Some("from-flag".into()),
            ..AgentArgs::default()
        };
        let c = resolve(&flags, &e, &file).unwrap();
        assert_eq!(c.node_id.as_deref(), Some("from-flag")); // flag > env > file
        assert_eq!(c.cluster_id.as_deref(), Some("env-cluster")); // env > file
        assert_eq!(c.gossip_interval, Some(Duration::from_secs(2))); // env > file
        assert_eq!(c.tombstone_retention, Some(Duration::from_secs(600))); // file
        assert_eq!(c.bind, "127.0.0.1:1111"); // file > default
        assert_eq!(c.max_entries, Some(10));
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.seeds, vec!["10.0.0.1:7946", "10.0.0.2:7946"]);
        assert_eq!(c.max_bytes, None); // default
        assert_eq!(c.http, DEFAULT_HTTP_ADDR); // default
    }

    #[test]
    fn seeds_come_whole_from_the_first_place_that_has_any() {
        let file = FileConfig {
            seed: Some(vec!["f:1".into()]),
            ..FileConfig::default()
        };
        let e = env(&[("GOSSIPKV_SEED", "e:1, e:2,")]);
        let c = resolve(&AgentArgs::default(), &e, &file).unwrap();
        assert_eq!(c.seeds, vec!["e:1", "e:2"]);
        let flags = AgentArgs {
            seeds: vec!["a:1".into(), "b:1".into()],
            ..AgentArgs::default()
        };
        let c = resolve(&flags, &e, &file).unwrap();
        assert_eq!(c.seeds, vec!["a:1", "b:1"]);
    }

    #[test]
    fn empty_env_values_count_as_unset() {
        let file = FileConfig {
            node_id: Some("f".into()),
            ..FileConfig::default()
        };
        let c = resolve(
            &AgentArgs::default(),
            &env(&[("GOSSIPKV_NODE_ID", "")]),
            &file,
        )
        .unwrap();
        assert_eq!(c.node_id.as_deref(), Some("f"));
    }

    #[test]
    fn bad_values_name_the_option_and_where_it_came_from() {
        let err = resolve(
            &AgentArgs::default(),
            &env(&[("GOSSIPKV_MAX_ENTRIES", "lots")]),
            &FileConfig::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("--max-entries") && err.contains("GOSSIPKV_MAX_ENTRIES"),
            "{err}"
        );
        let err = resolve(
            &AgentArgs::default(),
            &env(&[("GOSSIPKV_LOG_FORMAT", "xml")]),
            &FileConfig::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("text, json"), "{err}");
        let file = FileConfig {
            gossip_interval: Some("soon".into()),
            ..FileConfig::default()
        };
        let err = resolve(&AgentArgs::default(), &env(&[]), &file)
            .unwrap_err()
            .to_string();
        assert!(err.contains("config file"), "{err}");
    }

    #[test]
    fn keyring_file_and_encryption_layer_like_the_rest() {
        let file = parse_file(
            "keyring_file = \"/etc/gossipkv/keyring.json\"\nencryption = \"permissive\"\n",
        )
        .unwrap();
        let c = resolve(&AgentArgs::default(), &env(&[]), &file).unwrap();
        assert_eq!(
            c.keyring_file.as_deref(),
            Some(Path::new("/etc/gossipkv/keyring.json"))
        );
        assert_eq!(c.encryption, EncryptionMode::Permissive);
        let e = env(&[
            ("GOSSIPKV_KEYRING_FILE", "/env/keyring.json"),
            ("GOSSIPKV_ENCRYPTION", "permissive-sealing"),
        ]);
        let c = resolve(&AgentArgs::default(), &e, &file).unwrap();
        assert_eq!(
            c.keyring_file.as_deref(),
            Some(Path::new("/env/keyring.json"))
        );
        assert_eq!(c.encryption, EncryptionMode::PermissiveSealing);
        assert_eq!(
            c.encryption.to_encryption(),
            gossipkv::Encryption::Permissive {
                seal_outgoing: true
            }
        );
        let flags = AgentArgs {
            keyring_file: Some("/flag/keyring.json".into()),
            encryption: Some(EncryptionMode::Required),
            ..AgentArgs::default()
        };
        let c = resolve(&flags, &e, &file).unwrap();
        assert_eq!(
            c.keyring_file.as_deref(),
            Some(Path::new("/flag/keyring.json"))
        );
        assert_eq!(c.encryption, EncryptionMode::Required);
        let err = resolve(
            &AgentArgs::default(),
            &env(&[("GOSSIPKV_ENCRYPTION", "maybe")]),
            &FileConfig::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("permissive-sealing"), "{err}");
        let init = AgentArgs {
            init_keyring: true,
            ..AgentArgs::default()
        };
        let err = resolve(&init, &env(&[]), &FileConfig::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("--keyring-file"), "{err}");
        for mode in [
            EncryptionMode::Required,
            EncryptionMode::Permissive,
            EncryptionMode::PermissiveSealing,
        ] {
            assert_eq!(EncryptionMode::of(mode.to_encryption()), mode);
            assert_eq!(EncryptionMode::parse(mode.name()), Ok(mode));
        }
    }

    #[test]
    fn durability_and_memory_policy_layer_like_the_rest() {
        use gossipkv::{Durability, MemoryPolicy};
        let file = parse_file(
            "data_dir = \"/var/lib/gossipkv\"\ndurability = \"250ms\"\nmemory_policy = \"evict-lru\"\n",
        )
        .unwrap();
        let c = resolve(&AgentArgs::default(), &env(&[]), &file).unwrap();
        assert_eq!(
            c.durability,
            Some(Durability::Interval(Duration::from_millis(250)))
        );
        assert_eq!(c.memory_policy.to_policy(), MemoryPolicy::EvictLru);
        let e = env(&[
            ("GOSSIPKV_DURABILITY", "SYNC"),
            ("GOSSIPKV_MEMORY_POLICY", "reject"),
        ]);
        let c = resolve(&AgentArgs::default(), &e, &file).unwrap();
        assert_eq!(c.durability, Some(Durability::Sync));
        assert_eq!(c.memory_policy, MemoryPolicyArg::Reject);
        let flags = AgentArgs {
            durability: Some(Durability::Interval(Duration::from_secs(1))),
            memory_policy: Some(MemoryPolicyArg::EvictLru),
            ..AgentArgs::default()
        };
        let c = resolve(&flags, &e, &file).unwrap();
        assert_eq!(
            c.durability,
            Some(Durability::Interval(Duration::from_secs(1)))
        );
        assert_eq!(c.memory_policy, MemoryPolicyArg::EvictLru);
        // Defaults: the library's (sync once there is a data dir), reject.
        let c = resolve(&AgentArgs::default(), &env(&[]), &FileConfig::default()).unwrap();
        assert_eq!(
            (c.durability, c.memory_policy),
            (None, MemoryPolicyArg::Reject)
        );
        // Bad values name the option and where they came from.
        for (raw, wanted) in [("0s", "more than zero"), ("often", "neither `sync`")] {
            let e = env(&[("GOSSIPKV_DATA_DIR", "/d"), ("GOSSIPKV_DURABILITY", raw)]);
            let err = resolve(&AgentArgs::default(), &e, &FileConfig::default())
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("--durability")
                    && err.contains("GOSSIPKV_DURABILITY")
                    && err.contains(wanted),
                "{err}"
            );
        }
        let file = FileConfig {
            durability: Some("whenever".into()),
            ..FileConfig::default()
        };
        let err = resolve(&AgentArgs::default(), &env(&[]), &file)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("config file") && err.contains("--durability"),
            "{err}"
        );
        let err = resolve(
            &AgentArgs::default(),
            &env(&[("GOSSIPKV_MEMORY_POLICY", "lru")]),
            &FileConfig::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("reject, evict-lru"), "{err}");
        // A durability without a data dir would write nothing to disk.
        let err = resolve(
            &AgentArgs::default(),
            &env(&[("GOSSIPKV_DURABILITY", "sync")]),
            &FileConfig::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("needs --data-dir"), "{err}");
        for p in [MemoryPolicyArg::Reject, MemoryPolicyArg::EvictLru] {
            assert_eq!(MemoryPolicyArg::of(p.to_policy()), p);
            assert_eq!(parse_enum::<MemoryPolicyArg>(p.name()), Ok(p));
        }
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let err = parse_file("nodeid = \"x\"").unwrap_err();
        assert!(err.contains("nodeid"), "{err}");
        assert!(parse_file("node_id = 3").is_err());
    }

    #[test]
    fn public_http_needs_a_token() {
        let flags = AgentArgs {
            http: Some("0.0.0.0:8500".into()),
            ..AgentArgs::default()
        };
        let err = resolve(&flags, &env(&[]), &FileConfig::default()).unwrap_err();
        assert!(matches!(err, ConfigError::InsecureHttp { .. }), "{err}");
        // A token from any source lifts the refusal.
        let c = resolve(
            &flags,
            &env(&[("GOSSIPKV_HTTP_TOKEN", "s3cret")]),
            &FileConfig::default(),
        )
        .unwrap();
        assert_eq!(c.http_token.as_deref(), Some("s3cret"));
    }

    #[test]
    fn tls_files_layer_like_the_rest() {
        let file =
            parse_file("http_tls_cert = \"/file/cert.pem\"\nhttp_tls_key = \"/file/key.pem\"\n")
                .unwrap();
        let c = resolve(&AgentArgs::default(), &env(&[]), &file).unwrap();
        assert_eq!(
            c.http_tls,
            Some(HttpTls {
                cert: "/file/cert.pem".into(),
                key: "/file/key.pem".into(),
            })
        );
        let e = env(&[("GOSSIPKV_HTTP_TLS_CERT", "/env/cert.pem")]);
        let flags = AgentArgs {
            http_tls_key: Some("/flag/key.pem".into()),
            ..AgentArgs::default()
        };
        let c = resolve(&flags, &e, &file).unwrap();
        assert_eq!(
            c.http_tls,
            Some(HttpTls {
                cert: "/env/cert.pem".into(),
                key: "/flag/key.pem".into(),
            })
        );
        // Neither: plain HTTP.
        let c = resolve(&AgentArgs::default(), &env(&[]), &FileConfig::default()).unwrap();
        assert_eq!(c.http_tls, None);
    }

    #[test]
    fn tls_needs_both_a_certificate_and_a_key() {
        let only_cert = AgentArgs {
            http_tls_cert: Some("/c.pem".into()),
            ..AgentArgs::default()
        };
        let err = resolve(&only_cert, &env(&[]), &FileConfig::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--http-tls-cert") && err.contains("needs --http-tls-key"),
            "{err}"
        );
        let err = resolve(
            &AgentArgs::default(),
            &env(&[("GOSSIPKV_HTTP_TLS_KEY", "/k.pem")]),
            &FileConfig::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("needs --http-tls-cert"), "{err}");
        let file = parse_file("http_tls_key = \"/k.pem\"\n").unwrap();
        let err = resolve(&AgentArgs::default(), &env(&[]), &file)
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs --http-tls-cert"), "{err}");
    }

    #[test]
    fn loopback_addresses() {
        assert!(is_loopback("127.0.0.1:8500"));
        assert!(is_loopback("127.1.2.3:0"));
        assert!(is_loopback("[::1]:8500"));
        assert!(is_loopback("localhost:8500"));
        assert!(!is_loopback("0.0.0.0:8500"));
        assert!(!is_loopback("[::]:8500"));
        assert!(!is_loopback("10.0.0.1:8500"));
        assert!(!is_loopback("example.com:8500"));
        assert!(!is_loopback("localhost"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("").is_err());
    }
}
