//! # gossipkv-agent
//!
//! The `gossipkv` binary: `gossipkv agent` runs a [`gossipkv`] node and
//! serves an HTTP API for it (see [`api`]); the other subcommands are a
//! command-line client of a running agent (see [`client`]).
//!
//! The library exposes the pieces so that tests (and embedders) can mount
//! the API's [`router`](api::router) on their own listener.

pub mod agent;
pub mod api;
pub mod changes;
pub mod cli;
pub mod client;
pub mod config;
pub mod console;
pub mod keyring;
pub mod metrics;
pub mod server;
pub mod tls;
