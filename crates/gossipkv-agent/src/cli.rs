//! The `gossipkv` command line: `agent` runs a node; the other subcommands
//! are clients of a running agent.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::client::{self, ClientArgs, PutArgs};
use crate::config::{self, AgentArgs};

/// gossipkv: an eventually consistent key-value store replicated by gossip.
///
/// `gossipkv agent` runs a node with an HTTP API; the other commands talk
/// to a running agent over that API (--http-addr, default 127.0.0.1:8500).
#[derive(Parser, Debug)]
#[command(name = "gossipkv", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a node and serve its HTTP API until SIGINT/SIGTERM (then leave
    /// the cluster gracefully and exit 0)
    ///
    /// Every option can also come from a GOSSIPKV_* environment variable
    /// or a TOML file (--config); flags win over the environment, the
    /// environment over the file.
    Agent(Box<AgentArgs>),
    /// Key-value commands
    #[command(subcommand)]
    Kv(KvCommand),
    /// Print a key's value (same as `kv get`)
    Get(KeyArgs),
    /// Set a key (same as `kv put`)
    Put {
        /// Put options.
        #[command(flatten)]
        put: PutArgs,
        /// Client options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a key (same as `kv delete`)
    #[command(visible_alias = "delete")]
    Del(KeyArgs),
    /// List the keys under a prefix (same as `kv ls`)
    Keys(PrefixArgs),
    /// List the cluster's members as the agent sees them
    Members(ClientArgs),
    /// Show the agent's node: id, address, keys, health
    Info(ClientArgs),
    /// Print a new random gossip encryption key (32 bytes, base64) for a
    /// keyring file or `keyring install`
    Keygen,
    /// The agent's gossip encryption keyring
    #[command(subcommand)]
    Keyring(KeyringCommand),
    /// An interactive console attached to a running agent (set, get, del,
    /// keys, members, info, leave; exit, quit or sair to leave)
    Console(ClientArgs),
}

