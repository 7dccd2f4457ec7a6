//! The `gossipkv` binary; see the `gossipkv-agent` library.

fn main() -> std::process::ExitCode {
    gossipkv_agent::cli::main()
}