/// `kv` subcommands.
#[derive(Subcommand, Debug)]
pub enum KvCommand {
    /// Print a key's value (bare bytes; exit 1 if absent)
    Get(KeyArgs),
    /// Set a key
    Put {
        /// Put options.
        #[command(flatten)]
        put: PutArgs,
        /// Client options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a key
    #[command(visible_alias = "del")]
    Delete(KeyArgs),
    /// List the keys under a prefix (all keys without one)
    #[command(visible_alias = "keys")]
    Ls(PrefixArgs),
    /// Print the changes under a prefix as they happen, until the agent
    /// stops (or Ctrl-C)
    Watch(PrefixArgs),
    /// Print every key as JSON lines (values base64), for `kv import`
    Export(ClientArgs),
    /// Import JSON lines (as `kv export` prints them) or a flat
    /// {"key": "value"} JSON object
    Import {
        /// The file (`-`: standard input)
        file: String,
        /// Client options.
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `keyring` subcommands.
#[derive(Subcommand, Debug)]
pub enum KeyringCommand {
    /// List the keys: id, primary, and how many live members hold and seal
    /// with each; then the encryption setting and the refusal counters
    #[command(visible_alias = "ls")]
    List(ClientArgs),
    /// Install a key (it opens at once, and seals once made primary)
    Install {
        /// The key, base64 (`-`: read it from standard input, which keeps
        /// it out of the shell history and the process list)
        key: String,
        /// Client options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Make a key primary: what the agent sends is sealed with it
    Use(KeyIdArgs),
    /// Remove a key that is not primary
    #[command(visible_alias = "rm")]
    Remove(KeyIdArgs),
    /// Change how gossip without a seal is treated (until the agent stops)
    Encryption {
        /// required, permissive or permissive-sealing
        #[arg(value_enum)]
        mode: config::EncryptionMode,
        /// Client options.
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// A key id and how to reach the agent.
#[derive(clap::Args, Debug)]
pub struct KeyIdArgs {
    /// The key's id (4 hex digits, as `keyring list` shows it)
    pub id: String,
    /// Client options.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// A key and how to reach the agent.
#[derive(clap::Args, Debug)]
pub struct KeyArgs {
    /// The key
    pub key: String,
    /// Client options.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// An optional prefix and how to reach the agent.
#[derive(clap::Args, Debug)]
pub struct PrefixArgs {
    /// The prefix (empty: every key)
    #[arg(default_value = "")]
    pub prefix: String,
    /// Client options.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Agent(args) => run_agent(&args),
        Command::Kv(KvCommand::Get(a)) | Command::Get(a) => {
            client::finish(client::get(&a.client, &a.key))
        }
        Command::Kv(KvCommand::Put { put, client }) | Command::Put { put, client } => {
            client::finish(client::put(&client, &put))
        }
        Command::Kv(KvCommand::Delete(a)) | Command::Del(a) => {
            client::finish(client::delete(&a.client, &a.key))
        }
        Command::Kv(KvCommand::Ls(a)) | Command::Keys(a) => {
            client::finish(client::keys(&a.client, &a.prefix))
        }
        Command::Kv(KvCommand::Watch(a)) => client::finish(client::watch(&a.client, &a.prefix)),
        Command::Kv(KvCommand::Export(c)) => client::finish(client::export(&c)),
        Command::Kv(KvCommand::Import { file, client }) => {
            client::finish(client::import(&client, &file))
        }
        Command::Members(c) => client::finish(client::members(&c)),
        Command::Info(c) => client::finish(client::info(&c)),
        Command::Keygen => {
            println!("{}", gossipkv::key_to_base64(&gossipkv::generate_key()));
            ExitCode::SUCCESS
        }
        Command::Keyring(KeyringCommand::List(c)) => client::finish(client::keyring_list(&c)),
        Command::Keyring(KeyringCommand::Install { key, client }) => {
            client::finish(client::keyring_install(&client, &key))
        }
        Command::Keyring(KeyringCommand::Use(a)) => {
            client::finish(client::keyring_change(&a.client, "use", &a.id))
        }
        Command::Keyring(KeyringCommand::Remove(a)) => {
            client::finish(client::keyring_change(&a.client, "remove", &a.id))
        }
        Command::Keyring(KeyringCommand::Encryption { mode, client }) => {
            client::finish(client::keyring_encryption(&client, mode))
        }
        Command::Console(c) => crate::console::run(&c),
    }
}

fn run_agent(args: &AgentArgs) -> ExitCode {
    let env = config::process_env();
    let file = match config::config_path(args, &env) {
        Some(path) => match config::read_file(&path) {
            Ok(f) => f,
            Err(e) => return fail(&e.to_string()),
        },
        None => config::FileConfig::default(),
    };
    let mut cfg = match config::resolve(args, &env, &file) {
        Ok(c) => c,
        Err(e) => return fail(&e.to_string()),
    };
    let log_level_given = args.log_level.is_some()
        || env.contains_key("GOSSIPKV_LOG_LEVEL")
        || file.log_level.is_some();
    if args.console && !log_level_given {
        cfg.log_level = "warn".into(); // keep the console readable
    }
    if let Err(e) = crate::agent::init_logging(&cfg.log_level, cfg.log_format) {
        return fail(&e);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    if args.console {
        return run_agent_with_console(runtime, cfg);
    }
    match runtime.block_on(crate::agent::run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e.to_string()),
    }
}

/// `agent --console`: the agent runs on a background thread; the console
/// runs here, attached to the agent's own HTTP address; when it ends, the
/// agent leaves the cluster.
fn run_agent_with_console(runtime: tokio::runtime::Runtime, cfg: config::AgentConfig) -> ExitCode {
    let token = cfg.http_token.clone();
    // With TLS, the console trusts the agent's own certificate.
    let tls_cert = cfg.http_tls.as_ref().map(|t| t.cert.clone());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let agent = std::thread::spawn(move || {
        runtime.block_on(crate::agent::run_with(
            cfg,
            move |addr| {
                let _ = ready_tx.send(addr);
            },
            async move {
                let _ = stop_rx.await;
            },
        ))
    });
    // Until the agent serves, or fails to start (then the sender is gone).
    if let Ok(addr) = ready_rx.recv() {
        let args = ClientArgs {
            http_addr: match tls_cert {
                Some(_) => format!("https://{addr}"),
                None => addr.to_string(),
            },
            http_token: token,
            ca_cert: tls_cert,
            json: false,
        };
        let _ = crate::console::run(&args);
        let _ = stop_tx.send(());
    }
    match agent.join() {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => fail(&e.to_string()),
        Err(_) => fail("the agent thread panicked"),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("gossipkv agent: {message}");
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn agent_flags_parse() {
        let cli = Cli::try_parse_from([
            "gossipkv",
            "agent",
            "--node-id",
            "a",
            "--seed",
            "127.0.0.1:1",
            "--seed",
            "127.0.0.1:2",
            "--gossip-interval",
            "100ms",
            "--log-format",
            "json",
            "--discovery",
            "none",
        ])
        .unwrap();
        let Command::Agent(a) = cli.command else {
            panic!("not agent");
        };
        assert_eq!(a.node_id.as_deref(), Some("a"));
        assert_eq!(a.seeds.len(), 2);
        assert_eq!(
            a.gossip_interval,
            Some(std::time::Duration::from_millis(100))
        );
        assert!(Cli::try_parse_from(["gossipkv", "agent", "--gossip-interval", "soon"]).is_err());
    }

    #[test]
    fn keyring_flags_and_commands_parse() {
        let cli = Cli::try_parse_from([
            "gossipkv",
            "agent",
            "--keyring-file",
            "/k.json",
            "--init-keyring",
            "--encryption",
            "permissive-sealing",
        ])
        .unwrap();
        let Command::Agent(a) = cli.command else {
            panic!("not agent");
        };
        assert_eq!(
            a.keyring_file.as_deref(),
            Some(std::path::Path::new("/k.json"))
        );
        assert!(a.init_keyring);
        assert_eq!(
            a.encryption,
            Some(config::EncryptionMode::PermissiveSealing)
        );
        assert!(Cli::try_parse_from(["gossipkv", "agent", "--encryption", "off"]).is_err());
        let cli = Cli::try_parse_from(["gossipkv", "keyring", "encryption", "permissive"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Keyring(KeyringCommand::Encryption {
                mode: config::EncryptionMode::Permissive,
                ..
            })
        ));
        assert!(Cli::try_parse_from(["gossipkv", "keyring", "use", "ab12"]).is_ok());
        assert!(Cli::try_parse_from(["gossipkv", "keygen"]).is_ok());
    }
}
